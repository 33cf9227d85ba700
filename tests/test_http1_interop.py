"""est_lite.http1 against independent HTTP implementations (CPython only):
- our requests, sent over a socket to a stdlib ThreadingHTTPServer that records
  what it parsed (method, path, headers, body);
- real responses from that server (Content-Length, chunked, Connection: close,
  keep-alive) parsed by our ResponseParser through a plain socket;
- our parser against http.client on hypothesis-generated responses;
- our Digest answers against urllib.request's Digest client; our multipart
  against the email package."""

import base64
import email
import email.policy
import http.client
import io
import socket
import threading
import urllib.request
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite import http1 as h
from est_lite import numbers as n
from est_lite_cpython import codec_server as W

DER = bytes(range(256)) * 3 + b"\x30\x82"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, self.headers, body))
        action = self.server.script.pop(0) if self.server.script else _cl(b"")
        action(self)

    do_GET = do_POST = do_HEAD = _any


def _cl(body, status=200, ctype="application/pkcs7-mime; smime-type=certs-only", extra=()):
    def act(rq):
        rq.send_response(status)
        rq.send_header("Content-Type", ctype)
        for k, v in extra:
            rq.send_header(k, v)
        rq.send_header("Content-Length", str(len(body)))
        rq.end_headers()
        if rq.command != "HEAD":
            rq.wfile.write(body)

    return act


def _chunked(pieces):
    def act(rq):
        rq.send_response(200)
        rq.send_header("Content-Type", "application/pkcs7-mime")
        rq.send_header("Transfer-Encoding", "chunked")
        rq.end_headers()
        for p in pieces:
            rq.wfile.write(b"%x;name=v\r\n%s\r\n" % (len(p), p))
        rq.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n")

    return act


def _close(body):
    def act(rq):
        rq.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs10\r\nConnection: close\r\n\r\n" + body)
        rq.wfile.flush()
        rq.close_connection = True

    return act


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []
    srv.script = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


class _Conn:
    def __init__(self, srv):
        self.sock = socket.create_connection(srv.server_address, timeout=10)
        self.host = "127.0.0.1:%d" % srv.server_address[1]
        self.parser = h.ResponseParser(max_body=65536)

    def exchange(self, request, method="GET"):
        self.sock.sendall(request)
        p = self.parser
        p.reset(method)
        while True:
            ev = p.next_event()
            if ev is not h.NEED_DATA:
                return ev
            p.receive_data(self.sock.recv(700))

    def close(self):
        self.sock.close()


def test_our_requests_parse_in_http_server(server):
    c = _Conn(server)
    try:
        for op in range(6):
            der = b"" if n.OP_METHODS[op] == n.GET else DER
            auth = h.basic_auth("user", "p\xe4ss:word")
            req = h.build_est_request(op, c.host, der, label="lbl" if op % 2 else None, authorization=auth)
            r = c.exchange(req)
            assert r.status == 200 and r.keep_alive
            method, path, headers, body = server.seen[-1]
            assert method == ("GET" if op < 2 else "POST")
            assert path == n.https_path(op, "lbl" if op % 2 else None)
            assert headers["Host"] == c.host and headers["Connection"] == "keep-alive"
            assert base64.b64decode(headers["Authorization"].split()[1]) == "user:p\xe4ss:word".encode()
            if der:
                assert headers["Content-Transfer-Encoding"] == "base64"
                assert headers["Content-Type"] == ("application/pkcs7-mime" if op == n.OP_FULLCMC else "application/pkcs10")
                assert int(headers["Content-Length"]) == len(body)
                assert base64.b64decode(body, validate=False) == der
                assert all(len(x) <= 64 for x in body.split(b"\r\n"))
            else:
                assert body == b"" and "Content-Length" not in headers
        assert len(server.seen) == 6  # one connection, six requests
    finally:
        c.close()


def test_real_responses_through_a_socket(server):
    enc = bytes(h.b64_encode_lines(DER))
    server.script[:] = [
        _cl(enc),
        _chunked([enc[:100], enc[100:101], enc[101:]]),
        _cl(b"", 202, "text/plain", [("Retry-After", "30")]),
        _cl(b"nope", 404, "text/plain"),
        _cl(enc),  # HEAD
        _close(enc),
    ]
    c = _Conn(server)
    try:
        r = c.exchange(h.build_request("GET", "/.well-known/est/cacerts", c.host))
        assert r.status == 200 and r.params == {"smime-type": "certs-only"} and h.decode_b64_body(r.body) == DER
        r = c.exchange(h.build_request("GET", "/chunked", c.host))
        assert r.header("transfer-encoding") == "chunked" and h.decode_b64_body(r.body) == DER and r.keep_alive
        r = c.exchange(h.build_request("POST", "/enroll", c.host, "application/pkcs10", b"QQ=="))
        assert r.status == 202 and r.retry_after == 30 and r.body == b""
        r = c.exchange(h.build_request("GET", "/missing", c.host))
        assert r.status == 404 and r.reason == "Not Found" and r.body == b"nope"
        r = c.exchange(h.build_request("HEAD", "/head", c.host), "HEAD")
        assert r.status == 200 and r.body == b"" and int(r.header("content-length")) == len(enc)
        c.sock.sendall(h.build_request("GET", "/close", c.host, keep_alive=False))
        c.parser.reset("GET")
        while True:
            ev = c.parser.next_event()
            if ev is not h.NEED_DATA:
                break
            c.parser.receive_data(c.sock.recv(512))  # b"" at EOF
        assert not ev.keep_alive and h.decode_b64_body(ev.body) == DER
        assert [s[1] for s in server.seen] == ["/.well-known/est/cacerts", "/chunked", "/enroll", "/missing", "/head", "/close"]
    finally:
        c.close()


