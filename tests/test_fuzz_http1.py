"""Hypothesis fuzzing of est_lite.http1 (CPython only): arbitrary and mutated
responses, base64 bodies, multipart bodies and challenges. Invariant (h11's):
parse it or raise an EstError, never anything else; a claimed huge
Content-Length or chunk size is never allocated."""

import base64
import binascii
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite import http1 as h
from est_lite.errors import EstError, RemoteProtocolError
from est_lite_cpython import codec_server as W

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\nContent-Length: 8\r\n\r\nQUJDREVG",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nQUJD\r\n4\r\nREVG\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nRetry-After: 5\r\nStatus: 202\r\n\r\n",
    b"HTTP/1.0 200 OK\nConnection: close\n\nQUJD\x00",
    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\n"
    b"Content-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed ; boundary=est\r\nContent-Length: 99\r\n\r\n--est\r\n"
    b"Content-Type: application/pkcs8\r\n\r\nQUJD\r\n--est\r\nContent-Type: application/pkcs7-mime\r\n\r\nREVG\r\n--est--\r\n",
]


@st.composite
def mutated(draw, seeds):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 3))
        i = draw(st.integers(0, len(data)))
        if kind == 0 and data:
            data[min(i, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 2:
            del data[i : i + draw(st.integers(1, 8))]
        else:
            j = draw(st.integers(0, len(data)))
            data[i:i] = data[min(i, j) : max(i, j)][:64]
    return bytes(data)


def _drive(data, steps, eof, **kw):
    p = h.ResponseParser(**kw)
    got = []
    i = 0
    try:
        for k in steps + [len(data)]:
            p.receive_data(data[i : i + k])
            i += k
            for _ in range(10):
                ev = p.next_event()
                if ev is h.NEED_DATA:
                    break
                assert isinstance(ev, h.Response) and 200 <= ev.status < 600
                assert len(ev.body) <= p.max_body
                got.append(ev)
                p.reset()
            if i >= len(data):
                break
        if eof:
            p.receive_data(b"")
            ev = p.next_event()
            assert isinstance(ev, h.Response)  # after EOF: a response or an error, never NEED_DATA
    except EstError as e:
        assert str(e)
    return got


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=10), st.booleans())
def test_arbitrary_bytes_into_parser(data, steps, eof):
    _drive(data, steps, eof)
    _drive(b"HTTP/1.1 200 OK\r\n" + data, steps, eof, max_header=128, max_body=64)


@FUZZ
@given(mutated(SEEDS), st.lists(st.integers(1, 32), max_size=10), st.booleans())
def test_mutated_responses_into_parser(data, steps, eof):
    _drive(data, steps, eof)


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 400))
def test_decode_b64_arbitrary(data, max_out):
    try:
        out = h.decode_b64_body(data, max_out=max_out)
    except RemoteProtocolError as e:
        assert str(e)
    else:
        assert len(out) <= max_out


def _strict(data):
    # what RFC 8951 allows, decoded by an independent strict decoder
    cleaned = data.rstrip(b"\x00\t\n\r ")
    for c in b"\r\n\t ":
        cleaned = cleaned.replace(bytes([c]), b"")
    if len(cleaned) % 4:  # strict_mode still takes b"AAAA=" (RFC 4648 §3.3: padded to a multiple of 4)
        raise ValueError("length")
    return binascii.a2b_base64(cleaned, strict_mode=True)


@FUZZ
@given(st.binary(max_size=1500), st.data())
def test_decode_b64_whitespace_anywhere(der, data):
    enc = bytearray(base64.b64encode(der))
    for _ in range(data.draw(st.integers(0, 30))):
        i = data.draw(st.integers(0, len(enc)))
        enc[i:i] = data.draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b"  \r\n\t"]))
    enc += data.draw(st.sampled_from([b"", b"\x00", b"\r\n\x00", b"\n"]))
    assert h.decode_b64_body(bytes(enc)) == der
    assert h.decode_b64_body(memoryview(enc)) == der


@FUZZ
@given(st.binary(max_size=60).map(lambda b: base64.b64encode(b)), st.data())
def test_decode_b64_agrees_with_strict_decoder(enc, data):
    enc = bytearray(enc)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(enc)))
        enc[i:i] = data.draw(st.sampled_from([b"=", b"-", b"_", b"*", b"\x00", b"\x0b", b"\xff", b"A", b" ", b"\r\n"]))
    enc = bytes(enc)
    try:
        ref = _strict(enc)
    except ValueError:
        ref = None
    try:
        ours = h.decode_b64_body(enc)
    except RemoteProtocolError:
        ours = None
    assert ours == ref


@FUZZ
@given(st.binary(max_size=300), st.text(min_size=1, max_size=10))
def test_multipart_arbitrary(body, boundary):
    try:
        parts = h.parse_multipart(body, boundary)
    except EstError as e:
        assert str(e)
    else:
        assert len(parts) <= 8
    try:
        h.split_serverkeygen(body, boundary)
    except EstError:
        pass


MP = [
    bytes(W.build_multipart([("application/pkcs8", b"k" * 50), ("application/pkcs7-mime; smime-type=certs-only", b"c" * 70)], "est")),
    b"pre\n--est\nContent-Type: application/pkcs7-mime; smime-type=server-generated-key\n\nQUJD\n--est\n"
    b"Content-Type: application/pkcs7-mime\n\nREVG\n--est--\nepi",
]


@FUZZ
@given(mutated(MP))
def test_multipart_mutated(body):
    try:
        for p in h.parse_multipart(body, "est"):
            assert isinstance(p.headers, list)
        key, kt, certs = h.split_serverkeygen(body, "est")
        assert isinstance(key, bytes) and isinstance(certs, bytes)
    except EstError as e:
        assert str(e)


@FUZZ
@given(st.lists(st.text(max_size=80), max_size=3))
def test_challenges_never_raise(values):
    for ch in (h.parse_challenges(values), h.parse_challenges("".join(values))):
        for scheme, params in ch:
            assert isinstance(scheme, str) and scheme and isinstance(params, dict)
        h.pick_digest(ch)


@FUZZ
@given(st.text(max_size=80))
def test_media_type_never_raises(value):
    t, p = h.parse_media_type(value)
    assert t == t.lower() and isinstance(p, dict)


@settings(max_examples=60, deadline=None)
@given(st.integers(10**6, 0xFFFFFFFF), st.booleans())
def test_huge_claimed_lengths_are_not_allocated(size, chunked):
    # max_body allows it, the bytes never come: memory stays small
    head = b"HTTP/1.1 200 OK\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % size if chunked else b"Content-Length: %d\r\n\r\n" % size
    p = h.ResponseParser(max_body=10**13)
    tracemalloc.start()
    try:
        p.receive_data(head + b"abc")
        assert p.next_event() is h.NEED_DATA
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
    # and with the default max_body it is refused outright
    p = h.ResponseParser()
    p.receive_data(head)
    try:
        p.next_event()
    except EstError as e:
        assert "max_body" in str(e)
    else:
        raise AssertionError("no LimitError for %d" % size)
