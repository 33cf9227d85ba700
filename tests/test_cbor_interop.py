"""est_lite.cbor against cbor2: identical encodings for the subset, cbor2's
encodings of the subset decode in ours, and cbor2 values outside the subset
are refused with our errors."""

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from est_lite import cbor
from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W

# the subset: uint < 2**64, bytes, arrays of those, null
_leaf = st.one_of(st.integers(0, (1 << 64) - 1), st.binary(max_size=300), st.none())
_subset = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=6), max_leaves=25)


def plain(v):
    """decode() gives memoryviews for byte strings: compare as bytes."""
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def depth(v):
    return 1 + max(map(depth, v), default=0) if isinstance(v, list) else 0


def items(v):
    return len(v) + sum(items(x) for x in v) if isinstance(v, list) else 0


@settings(max_examples=300, deadline=None)
@given(_subset)
def test_subset_encoding_equals_cbor2(v):
    ours = W.cbor_encode(v)
    assert ours == cbor2.dumps(v)
    assert plain(cbor.decode(ours, max_depth=depth(v), max_items=items(v))) == v
    assert cbor2.loads(ours) == v


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.one_of(st.binary(max_size=600), st.none())), max_size=4))
def test_multipart_equals_cbor2(parts):
    flat = [x for p in parts for x in p]
    wire = W.encode_multipart(parts)
    assert wire == cbor2.dumps(flat)
    assert [(cf, plain(p)) for cf, p in cbor.decode_multipart(cbor2.dumps(flat))] == parts


def test_canonical_cbor2_heads_decode():
    # cbor2 writes minimal heads; ours must also accept longer ones cbor2 reads
    for v in (0, 23, 24, 255, 256, 65535, 65536, 1 << 32, (1 << 64) - 1):
        assert cbor.decode(cbor2.dumps(v)) == v
    assert cbor.decode(bytes.fromhex("1a00000005")) == cbor2.loads(bytes.fromhex("1a00000005")) == 5


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -(1 << 64),
        1 << 64,  # cbor2 writes a bignum tag
        "",
        "text",
        {},
        {1: b""},
        True,
        False,
        1.5,
        math.inf,
        cbor2.CBORTag(24, b"\x00"),
        cbor2.undefined,
        cbor2.CBORSimpleValue(99),
        [1, "x"],
        [[b"", {}]],
    ],
)
def test_values_outside_subset(value):
    wire = cbor2.dumps(value)
    with pytest.raises(RemoteProtocolError) as e:
        cbor.decode(wire)
    assert "subset" in str(e.value)
    with pytest.raises(LocalProtocolError):
        W.cbor_encode(value)


def test_indefinite_lengths_refused():
    for wire in (b"\x5f\x41\x01\xff", b"\x9f\x01\xff", b"\x7f\x61a\xff", b"\xbf\xff"):
        assert cbor2.loads(wire) is not None  # well-formed CBOR
        with pytest.raises(RemoteProtocolError):
            cbor.decode(wire)
