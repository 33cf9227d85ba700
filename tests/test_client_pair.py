"""Connection-pair tests (like h11's ConnectionPair): the portable client core
talks, in memory and without sockets, to a small fake EST server written
here. The server side uses independent codecs (aiocoap's Message for CoAP,
hand parsing for HTTP) and real certificates issued by `cryptography`; the
results the client reports are checked with `cryptography`."""

import base64
import datetime
import hashlib
import random

import pytest
from aiocoap import ACK, CON, NON, RST, Code, Message
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from est_lite import client as C
from est_lite import numbers as N
from est_lite.errors import ServerError, TransportError
from est_lite_cpython import codec_server as W

DER = serialization.Encoding.DER
CSRATTRS = bytes.fromhex("302c06092a864886f70d0109073015" "06072a8648ce3d0201310a06082a8648ce3d03010706082a8648ce3d040302")


# ---------------------------------------------------------------- the fake CA


class BadRequest(Exception):
    pass


class FakeCA:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pair test CA")])
        self.cert = self._build(name, name, self.key.public_key(), True)
        self.serial = 1000
        self.pending = 0  # answer "retry later" this many times first

    def _build(self, subject, issuer, pub, ca):
        t = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - datetime.timedelta(minutes=5))
            .not_valid_after(t + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, csr_der):
        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError:
            raise BadRequest("the request body is not a PKCS#10 CSR")
        if not csr.is_signature_valid:
            raise BadRequest("CSR signature invalid")
        return self._build(csr.subject, self.cert.subject, csr.public_key(), False)

    def p7(self, certs):
        return pkcs7.serialize_certificates(certs, DER)

    def handle(self, op, body, want_pkix=False):
        """(kind, payload): kind is 'retry', 'empty' or a content format."""
        if op in (N.OP_SIMPLEENROLL, N.OP_SIMPLEREENROLL, N.OP_SERVERKEYGEN) and self.pending:
            self.pending -= 1
            return "retry", b""
        if op == N.OP_CACERTS:
            if want_pkix:
                return N.CF_PKIX_CERT, self.cert.public_bytes(DER)
            return N.CF_PKCS7_CERTS, self.p7([self.cert])
        if op == N.OP_CSRATTRS:
            return N.CF_CSRATTRS, CSRATTRS
        if op == N.OP_SERVERKEYGEN:
            key = ec.generate_private_key(ec.SECP256R1())
            csr = x509.load_der_x509_csr(body)
            cert = self._build(csr.subject, self.cert.subject, key.public_key(), False)
            p8 = key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            return "skg", (p8, cert)
        cert = self.issue(body)
        if want_pkix:
            return N.CF_PKIX_CERT, cert.public_bytes(DER)
        return N.CF_PKCS7_CERTS, self.p7([self.cert, cert])


# ---------------------------------------------------------------- CoAP server


def _msg(mtype, mid, token, code, payload=b""):
    m = Message(code=code, payload=payload)
    m.mtype, m.mid, m.token = mtype, mid, token
    return m


