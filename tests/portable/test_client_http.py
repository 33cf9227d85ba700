# micropython-heapsize: 176K
# Portable tests of est_lite/client.py: HttpOperation (EST over HTTP/1.1).
from _util import raises

import client_vectors as V
from est_lite import client as C
from est_lite import http1
from est_lite import numbers as N
from est_lite.errors import LocalProtocolError, RemoteProtocolError, ServerError
from est_lite_cpython import codec_server as W


def response(status, reason, headers=(), body=b""):
    h = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
    for k, v in headers:
        h.append("%s: %s\r\n" % (k, v))
    if body is not None:
        h.append("Content-Length: %d\r\n" % len(body))
    h.append("\r\n")
    return "".join(h).encode() + (body or b"")


def b64(der):
    return http1.b64_encode_lines(der)


def parse_request(data):
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return lines[0], hdrs, body


def test_requests():
    op = C.HttpOperation(N.OP_CACERTS, host="est.example:8443")
    line, h, body = parse_request(op.send())
    assert line == "GET /.well-known/est/cacerts HTTP/1.1" and h["host"] == "est.example:8443" and body == b""
    assert op.send() is None and op.state == C.AWAIT_RESPONSE and op.next_event() is C.NEED_DATA
    op = C.HttpOperation(N.OP_SIMPLEENROLL, "lab", host="h", body=V.LEAF, auth=("u", "p"), preemptive_basic=True)
    line, h, body = parse_request(op.send())
    assert line == "POST /.well-known/est/lab/simpleenroll HTTP/1.1"
    assert h["content-type"] == N.MT_PKCS10 and h["authorization"].startswith("Basic ")
    assert http1.decode_b64_body(body) == V.LEAF and int(h["content-length"]) == len(body)
    assert parse_request(C.HttpOperation(N.OP_SERVERKEYGEN, host="h", body=b"x").send())[0].split()[1].endswith(
        "/serverkeygen"
    )
    raises(LocalProtocolError, C.HttpOperation, N.OP_CSRATTRS, host="h", body=b"x")
    raises(LocalProtocolError, C.HttpOperation, N.OP_CACERTS, "csrattrs", host="h")


def test_cacerts_200_in_one_piece_and_byte_by_byte():
    data = response(200, "OK", [("Content-Type", N.MT_PKCS7_CERTS), ("Content-Transfer-Encoding", "base64")], b64(V.P7_CA))
    for step in (len(data), 1):
        op = C.HttpOperation(N.OP_CACERTS, host="h")
        op.send()
        for i in range(0, len(data), step):
            assert op.next_event() is C.NEED_DATA
            op.receive_data(data[i : i + step])
        ev = op.next_event()
        assert isinstance(ev, C.CaCerts) and ev.certs == [V.CA] and op.state == C.DONE
        assert op.next_event() is ev and op.send() is None and not op.need_new_connection


def test_enroll_200_leaf_and_chain():
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr", public_key=V.LEAF_PUB)
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", "application/pkcs7-mime")], b64(V.P7_LEAF_CA)))
    ev = op.next_event()
    assert isinstance(ev, C.Enrolled) and ev.cert == V.LEAF and ev.chain == [V.CA]


def test_202_and_503_retry_after():
    for status, hdrs, want in (
        (202, [("Retry-After", "30")], 30),
        (202, [], 60),
        (503, [("Retry-After", "7")], 7),
    ):
        op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
        op.send()
        op.receive_data(response(status, "Later", hdrs, b""))
        ev = op.next_event()
        assert isinstance(ev, C.RetryAfter) and ev.seconds == want and op.state == C.RETRY_AFTER
    # a 202 with Retry-After and neither body nor Content-Length, then EOF
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
    op.send()
    op.receive_data(response(202, "Accepted", [("Retry-After", "5"), ("Connection", "close")], None))
    op.receive_data(b"")
    assert op.next_event().seconds == 5 and op.need_new_connection


