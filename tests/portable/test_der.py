# micropython-heapsize: 88K
# Portable tests for est_lite.der (CPython and MicroPython).
from _util import raises, unhex

from est_lite import der
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W


def test_read_tlv_short_and_long_lengths():
    assert der.read_tlv(b"\x04\x00") == (4, 2, 2)
    assert der.read_tlv(b"\x04\x02ab") == (4, 2, 4)
    body = b"x" * 200
    buf = b"\x04\x81\xc8" + body
    assert der.read_tlv(buf) == (4, 3, 203)
    body = b"y" * 300
    buf = b"\x30\x82\x01\x2c" + body
    assert der.read_tlv(memoryview(buf)) == (0x30, 4, 304)
    # offset and end inside a larger buffer
    buf = b"\xff\x02\x01\x05\xff"
    assert der.read_tlv(buf, 1, 4) == (2, 3, 4)


def test_read_tlv_errors():
    R = RemoteProtocolError
    raises(R, der.read_tlv, b"")
    raises(R, der.read_tlv, b"\x04")
    raises(R, der.read_tlv, b"\x04\x03ab")  # runs past the end
    e = raises(R, der.read_tlv, b"\x30\x80\x00\x00")
    assert "indefinite" in str(e)
    e = raises(R, der.read_tlv, b"\x1f\x01\x01\x00")
    assert "high tag" in str(e)
    e = raises(R, der.read_tlv, b"\x04\x81\x05abcde")  # long form for < 128
    assert "non-minimal" in str(e)
    raises(R, der.read_tlv, b"\x04\x82\x00\x90" + b"a" * 0x90)  # leading zero
    raises(R, der.read_tlv, b"\x04\x82\x01")  # truncated length
    e = raises(LimitError, der.read_tlv, b"\x04\x85\x01\x00\x00\x00\x00")
    assert "length field" in str(e)
    # huge claim: error, no allocation
    raises(R, der.read_tlv, b"\x04\x84\x7f\xff\xff\xff", max_length=0x7FFFFFFF)
    e = raises(LimitError, der.read_tlv, b"\x04\x84\x7f\xff\xff\xff")
    assert "max_length" in str(e)
    raises(LimitError, der.read_tlv, b"\x04\x05abcde", max_length=4)
    # element must fit in its container
    raises(R, der.read_tlv, b"\x30\x03\x04\x02ab", 2, 4)


def test_read_expected_tag():
    assert der.read(b"\x02\x01\x05", 0, der.INTEGER) == (2, 3)
    e = raises(RemoteProtocolError, der.read, b"\x31\x00", 0, der.SEQUENCE)
    assert "expected tag 0x30, got 0x31" in str(e)


def test_iter_tlv_and_check():
    buf = der.seq(der.integer(1), der.oid("1.2.3"), W.der_null())
    t, s, e = der.read_tlv(buf)
    got = [tag for tag, _, _ in der.iter_tlv(buf, s, e)]
    assert got == [2, 6, 5]
    assert list(der.iter_tlv(buf, s, s)) == []
    # trailing garbage inside a container is an error while iterating
    bad = b"\x30\x04\x05\x00\x05\x01"
    raises(RemoteProtocolError, list, der.iter_tlv(bad, 2, 6))
    assert W.der_check(buf) == 1
    assert W.der_check(buf + W.der_null()) == 2
    assert W.der_check(b"") == 0
    raises(RemoteProtocolError, W.der_check, b"\x30\x04\x05\x00\x05\x01")
    raises(RemoteProtocolError, W.der_check, buf[:-1])


def test_check_depth_limit():
    inner = W.der_null()
    for _ in range(20):
        inner = der.seq(inner)
    e = raises(LimitError, W.der_check, inner)
    assert "max_depth" in str(e)
    assert W.der_check(inner, max_depth=21) == 1
    # deep nesting of a huge claim never allocates
    deep = b"\x30\x80" * 1000
    raises(RemoteProtocolError, W.der_check, deep)


