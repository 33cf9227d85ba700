# Portable tests for est_lite.http1.ResponseParser (CPython via pytest, MicroPython via run.py).
# micropython-heapsize: 176K
from _util import raises

from est_lite import http1 as h
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError


def parse(data, step=0, eof=False, **kw):
    """Feed data (in pieces of step bytes, or at once) and return the
    Response; every earlier next_event() must say NEED_DATA."""
    p = h.ResponseParser(**kw)
    return feed(p, data, step, eof)


def feed(p, data, step=0, eof=False):
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        p.receive_data(data[i : i + step])
        ev = p.next_event()
        if ev is not h.NEED_DATA:
            assert i + step >= len(data), "response returned before its end at %d" % i
            return ev
    if eof:
        p.receive_data(b"")
    return p.next_event()


def both(data, **kw):
    """Response parsed in one piece and byte by byte; both must agree."""
    a = parse(data, **kw)
    b = parse(data, step=1, **kw)
    assert a is not h.NEED_DATA and b is not h.NEED_DATA
    assert (a.status, a.reason, a.headers, bytes(a.body)) == (b.status, b.reason, b.headers, bytes(b.body))
    return a


# ---------------------------------------------------------------- responses

OK_CL = b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\nContent-Length: 5\r\n\r\nhello"


def test_content_length_response():
    r = both(OK_CL)
    assert r.status == 200 and r.reason == "OK" and r.version == "HTTP/1.1"
    assert r.body == b"hello" and r.keep_alive
    assert r.content_type == "application/pkcs7-mime" and r.params == {"smime-type": "certs-only"}
    assert r.header("CONTENT-LENGTH") == "5" and r.header("x-none") is None
    assert r.headers[0] == ("content-type", "application/pkcs7-mime; smime-type=certs-only")
    assert r.retry_after is None