def test_401_without_credentials_is_an_event():
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
    op.send()
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Digest realm="est", nonce="abc", qop="auth"')]))
    ev = op.next_event()
    assert isinstance(ev, C.AuthRequired) and ev.challenges[0][0] == "digest" and ev.challenges[0][1]["nonce"] == "abc"


def test_401_digest_answered_once():
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr", auth=("Mufasa", "Circle of Life"), cnonce=b"\x01\x02")
    line, h, _ = parse_request(op.send())
    assert "authorization" not in h
    ch = 'Digest realm="est", nonce="n0nce", qop="auth", algorithm=SHA-256, opaque="op"'
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="est"'), ("WWW-Authenticate", ch)]))
    assert op.next_event() is C.NEED_DATA and op.state == C.AUTH_CONTINUE
    line, h, body = parse_request(op.send())
    want = http1.digest_auth(http1.parse_challenges(ch)[0][1], "POST", "/.well-known/est/simpleenroll", "Mufasa", "Circle of Life", b"\x01\x02")
    assert h["authorization"] == want and http1.decode_b64_body(body) == b"csr"
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", ch)], b"wrong password"))
    e = raises(ServerError, op.next_event)
    assert e.http_status == 401 and e.diagnostic == "wrong password"


def test_401_digest_challenge_with_a_control_character_is_the_servers_fault():
    # its realm/nonce/opaque go back in our Authorization header: refused
    # while reading the challenge, blamed on the server, never at send()
    for param in ('realm="r\x00"', 'nonce="n\x01"', 'opaque="\x7f"', 'realm="esc\x1b"'):
        op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("u", "p"), cnonce=b"c")
        op.send()
        ch = 'Digest realm="r", nonce="n", qop="auth", ' + param
        op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", ch)]))
        e = raises(RemoteProtocolError, op.next_event)
        assert "Digest challenge" in e.msg and "forbidden character" in e.msg


def test_401_basic_and_then_200():
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("user", "pw"))
    op.send()
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="x"'), ("Connection", "close")]))
    assert op.next_event() is C.NEED_DATA and op.need_new_connection
    line, h, _ = parse_request(op.send())
    assert h["authorization"] == http1.basic_auth("user", "pw") and not op.need_new_connection
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_PKCS7)], b64(V.P7_CA)))
    assert op.next_event().certs == [V.CA]


def test_401_problems():
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("user", "pw"))  # no cnonce
    op.send()
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Digest realm="x", nonce="n"')]))
    e = raises(LocalProtocolError, op.next_event)
    assert "cnonce" in str(e)
    op = C.HttpOperation(N.OP_CACERTS, host="h", auth=("user", "pw"))
    op.send()
    op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", "Negotiate")]))
    assert raises(ServerError, op.next_event).http_status == 401


def test_error_status_is_server_error():
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
    op.send()
    op.receive_data(response(400, "Bad Request", [("Content-Type", "text/plain")], b"CSR signature invalid"))
    e = raises(ServerError, op.next_event)
    assert e.http_status == 400 and e.diagnostic == "CSR signature invalid" and "400" in str(e)
    raises(ServerError, op.next_event)
    assert op.state == C.ERROR


def test_error_text_is_shown_as_text_not_bytes():
    # a text body ending in a line break ("wrong user name or password\n") is
    # shown as text; a control character inside is still escaped
    for body, want in ((b"wrong user name or password\n", "401 Unauthorized: wrong user name or password"),
                       (b"", "401 Unauthorized"),
                       (b"bad\x1b[2J thing\r\n", "401 Unauthorized: b'bad\\x1b[2J thing'")):
        op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr", auth=("u", "p"))
        op.send()
        op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="x"')]))
        op.send()
        op.receive_data(response(401, "Unauthorized", [("WWW-Authenticate", 'Basic realm="x"')], body))
        e = raises(ServerError, op.next_event)
        assert str(e).endswith(want), str(e)
        assert "b'wrong" not in str(e)


