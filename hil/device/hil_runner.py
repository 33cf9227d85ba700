# est-lite HIL scenario runner: the code a board (virtual or real) runs.
#
#   import hil_runner; hil_runner.main("hil_cfg.json")
#
# The host (hil/scenario.py) writes hil_cfg.json to the board's flash and
# reads the results back as #HIL lines (hil_proto.py). Config keys:
#   run       an id echoed in "hello"
#   server    coaps://host:port or https://host:port (label as the path)
#   pin       "sha256:<hex>" of the server certificate (first-boot bootstrap)
#   idevid    [cert file, key file] (DER): the factory identity
#   store     directory of the credential store (est_lite_mp.credstore)
#   cn        subject common name of the device
#   timeout   one handshake or request (s); deadline: one operation (s)
#   steps     list of {"do": NAME, ...}; NAME one of STEPS below
# Records: hello, begin (a step starts), step (its result: ok, ms, details),
# cut (an injected power cut: the host kills the board now), bye.
#
# Injected power cuts: a step with "cut": {"at": k} numbers the store's
# filesystem mutations during that step (before each write, half way
# through each write -- a torn write --, before the commit rename, before
# each removal) and stops dead at point k: it prints a
# "cut" record and waits to be killed. The step's result reports "points",
# the number of points it passed, so the host can choose k uniformly.
import gc
import json
import os
import sys
import time

from hil_proto import Emitter

E = Emitter()
_HANG_S = 120


def _ms():
    return time.ticks_ms()


def _rd(path):
    with open(path, "rb") as f:
        return f.read()


def _fp(der):
    import hashlib

    return hashlib.sha256(der).digest().hex()


class _Cutter:
    def __init__(self, at):
        self.at = at
        self.n = 0

    def point(self, what, name):
        if self.at is not None and self.n == self.at:
            E.emit("cut", {"at": self.n, "what": what, "name": name})
            t0 = _ms()
            while time.ticks_diff(_ms(), t0) < _HANG_S * 1000:
                time.sleep_ms(50)
            sys.exit(3)  # nobody killed us: never continue past a cut point
        self.n += 1


class _OsProxy:
    # stands in for the credstore module's `os` to number the commit rename
    def __init__(self, cutter):
        self._c = cutter

    def rename(self, a, b):
        self._c.point("rename", b)
        os.rename(a, b)

    def __getattr__(self, name):
        return getattr(os, name)