class CoapServer:
    """EST-coaps on aiocoap's codec: Block1 reassembly (answering 2.31 with
    at most `szx`), Block2 answers in blocks of at most `szx`, message
    deduplication, optional separate responses (empty ACK, then CON)."""

    def __init__(self, ca, szx=6, separate=False):
        self.ca = ca
        self.szx = szx
        self.separate = separate
        self.upload = bytearray()
        self.bodies = {}  # path -> (cf, body) of a block-wise answer
        self.seen = {}  # mid -> answer datagrams (deduplication)
        self.mid = 0x7000
        self.requests = []
        self.uploads = []
        self.unacked = {}  # our CON answers not ACKed yet: resent by retransmit()

    def retransmit(self):
        return list(self.unacked.values())

    def datagram(self, data):
        m = Message.decode(data)
        if m.mtype in (ACK, RST):
            self.unacked.pop(m.mid, None)
            return []
        if m.mid in self.seen:
            return self.seen[m.mid]
        self.requests.append(m)
        code, payload, opts = self._request(m)
        if self.separate:
            self.mid += 1
            r = _msg(CON, self.mid, m.token, code, payload)
            out = [_msg(ACK, m.mid, b"", Code.EMPTY).encode()]
        else:
            r = _msg(ACK, m.mid, m.token, code, payload)
            out = []
        for k, v in opts.items():
            setattr(r.opt, k, v)
        out.append(r.encode())
        self.seen[m.mid] = out
        if r.mtype == CON:
            self.unacked[r.mid] = out[-1]
        return out

    def _request(self, m):
        path = m.opt.uri_path
        op = N.op_from_name(path[-1])
        b2 = m.opt.block2
        if b2 is not None and b2.block_number > 0:
            cf, body = self.bodies[path]
            return self._block(cf, body, b2.block_number, b2.size_exponent)
        b1 = m.opt.block1
        if b1 is not None:
            assert b1.block_number * (16 << b1.size_exponent) == len(self.upload)
            if b1.block_number == 0:
                assert m.opt.size1 is not None
            self.upload.extend(m.payload)
            if b1.more:
                return Code.CONTINUE, b"", {"block1": (b1.block_number, True, min(b1.size_exponent, self.szx))}
            body = bytes(self.upload)
            self.upload = bytearray()
        else:
            body = m.payload
        if body:
            self.uploads.append(body)
        accept = m.opt.accept
        try:
            kind, payload = self.ca.handle(op, body, accept == N.CF_PKIX_CERT or path[-1] == "skc")
        except BadRequest as e:
            return Code.BAD_REQUEST, str(e).encode(), {"content_format": 0}
        if kind == "retry":
            return Code.SERVICE_UNAVAILABLE, b"", {"max_age": 5}
        if kind == "skg":
            p8, cert = payload
            if path[-1] == "skc":
                part = (N.CF_PKIX_CERT, cert.public_bytes(DER))
            else:
                part = (N.CF_PKCS7_CERTS, self.ca.p7([cert]))
            kind, payload = N.CF_MULTIPART_CORE, W.encode_multipart([(N.CF_PKCS8, p8), part])
        code = Code.CHANGED if m.code == Code.POST else Code.CONTENT
        want = min(self.szx, 6 if b2 is None else b2.size_exponent)
        if len(payload) > 16 << want:
            self.bodies[path] = (kind, payload)
            c, p, o = self._block(kind, payload, 0, want)
            o["size2"] = len(payload)
        else:
            p, o = payload, {"content_format": kind}
        if b1 is not None:
            o["block1"] = (b1.block_number, False, b1.size_exponent)
        return code, p, o

    def _block(self, cf, body, num, szx):
        size = 16 << szx
        piece = body[num * size : (num + 1) * size]
        more = (num + 1) * size < len(body)
        return Code.CONTENT, piece, {"content_format": cf, "block2": (num, more, szx)}


class CoapPair:
    """Moves datagrams between a CoapOperation and a CoapServer, advancing a
    fake clock to next_timeout(); `drop` holds 1-based datagram numbers lost
    client->server ("c3") or server->client ("s2")."""

    def __init__(self, server, drop=()):
        self.server = server
        self.drop = set(drop)
        self.nc = self.ns = 0
        self.now = 0.0
        self.sent = 0
        self.log = []  # (direction, aiocoap Message, lost)

    def run(self, op, max_steps=5000):
        for _ in range(max_steps):
            while True:
                d = op.send(self.now)
                if d is None:
                    break
                self.nc += 1
                self.sent += 1
                lost = "c%d" % self.nc in self.drop
                self.log.append(("c", Message.decode(bytes(d)), lost))
                if not lost:
                    self._deliver(op, self.server.datagram(bytes(d)))
            ev = op.next_event()
            if ev is not C.NEED_DATA:
                return ev
            t = op.next_timeout()
            assert t is not None
            if self.server.unacked and self.now + 2 <= t:
                # the server retransmits its unacknowledged separate responses
                self.now += 2
                self._deliver(op, self.server.retransmit())
            else:
                self.now = max(self.now, t)
        raise AssertionError("no result")

    def _deliver(self, op, datagrams):
        for a in datagrams:
            self.ns += 1
            lost = "s%d" % self.ns in self.drop
            self.log.append(("s", Message.decode(a), lost))
            if not lost:
                op.receive_data(a, self.now)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca():
    return FakeCA()


def make_csr(key, cn="device-42"):
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
        .public_bytes(DER)
    )


def point(key):
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def check_issued(ca, cert_der, chain, key=None, cn="device-42"):
    cert = x509.load_der_x509_certificate(cert_der)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    if key is not None:
        assert cert.public_key() == key.public_key()
    for c in chain:
        assert x509.load_der_x509_certificate(c) == ca.cert
    return cert


# ---------------------------------------------------------------- CoAP tests

SZXS = [(6, 6), (2, 2), (0, 1), (3, 0)]  # (client szx, server szx)