# ---------------------------------------------------------------- against http.client


class _FakeSock:
    def __init__(self, data):
        self.data = data

    def makefile(self, *args, **kwargs):
        return io.BytesIO(self.data)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=12)
_vchar = "".join(chr(c) for c in range(0x21, 0x7F))
_value = st.text(alphabet=_vchar + " \t", max_size=30).map(lambda s: s.strip(" \t"))
_reason = st.text(alphabet=_vchar + " ", max_size=20).map(lambda s: " ".join(s.split()))


@st.composite
def responses(draw):
    status = draw(st.sampled_from([200, 201, 202, 204, 206, 301, 304, 400, 401, 404, 500, 503, 599]))
    reason = draw(_reason)
    headers = draw(
        st.lists(
            st.tuples(_token, _value).filter(
                lambda kv: kv[0].lower() not in ("content-length", "transfer-encoding", "connection")
            ),
            max_size=6,
        )
    )
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if status in (204, 304):
        body = b""  # http.client would still read a chunked body here
        framing = "length"
    if status == 202 and framing == "close":
        framing = "length"
    lines = ["HTTP/1.1 %d %s" % (status, reason)] + ["%s: %s" % kv for kv in headers]
    if framing == "length":
        lines.append("Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)]) if b > a]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        lines.append("Connection: close")
        payload = body
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if draw(st.booleans()):
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    return head + payload, framing == "close", body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.lists(st.integers(1, 50), max_size=20))
def test_parser_agrees_with_http_client(resp, steps):
    data, close, body = resp
    ref = http.client.HTTPResponse(_FakeSock(data), method="GET")
    ref.begin()
    ref_body = ref.read()
    p = h.ResponseParser()
    i = 0
    ev = h.NEED_DATA
    for k in steps + [len(data)]:
        p.receive_data(data[i : i + k])
        i += k
        ev = p.next_event()
        if ev is not h.NEED_DATA or i >= len(data):
            break
    if ev is h.NEED_DATA and close:
        p.receive_data(b"")
        ev = p.next_event()
    assert ev is not h.NEED_DATA
    assert ev.status == ref.status and ev.reason == ref.reason
    assert ev.headers == [(k.lower(), v) for k, v in ref.getheaders()]
    assert bytes(ev.body) == ref_body == body
    assert ev.keep_alive == (not ref.will_close)


# ---------------------------------------------------------------- Digest against urllib


class _FixedCnonce(urllib.request.HTTPDigestAuthHandler):
    def get_cnonce(self, nonce):
        return "0a4f113b"


@pytest.mark.parametrize("qop", ["auth", None])
def test_digest_md5_matches_urllib(qop):
    chal = {"realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093", "opaque": "5ccc069c403ebaf9f0171e9517f40e41"}
    if qop:
        chal["qop"] = "auth,auth-int"
    handler = _FixedCnonce()
    handler.add_password(chal["realm"], "http://www.example.com/", "Mufasa", "Circle Of Life")
    req = urllib.request.Request("http://www.example.com/dir/index.html")
    ref = h.parse_challenges("Digest " + handler.get_authorization(req, dict(chal)))[0][1]
    ours = h.parse_challenges(h.digest_auth(chal, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b"))[0][1]
    assert ours["response"] == ref["response"]
    if qop:
        # the RFC 2617 §3.5 example
        assert ours["response"] == "6629fae49393a05397450978507c4ef1"
        assert ours["nc"] == ref["nc"] == "00000001" and ours["qop"] == ref["qop"] == "auth"
    for k in ("username", "realm", "nonce", "uri", "opaque"):
        assert ours[k] == ref[k]


# ---------------------------------------------------------------- multipart against email


def test_our_multipart_parses_in_email():
    key, certs = bytes(range(100)), bytes(range(255, 0, -1))
    body = bytes(W.build_multipart([(n.MT_PKCS8, key), (n.MT_PKCS7_CERTS, certs)], "estBoundary"))
    msg = email.message_from_bytes(b"Content-Type: multipart/mixed; boundary=estBoundary\r\n\r\n" + body)
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert parts[1].get_param("smime-type") == "certs-only"
    assert [p.get_payload(decode=True) for p in parts] == [key, certs]
    assert msg.defects == [] and all(p.defects == [] for p in parts)


@pytest.mark.parametrize("policy", [email.policy.compat32, email.policy.HTTP])
def test_email_multipart_parses_in_ours(policy):
    key, certs = bytes(range(7, 250)), bytes(range(3, 200))
    m = MIMEMultipart("mixed", boundary="==est==")
    m.preamble = "preamble text"
    m.epilogue = "epilogue"
    m.attach(MIMEApplication(key, "pkcs8"))
    c = MIMEApplication(certs, "pkcs7-mime")
    c.set_param("smime-type", "certs-only")
    m.attach(c)
    raw = m.as_bytes(policy=policy)
    head, _, body = raw.partition(b"\r\n\r\n" if policy is email.policy.HTTP else b"\n\n")
    ctype, params = h.parse_media_type(m["Content-Type"])
    assert ctype == "multipart/mixed" and params["boundary"] == "==est=="
    assert h.split_serverkeygen(body, params["boundary"]) == (key, n.MT_PKCS8, certs)
