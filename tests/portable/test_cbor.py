# micropython-heapsize: 72K
# Portable tests of est_lite/cbor.py: the CBOR subset of application/multipart-core.
from _util import raises, unhex, vector

from est_lite import cbor
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W


def test_uint_encodings():
    for v, h in (
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65535, "19ffff"),
        (65536, "1a00010000"),
        (0xFFFFFFFF, "1affffffff"),
        (1 << 32, "1b0000000100000000"),
        ((1 << 64) - 1, "1bffffffffffffffff"),
    ):
        assert W.cbor_encode(v) == unhex(h)
        assert cbor.decode(unhex(h)) == v
    assert cbor.decode(unhex("1b0000000000000005")) == 5  # non-minimal heads are accepted
    assert cbor.decode(unhex("1800")) == 0


def test_bytes_arrays_null():
    for v, h in (
        (b"", "40"),
        (b"\x01" * 23, "57" + "01" * 23),
        (b"\x02" * 24, "5818" + "02" * 24),
        (b"\x03" * 300, "59012c" + "03" * 300),
        ([], "80"),
        ([1, [2, b"a"], None], "830182024161f6"),
        (None, "f6"),
    ):
        assert W.cbor_encode(v) == unhex(h)
        assert cbor.decode(unhex(h)) == v
    assert W.cbor_encode((1, bytearray(b"x"), memoryview(b"yz"))) == unhex("830141784279" + "7a")
    d = cbor.decode(unhex("43616263"))
    assert isinstance(d, memoryview) and d == b"abc"  # zero-copy view of the input


def test_encode_outside_subset():
    for v in (-1, 1 << 64, True, False, "text", 1.5, {1: 2}, [1, "x"], object()):
        e = raises(LocalProtocolError, W.cbor_encode, v)
        assert "subset" in str(e) or "2**64" in str(e)


def test_decode_outside_subset():
    for h in (
        "20",  # -1
        "3818",  # -25
        "60",  # ""
        "6161",  # "a"
        "a0",  # {}
        "c240",  # tag 2
        "f4",  # false
        "f5",  # true
        "f7",  # undefined
        "f93c00",  # float16 1.0
        "fb3ff0000000000000",  # float64 1.0
        "5f4101ff",  # indefinite byte string
        "9f01ff",  # indefinite array
        "ff",  # break
        "1c",  # reserved additional information 28
        "5d",  # 29
        "9e",  # 30
        "8160",  # text string inside an array
    ):
        e = raises(RemoteProtocolError, cbor.decode, unhex(h))
        assert isinstance(e, EstError) and str(e)


def test_decode_truncated_and_trailing():
    for h in ("", "18", "1901", "1a000000", "1b00000000000000", "41", "5801", "5a00000002ff", "82", "8201", "9a00000002"):
        e = raises(RemoteProtocolError, cbor.decode, unhex(h))
        assert not isinstance(e, LimitError)
    e = raises(RemoteProtocolError, cbor.decode, unhex("0000"))
    assert "after" in str(e)
    # huge length claims fail on the size check, before any allocation
    raises(RemoteProtocolError, cbor.decode, unhex("5bffffffffffffffff00"))
    raises(RemoteProtocolError, cbor.decode, unhex("9bffffffffffffffff00"))


def test_decode_limits():
    assert cbor.decode(unhex("81818181 00"), max_depth=4) == [[[[0]]]]
    e = raises(LimitError, cbor.decode, unhex("8181818181 00"), max_depth=4)
    assert e.coap_code == 0x8D
    assert cbor.decode(unhex("8300 8200 00 00"), max_items=5) == [0, [0, 0], 0]
    raises(LimitError, cbor.decode, unhex("8300 8200 00 00"), max_items=4)
    raises(LimitError, cbor.decode, unhex("88" + "00" * 8), max_items=7)


def test_multipart_rfc8710_examples():
    parts = [(42, unhex("0123456789abcdef")), (0, b"01234")]
    wire = unhex("84 182a 48 0123456789abcdef 00 45 3031323334")
    assert W.encode_multipart(parts) == wire
    assert cbor.decode_multipart(wire) == parts
    hello = unhex("82 00 4b") + b"Hello world"
    assert W.encode_multipart([(0, b"Hello world")]) == hello
    assert cbor.decode_multipart(hello) == [(0, b"Hello world")]
    assert W.encode_multipart([]) == b"\x80" and cbor.decode_multipart(b"\x80") == []
    # a null part: "optional part not given" (RFC 8710 §2)
    assert W.encode_multipart([(281, None), (284, b"k")]) == unhex("84 190119 f6 19011c 416b")
    assert cbor.decode_multipart(unhex("84 190119 f6 19011c 416b")) == [(281, None), (284, b"k")]
    assert cbor.decode_multipart(unhex("82 19ffff 40")) == [(65535, b"")]


def test_multipart_rfc9148_serverkeygen():
    wire = vector("a3_skg_response")
    parts = cbor.decode_multipart(wire)
    assert [(cf, len(p)) for cf, p in parts] == [(284, 138), (281, 467)]
    assert isinstance(parts[0][1], memoryview)
    assert bytes(parts[0][1][:3]) == b"\x30\x81\x87" and bytes(parts[1][1][-4:]) == b"\xa1\x00\x31\x00"
    assert W.encode_multipart(parts) == wire
    assert W.encode_multipart([(cf, bytes(p)) for cf, p in parts]) == wire


def test_multipart_errors():
    for h in (
        "00",  # not an array
        "41 00",  # byte string
        "81 00",  # odd number of items
        "83 00 40 00",
        "82 40 40",  # content-format is bytes
        "82 f6 40",  # content-format null
        "82 1a00010000 40",  # content-format 65536
        "82 00 00",  # part is an integer
        "82 00 80",  # part is an array
        "82 00 6161",  # part is a text string
        "82 20 40",  # negative content-format
        "82 00 40 00",  # trailing byte
        "82 00 5801",  # truncated part
    ):
        raises(RemoteProtocolError, cbor.decode_multipart, unhex(h))
    e = raises(LimitError, cbor.decode_multipart, unhex("8a" + "0040" * 5))  # 5 parts > max_items=8
    assert "items" in str(e)
    assert len(cbor.decode_multipart(unhex("8a" + "0040" * 5), max_items=10)) == 5
    raises(LimitError, cbor.decode_multipart, unhex("82 00 8181 40"))  # nested arrays


def test_encode_multipart_errors():
    for parts in (
        [(-1, b"")],
        [(65536, b"")],
        [(True, b"")],
        [("0", b"")],
        [(None, b"")],
        [(0, "text")],
        [(0, 5)],
        [(0, [b""])],
    ):
        raises(LocalProtocolError, W.encode_multipart, parts)
