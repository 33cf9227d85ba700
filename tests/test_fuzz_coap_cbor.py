"""Fuzzing est_lite.coap and est_lite.cbor with hypothesis.

Invariant (h11's): a decoder parses its input or raises an EstError
subclass -- never IndexError, ValueError, struct.error, RecursionError or
anything else. Plus: a CoAP datagram that decodes re-encodes to the same
bytes (the RFC 7252 option encoding is unique), and huge length claims are
refused without allocating anything of the claimed size."""

import tracemalloc

import aiocoap
import cbor2
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import BlockOption, ContentFormatOption, UintOption
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from est_lite import cbor, coap
from est_lite.errors import EstError, LimitError, RemoteProtocolError
from est_lite_cpython import codec_server as W

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_UINTS = (UintOption, BlockOption, ContentFormatOption)

SEEDS = [
    bytes.fromhex("4101 0000 9a 3b6578616d706c652e636f6d 42237d 43657374 0463727473 620119"),
    bytes.fromhex("6145 0000 9a c20119 b10a ff") + bytes(64),
    bytes.fromhex("4102 0001 45 b3657374 0373656e 12011e 520119 ff") + b"\x30\x82\x01\x8b" + bytes(20),
    coap.request(2, ["a" * 20, "b"], b"\x01" * 8, 7, content_format=62, block1=(5, 1, 6), size1=1 << 30).encode(),
    coap.Message(1, 0x45, 9, b"", [(13, bytes(13)), (300, bytes(269)), (65535, b"x")], b"p").encode(),
    bytes.fromhex("6000 1234"),
]
CBOR_SEEDS = [
    bytes.fromhex("84 19011c 4401020304 190119 f6"),
    bytes.fromhex("82 182a 48 0123456789abcdef"),
    bytes.fromhex("83 1bffffffffffffffff 59 0003 616263 80"),
]


def decodes_or_est_error(fn, data, **kw):
    try:
        return fn(data, **kw)
    except EstError:
        return None


def mutate(seed, ops):
    b = bytearray(seed)
    for kind, pos, val in ops:
        if not b:
            b.append(val)
            continue
        pos %= len(b) + 1
        if kind == 0 and pos < len(b):
            b[pos] = val  # overwrite
        elif kind == 1:
            b.insert(pos, val)  # insert
        elif kind == 2 and pos < len(b):
            del b[pos]  # delete
        else:
            del b[pos:]  # truncate
    return bytes(b)


_ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6)


# --- CoAP ----------------------------------------------------------------


def _raw(number, value):
    """An option value as aiocoap keeps it: uint-typed options by number
    (its encode() drops leading zeros), the others as bytes."""
    if OptionNumber(number).format in _UINTS:
        return int.from_bytes(value, "big")
    return bytes(value)


def check_coap(data):
    for kw in ({}, {"max_options": 3, "max_message": 64}, {"max_options": 10_000, "max_message": 1 << 20}):
        m = decodes_or_est_error(coap.decode, data, **kw)
        if m is not None:
            assert m.encode() == data  # unique encoding: decode/encode is the identity
            try:  # oracle: aiocoap reads the same fields (when it can: it
                a = aiocoap.Message.decode(data)  # insists on UTF-8 in string options)
                aopts = [(int(o.number), _raw(o.number, o.encode())) for o in a.opt.option_list()]
            except (UnicodeDecodeError, ValueError):
                a = None
            if a is not None:
                assert (a.mtype, a.code, a.mid, a.token, a.payload) == (m.type, m.code, m.mid, m.token, m.payload)
                assert aopts == [(n, _raw(n, v)) for n, v in m.options]
            assert len(m.options) <= kw.get("max_options", 32)
            for num, v in m.options:
                for fn in (coap.uint_decode, coap.block_decode):
                    decodes_or_est_error(fn, v)


@FUZZ
@given(st.binary(max_size=1300))
@example(b"\x40\x01\x00\x00\xe0\xff\xff")
@example(b"\x4f\x01\x00\x00")
@example(b"\x40\x01\x00\x00\xff")
def test_coap_decode_arbitrary_bytes(data):
    check_coap(data)


@FUZZ
@given(st.sampled_from(SEEDS), _ops)
def test_coap_decode_mutated_messages(seed, ops):
    check_coap(mutate(seed, ops))


# --- CBOR ----------------------------------------------------------------


