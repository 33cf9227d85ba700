# Portable tests for est_lite/http1.py (CPython via pytest, MicroPython via run.py).
# micropython-heapsize: 136K
import binascii
import hashlib

from _util import raises

from est_lite import http1 as h
from est_lite import numbers as n
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W

KEY = bytes(range(200))
CERTS = bytes(range(255, 40, -1))


def parse(data, step=0):
    p = h.ResponseParser()
    for i in range(0, len(data), step or len(data)):
        p.receive_data(data[i : i + (step or len(data))])
        ev = p.next_event()
    return ev


# ---------------------------------------------------------------- requests


def test_cacerts_request_bytes():
    r = h.build_est_request(n.OP_CACERTS, "est.example.com:8443")
    assert r == (
        b"GET /.well-known/est/cacerts HTTP/1.1\r\n"
        b"Host: est.example.com:8443\r\n"
        b"User-Agent: est-lite\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )


def test_csrattrs_with_label_and_accept():
    r = h.build_est_request(n.OP_CSRATTRS, "h", label="arbitraryLabel1", accept="application/csrattrs", user_agent=None)
    assert r.startswith(b"GET /.well-known/est/arbitraryLabel1/csrattrs HTTP/1.1\r\nHost: h\r\n")
    assert b"\r\nAccept: application/csrattrs\r\n" in r
    assert b"User-Agent" not in r and b"Content-Length" not in r


def test_post_requests_for_each_operation():
    der = bytes(range(256)) * 2
    for op, name, ct in (
        (n.OP_SIMPLEENROLL, "simpleenroll", "application/pkcs10"),
        (n.OP_SIMPLEREENROLL, "simplereenroll", "application/pkcs10"),
        (n.OP_SERVERKEYGEN, "serverkeygen", "application/pkcs10"),
        (n.OP_FULLCMC, "fullcmc", "application/pkcs7-mime"),
    ):
        r = h.build_est_request(op, "h", der, label="l1", keep_alive=False)
        head, _, body = r.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == ("POST /.well-known/est/l1/%s HTTP/1.1" % name).encode()
        assert ("Content-Type: %s" % ct).encode() in lines
        assert b"Content-Transfer-Encoding: base64" in lines
        assert ("Content-Length: %d" % len(body)).encode() in lines
        assert b"Connection: close" in lines
        assert h.decode_b64_body(body) == der
        for line in body.split(b"\r\n")[:-2]:
            assert len(line) == 64
        assert body.endswith(b"\r\n")


def test_post_without_body_has_content_length_zero_and_no_cte():
    r = h.build_request("POST", "/x", "h", "application/pkcs10")
    assert b"Content-Length: 0\r\n" in r and b"Content-Transfer-Encoding" not in r
    r = h.build_request("POST", "/x", "h", "application/pkcs10", b"QQ==", transfer_encoding=None)
    assert b"Content-Transfer-Encoding" not in r and r.endswith(b"\r\n\r\nQQ==")


def test_basic_authorization_in_request():
    # RFC 7617 §2 example
    v = h.basic_auth("Aladdin", "open sesame")
    assert v == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    r = h.build_est_request(n.OP_SIMPLEENROLL, "h", b"\x30\x00", authorization=v)
    assert b"\r\nAuthorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n" in r
    assert h.basic_auth("t\xe9st", "p\xe4ss") == "Basic " + str(
        binascii.b2a_base64("t\xe9st:p\xe4ss".encode(), newline=False), "ascii"
    )
    raises(LocalProtocolError, h.basic_auth, "a:b", "c")


def test_extra_headers_and_injection_rejected():
    r = h.build_request("GET", "/p", "h", headers=[("X-Trace", "1")])
    assert b"\r\nX-Trace: 1\r\n" in r
    for kw in (
        {"headers": [("X-A", "1\r\nEvil: 1")]},
        {"headers": [("X-A", "1\nEvil: 1")]},
        {"headers": [("Bad Name", "1")]},
        {"headers": [("X:Y", "1")]},
        {"authorization": "Basic x\r\n"},
        {"user_agent": "ua\x00"},
        {"accept": "a\rb"},
    ):
        e = raises(LocalProtocolError, h.build_request, "GET", "/p", "h", **kw)
        assert "forbidden" in str(e) or "bad header name" in str(e)
    raises(LocalProtocolError, h.build_request, "GET", "/p q", "h")
    raises(LocalProtocolError, h.build_request, "GET", "p", "h")
    raises(LocalProtocolError, h.build_request, "GET", "/p\r\n", "h")
    raises(LocalProtocolError, h.build_request, "G ET", "/p", "h")
    raises(LocalProtocolError, h.build_request, "GET", "/p", "h\r\nX: y")
    raises(LocalProtocolError, h.build_request, "GET", "/p", "")
    raises(LocalProtocolError, h.build_est_request, n.OP_CACERTS, "h", label="simpleenroll")


def test_b64_encode_lines():
    assert h.b64_encode_lines(b"") == b""
    assert h.b64_encode_lines(b"A") == b"QQ==\r\n"
    enc = h.b64_encode_lines(bytes(100), width=16, eol=b"\n")
    lines = enc.split(b"\n")
    assert lines[-1] == b"" and all(len(x) == 16 for x in lines[:-2]) and len(lines) == 10
    assert h.decode_b64_body(enc) == bytes(100)


# ---------------------------------------------------------------- digest

RFC7616_CHALLENGES = [
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
]
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _params(v):
    assert v.startswith("Digest ")
    return dict(h.parse_challenges(v)[0][1])


def test_digest_rfc7616_sha256_and_md5():
    # RFC 7616 §3.9.1 (password "Circle of Life", erratum 4495)
    ch = h.parse_challenges(RFC7616_CHALLENGES)
    assert [s for s, _ in ch] == ["digest", "digest"]
    assert ch[0][1]["qop"] == "auth, auth-int" and ch[0][1]["algorithm"] == "SHA-256"
    best = h.pick_digest(ch)
    assert best["algorithm"] == "SHA-256"
    v = h.digest_auth(best, "GET", "/dir/index.html", "Mufasa", "Circle of Life", CNONCE)
    p = _params(v)
    assert p["response"] == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert p["username"] == "Mufasa" and p["realm"] == "http-auth@example.org"
    assert p["uri"] == "/dir/index.html" and p["qop"] == "auth" and p["nc"] == "00000001"
    assert p["cnonce"] == CNONCE and p["algorithm"] == "SHA-256"
    assert p["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert p["nonce"] == "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    v = h.digest_auth(ch[1][1], "GET", "/dir/index.html", "Mufasa", "Circle of Life", CNONCE)
    assert _params(v)["response"] == "8ca523f5e9506fed4657c9700eebdbec"
    # the capital-O password of RFC 2617 gives another answer
    v = h.digest_auth(ch[1][1], "GET", "/dir/index.html", "Mufasa", "Circle Of Life", CNONCE)
    assert _params(v)["response"] != "8ca523f5e9506fed4657c9700eebdbec"


def _hx(fn, s):
    return str(binascii.hexlify(fn(s.encode()).digest()), "ascii")


def test_digest_sess_legacy_and_bytes_cnonce():
    md5 = hashlib.md5
    ch = {"realm": "r", "nonce": "n", "algorithm": "MD5-sess", "qop": "auth-int,auth"}
    v = _params(h.digest_auth(ch, "POST", "/u", "us", "pw", b"\x01\xff", nc=2))
    assert v["cnonce"] == "01ff" and v["nc"] == "00000002" and v["algorithm"] == "MD5-sess" and v["qop"] == "auth"
    ha1 = _hx(md5, "%s:n:01ff" % _hx(md5, "us:r:pw"))
    assert v["response"] == _hx(md5, "%s:n:00000002:01ff:auth:%s" % (ha1, _hx(md5, "POST:/u")))
    sha = hashlib.sha256
    ch = {"realm": "r", "nonce": "n", "algorithm": "sha-256-sess", "qop": "auth"}
    v = _params(h.digest_auth(ch, "GET", "/u", "us", "pw", "c", nc=255))
    ha1 = _hx(sha, "%s:n:c" % _hx(sha, "us:r:pw"))
    assert v["nc"] == "000000ff"
    assert v["response"] == _hx(sha, "%s:n:000000ff:c:auth:%s" % (ha1, _hx(sha, "GET:/u")))
    # RFC 2069 style: no qop
    v = _params(h.digest_auth({"realm": "r", "nonce": "n"}, "GET", "/u", "us", "pw", "c"))
    assert "qop" not in v and "nc" not in v and "algorithm" not in v
    assert v["response"] == _hx(md5, "%s:n:%s" % (_hx(md5, "us:r:pw"), _hx(md5, "GET:/u")))
    # quotes in the user name are escaped
    v = h.digest_auth({"realm": "r", "nonce": "n"}, "GET", "/u", 'a"b', "pw", "c")
    assert 'username="a\\"b"' in v and _params(v)["username"] == 'a"b'


def test_digest_unsupported():
    e = raises(LocalProtocolError, h.digest_auth, {"nonce": "n", "algorithm": "SHA-512-256"}, "GET", "/", "u", "p", "c")
    assert "SHA-512-256" in str(e)
    raises(RemoteProtocolError, h.digest_auth, {"nonce": "n", "qop": "auth-int"}, "GET", "/", "u", "p", "c")
    assert h.pick_digest(h.parse_challenges('Basic realm="x", Digest nonce="1", algorithm=SHA-512-256')) is None
    assert h.pick_digest([]) is None


def test_parse_challenges_several():
    ch = h.parse_challenges(
        [
            'Basic realm="est, \\"quoted\\"", charset="UTF-8", Digest realm="r", nonce="a,b", stale=TRUE, algorithm=MD5',
            "Newauth realm=apps, type=1, title=\"Login to \\\"apps\\\"\", Negotiate, Digest nonce=x, algorithm=SHA-256",
        ]
    )
    assert [s for s, _ in ch] == ["basic", "digest", "newauth", "negotiate", "digest"]
    assert ch[0][1] == {"realm": 'est, "quoted"', "charset": "UTF-8"}
    assert ch[1][1]["nonce"] == "a,b" and ch[1][1]["stale"].lower() == "true"
    assert ch[2][1] == {"realm": "apps", "type": "1", "title": 'Login to "apps"'}
    assert ch[3][1] == {}
    assert h.pick_digest(ch)["nonce"] == "x"
    # lenient: junk never raises
    for junk in ("", ",,,", "=", '"', 'Digest realm="unterminated', "Basic ===, @@@ x=", "\x00\xff"):
        h.parse_challenges(junk)


# ---------------------------------------------------------------- base64

DER = bytes(range(256)) * 3


def test_decode_b64_tolerance():
    enc = binascii.b2a_base64(DER, newline=False)
    assert h.decode_b64_body(enc) == DER
    assert h.decode_b64_body(h.b64_encode_lines(DER)) == DER
    assert h.decode_b64_body(h.b64_encode_lines(DER, eol=b"\n")) == DER
    spaced = b" \t\r\n".join(enc[i : i + 7] for i in range(0, len(enc), 7))
    assert h.decode_b64_body(b"\r\n  " + spaced + b" \r\n\x00") == DER
    assert h.decode_b64_body(bytearray(enc + b"\x00\x00")) == DER
    assert h.decode_b64_body(memoryview(enc)) == DER
    assert h.decode_b64_body(b"") == b"" and h.decode_b64_body(b" \r\n\x00") == b""
    assert h.decode_b64_body(b"QQ==") == b"A" and h.decode_b64_body(b"QUI=") == b"AB"
    # large body: whitespace on every window boundary
    big = bytes(range(256)) * 4
    assert h.decode_b64_body(h.b64_encode_lines(big, width=4, eol=b" ")) == big
    assert h.decode_b64_body(h.b64_encode_lines(big, width=76)) == big


def test_decode_b64_rejections():
    for bad in (
        b"QUJD*",
        b"QU*JD",
        b"QUJD-_==",
        b"QQ==QUJD",
        b"QQ== QUJD",
        b"QQ=A",
        b"Q===",
        b"====",
        b"QUJDQ",
        b"QUJ",
        b"QU\x0bJD",
        b"QU\x0cJD",
        b"\x00QUJD",
        b"QU\x00JD",
        b"QUJD\xff",
    ):
        e = raises(RemoteProtocolError, h.decode_b64_body, bad)
        assert "base64" in str(e)
    enc = binascii.b2a_base64(DER)
    e = raises(RemoteProtocolError, h.decode_b64_body, enc[:1500] + b"!" + enc[1500:])
    e = raises(LimitError, h.decode_b64_body, enc, max_out=700)
    assert "max_out" in str(e)
    assert len(h.decode_b64_body(enc, max_out=768)) == 768


# ---------------------------------------------------------------- multipart


def _a4_response(eol=b"\r\n"):
    # shaped like RFC 7030 Appendix A.4 (serverkeygen), with our own DER
    body = (
        b"--est\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + h.b64_encode_lines(KEY)
        + b"--est\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + h.b64_encode_lines(CERTS)
        + b"--est--\r\n"
    ).replace(b"\r\n", eol)
    head = "HTTP/1.1 200 OK\r\nStatus: 200 OK\r\nContent-Type: multipart/mixed ; boundary=est\r\nContent-Length: %d\r\n\r\n"
    return (head % len(body)).encode() + body


def test_serverkeygen_a4_example():
    for eol in (b"\r\n", b"\n"):
        r = parse(_a4_response(eol))
        assert parse(_a4_response(eol), 1).body == r.body
        assert r.content_type == "multipart/mixed" and r.params["boundary"] == "est"
        parts = h.parse_multipart(r.body, r.params["boundary"])
        assert [p.content_type for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
        assert parts[1].params == {"smime-type": "certs-only"}
        assert parts[0].header("content-transfer-encoding") == "base64"
        key, kt, certs = h.split_serverkeygen(r.body, r.params["boundary"])
        assert key == KEY and kt == n.MT_PKCS8 and certs == CERTS


def test_multipart_preamble_epilogue_order_and_encrypted_key():
    body = (
        b"This is the preamble.\r\n--b0undary \t\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n\r\n"
        + binascii.b2a_base64(CERTS)
        + b"\r\n--b0undary\r\nContent-Type: application/pkcs7-mime; smime-type=server-generated-key\r\n\r\n"
        + binascii.b2a_base64(KEY)
        + b"--b0undary--\r\nepilogue --b0undary\r\n"
    )
    key, kt, certs = h.split_serverkeygen(body, "b0undary")
    assert key == KEY and certs == CERTS and kt == n.MT_PKCS7_SERVER_KEYGEN
    # first boundary at the very start, empty part bodies
    parts = h.parse_multipart(b"--x\r\n\r\n\r\n--x\r\nA: 1\r\n\r\n\r\n--x--", "x")
    assert [bytes(p.body) for p in parts] == [b"", b""] and parts[1].header("a") == "1"


def test_multipart_rejections():
    good = _a4_response().split(b"\r\n\r\n", 1)[1]
    for body, boundary in (
        (good, "other"),
        (good.replace(b"--est--", b"--est"), "est"),
        (good[: good.rindex(b"--est--")], "est"),
        (b"--est junk\r\n\r\nx\r\n--est--", "est"),
        (b"--est\r\nContent-Type: a\r\n--est--", "est"),
        (b"--est\r\nNo Colon\r\n\r\nx\r\n--est--", "est"),
        (good, ""),
        (good, "x" * 71),
    ):
        raises(RemoteProtocolError, h.parse_multipart, body, boundary)
    raises(LimitError, h.parse_multipart, b"--x\r\n\r\n\r\n" * 9 + b"--x--", "x")
    one = b"--est\r\nContent-Type: application/pkcs8\r\n\r\nQUJD\r\n--est--"
    e = raises(RemoteProtocolError, h.split_serverkeygen, one, "est")
    assert "certs-only" in str(e)


def test_build_multipart_roundtrip():
    body = W.build_multipart([(n.MT_PKCS8, KEY), (n.MT_PKCS7_CERTS, CERTS)], "estServerKeyGenBoundary")
    assert body.startswith(b"--estServerKeyGenBoundary\r\nContent-Type: application/pkcs8\r\n")
    assert body.endswith(b"\r\n--estServerKeyGenBoundary--\r\n")
    assert h.split_serverkeygen(body, "estServerKeyGenBoundary") == (KEY, n.MT_PKCS8, CERTS)
    raises(LocalProtocolError, W.build_multipart, [("a\r\nb", b"")], "x")


def test_parse_media_type():
    assert h.parse_media_type('Multipart/Mixed ; Boundary="Est B"; x; =y; q=') == ("multipart/mixed", {"boundary": "Est B", "q": ""})
    assert h.parse_media_type(None) == ("", {})
    assert h.parse_media_type("application/pkcs7-mime;smime-type=certs-only") == (
        "application/pkcs7-mime",
        {"smime-type": "certs-only"},
    )
