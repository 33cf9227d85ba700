# Portable tests of est_lite/coap.py: header and option framing, errors, limits.
from _util import raises

from est_lite import coap
from est_lite import numbers as n
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError


def _roundtrip(wire):
    m = coap.decode(wire)
    assert m.encode() == wire
    buf = bytearray(len(wire) + 7)
    assert m.encode_into(buf, 3) == 3 + len(wire)
    assert bytes(buf[3 : 3 + len(wire)]) == wire
    assert buf[:3] == bytearray(3) and buf[-4:] == bytearray(4)
    return m


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
    m = coap.Message(n.CON, n.GET, 1, b"", [(11, "b"), (3, "host"), (11, "c"), (60, 5), (11, b"d"), (1, b"")])
    w = m.encode()
    d = coap.decode(w)
    assert [num for num, v in d.options] == [1, 3, 11, 11, 11, 60]
    assert coap.opts(d, 11) == [b"b", b"c", b"d"]
    assert coap.opt(d, 60) == b"\x05" and coap.opt(d, 4) is None and coap.opts(d, 4) == []
    assert d == m and not (d != m)
    assert d != coap.Message(n.CON, n.GET, 1, b"", [(11, "c"), (11, "b"), (3, "host"), (60, 5), (11, b"d"), (1, b"")])
    assert "code=0.01" in repr(d) and "type=0" in repr(d)


def test_token_lengths():
    for t in range(9):
        tok = bytes(range(t))
        d = _roundtrip(coap.Message(n.CON, n.GET, 7, tok).encode())
        assert d.token == tok and type(d.token) is bytes
    e = raises(LocalProtocolError, coap.Message(n.CON, n.GET, 7, bytes(9)).encode)
    assert "9-byte token" in str(e)


def test_empty_message():
    w = coap.Message(n.ACK, 0, 0x1234).encode()
    assert w == b"\x60\x00\x12\x34"
    m = coap.decode(w)
    assert (m.type, m.code, m.mid, m.token, m.options, m.payload) == (n.ACK, 0, 0x1234, b"", [], b"")
    assert coap.decode(b"\x70\x00\x00\x01").type == n.RST
    for bad in (b"\x61\x00\x00\x01\x99", b"\x60\x00\x00\x01\xff\x01", b"\x60\x00\x00\x01\x10"):
        e = raises(RemoteProtocolError, coap.decode, bad)
        assert "Empty" in str(e)
    raises(LocalProtocolError, coap.Message(n.ACK, 0, 1, b"t").encode)
    raises(LocalProtocolError, coap.Message(n.ACK, 0, 1, b"", [(11, b"x")]).encode)
    raises(LocalProtocolError, coap.Message(n.ACK, 0, 1, b"", None, b"x").encode)


def test_decode_errors():
    bad = (
        b"",
        b"\x40\x01\x00",  # short header
        b"\x00\x01\x00\x00",  # version 0
        b"\x80\x01\x00\x00",  # version 2
        b"\x49\x01\x00\x00" + bytes(9),  # TKL 9
        b"\x4f\x01\x00\x00" + bytes(15),  # TKL 15
        b"\x42\x01\x00\x00\x01",  # token truncated
        b"\x40\x01\x00\x00\xff",  # payload marker, empty payload
        b"\x40\x01\x00\x00\xf1\x00",  # delta nibble 15
        b"\x40\x01\x00\x00\x1f\x00",  # length nibble 15
        b"\x40\x01\x00\x00\xd0",  # 1-byte extended delta missing
        b"\x40\x01\x00\x00\xe0\x00",  # 2-byte extended delta truncated
        b"\x40\x01\x00\x00\x0d",  # 1-byte extended length missing
        b"\x40\x01\x00\x00\x0e\x01",  # 2-byte extended length truncated
        b"\x40\x01\x00\x00\x03ab",  # value truncated
        b"\x40\x01\x00\x00\x0d\xff" + bytes(10),  # long value truncated
        b"\x40\x01\x00\x00\xe0\xff\xff",  # option number 65804
        b"\x40\x01\x00\x00\xe0\xfe\xf2\x10",  # 65535 + 1
    )
    for w in bad:
        e = raises(RemoteProtocolError, coap.decode, w)
        assert isinstance(e, EstError) and str(e)
        assert e.coap_code == n.BAD_REQUEST or isinstance(e, LimitError)


def test_decode_limits():
    w = coap.Message(n.CON, n.GET, 1, b"", [(11, b"x")] * 33).encode()
    e = raises(LimitError, coap.decode, w)
    assert "max_options" in str(e)
    assert len(coap.decode(w, max_options=33).options) == 33
    big = coap.Message(n.CON, n.POST, 1, b"", None, bytes(1200)).encode()
    e = raises(LimitError, coap.decode, big)
    assert "1152" in str(e) and e.coap_code == n.REQUEST_ENTITY_TOO_LARGE
    assert len(coap.decode(big, max_message=2000).payload) == 1200


def test_decode_views_and_ownership():
    buf = bytearray(coap.Message(n.CON, n.POST, 9, b"\x01\x02", [(11, b"abc")], b"xyz").encode())
    m = coap.decode(memoryview(buf))
    v = coap.opt(m, 11)
    assert v == b"abc" and bytes(v) == b"abc" and bytes(m.payload) == b"xyz"
    kept = bytes(m.payload)
    buf[-1] = 0x21  # the views follow the buffer, copies do not
    assert m.payload == b"xy!" and kept == b"xyz"
    assert m.token == b"\x01\x02"


def test_encode_errors():
    for m in (
        coap.Message(4, n.GET, 1),
        coap.Message(n.CON, 256, 1),
        coap.Message(n.CON, n.GET, 65536),
        coap.Message(n.CON, n.GET, -1),
        coap.Message(n.CON, n.GET, 1, b"", [(65536, b"")]),
        coap.Message(n.CON, n.GET, 1, b"", [(-1, b"")]),
        coap.Message(n.CON, n.GET, 1, b"", [(11, [1])]),
        coap.Message(n.CON, n.GET, 1, b"", [(12, -1)]),
    ):
        raises(LocalProtocolError, m.encode)
    m = coap.Message(n.CON, n.GET, 1, b"ab", [(11, b"est")], b"12345")
    raises(LocalProtocolError, m.encode_into, bytearray(m.size() - 1))
    raises(LocalProtocolError, m.encode_into, bytearray(m.size()), 1)
    mv = memoryview(bytearray(m.size() + 2))
    assert m.encode_into(mv, 2) == m.size() + 2 and bytes(mv[2:]) == m.encode()