def plain(v):
    if isinstance(v, memoryview):
        return bytes(v)
    return [plain(x) for x in v] if isinstance(v, list) else v


def check_cbor(data):
    for kw in ({}, {"max_depth": 1, "max_items": 2}, {"max_depth": 50, "max_items": 10_000}):
        v = decodes_or_est_error(cbor.decode, data, **kw)
        if v is not None or data == b"\xf6":
            assert cbor2.loads(data) == plain(v)  # oracle: cbor2 reads the same value
            w = W.cbor_encode(v)  # anything we decode is in the subset and re-encodes
            assert W.cbor_encode(cbor.decode(w, **kw)) == w
    parts = decodes_or_est_error(cbor.decode_multipart, data)
    if parts is not None:
        assert len(parts) <= 4
        for cf, p in parts:
            assert 0 <= cf <= 65535 and (p is None or isinstance(p, memoryview))
        assert cbor.decode_multipart(W.encode_multipart(parts)) == parts


@FUZZ
@given(st.binary(max_size=400))
@example(b"\x81" * 2000)
@example(b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff")
def test_cbor_decode_arbitrary_bytes(data):
    check_cbor(data)


@FUZZ
@given(st.sampled_from(CBOR_SEEDS), _ops)
def test_cbor_decode_mutated(seed, ops):
    check_cbor(mutate(seed, ops))


# --- huge length claims allocate nothing of their size -------------------


def _peak(fn, data):
    tracemalloc.start()
    try:
        decodes_or_est_error(fn, data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0x5B, 0x9B, 0x5A, 0x9A, 0x59, 0x99]),
    st.integers(1 << 12, (1 << 64) - 1),
    st.binary(max_size=64),
)
def test_cbor_huge_claims_do_not_allocate(head, claim, rest):
    k = 1 << ((head & 31) - 24)
    claim %= 1 << (8 * k)
    data = bytes([head]) + claim.to_bytes(k, "big") + rest
    for fn in (cbor.decode, cbor.decode_multipart):
        assert _peak(fn, data) < 16 * 1024
        assert _peak(fn, bytes([0x82, 0x00]) + data) < 16 * 1024


@settings(max_examples=200, deadline=None)
@given(st.integers(269, 65804), st.binary(max_size=64))
def test_coap_huge_option_length_claims_do_not_allocate(length, rest):
    ext = length - 269
    data = bytes([0x40, 0x01, 0, 0, 0x1E, ext >> 8, ext & 255]) + rest
    assert _peak(lambda d: coap.decode(d, max_message=1 << 20), data) < 16 * 1024
    try:
        coap.decode(data, max_message=1 << 20)
        assert len(rest) >= length
    except RemoteProtocolError:
        pass


# --- BlockAssembler ------------------------------------------------------

_block = st.tuples(st.integers(0, 70), st.integers(0, 1), st.integers(0, 6), st.integers(0, 1100))


@FUZZ
@given(st.integers(0, 3000), st.lists(_block, max_size=20))
def test_block_assembler_arbitrary_sequences(max_body, seq):
    asm = coap.BlockAssembler(max_body=max_body)
    for num, m, szx, ln in seq:
        try:
            out = asm.add(num, m, szx, bytes(ln))
        except EstError as e:
            assert isinstance(e, RemoteProtocolError)
            if isinstance(e, LimitError):
                assert len(asm.body) + ln > max_body
            continue
        assert len(asm.body) <= max_body
        assert (out is not None) == (not m) == asm.done


@FUZZ
@given(st.binary(max_size=3000), st.integers(0, 6), st.data())
def test_block_split_and_reassemble(body, szx, data):
    """blocks() output reassembles to the body, also when the receiver's
    side shrinks the block size part-way (RFC 7959 late negotiation)."""
    asm = coap.BlockAssembler(max_body=len(body))
    got = 0
    out = None
    while out is None:
        if got and szx and data.draw(st.booleans()):
            szx = data.draw(st.integers(0, szx - 1))  # smaller blocks from here on
        num = got >> (4 + szx)
        m, view = coap.block_slice(body, num, szx)
        out = asm.add(num, m, szx, view)
        got += len(view)
        assert out is not None or asm.next_num() == num + 1
    assert out == body
    n = 0
    for num, m, view in coap.blocks(body, szx):
        n += len(view)
    assert n == len(body)
