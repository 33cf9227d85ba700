# Drives est_lite_mp.client.EstClient under the MicroPython unix port for
# tests/test_client_runtime_mp.py and bench/device.py:
#   micropython -X heapsize=.. client_run.py CONFIG.json
# CONFIG: server, trust [DER paths], pin (hex), cert, key (DER paths), user,
# password, table (P-256 table file), store (dir), cn, steps [...] (cacerts,
# csrattrs, enroll, reenroll, serverkeygen, provision, renew, load, close, sleep),
# deadline, timeout, threshold, now, szx, ack_timeout, clock (the calendar clock reads
# this many seconds since 1970: a board after a cold boot).
# Prints "OK <step> <detail>" per step, then "DONE"; on an error
# "ERROR <Class>: <message>" and exit status 1.
import gc
import json
import sys


def _read(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


def _set_clock(t):
    # a board's calendar clock reading t (seconds since 1970): a `time`
    # module whose gmtime()/time() say so (ticks and sleep unchanged), put
    # in sys.modules before est_lite_mp imports it
    import time

    class _T:
        pass

    ft = _T()
    for n in dir(time):
        if not n.startswith("__"):
            setattr(ft, n, getattr(time, n))
    g = time.gmtime(t)
    ft.gmtime = lambda *a: g if not a else time.gmtime(*a)
    ft.time = lambda: t
    sys.modules["time"] = ft


def main():
    f = open(sys.argv[1])
    cfg = json.load(f)
    f.close()
    if cfg.get("clock") is not None:
        _set_clock(cfg["clock"])
    if cfg.get("table"):
        from est_lite_mp import tablefile

        tablefile.install(cfg["table"])
    from est_lite_mp.client import EstClient

    trust = [_read(p) for p in cfg["trust"]] if cfg.get("trust") else None
    cert = _read(cfg["cert"]) if cfg.get("cert") else None
    key = _read(cfg["key"]) if cfg.get("key") else None
    c = EstClient(cfg["server"], trust=trust, pin=cfg.get("pin"), cert=cert, key=key, user=cfg.get("user"),
                  password=cfg.get("password"), timeout=cfg.get("timeout", 30), deadline=cfg.get("deadline", 120))
    trust = cert = key = None
    if "szx" in cfg:
        c.szx = cfg["szx"]
    if "ack_timeout" in cfg:
        c.ack_timeout = cfg["ack_timeout"]
    store = None
    if cfg.get("store"):
        from est_lite_mp.credstore import CredStore

        store = CredStore(cfg["store"])
    gc.collect()
    k = None
    for step in cfg["steps"]:
        if step == "cacerts":
            print("OK cacerts %d" % len(c.cacerts()))
        elif step == "csrattrs":
            a = c.csrattrs()
            print("OK csrattrs %s" % ("none" if a is None else len(a)))
        elif step in ("enroll", "reenroll", "serverkeygen"):
            from est_lite.csr import CsrBuilder
            from est_lite_mp import crypto

            if k is None or step != "reenroll":
                k = crypto.P256Key.generate()
            csr = CsrBuilder().subject(cn=cfg.get("cn", "mp-device")).sign(k)
            gc.collect()
            if step == "enroll":
                ev = c.enroll(csr, k.public_key)
                c.close()
                c.cert, c.key = ev.cert, k.export_pkcs8()  # the next steps authenticate with it
                print("OK enroll %d" % len(ev.cert))
            elif step == "reenroll":
                ev = c.reenroll(csr, k.public_key)
                print("OK reenroll %d" % len(ev.cert))
            else:
                ev = c.serverkeygen(csr)
                print("OK serverkeygen %d %d" % (len(ev.key_der), len(ev.cert)))
            ev = csr = None
        elif step == "provision":
            r = c.provision(store, cn=cfg.get("cn", "mp-device"), now=cfg.get("now"))
            print("OK provision gen=%d cert=%d unmet=%d" % (r.gen, len(r.cert), len(r.unmet)))
        elif step == "renew":
            r = c.renew_if_needed(store, threshold=cfg.get("threshold"), now=cfg.get("now"))
            print("OK renew %s" % ("none" if r is None else "gen=%d" % r.gen))
        elif step == "load":
            s = store.load()
            print("OK load %s" % ("none" if s is None else "gen=%d ca=%d" % (s.gen, len(s.ca))))
        elif step == "close":
            c.close()
        elif step == "sleep":  # the connection kept idle for 1 s
            import time

            time.sleep(1)
        gc.collect()
    c.close()
    print("DONE")


try:
    main()
except Exception as e:  # noqa: BLE001 - reported to the test
    print("ERROR %s: %s" % (type(e).__name__, e))
    sys.exit(1)
