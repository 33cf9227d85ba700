"""coaps_server.PlainResponse.encode writes the usual answers itself; the
bytes must be est_lite.coap's encoding of the same message."""

from hypothesis import given, settings
from hypothesis import strategies as st

from est_lite import coap
from est_lite.errors import EstError
from est_lite_cpython.coaps_server import _OPTION_NUMBERS, PlainResponse


def generic(r):
    o = []
    for k, v in r.opts.items():
        n = _OPTION_NUMBERS[k]
        o.append((n, coap.block_encode(*v) if n in (23, 27) else coap.uint_encode(int(v))))
    return coap.Message(int(r.mtype), int(r.code), r.mid, bytes(r.token), o, bytes(r.payload)).encode()


def same(code, payload, opts, token, mtype, mid):
    r = PlainResponse(code, payload, dict(opts))
    r.token, r.mtype, r.mid = token, mtype, mid
    try:
        want = generic(r)
    except EstError as e:
        try:
            r.encode()
        except EstError as e2:
            assert type(e2) is type(e)
            return None
        raise AssertionError("encoded what est_lite.coap refuses: %r" % (opts,))
    got = r.encode()
    assert got == want and type(got) is bytes
    return got


def test_usual_answers():
    assert same(0x44, b"\x30" * 700, {"content_format": 281}, b"\x01\x02\x03\x04", 2, 4660) is not None
    assert same(0xA0, b"busy", {"max_age": 30}, b"", 1, 0) is not None
    assert same(0x8D, b"too big", {"size1": 1024}, b"t" * 8, 2, 65535) is not None
    assert same(0x45, b"x", {"content_format": 287, "size2": 2000, "max_age": 0}, b"", 2, 1) is not None
    assert same(0x45, b"", {}, b"", 2, 1) == bytes([0x60, 0x45, 0, 1])
    assert same(0x44, b"p", {"content_format": 0}, b"", 2, 1) == bytes([0x60, 0x44, 0, 1, 0xC0, 0xFF]) + b"p"
    # refused the same way
    same(0x44, b"", {"size1": -1}, b"", 2, 1)
    same(0x44, b"", {"size1": 1 << 32}, b"", 2, 1)
    same(0x44, b"", {}, b"123456789", 2, 1)
    same(0, b"x", {}, b"", 2, 1)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64),
       st.dictionaries(st.sampled_from(["content_format", "max_age", "size2", "size1"]),
                       st.one_of(st.integers(0, 70000), st.integers(-2, (1 << 33)))),
       st.binary(max_size=9), st.integers(0, 3), st.integers(0, 65535))
def test_same_bytes_as_est_lite_coap(code, payload, opts, token, mtype, mid):
    same(code, payload, opts, token, mtype, mid)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(0, 1), st.integers(0, 6), st.binary(max_size=32))
def test_block_options_take_the_generic_encoder(num, more, szx, payload):
    same(0x45, payload, {"content_format": 281, "block2": (num, more, szx), "size2": 5000}, b"\x07", 2, 9)
