# Portable tests of est_lite/coap.py: uint and Block options, request(), block-wise helpers.
from _util import raises, unhex

from est_lite import coap
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError


class n:  # the est_lite.numbers values used here (not imported: saves MicroPython heap)
    BAD_REQUEST = 128
    BLOCK1 = 27
    BLOCK2 = 23
    GET = 1
    IF_MATCH = 1
    NON = 1
    POST = 2
    REQUEST_ENTITY_TOO_LARGE = 141
    SIZE1 = 60
    SIZE2 = 28
    URI_PATH = 11
    URI_QUERY = 15


def test_uint():
    for v, b in ((0, b""), (1, b"\x01"), (255, b"\xff"), (256, b"\x01\x00"), (65536, b"\x01\x00\x00"), (0xFFFFFFFF, b"\xff" * 4)):
        assert coap.uint_encode(v) == b
        assert coap.uint_decode(b) == v
    assert coap.uint_decode(b"\x00\x05") == 5
    assert coap.uint_decode(memoryview(b"\x01\x19")) == 281
    raises(LocalProtocolError, coap.uint_encode, -1)
    raises(LocalProtocolError, coap.uint_encode, 1 << 32)
    raises(RemoteProtocolError, coap.uint_decode, b"\x01" * 5)
    raises(RemoteProtocolError, coap.uint_decode, b"\x01" * 3, 2)


def test_block_option():
    assert coap.block_encode(0, 0, 0) == b""
    assert coap.block_encode(0, 1, 2) == b"\x0a"
    assert coap.block_encode(9, 0, 2) == b"\x92"
    assert coap.block_encode(1, True, 6) == b"\x1e"
    assert coap.block_encode((1 << 20) - 1, 1, 6) == b"\xff\xff\xfe"
    for t in ((0, 0, 0), (0, 1, 2), (9, 0, 2), (300, 1, 4), ((1 << 20) - 1, 0, 6)):
        assert coap.block_decode(coap.block_encode(*t)) == t
    assert coap.block_decode(b"") == (0, 0, 0)
    e = raises(RemoteProtocolError, coap.block_decode, b"\x07")
    assert "SZX 7" in str(e) and e.coap_code == n.BAD_REQUEST
    raises(RemoteProtocolError, coap.block_decode, b"\x00\x00\x00\x01")
    raises(LocalProtocolError, coap.block_encode, 1 << 20, 0, 0)
    raises(LocalProtocolError, coap.block_encode, -1, 0, 0)
    raises(LocalProtocolError, coap.block_encode, 0, 0, 7)
    assert [coap.szx_size(s) for s in range(7)] == [16, 32, 64, 128, 256, 512, 1024]
    raises(LocalProtocolError, coap.szx_size, 7)
    raises(LocalProtocolError, coap.szx_size, -1)


def test_request_builder():
    m = coap.request(
        n.POST,
        [".well-known", "est", "caf\u00e9", "sen"],
        b"\x01",
        0x42,
        type=n.NON,
        content_format=286,
        accept=281,
        payload=b"csr",
        block1=(2, 1, 4),
        block2=(0, 0, 4),
        size1=1000,
        size2=0,
        extra_options=[(n.URI_QUERY, "a=b"), (n.IF_MATCH, b"")],
    )
    w = m.encode()
    d = coap.decode(w)
    assert d.encode() == w
    assert d.type == n.NON and d.mid == 0x42
    assert [num for num, v in d.options] == [1, 11, 11, 11, 11, 12, 15, 17, 23, 27, 28, 60]
    assert coap.opts(d, n.URI_PATH)[2] == b"caf\xc3\xa9"
    assert coap.block_decode(coap.opt(d, n.BLOCK1)) == (2, 1, 4)
    assert coap.block_decode(coap.opt(d, n.BLOCK2)) == (0, 0, 4)
    assert coap.uint_decode(coap.opt(d, n.SIZE1)) == 1000 and coap.opt(d, n.SIZE2) == b""
    assert coap.opt(d, n.URI_QUERY) == b"a=b" and d.payload == b"csr"
    raises(LocalProtocolError, coap.request, n.GET, ["x" * 256], b"", 1)
    raises(LocalProtocolError, coap.request, n.GET, ["est"], bytes(9), 1)
    raises(LocalProtocolError, coap.request, n.GET, ["est"], b"", 1, block2=(0, 0, 7))
    assert coap.request(n.GET, [".well-known", "est", "crts"], b"", 3).encode() == unhex(
        "40 01 0003 bb 2e77656c6c2d6b6e6f776e 03 657374 04 63727473"
    )