def test_integer_round_trip():
    cases = [
        (0, "020100"),
        (1, "020101"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
        (-256, "0202ff00"),
        (65535, "020300ffff"),
    ]
    for n, h in cases:
        enc = der.integer(n)
        assert enc == unhex(h), (n, enc)
        s, e = der.read(enc, 0, der.INTEGER)
        assert der.read_int(enc, s, e) == n
    big = (1 << 255) + 12345
    enc = der.integer(big)
    assert len(enc) == 2 + 33
    s, e = der.read(enc, 0, der.INTEGER)
    assert der.read_int(enc, s, e) == big
    assert der.read_int(enc, s, e, max_bytes=33) == big
    raises(LimitError, der.read_int, enc, s, e, max_bytes=32)


def test_read_int_errors():
    raises(RemoteProtocolError, der.read_int, b"", 0, 0)
    raises(RemoteProtocolError, der.read_int, b"\x00\x01", 0, 2)  # non-minimal positive
    raises(RemoteProtocolError, der.read_int, b"\xff\x80", 0, 2)  # non-minimal negative
    assert der.read_int(b"\x00\x80", 0, 2) == 128
    assert der.read_int(b"\xff\x7f", 0, 2) == -129


def test_oid_round_trip():
    cases = [
        ("1.2.840.10045.2.1", der.OID_EC_PUBLIC_KEY),
        ("1.2.840.10045.3.1.7", der.OID_P256),
        ("1.3.132.0.34", der.OID_P384),
        ("1.2.840.10045.4.3.2", der.OID_ECDSA_SHA256),
        ("2.16.840.1.101.3.4.2.1", unhex("608648016503040201")),
        ("1.2.840.113549.1.7.1", der.OID_DATA),
        ("1.2.840.113549.1.7.2", der.OID_SIGNED_DATA),
        ("1.2.840.113549.1.9.7", unhex("2a864886f70d010907")),
        ("2.5.29.17", unhex("551d11")),
        ("2.5.4.3", unhex("550403")),
        ("0.9.2342.19200300.100.1.25", unhex("0992268993f22c640119")),
        ("2.999.3", unhex("883703")),
    ]
    for text, content in cases:
        assert der.oid_bytes(text) == content, text
        assert der.oid_str(content) == text, text
        assert der.oid_str(memoryview(content)) == text
        assert der.oid(text) == bytes((6, len(content))) + content
        assert der.oid(content) == der.oid(text)


def test_oid_errors():
    raises(RemoteProtocolError, der.oid_str, b"")
    raises(RemoteProtocolError, der.oid_str, b"\x2a\x86")  # truncated arc
    raises(RemoteProtocolError, der.oid_str, b"\x2a\x80\x01")  # leading 0x80
    raises(LimitError, der.oid_str, b"\x01" * 65)
    for bad in ("", "1", "1.", "a.b", "3.1", "1.40", "1.-2", "1..2", " 1.2", "1.2 ", None, b"1.2", 7):
        raises(LocalProtocolError, der.oid_bytes, bad)


def test_bit_string():
    enc = der.bit_string(b"\x04abc")
    assert enc == b"\x03\x05\x00\x04abc"
    s, e = der.read(enc, 0, der.BIT_STRING)
    assert der.read_bit_string(enc, s, e) == (0, 3, 7)
    assert der.bit_string(b"\x80", 7) == b"\x03\x02\x07\x80"
    raises(LocalProtocolError, der.bit_string, b"", 1)
    raises(LocalProtocolError, der.bit_string, b"a", 8)
    raises(RemoteProtocolError, der.read_bit_string, b"", 0, 0)
    raises(RemoteProtocolError, der.read_bit_string, b"\x08a", 0, 2)
    raises(RemoteProtocolError, der.read_bit_string, b"\x01", 0, 1)


def test_strings_and_simple():
    assert der.octet_string(b"ab") == b"\x04\x02ab"
    assert der.utf8("h\u00e9") == b"\x0c\x03h\xc3\xa9"
    assert der.printable("Ab 1'()+,-./:=?") == b"\x13\x0fAb 1'()+,-./:=?"
    raises(LocalProtocolError, der.printable, "a@b")
    raises(LocalProtocolError, der.printable, "a_b")
    assert der.ia5("a@b") == b"\x16\x03a@b"
    raises(LocalProtocolError, der.ia5, "\u00e9")
    assert W.der_null() == b"\x05\x00"
    assert der.boolean(True) == b"\x01\x01\xff"
    assert der.boolean(False) == b"\x01\x01\x00"
    assert der.explicit(0, W.der_null()) == b"\xa0\x02\x05\x00"
    assert W.der_implicit(1, b"ab") == b"\x81\x02ab"
    assert W.der_implicit(0, W.der_null(), True) == b"\xa0\x02\x05\x00"


def test_header_and_tlv_lengths():
    for n in (0, 1, 127, 128, 255, 256, 1000):
        h = der.header(4, n)
        t, s, e = der.read_tlv(h + b"\x00" * n, max_length=1 << 20)
        assert (t, s, e) == (4, len(h), len(h) + n)
    assert der.header(4, 65535) == b"\x04\x82\xff\xff"
    assert der.header(0x30, 65536) == b"\x30\x83\x01\x00\x00"
    raises(LocalProtocolError, der.header, 4, 1 << 24)
    mv = memoryview(b"xxabyy")
    assert der.tlv(4, mv[2:4], b"c", bytearray(b"d")) == b"\x04\x04abcd"
    assert der.seq() == b"\x30\x00"


def test_set_of_sorts():
    a = der.integer(2)
    b = der.integer(1)
    c = der.octet_string(b"")
    assert der.set_of(a, b, c) == b"\x31\x08" + b + a + c
    # the length byte takes part in the ordering
    x = der.octet_string(b"\x01")
    y = der.octet_string(b"\x01\x00")
    assert der.set_of(y, x) == der.tlv(0x31, x, y)


def test_public_constants():
    # made by der.__getattr__ (no module dict entries on a device)
    names = "BOOLEAN INTEGER BIT_STRING OCTET_STRING NULL OID UTF8_STRING PRINTABLE_STRING IA5_STRING UTC_TIME"
    names += " GENERALIZED_TIME SEQUENCE SET CONSTRUCTED CONTEXT MAX_LENGTH MAX_DEPTH MAX_INT_BYTES"
    want = (1, 2, 3, 4, 5, 6, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x30, 0x31, 0x20, 0x80, 0x10000, 12, 33)
    assert tuple(getattr(der, n) for n in names.split()) == want
    assert der.oid_str(der.OID_EC_PUBLIC_KEY) == "1.2.840.10045.2.1"
    assert der.oid_str(der.OID_P256) == "1.2.840.10045.3.1.7"
    assert der.oid_str(der.OID_P384) == "1.3.132.0.34"
    assert der.oid_str(der.OID_ECDSA_SHA256) == "1.2.840.10045.4.3.2"
    assert der.oid_str(der.OID_DATA) == "1.2.840.113549.1.7.1"
    assert der.oid_str(der.OID_SIGNED_DATA) == "1.2.840.113549.1.7.2"
    raises(AttributeError, getattr, der, "NO_SUCH_TAG")
