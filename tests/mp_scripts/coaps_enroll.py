# EST-coaps device flow for the MicroPython unix port: the core's CoAP
# client (est_lite.client.CoapOperation), CSR builder and PKCS#7 reader,
# est_lite_mp's pure-Python P-256 and its DTLS client on the `tls` module.
#
#   micropython -X heapsize=... coaps_enroll.py cfg.json
#
# cfg: path (sys.path entries), host, port, ca (DER file), cert/key (DER
# files of the bootstrap identity), label, cn, out (directory for results),
# ops (list of "crts", "att", "sen", "sren", "skg", "skc"), szx, accept.
# One DTLS session carries crts/att/sen; "sren" reconnects with the
# certificate and key "sen" produced (as a device renews its own identity).
# Prints lines "OP <name> <detail>" and a last line "RESULT <json>".

import sys
import json

cfg = json.load(open(sys.argv[1]))
sys.path[:0] = cfg["path"]

import gc  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from est_lite import client as C  # noqa: E402
from est_lite import numbers as N  # noqa: E402
from est_lite.errors import EstError  # noqa: E402
from est_lite_mp.dtls import DtlsClient  # noqa: E402


def rd(p):
    with open(p, "rb") as f:
        return f.read()


def wr(name, data):
    with open(cfg["out"] + "/" + name, "wb") as f:
        f.write(data)


def now():
    return time.ticks_ms() / 1000


def rand():
    return os.urandom(1)[0] / 256


buf = bytearray(1152)  # encode buffer shared by the operations of a session
rx = bytearray(1280)
rxv = memoryview(rx)


class Session:
    def __init__(self, cert, key):
        self.dc = DtlsClient(cfg["host"], cfg["port"], cadata=rd(cfg["ca"]), server_hostname=cfg.get("server_name"),
                             cert=cert, key=key, timeout_ms=cfg.get("timeout_ms", 20000))
        self.mids = C.MidSource(os.urandom(2))

    def run(self, op, body=b"", **kw):
        o = C.CoapOperation(op, label=cfg.get("label"), body=body, token=os.urandom(4), mid=self.mids,
                            szx=cfg.get("szx", 6), buf=buf, rand=rand, max_body=cfg.get("max_body", 4096), **kw)
        while True:
            d = o.send(now())
            while d is not None:
                self.dc.send(d)
                d = o.send(now())
            ev = o.next_event()
            if ev is not C.NEED_DATA:
                return ev
            t = o.next_timeout()
            ms = 500 if t is None else int((t - now()) * 1000) + 1
            n = self.dc.recv_into(rx, max(1, min(ms, 1000)))
            if n is not None and n > 0:  # -1: a record larger than rx, dropped
                o.receive_data(rxv[:n], now())

    def close(self):
        self.dc.close()


def new_key_and_csr(cn):
    from est_lite.csr import CsrBuilder
    from est_lite_mp.crypto import P256Key

    key = P256Key.generate()
    csr = CsrBuilder().subject(cn=cn).sign(key)
    return key, csr


out = {"ok": False, "ops": []}
try:
    s = Session(rd(cfg["cert"]), rd(cfg["key"]))
    accept = cfg.get("accept")
    for name in cfg["ops"]:
        gc.collect()
        if name == "crts":
            ev = s.run(N.OP_CACERTS, accept=accept)
            for i in range(len(ev.certs)):
                wr("ca%d.der" % i, ev.certs[i])
            print("OP crts", len(ev.certs))
        elif name == "att":
            ev = s.run(N.OP_CSRATTRS)
            wr("att.der", ev.der)
            print("OP att", len(ev.der))
        elif name == "sen":
            key, csr = new_key_and_csr(cfg["cn"])
            ev = s.run(N.OP_SIMPLEENROLL, csr, public_key=key.public_key, accept=accept)
            if type(ev).__name__ == "RetryAfter":
                print("OP sen retry", ev.seconds)
                continue
            wr("sen.der", ev.cert)
            wr("sen.key", key.export_sec1())
            print("OP sen", len(ev.cert))
        elif name == "sren":
            s.close()  # renew with the identity just enrolled
            s = Session(rd(cfg["out"] + "/sen.der"), rd(cfg["out"] + "/sen.key"))
            key, csr = new_key_and_csr(cfg["cn"])
            ev = s.run(N.OP_SIMPLEREENROLL, csr, public_key=key.public_key)
            wr("sren.der", ev.cert)
            wr("sren.key", key.export_sec1())
            print("OP sren", len(ev.cert))
        elif name in ("skg", "skc"):
            key, csr = new_key_and_csr(cfg["cn"])
            ev = s.run(N.OP_SERVERKEYGEN, csr, skc=(name == "skc"))
            wr(name + ".der", ev.cert)
            wr(name + ".key", ev.key_der)
            print("OP", name, ev.key_type, len(ev.key_der), len(ev.cert))
        out["ops"].append(name)
    out["cipher"] = s.dc.cipher
    s.close()
    out["ok"] = True
except EstError as e:
    out["error"] = type(e).__name__
    out["msg"] = str(e)
    out["code"] = getattr(e, "coap_code", None)
gc.collect()
out["mem_free"] = gc.mem_free()
print("RESULT " + json.dumps(out))