@pytest.mark.parametrize("szx,server_szx", SZXS)
def test_coap_all_operations(ca, szx, server_szx):
    srv = CoapServer(ca, szx=server_szx)
    mids = C.MidSource(random.randrange(65536))
    pair = CoapPair(srv)
    ev = pair.run(C.CoapOperation(N.OP_CACERTS, token=b"t1", mid=mids, szx=szx))
    assert [x509.load_der_x509_certificate(c) for c in ev.certs] == [ca.cert]
    ev = pair.run(C.CoapOperation(N.OP_CSRATTRS, token=b"t2", mid=mids, szx=szx))
    assert ev.der == CSRATTRS and ev.attrs.wants_challenge_password
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    for op in (N.OP_SIMPLEENROLL, N.OP_SIMPLEREENROLL):
        ev = pair.run(C.CoapOperation(op, body=csr, token=b"t3", mid=mids, szx=szx, public_key=point(key)))
        assert isinstance(ev, C.Enrolled) and srv.uploads[-1] == csr
        check_issued(ca, ev.cert, ev.chain, key)
        assert len(ev.chain) == 1
    for skc in (False, True):
        ev = pair.run(C.CoapOperation(N.OP_SERVERKEYGEN, body=csr, token=b"t4", mid=mids, szx=szx, skc=skc))
        assert isinstance(ev, C.ServerKeyGen) and ev.key_type == N.CF_PKCS8
        k = serialization.load_der_private_key(ev.key_der, None)
        check_issued(ca, ev.cert, ev.chain, k)
    # block-wise happened where it had to, and message ids never repeated
    block1 = [m for m in srv.requests if m.opt.block1 is not None]
    block2 = [m for m in srv.requests if m.opt.block2 is not None and m.opt.block2.block_number > 0]
    if min(szx, server_szx) < 4:
        assert block1 and block2
        assert all(m.opt.block1.size_exponent <= szx for m in block1)
    mid_list = [m.mid for m in srv.requests]
    assert len(set(mid_list)) == len(mid_list)


def test_coap_accept_pkix_cert(ca):
    pair = CoapPair(CoapServer(ca))
    mids = C.MidSource(0)
    ev = pair.run(C.CoapOperation(N.OP_CACERTS, accept=N.CF_PKIX_CERT, mid=mids))
    assert [x509.load_der_x509_certificate(c) for c in ev.certs] == [ca.cert]
    key = ec.generate_private_key(ec.SECP256R1())
    ev = pair.run(C.CoapOperation(N.OP_SIMPLEENROLL, body=make_csr(key), accept=N.CF_PKIX_CERT, mid=mids))
    check_issued(ca, ev.cert, ev.chain, key)
    assert ev.chain == []


def test_coap_separate_responses_and_losses(ca):
    srv = CoapServer(ca, szx=2, separate=True)
    # lose requests and answers (including an empty ACK and a separate
    # response) on the way: retransmission and deduplication recover
    pair = CoapPair(srv, drop=("c1", "c4", "s1", "s4", "s9", "c12"))
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=3, mid=C.MidSource(b"\x00\x10"), rand=0.5)
    ev = pair.run(op)
    check_issued(ca, ev.cert, ev.chain, key)
    assert op.retransmissions >= 2 and pair.now > 0
    assert srv.uploads == [csr]
    lost = [(d, m.mtype, m.code) for d, m, x in pair.log if x]
    assert ("s", ACK, Code.EMPTY) in lost  # an empty ACK lost
    assert [1 for d, t, c in lost if d == "s" and t == CON]  # a separate response lost
    assert [1 for d, t, c in lost if d == "c" and t == ACK]  # our ACK of one lost


def test_coap_retry_after_then_success(ca):
    srv = CoapServer(ca)
    ca.pending = 1
    pair = CoapPair(srv)
    mids = C.MidSource(1)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    ev = pair.run(C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, mid=mids))
    assert isinstance(ev, C.RetryAfter) and ev.seconds == 5
    when = C.retry_delay(ev.seconds, 0, pair.now, pair.now + 60, 0.5)
    assert when == pair.now + 5 + 5 * 0.25 * 0.5
    pair.now = when
    ev = pair.run(C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, mid=mids))
    check_issued(ca, ev.cert, ev.chain, key)


def test_coap_server_gone_gives_up(ca):
    pair = CoapPair(CoapServer(ca), drop=["c%d" % i for i in range(1, 10)])
    op = C.CoapOperation(N.OP_CACERTS, rand=0.0)
    with pytest.raises(TransportError):
        pair.run(op)
    assert pair.now == 62 and op.retransmissions == 4  # 2 * (2**5 - 1)


