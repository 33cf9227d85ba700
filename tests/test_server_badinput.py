"""Bad-input corpus and tolerant parsing of the reference EST server.

Each bad request gets the right 4xx with a readable text/plain reason,
nothing is issued, and the server keeps serving."""

import base64
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers_server import PASSWORD, USER, Response, make_csr

from est_lite.errors import EstError
from est_lite_cpython.service import AuthContext

AUTH = (USER, PASSWORD)


def _bad_sig_csr():
    key, der = make_csr("badsig")
    b = bytearray(der)
    b[-5] ^= 0x55  # inside the ECDSA signature
    return bytes(b)


def _other_key_csr():
    # signed by another key than the one it carries
    k1 = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mixed")])).sign(k1, hashes.SHA256())
    k2 = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import serialization

    der = csr.public_bytes(serialization.Encoding.DER)
    pub1 = k1.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub2 = k2.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der.replace(pub1, pub2)


_CSR = make_csr("trunc")[1]

# (name, label, raw body bytes, auth, expected status, reason fragment)
CORPUS = [
    ("malformed base64", None, b"!!!not base64 at all###\r\n", AUTH, 400, "not valid base64"),
    ("base64 of text", None, base64.encodebytes(b"hello world"), AUTH, 400, "not DER"),
    ("truncated DER", None, base64.encodebytes(_CSR[: len(_CSR) // 2]), AUTH, 400, "truncated"),
    ("DER, not a CSR", None, base64.encodebytes(bytes.fromhex("3003020101")), AUTH, 400, "not a valid PKCS#10"),
    ("bad signature", None, base64.encodebytes(_bad_sig_csr()), AUTH, 400, "signature"),
    ("signed by other key", None, base64.encodebytes(_other_key_csr()), AUTH, 400, "signature does not verify"),
    ("P-521 key", None, base64.encodebytes(make_csr("k", ec.generate_private_key(ec.SECP521R1()))[1]), AUTH, 400,
     "key type ec:P-521 is not allowed"),
    ("Ed25519 key", None, base64.encodebytes(make_csr("k", ed25519.Ed25519PrivateKey.generate())[1]), AUTH, 400,
     "key type ed25519 is not allowed"),
    ("RSA 1024", None, base64.encodebytes(make_csr("k", rsa.generate_private_key(65537, 1024))[1]), AUTH, 400,
     "key type rsa:1024 is not allowed"),
    ("P-384 on P-256-only label", "strict",
     base64.encodebytes(make_csr("k", ec.generate_private_key(ec.SECP384R1()), org="A", sans=["k.example.com"])[1]),
     AUTH, 400, "key type ec:P-384"),
    ("no CN", None, base64.encodebytes(make_csr(None, org="ACME")[1]), AUTH, 400, "lacks required field(s) CN"),
    ("no O on strict", "strict", base64.encodebytes(make_csr("k", sans=["k.example.com"])[1]), AUTH, 400,
     "lacks required field(s) O"),
    ("SAN missing", "strict", base64.encodebytes(make_csr("k", org="A")[1]), AUTH, 400, "subjectAltName is required"),
    ("SAN outside domain", "strict", base64.encodebytes(make_csr("k", org="A", sans=["evil.org"])[1]), AUTH, 400,
     "outside the allowed domains"),
    ("IP SAN not allowed", "strict",
     base64.encodebytes(make_csr("k", org="A", sans=[x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1"))])[1]),
     AUTH, 400, "type ip is not allowed"),
    ("empty body", None, b"", AUTH, 400, "empty"),
    ("unknown label", "nolabel", base64.encodebytes(_CSR), AUTH, 404, "unknown EST label"),
    ("wrong password", None, base64.encodebytes(_CSR), (USER, "wrong"), 401, "wrong user name or password"),
    ("unknown user", None, base64.encodebytes(_CSR), ("mallory", PASSWORD), 401, "wrong user name or password"),
    ("no credentials", None, base64.encodebytes(_CSR), None, 401, "authentication required"),
    ("Basic on cert-only label", "certonly", base64.encodebytes(_CSR), AUTH, 403, "basic authentication is not accepted"),
    ("wrong password on cert-only label", "certonly", base64.encodebytes(_CSR), (USER, "x"), 403, "wrong"),
]


def _still_serving(srv):
    r = srv.request("GET", srv.path("cacerts"))
    assert r.status == 200 and r.certs() == [srv.ca.root]


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_corpus(est_server, case):
    name, label, raw, auth, status, reason = case
    srv = est_server
    n = srv.ca.store.count_certificates()
    r = srv.request("POST", srv.path("simpleenroll", label), raw_body=raw, auth=auth)
    assert r.status == status, (name, r.status, r.text)
    assert r.header("content-type").startswith("text/plain")
    assert reason in r.text, (name, r.text)
    assert r.header("content-length") == str(len(r.body))
    assert srv.ca.store.count_certificates() == n
    _still_serving(srv)


def _raw(srv, data, *, read=True):
    ctx = srv.tls_client_context()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(data)
            return Response.read(t) if read else None


def _post(path, body, extra=b"", auth=AUTH, cl=True):
    h = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if auth:
        h += b"Authorization: Basic " + base64.b64encode(("%s:%s" % auth).encode()) + b"\r\n"
    if cl:
        h += b"Content-Length: %d\r\n" % len(body)
    return h + extra + b"\r\n" + body


BAD_HTTP = [
    ("garbage request line", b"HELLO\r\n\r\n", 400, "malformed request line"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "not supported"),
    ("missing Content-Length", _post("/.well-known/est/simpleenroll", b"", cl=False), 411, "Content-Length"),
    ("oversized body", _post("/.well-known/est/simpleenroll", b"A" * 70000), 413, "exceeds the limit"),
    ("huge header", b"GET /.well-known/est/cacerts HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, "exceeds"),
    ("bad Content-Length", b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400,
     "malformed Content-Length"),
    ("malformed Basic", _post("/.well-known/est/simpleenroll", b"MAA=", auth=None,
                              extra=b"Authorization: Basic %%%\r\n"), 401, "malformed HTTP Basic"),
    ("forged Digest nonce", _post("/.well-known/est/simpleenroll", b"MAA=", auth=None,
                                  extra=b'Authorization: Digest username="alice", realm="est-lite", nonce="AAAA", '
                                        b'uri="/.well-known/est/simpleenroll", response="00", qop=auth, nc=1, cnonce="x"\r\n'),
     401, "nonce was not issued"),
    ("unknown auth scheme", _post("/.well-known/est/simpleenroll", b"MAA=", auth=None,
                                  extra=b"Authorization: Bearer abc\r\n"), 401, "not supported"),
    ("wrong method", b"GET /.well-known/est/serverkeygen HTTP/1.1\r\nHost: x\r\n\r\n", 405, "needs POST"),
    ("not EST", b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no EST resource"),
    ("unsupported TE", b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "Transfer-Encoding"),
    ("truncated body", _post("/.well-known/est/simpleenroll", b"MIIB")[:-2], 408, "timed out"),
]


@pytest.mark.parametrize("name,data,status,reason", BAD_HTTP, ids=[c[0] for c in BAD_HTTP])
def test_bad_http(est_server, name, data, status, reason):
    srv = est_server
    n = srv.ca.store.count_certificates()
    srv.server.io_timeout_s = 0.5  # the truncated body waits for this
    r = _raw(srv, data)
    assert r.status == status, (name, r.status, r.text)
    assert reason in r.text, r.text
    assert r.header("content-type").startswith("text/plain")
    assert srv.ca.store.count_certificates() == n
    _still_serving(srv)


def test_not_tls_and_silent_clients_do_not_stop_the_server(est_server):
    srv = est_server
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port
        try:
            s.recv(100)
        except ConnectionResetError:
            pass
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
    _still_serving(srv)
    for s in idle:
        s.close()


# ------------------------------------------------------------------ tolerant parsing


def _ok(srv, body, extra=b"", path="/.well-known/est/simpleenroll"):
    n = srv.ca.store.count_certificates()
    r = _raw(srv, _post(path, body, extra))
    assert r.status == 200, r.text
    assert srv.ca.store.count_certificates() == n + 1
    return r


@pytest.mark.parametrize("name", ["one line", "64 columns CRLF", "76 columns LF", "spaces and tabs", "no padding",
                                  "trailing NUL", "CTE 7bit", "CTE binary raw DER", "raw DER no CTE",
                                  "trailing DER bytes", "CTE base64 uppercase"])
def test_tolerant_body_forms(est_server, name):
    srv = est_server
    der = make_csr("tol")[1]
    b = base64.b64encode(der)
    extra = b""
    if name == "one line":
        body = b
    elif name == "64 columns CRLF":
        body = b"\r\n".join(b[i:i + 64] for i in range(0, len(b), 64)) + b"\r\n"
    elif name == "76 columns LF":
        body = base64.encodebytes(der)
    elif name == "spaces and tabs":
        body = b" \t".join(b[i:i + 10] for i in range(0, len(b), 10))
    elif name == "no padding":
        body = b.rstrip(b"=")
        if body == b:  # force a length that needs padding
            der = make_csr("tol-x")[1]
            body = base64.b64encode(der).rstrip(b"=")
    elif name == "trailing NUL":
        body = b + b"\x00"
    elif name == "CTE 7bit":
        body, extra = b, b"Content-Transfer-Encoding: 7bit\r\n"
    elif name == "CTE binary raw DER":
        body, extra = der, b"Content-Transfer-Encoding: binary\r\n"
    elif name == "raw DER no CTE":
        body = der
    elif name == "trailing DER bytes":
        body = base64.b64encode(der + b"\x00\x00junk")
    else:
        body, extra = b, b"Content-Transfer-Encoding: BASE64\r\n"
    _ok(srv, body, extra)


def test_trailing_bytes_after_body_are_ignored(est_server):
    srv = est_server
    body = base64.b64encode(make_csr("trail")[1])
    r = _raw(srv, _post("/.well-known/est/simpleenroll", body) + b"\r\n\x00garbage-after-body")
    assert r.status == 200, r.text
    _still_serving(srv)


def test_chunked_request_body(est_server):
    srv = est_server
    body = base64.encodebytes(make_csr("chunky")[1])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    r = _raw(srv, _post("/.well-known/est/simpleenroll", chunks + b"0\r\n\r\n", cl=False,
                        extra=b"Transfer-Encoding: chunked\r\n"))
    assert r.status == 200, r.text


# ------------------------------------------------------------------ fuzz at the service level

_SEED = make_csr("fuzz")[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, len(_SEED) - 1), st.integers(1, 255)).map(
        lambda t: _SEED[:t[0]] + bytes([_SEED[t[0]] ^ t[1]]) + _SEED[t[0] + 1:]),
    st.integers(0, len(_SEED)).map(lambda n: _SEED[:n]),
))
def test_service_raises_only_est_errors(est_server, body):
    svc = est_server.service
    ctx = AuthContext("https", http_user=USER, http_scheme="basic")
    for op in (svc.simpleenroll, svc.serverkeygen):
        try:
            op(None, body, ctx)
        except EstError as e:
            assert 400 <= e.http_status < 500, e
            assert str(e)