def test_block_slices():
    body = bytes(range(100))
    got = list(coap.blocks(body, 0))
    assert [(num, m, len(v)) for num, m, v in got] == [(i, 1, 16) for i in range(6)] + [(6, 0, 4)]
    assert b"".join(bytes(v) for _, _, v in got) == body
    assert all(isinstance(v, memoryview) for _, _, v in got)
    assert [(num, m, len(v)) for num, m, v in coap.blocks(bytes(64), 2)] == [(0, 0, 64)]
    assert [(num, m, len(v)) for num, m, v in coap.blocks(b"", 6)] == [(0, 0, 0)]
    assert [(num, m, len(v)) for num, m, v in coap.blocks(bytearray(65), 2)] == [(0, 1, 64), (1, 0, 1)]
    m, v = coap.block_slice(body, 3, 1)
    assert m == 0 and v == body[96:]  # block 3 of 32 bytes is the last one
    m, v = coap.block_slice(memoryview(body), 1, 1)
    assert m == 1 and v == body[32:64]
    raises(RemoteProtocolError, coap.block_slice, body, 4, 1)
    raises(RemoteProtocolError, coap.block_slice, bytes(64), 1, 2)
    raises(RemoteProtocolError, coap.block_slice, b"", 1, 2)
    raises(LocalProtocolError, coap.block_slice, body, 0, 7)


def test_block_assembler_in_order_and_smaller_size():
    body = bytes(range(256)) * 2
    a = coap.BlockAssembler(max_body=1024)
    assert a.next_num() == 0
    assert a.add(0, 1, 4, body[:256]) is None  # 256-byte blocks
    assert a.next_num() == 1
    assert a.add(4, 1, 2, body[256:320]) is None  # peer switched to 64: block 4
    assert a.next_num() == 5
    assert a.add(5, 1, 2, body[320:384]) is None
    assert a.add(6, 1, 2, body[384:448]) is None
    out = a.add(7, 0, 2, body[448:])
    assert out == body and a.done


def test_block_assembler():
    data = bytes(range(200))
    a = coap.BlockAssembler(max_body=200)
    assert a.add(0, 1, 2, data[:64]) is None
    assert a.add(2, 1, 1, data[64:96]) is None  # switched to 32-byte blocks
    assert a.add(3, 1, 1, data[96:128]) is None
    assert a.next_num() == 4
    assert a.add(4, 1, 1, data[128:160]) is None
    assert a.add(5, 0, 1, data[160:192]) == data[:192]
    e = raises(RemoteProtocolError, a.add, 6, 0, 1, b"x")
    assert "after the last" in str(e)
    # a single final block
    assert coap.BlockAssembler().add(0, 0, 6, b"") == b""
    assert coap.BlockAssembler().add(0, 0, 0, b"abc") == b"abc"


def test_block_assembler_rejects():
    def fresh():
        a = coap.BlockAssembler(max_body=300)
        a.add(0, 1, 2, bytes(64))
        return a

    e = raises(RemoteProtocolError, fresh().add, 2, 1, 2, bytes(64))  # gap
    assert "out of sequence" in str(e)
    raises(RemoteProtocolError, fresh().add, 0, 1, 2, bytes(64))  # overlap / duplicate
    raises(RemoteProtocolError, fresh().add, 1, 1, 1, bytes(32))  # 32-byte block 1 = offset 32
    e = raises(RemoteProtocolError, fresh().add, 0, 1, 3, bytes(128))  # size grew
    assert "larger" in str(e)
    raises(RemoteProtocolError, fresh().add, 1, 1, 2, bytes(63))  # short non-final block
    raises(RemoteProtocolError, fresh().add, 1, 0, 2, bytes(65))  # final block too long
    raises(RemoteProtocolError, fresh().add, 1, 0, 7, bytes(1))  # reserved SZX
    raises(RemoteProtocolError, coap.BlockAssembler().add, 1, 1, 2, bytes(64))  # must start at 0
    a = fresh()
    a.add(1, 1, 2, bytes(64))
    a.add(2, 1, 2, bytes(64))
    a.add(3, 1, 2, bytes(64))
    e = raises(LimitError, a.add, 4, 1, 2, bytes(64))
    assert "max_body=300" in str(e) and e.coap_code == n.REQUEST_ENTITY_TOO_LARGE
    assert len(a.body) == 256  # nothing of the refused block was kept
    assert fresh().add(1, 0, 2, bytes(44)) == bytes(108)


def test_assembler_size_hint():
    body = bytes(range(200))
    for hint in (0, 200, 150, 300, 5000):
        a = coap.BlockAssembler(max_body=4096, size=hint)
        out = None
        for num, m, v in coap.blocks(body, 2):  # 64-byte blocks
            assert a.next_num() == num and a.got == num * 64
            out = a.add(num, m, 2, v)
            assert (out is None) == bool(m)
        assert out == body and len(out) == 200 and a.got == 200 and a.done, hint
    # a hint is no licence to exceed max_body
    a = coap.BlockAssembler(max_body=100, size=100)
    a.add(0, 1, 2, body[:64])
    raises(LimitError, a.add, 1, 0, 2, body[64:128])