def test_bad_csr_gets_server_error_with_diagnostic(ca):
    pair = CoapPair(CoapServer(ca))
    with pytest.raises(ServerError) as e:
        pair.run(C.CoapOperation(N.OP_SIMPLEENROLL, body=b"\x30\x03\x02\x01\x00"))
    assert e.value.coap_code == N.BAD_REQUEST and e.value.diagnostic == "the request body is not a PKCS#10 CSR"
    with pytest.raises(ServerError) as e:
        http_run(HttpServer(ca), C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"\x30\x03\x02\x01\x00"))
    assert e.value.http_status == 400 and "not a PKCS#10" in e.value.diagnostic


# ---------------------------------------------------------------- HTTP server


class HttpServer:
    """EST over HTTP/1.1 from raw request bytes, hand-parsed; optional
    Digest (RFC 7616, SHA-256, checked with hashlib here) or Basic auth."""

    def __init__(self, ca, auth=None, user="estuser", password="estpwd", close=False):
        self.ca = ca
        self.auth = auth
        self.user, self.password = user, password
        self.close = close
        self.buf = b""
        self.nonce = "b2c1" * 8
        self.requests = []

    def receive(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode().split("\r\n")
        method, path, version = lines[0].split(" ")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        if len(rest) < n:
            return None
        self.buf = rest[n:]
        self.requests.append((method, path, hdrs))
        return self._answer(method, path, hdrs, rest[:n])

    def _resp(self, status, reason, headers=(), body=b""):
        h = ["HTTP/1.1 %d %s" % (status, reason), "Content-Length: %d" % len(body)]
        h += ["%s: %s" % kv for kv in headers]
        if self.close:
            h.append("Connection: close")
        return ("\r\n".join(h) + "\r\n\r\n").encode() + body

    def _authorized(self, method, path, hdrs):
        a = hdrs.get("authorization")
        if self.auth == "basic":
            want = "Basic " + base64.b64encode(("%s:%s" % (self.user, self.password)).encode()).decode()
            return a == want
        if a is None or not a.startswith("Digest "):
            return False
        p = {}
        for item in a[7:].split(","):
            k, _, v = item.strip().partition("=")
            p[k] = v.strip('"')

        def h(s):
            return hashlib.sha256(s.encode()).hexdigest()

        ha1 = h("%s:est:%s" % (p["username"], self.password))
        ha2 = h("%s:%s" % (method, p["uri"]))
        want = h(":".join((ha1, self.nonce, p["nc"], p["cnonce"], p["qop"], ha2)))
        return p["uri"] == path and p["username"] == self.user and p["response"] == want and p["nonce"] == self.nonce

    def _answer(self, method, path, hdrs, body):
        if self.auth and not self._authorized(method, path, hdrs):
            ch = 'Basic realm="est"' if self.auth == "basic" else 'Digest realm="est", qop="auth", algorithm=SHA-256, nonce="%s"' % self.nonce
            return self._resp(401, "Unauthorized", [("WWW-Authenticate", ch)], b"who are you?")
        op = N.op_from_name(path.rsplit("/", 1)[1])
        der = base64.b64decode(body) if body else b""
        if der:
            assert hdrs["content-type"] == N.MT_PKCS10
        try:
            kind, payload = self.ca.handle(op, der)
        except BadRequest as e:
            return self._resp(400, "Bad Request", [("Content-Type", "text/plain")], str(e).encode())
        if kind == "retry":
            return self._resp(202, "Accepted", [("Retry-After", "3")])
        b64 = base64.encodebytes  # 76-column lines with LF
        if kind == "skg":
            p8, cert = payload
            bd = "b0undary"
            mp = (
                "--%s\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n%s"
                "--%s\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n%s--%s--\r\n"
            ) % (bd, b64(p8).decode(), bd, b64(self.ca.p7([cert])).decode(), bd)
            return self._resp(200, "OK", [("Content-Type", "multipart/mixed; boundary=%s" % bd)], mp.encode())
        ct = {N.CF_PKCS7_CERTS: N.MT_PKCS7_CERTS, N.CF_CSRATTRS: N.MT_CSRATTRS}[kind]
        return self._resp(200, "OK", [("Content-Type", ct), ("Content-Transfer-Encoding", "base64")], b64(payload))


def http_run(server, op, chunk=7):
    """Drive an HttpOperation against an HttpServer; `chunk` bytes at a time."""
    connections = 1
    for _ in range(10):
        if op.need_new_connection:
            connections += 1
            server.buf = b""
        data = op.send()
        assert data is not None
        answer = server.receive(data)
        for i in range(0, len(answer), chunk):
            op.receive_data(answer[i : i + chunk])
            ev = op.next_event()
        if server.close:
            op.receive_data(b"")
            ev = op.next_event()
        if ev is not C.NEED_DATA:
            return ev, connections
    raise AssertionError("no result")


@pytest.mark.parametrize("auth", [None, "basic", "digest"])
def test_http_all_operations(ca, auth):
    srv = HttpServer(ca, auth=auth)
    creds = None if auth is None else ("estuser", "estpwd")

    def run(op, **kw):
        return http_run(srv, C.HttpOperation(op, host="est.test", auth=creds, cnonce=b"\x11" * 8, **kw))[0]

    ev = run(N.OP_CACERTS)
    assert [x509.load_der_x509_certificate(c) for c in ev.certs] == [ca.cert]
    ev = run(N.OP_CSRATTRS)
    assert ev.der == CSRATTRS
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key)
    for op in (N.OP_SIMPLEENROLL, N.OP_SIMPLEREENROLL):
        ev = run(op, body=csr, public_key=point(key))
        check_issued(ca, ev.cert, ev.chain, key)
    ev = run(N.OP_SERVERKEYGEN, body=csr)
    k = serialization.load_der_private_key(ev.key_der, None)
    check_issued(ca, ev.cert, ev.chain, k)
    if auth:
        # every operation needed exactly one 401 round trip
        assert sum(1 for r in srv.requests if "authorization" in r[2]) == 5
        assert len(srv.requests) == 10