def test_chunked_response():
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n000\r\nX-Trailer: 1\r\n\r\n"
    )
    r = both(data)
    assert r.body == b"hello world" and r.keep_alive
    r = both(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip-no, chunked\n\n".replace(b"gzip-no, ", b"") + b"A \n0123456789\n0\n\n")
    assert r.body == b"0123456789"
    r = both(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n0\r\n\r\n")
    assert r.body == b""


def test_connection_close_read_to_eof():
    data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close"
    for step in (0, 1, 3):
        p = h.ResponseParser()
        assert feed(p, data, step) is h.NEED_DATA
        p.receive_data(b"")
        r = p.next_event()
        assert r.body == b"body until close" and not r.keep_alive
    r = parse(b"HTTP/1.0 200 OK\r\n\r\nxyz", eof=True)
    assert r.body == b"xyz" and not r.keep_alive and r.version == "HTTP/1.0"


def test_keep_alive_two_responses():
    data = OK_CL + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    for step in (0, 1, 7):
        p = h.ResponseParser()
        got = []
        for i in range(0, len(data), step or len(data)):
            p.receive_data(data[i : i + (step or len(data))])
            while True:
                ev = p.next_event()
                if ev is h.NEED_DATA:
                    break
                got.append(ev)
                p.reset()
        assert [r.status for r in got] == [200, 404]
        assert got[0].body == b"hello" and got[1].body == b""


def test_informational_responses_skipped():
    r = both(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: 1\r\n\r\n" + OK_CL)
    assert r.status == 200 and r.body == b"hello"


def test_no_body_for_head_204_304():
    r = both(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
    assert r.status == 204 and r.body == b""
    r = both(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    assert r.body == b"" and r.keep_alive
    r = both(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", method="HEAD")
    assert r.body == b"" and r.header("content-length") == "100"
    p = h.ResponseParser(method="HEAD")
    p.reset("GET")
    assert feed(p, OK_CL).body == b"hello"


def test_202_retry_after_without_length():
    data = b"HTTP/1.1 202 Accepted\r\nRetry-After: 120\r\n\r\n"
    r = both(data)
    assert r.status == 202 and r.retry_after == 120 and r.body == b"" and not r.keep_alive
    r = both(b"HTTP/1.1 202 Accepted\r\nRetry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\nContent-Length: 0\r\n\r\n")
    assert r.retry_after == h.RETRY_AFTER_DEFAULT and r.keep_alive
    r = both(b"HTTP/1.1 503 Busy\r\nRetry-After: 99999999999\r\nContent-Length: 0\r\n\r\n")
    assert r.retry_after == 999999999


def test_tolerated_peer_quirks():
    # repeated Status header (CGI), duplicate identical Content-Length, LF-only lines,
    # no reason phrase, folded header, extra spaces
    r = both(
        b"HTTP/1.1 200 OK\r\nStatus: 200 OK\r\nStatus: 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n"
        b"Content-Length: 3, 3\r\nX-Fold: a\r\n  b\r\n\r\nabc"
    )
    assert r.body == b"abc" and r.header("status") == "200 OK" and r.header("x-fold") == "a b"
    r = both(b"HTTP/1.1 200\nContent-Length:   2  \n\nok")
    assert r.reason == "" and r.body == b"ok"
    # bytes after the body are left alone; blank lines before the next status line are skipped
    p = h.ResponseParser()
    p.receive_data(OK_CL + b"\r\n\r\ntrailing junk")
    assert p.next_event().body == b"hello"
    p.receive_data(b" more junk")
    e = raises(LocalProtocolError, p.next_event)
    assert "reset" in str(e)
    p = h.ResponseParser()
    assert feed(p, OK_CL + b"\r\n").body == b"hello"
    p.reset()
    assert feed(p, OK_CL).body == b"hello"
    # non-UTF-8 header bytes do not crash
    r = both(b"HTTP/1.1 200 \xff\xfeOK\r\nX: \xe9\r\nContent-Length: 0\r\n\r\n")
    assert r.status == 200 and r.header("x") is not None


def test_rejected_status_lines():
    for line in (
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 099 X",
        b"HTTP/1.1 600 X",
        b"HTTP/2 200 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1 +20 OK",
        b"ICY 200 OK",
        b"hello",
        b"HTTP/1.1",
    ):
        e = raises(RemoteProtocolError, parse, line + b"\r\nContent-Length: 0\r\n\r\n")
        assert "status line" in str(e)


def test_rejected_framing():
    bad = (
        (RemoteProtocolError, b"Content-Length: 3\r\nContent-Length: 4", "Content-Length"),
        (RemoteProtocolError, b"Content-Length: 3, 4", "Content-Length"),
        (RemoteProtocolError, b"Content-Length: -1", "Content-Length"),
        (RemoteProtocolError, b"Content-Length: 0x10", "Content-Length"),
        (RemoteProtocolError, b"Content-Length: 1_0", "Content-Length"),
        (RemoteProtocolError, b"Content-Length: +5", "Content-Length"),
        (LimitError, b"Content-Length: 16385", "max_body"),
        (LimitError, b"Content-Length: 99999999999999999999999999", "max_body"),
        (RemoteProtocolError, b"Transfer-Encoding: gzip", "Transfer-Encoding"),
        (RemoteProtocolError, b"Transfer-Encoding: chunked, gzip", "Transfer-Encoding"),
        (RemoteProtocolError, b"Bad Header: x", "header line"),
        (RemoteProtocolError, b"NoColon", "header line"),
        (RemoteProtocolError, b": empty name", "header line"),
    )
    for exc, hdr, words in bad:
        e = raises(exc, parse, b"HTTP/1.1 200 OK\r\n" + hdr + b"\r\n\r\n" + b"x" * 20)
        assert words in str(e), str(e)


def test_rejected_chunks():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for chunk, exc in (
        (b"zz\r\n", RemoteProtocolError),
        (b"-1\r\n", RemoteProtocolError),
        (b"0x10\r\n", RemoteProtocolError),
        (b"1_0\r\n", RemoteProtocolError),
        (b"\r\n", RemoteProtocolError),
        (b"+5\r\n", RemoteProtocolError),
        (b"5\r\nhelloXX\r\n", RemoteProtocolError),
        (b"4001\r\n", LimitError),
        (b"ffffffffffffffffffffffffffffff\r\n", LimitError),
        (b"1" * 5000, LimitError),
    ):
        raises(exc, parse, head + chunk + b"0\r\n\r\n")
    raises(LimitError, parse, head + b"20\r\n" + b"a" * 32 + b"\r\n21\r\n", max_body=64)
    assert len(parse(head + b"20\r\n" + b"a" * 32 + b"\r\n20\r\n" + b"b" * 32 + b"\r\n0\r\n\r\n", max_body=64).body) == 64
    # huge chunk announced: refused before any allocation
    e = raises(LimitError, parse, head + b"7fffffff\r\n")
    assert "max_body" in str(e)
    # trailers are bounded too
    raises(LimitError, parse, head + b"0\r\n" + b"X: y\r\n" * 700 + b"\r\n")


def test_header_section_limit():
    e = raises(LimitError, parse, b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 4100 + b"\r\n\r\n")
    assert "max_header" in str(e)
    raises(LimitError, parse, b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 700 + b"\r\n")
    raises(LimitError, parse, b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 40 + b"\r\n", max_header=100)
    p = h.ResponseParser(max_header=64)
    p.receive_data(b"x" * 65)
    raises(LimitError, p.next_event)
    raises(LimitError, parse, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"a" * 101, eof=True, max_body=100)
    assert len(parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"a" * 100, eof=True, max_body=100).body) == 100


def test_eof_errors():
    p = h.ResponseParser()
    p.receive_data(b"")
    e = raises(RemoteProtocolError, p.next_event)
    assert "before a response" in str(e)
    for data in (b"HTTP/1.1 200 OK\r\n", OK_CL[:-1], b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"):
        p = h.ResponseParser()
        p.receive_data(data)
        assert p.next_event() is h.NEED_DATA
        p.receive_data(b"")
        e = raises(RemoteProtocolError, p.next_event)
        assert "closed" in str(e)
    raises(LocalProtocolError, p.receive_data, b"more")


def test_all_errors_are_est_errors():
    assert issubclass(LimitError, RemoteProtocolError) and issubclass(RemoteProtocolError, EstError)


def test_large_content_length_body_grows_past_preallocation():
    body = bytes(range(256)) * 20 + b"end"
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    for step in (0, 1000, 4097):
        r = parse(data, step)
        assert len(r.body) == len(body) and r.body[-3:] == b"end" and r.body[:256] == bytes(range(256))