def _store(cfg, st):
    from est_lite_mp import credstore

    cut = st.get("cut")
    if cut is None:
        return credstore.CredStore(cfg["store"]), None
    cutter = _Cutter(cut.get("at"))

    class CutStore(credstore.CredStore):
        def _write(self, name, data):
            cutter.point("write", name)
            if cutter.at is not None and cutter.n == cutter.at:
                f = open(self._p(name), "wb")  # a torn write: half the bytes reach the flash
                f.write(data[:len(data) // 2])
                f.close()
            cutter.point("torn", name)
            credstore.CredStore._write(self, name, data)

        def _remove(self, name):
            cutter.point("remove", name)
            credstore.CredStore._remove(self, name)

    if st.get("unsafe_store"):
        # a deliberately broken store for the campaign's control run: the
        # manifest is rewritten in place, so a cut in that write destroys it
        class UnsafeStore(CutStore):
            def _write(self, name, data):
                if name == "manifest.tmp":
                    CutStore._write(self, "manifest", data)
                CutStore._write(self, name, data)

        return UnsafeStore(cfg["store"]), cutter

    credstore.os = _OsProxy(cutter)
    return CutStore(cfg["store"]), cutter


def _client(cfg, st, identity, trust=None):
    from est_lite_mp.client import EstClient

    cert = key = None
    if identity is not None:
        cert, key = identity
    server = st.get("server", cfg["server"])
    kw = {"timeout": st.get("timeout", cfg.get("timeout", 20)), "deadline": st.get("deadline", cfg.get("deadline", 120))}
    if st.get("label"):
        kw["label"] = st["label"]
    if trust:
        return EstClient(server, trust=trust, cert=cert, key=key, **kw)
    return EstClient(server, pin=cfg["pin"], cert=cert, key=key, **kw)


def _idevid(cfg):
    return _rd(cfg["idevid"][0]), _rd(cfg["idevid"][1])


def _public_of(key_der):
    from est_lite_mp.crypto import P256Key

    return P256Key.load_der(key_der).public_key


def _check_pair(creds, now=None):
    # the stored key belongs to the stored certificate, which chains to the stored CA
    from est_lite_mp import certs, crypto

    pk = _public_of(creds.key)
    certs.check_issued(creds.cert, [], creds.ca, pk, crypto.verify, None, now, check_time=False)


def step_provision(cfg, st):
    store, cutter = _store(cfg, st)
    c = _client(cfg, st, _idevid(cfg))
    try:
        r = c.provision(store, cn=st.get("cn", cfg["cn"]))
    finally:
        c.close()
    out = {"gen": r.gen, "cert": _fp(r.cert), "unmet": r.unmet}
    if cutter is not None:
        out["points"] = cutter.n
    return out


def step_renew(cfg, st):
    store, cutter = _store(cfg, st)
    creds = store.load()
    if creds is None:
        raise ValueError("renew: the store is empty (provision first)")
    old = _fp(creds.cert)
    trust = creds.ca
    creds = None
    c = _client(cfg, st, None, trust=trust)
    try:
        r = c.renew_if_needed(store, threshold=st.get("threshold", 1 << 40), rotate_key=st.get("rotate_key", True))
    finally:
        c.close()
    out = {"renewed": r is not None, "old": old}
    if r is not None:
        out["gen"] = r.gen
        out["cert"] = _fp(r.cert)
    if cutter is not None:
        out["points"] = cutter.n
    return out


def step_serverkeygen(cfg, st):
    # the server makes the key; the CSR (subject, proof of the request) is
    # signed with the factory key; the answer replaces the stored credentials
    from est_lite.csr import CsrBuilder
    from est_lite_mp import certs, crypto

    store, cutter = _store(cfg, st)
    idev = _idevid(cfg)
    c = _client(cfg, st, idev)
    try:
        ca = c.cacerts()
        csr = CsrBuilder().subject(cn=st.get("cn", cfg["cn"])).sign(crypto.P256Key.load_der(idev[1]))
        ev = c.serverkeygen(csr)
    finally:
        c.close()
    pk = _public_of(ev.key_der)
    certs.check_issued(ev.cert, ev.chain, ca, pk, crypto.verify)
    gen = store.save(key=ev.key_der, cert=ev.cert, ca=ca)
    out = {"gen": gen, "cert": _fp(ev.cert), "key_type": ev.key_type}
    if cutter is not None:
        out["points"] = cutter.n
    return out


def step_check(cfg, st):
    from est_lite_mp.credstore import CredStore

    creds = CredStore(cfg["store"]).load()  # StoreError when broken
    if creds is None:
        return {"state": "empty"}
    if creds.key is None or creds.cert is None or not creds.ca:
        raise ValueError("the store holds an incomplete set (key %s, cert %s, %d CA)"
                         % (creds.key is not None, creds.cert is not None, len(creds.ca)))
    _check_pair(creds)
    return {"state": "ok", "gen": creds.gen, "cert": _fp(creds.cert)}


def step_wipe(cfg, st):
    from est_lite_mp.credstore import CredStore

    CredStore(cfg["store"]).clear()
    return {}


def step_sleep(cfg, st):
    time.sleep_ms(int(st.get("s", 1) * 1000))
    return {}


def step_info(cfg, st):
    gc.collect()
    return {"mem_free": gc.mem_free(), "mem_alloc": gc.mem_alloc(), "platform": sys.platform,
            "version": sys.version}


STEPS = {
    "provision": step_provision,
    "renew": step_renew,
    "serverkeygen": step_serverkeygen,
    "check": step_check,
    "wipe": step_wipe,
    "sleep": step_sleep,
    "info": step_info,
}


def main(path="hil_cfg.json"):
    with open(path) as f:
        cfg = json.load(f)
    gc.collect()
    E.emit("hello", {"run": cfg.get("run"), "impl": sys.implementation.name, "platform": sys.platform,
                     "mem_free": gc.mem_free()})
    ok = True
    for i in range(len(cfg["steps"])):
        st = cfg["steps"][i]
        name = st.get("do")
        E.emit("begin", {"i": i, "do": name})
        gc.collect()
        t0 = _ms()
        try:
            fn = STEPS.get(name)
            if fn is None:
                raise ValueError("unknown step %r" % name)
            rec = fn(cfg, st)
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001 - a harness reports every failure of a step
            rec = {"ok": False, "error": type(e).__name__, "msg": str(e)}
            ok = False
        rec["i"] = i
        rec["do"] = name
        rec["ms"] = time.ticks_diff(_ms(), t0)
        cs = sys.modules.get("est_lite_mp.credstore")
        if cs is not None:
            cs.os = os  # undo a cut step's proxy
        gc.collect()
        rec["mem_free"] = gc.mem_free()
        E.emit("step", rec)
        if not rec["ok"] and not st.get("continue", False):
            break
    E.emit("bye", {"ok": ok})