def test_http_preemptive_basic_and_close(ca):
    srv = HttpServer(ca, auth="basic", close=True)
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("estuser", "estpwd"), preemptive_basic=True)
    ev, conns = http_run(srv, op)
    assert ev.certs and len(srv.requests) == 1 and conns == 1 and op.need_new_connection
    srv = HttpServer(ca, auth="basic", close=True)
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("estuser", "estpwd"))
    ev, conns = http_run(srv, op)
    assert ev.certs and len(srv.requests) == 2 and conns == 2


def test_http_wrong_password_and_retry_after(ca):
    srv = HttpServer(ca, auth="digest")
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("estuser", "nope"), cnonce="abcd")
    with pytest.raises(ServerError) as e:
        http_run(srv, op)
    assert e.value.http_status == 401
    ca.pending = 1
    key = ec.generate_private_key(ec.SECP256R1())
    ev, _ = http_run(HttpServer(ca), C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=make_csr(key)))
    assert isinstance(ev, C.RetryAfter) and ev.seconds == 3
    ev, _ = http_run(HttpServer(ca), C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=make_csr(key)))
    check_issued(ca, ev.cert, ev.chain, key)


def test_aiocoap_constants_match():
    assert (int(CON), int(NON), int(ACK), int(RST)) == (N.CON, N.NON, N.ACK, N.RST)


def test_private_constants_match_numbers():
    # client.py keeps const-folded private copies of est_lite.numbers values
    names = [k for k in vars(C) if k.startswith("_") and k[1:] in vars(N) and isinstance(getattr(C, k), int)]
    assert len(names) >= 20
    for k in names:
        assert getattr(C, k) == getattr(N, k[1:]), k


def test_client_http_private_constants_match_client():
    # client_http.py keeps const-folded copies of client's states and inputs
    from est_lite import client_http as H

    for n in ("AWAIT_RESPONSE", "DONE", "SEND", "FINAL", "RETRY", "AUTH"):
        assert getattr(H, "_" + n) == getattr(C, n), n


def test_http_operation_reexported():
    from est_lite.client_http import HttpOperation

    assert C.HttpOperation is HttpOperation
    with pytest.raises(AttributeError):
        C.NoSuchThing


def test_docs_table_matches_the_code():
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "docs" / "client.md").read_text()
    rows = [r for r in text.splitlines() if r.startswith("| ") and r.count("|") == 4 and "state" not in r]
    table = {}
    for r in rows:
        a, b, c = [x.strip() for x in r.strip("|").split("|")]
        if a in C.STATE_NAMES and b in C.INPUT_NAMES:
            table[(C.STATE_NAMES.index(a), C.INPUT_NAMES.index(b))] = C.STATE_NAMES.index(c)
    assert table == C.TRANSITIONS


def test_event_class_made_once_when_two_threads_race(monkeypatch):
    # an event class is made on first use; a thread that makes it between
    # another thread's lookup and store must not end up with a second class
    # of the same name (its events would fail isinstance against the first)
    monkeypatch.setattr(C, "_classes", {})
    made = []
    real_type = type

    def racing_type(*a):
        if len(a) == 3 and not made:
            made.append(None)
            made[0] = C._event_class(a[0])  # the other thread wins the race here
        return real_type(*a)

    monkeypatch.setattr(C, "type", racing_type, raising=False)
    cls = C._event_class("Enrolled")
    assert made and made[0] is cls is C.Enrolled
    assert isinstance(made[0](b"c", []), C.Enrolled)