def test_202_and_404_text_is_the_diagnostic():
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
    op.send()
    body = b"enrollment request 5 is waiting for approval\n"
    op.receive_data(response(202, "Accepted", [("Retry-After", "5")], body))
    ev = op.next_event()
    assert ev.seconds == 5 and ev.diagnostic == "enrollment request 5 is waiting for approval"
    op = C.HttpOperation(N.OP_SIMPLEENROLL, host="h", body=b"csr")
    op.send()
    op.receive_data(response(202, "Accepted", [("Retry-After", "5")], b""))
    assert op.next_event().diagnostic is None
    for status, body, want in ((404, b"unknown EST label 'strickt'\n", "unknown EST label 'strickt'"),
                               (204, b"", None)):
        op = C.HttpOperation(N.OP_CSRATTRS, host="h")
        op.send()
        op.receive_data(response(status, "X", [], body))
        ev = op.next_event()
        assert ev.attrs is None and ev.diagnostic == want


def test_csrattrs_paths():
    for status, body in ((204, b""), (404, b"none")):
        op = C.HttpOperation(N.OP_CSRATTRS, host="h")
        op.send()
        op.receive_data(response(status, "X", [], body))
        assert op.next_event().attrs is None
    op = C.HttpOperation(N.OP_CSRATTRS, host="h")
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_CSRATTRS)], b64(V.CSRATTRS)))
    ev = op.next_event()
    assert ev.der == V.CSRATTRS and ev.attrs.wants_challenge_password is True


def test_serverkeygen_multipart_mixed():
    body = W.build_multipart([(N.MT_PKCS8, V.LEAF_KEY_P8), (N.MT_PKCS7_CERTS, V.P7_LEAF_CA)], "estBoundary")
    op = C.HttpOperation(N.OP_SERVERKEYGEN, host="h", body=b"csr")
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", "multipart/mixed; boundary=estBoundary")], body))
    ev = op.next_event()
    assert isinstance(ev, C.ServerKeyGen)
    assert ev.key_der == V.LEAF_KEY_P8 and ev.key_type == N.CF_PKCS8 and ev.cert == V.LEAF and ev.chain == [V.CA]
    op = C.HttpOperation(N.OP_SERVERKEYGEN, host="h", body=b"csr")
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_PKCS7)], b64(V.P7_CA)))
    raises(RemoteProtocolError, op.next_event)


def test_malformed_answers():
    for data in (
        response(200, "OK", [("Content-Type", "text/html")], b"<html>"),
        response(200, "OK", [("Content-Type", N.MT_PKCS7)], b"!!!!"),
        response(200, "OK", [("Content-Type", N.MT_PKCS7)], b64(V.P7_CA[:-3])),
        response(302, "Found", [("Location", "https://elsewhere.example/")], b""),  # another origin: not followed
        b"HTTP/1.1 abc\r\n\r\n",
    ):
        op = C.HttpOperation(N.OP_CACERTS, host="h")
        op.send()
        op.receive_data(data)
        raises((RemoteProtocolError, ServerError), op.next_event)
    op = C.HttpOperation(N.OP_CACERTS, host="h")
    op.send()
    op.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    op.receive_data(b"")
    e = raises(RemoteProtocolError, op.next_event)
    assert "closed" in str(e)
    op = C.HttpOperation(N.OP_CACERTS, host="h", max_body=100)
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_PKCS7)], b64(V.P7_CA)))
    raises(RemoteProtocolError, op.next_event)  # LimitError


def test_receive_data_parses_at_once():
    # the port may feed several reads before asking for the event: the
    # answer is parsed as it comes, so an oversized body fails right away
    op = C.HttpOperation(N.OP_CACERTS, host="h", max_body=1000)
    op.send()
    op.receive_data(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n\r\n")
    for _ in range(10):
        op.receive_data(b"A" * 500)
    assert op.state == C.ERROR
    raises(RemoteProtocolError, op.next_event)
    op = C.HttpOperation(N.OP_CACERTS, host="h")
    op.send()
    op.receive_data(response(200, "OK", [("Content-Type", N.MT_PKCS7)], b64(V.P7_CA)))
    assert op.state == C.DONE and op.next_event().certs == [V.CA]
