# Portable tests of est_lite/coap.py: malformed messages, limits, encode errors.
from _util import raises

from est_lite import coap
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError


class n:  # the est_lite.numbers values used here (not imported: saves MicroPython heap)
    ACK = 2
    BAD_REQUEST = 128
    CON = 0
    GET = 1
    POST = 2
    REQUEST_ENTITY_TOO_LARGE = 141
    RST = 3


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


def test_encode_errors():
    for m in (
        coap.Message(4, n.GET, 1),
        coap.Message(n.CON, 256, 1),
        coap.Message(n.CON, n.GET, 65536),
        coap.Message(n.CON, n.GET, -1),
        coap.Message(n.CON, n.GET, 1, b"", [(65536, b"")]),
        coap.Message(n.CON, n.GET, 1, b"", [(-1, b"")]),
        coap.Message(n.CON, n.GET, 1, b"", [(11, [1])]),
        coap.Message(n.CON, n.GET, 1, b"", [(12, 5)]),
        coap.Message(n.CON, n.GET, 1, b"", [(12, "text")]),
    ):
        raises(LocalProtocolError, m.encode)
    m = coap.Message(n.CON, n.GET, 1, b"ab", [(11, b"est")], b"12345")
    raises(LocalProtocolError, m.encode_into, bytearray(m.size() - 1))
    raises(LocalProtocolError, m.encode_into, bytearray(m.size()), 1)
    mv = memoryview(bytearray(m.size() + 2))
    assert m.encode_into(mv, 2) == m.size() + 2 and bytes(mv[2:]) == m.encode()
