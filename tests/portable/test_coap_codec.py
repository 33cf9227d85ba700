# Portable tests of est_lite/coap.py: header and option framing, errors, limits.
from _util import coap_roundtrip as _roundtrip
from _util import raises

from est_lite import coap
from est_lite.errors import LocalProtocolError


class n:  # the est_lite.numbers values used here (not imported: saves MicroPython heap)
    CON = 0
    GET = 1
    NON = 1
    POST = 2


# --- header and option framing -------------------------------------------


def test_extended_option_deltas_and_lengths():
    for num in (0, 1, 12, 13, 14, 268, 269, 270, 1000, 65535):
        for ln in (0, 12, 13, 268, 269, 270, 700):
            m = coap.Message(n.NON, n.POST, 0xBEEF, b"tok", [(num, bytes(ln))], b"p")
            w = m.encode()
            assert len(w) == m.size()
            d = _roundtrip(w)
            assert d.options == [(num, bytes(ln))] and d.payload == b"p" and d.mid == 0xBEEF
    # exact nibbles: option 13 with a 13-byte value, option 269 with 269 bytes
    assert coap.Message(0, 1, 0, b"", [(13, bytes(13))]).encode()[4:7] == b"\xdd\x00\x00"
    assert coap.Message(0, 1, 0, b"", [(269, bytes(269))]).encode()[4:9] == b"\xee\x00\x00\x00\x00"
    assert coap.Message(0, 1, 0, b"", [(65535, b"")]).encode()[4:] == b"\xe0\xfe\xf2"


def test_many_options_sorted_stably():
    m = coap.Message(n.CON, n.GET, 1, b"", [(11, b"b"), (3, b"host"), (11, b"c"), (60, b"\x05"), (11, b"d"), (1, b"")])
    w = m.encode()
    d = coap.decode(w)
    assert [num for num, v in d.options] == [1, 3, 11, 11, 11, 60]
    assert coap.opts(d, 11) == [b"b", b"c", b"d"]
    assert coap.opt(d, 60) == b"\x05" and coap.opt(d, 4) is None and coap.opts(d, 4) == []
    assert d == m and not (d != m)
    assert d != coap.Message(n.CON, n.GET, 1, b"", [(11, b"c"), (11, b"b"), (3, b"host"), (60, b"\x05"), (11, b"d"), (1, b"")])
    assert "(0, 1, 1, " in repr(d) and "(3, b'host')" in repr(d)


def test_token_lengths():
    for t in range(9):
        tok = bytes(range(t))
        d = _roundtrip(coap.Message(n.CON, n.GET, 7, tok).encode())
        assert d.token == tok and type(d.token) is bytes
    e = raises(LocalProtocolError, coap.Message(n.CON, n.GET, 7, bytes(9)).encode)
    assert "9-byte token" in str(e)


def test_decode_views_and_ownership():
    buf = bytearray(coap.Message(n.CON, n.POST, 9, b"\x01\x02", [(11, b"abc")], b"xyz").encode())
    m = coap.decode(memoryview(buf))
    v = coap.opt(m, 11)
    assert v == b"abc" and bytes(v) == b"abc" and bytes(m.payload) == b"xyz"
    kept = bytes(m.payload)
    buf[-1] = 0x21  # the views follow the buffer, copies do not
    assert m.payload == b"xy!" and kept == b"xyz"
    assert m.token == b"\x01\x02"
