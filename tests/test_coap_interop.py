"""est_lite.coap against aiocoap's independent codec (aiocoap.Message).

Both directions: our bytes decode in aiocoap with the same fields, and
aiocoap's bytes decode in ours with the same fields and re-encode to the
same bytes. Fixed cases cover the options EST-coaps uses; hypothesis covers
arbitrary messages (extended deltas and lengths, repeated options, long
values, large option numbers)."""

import warnings

import aiocoap
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import BlockOption, ContentFormatOption, StringOption, UintOption
from hypothesis import given, settings
from hypothesis import strategies as st

from est_lite import coap
from est_lite import numbers as N
from est_lite.errors import LocalProtocolError

BIG = dict(max_options=10_000, max_message=1 << 20)


def aio_message(mtype, code, mid, token, options, payload):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        m = aiocoap.Message(mtype=aiocoap.numbers.types.Type(mtype), code=aiocoap.numbers.codes.Code(code), payload=payload)
    m.mid = mid
    m.token = token
    for num, value in options:
        m.opt.add_option(OptionNumber(num).create_option(decode=bytes(value)))
    return m


def aio_fields(m):
    return (
        int(m.mtype),
        int(m.code),
        m.mid,
        bytes(m.token),
        [(int(o.number), o.encode()) for o in m.opt.option_list()],
        bytes(m.payload),
    )


def our_fields(m):
    return (m.type, m.code, m.mid, bytes(m.token), [(n, bytes(v)) for n, v in m.options], bytes(m.payload))


def check_both_ways(mtype, code, mid, token, options, payload):
    ours = coap.Message(mtype, code, mid, token, list(options), payload)
    wire = ours.encode()
    # ours -> aiocoap
    a = aiocoap.Message.decode(wire)
    expected = our_fields(coap.decode(wire, **BIG))
    assert aio_fields(a) == expected
    # aiocoap -> ours, byte-identical re-encoding
    aw = aio_message(mtype, code, mid, token, options, payload).encode()
    assert aw == wire
    d = coap.decode(aw, **BIG)
    assert our_fields(d) == aio_fields(aiocoap.Message.decode(aw))
    assert d.encode() == aw
    return wire


def u(n):
    return coap.uint_encode(n)


def test_rfc9148_a1_request_matches_aiocoap():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a = aiocoap.Message(
            mtype=aiocoap.CON, code=aiocoap.GET, mid=0, token=b"\x9a", uri_host="example.com", uri_port=9085
        )
    a.opt.uri_path = ("est", "crts")
    a.opt.accept = 281
    ours = coap.request(
        N.GET, ["est", "crts"], b"\x9a", 0, accept=281, extra_options=[(N.URI_HOST, "example.com"), (N.URI_PORT, 9085)]
    )
    assert ours.encode() == a.encode()
    assert coap.decode(a.encode()) == ours


@pytest.mark.parametrize(
    "options",
    [
        [],
        [(N.URI_PATH, b".well-known"), (N.URI_PATH, b"est"), (N.URI_PATH, b"crts"), (N.ACCEPT, u(281))],
        [(N.URI_PATH, b"est"), (N.URI_PATH, b"sen"), (N.CONTENT_FORMAT, u(286)), (N.ACCEPT, u(281))],
        [(N.URI_PATH, b"skg"), (N.CONTENT_FORMAT, u(286)), (N.ACCEPT, u(62))],
        [(N.CONTENT_FORMAT, u(284))],
        [(N.CONTENT_FORMAT, u(285))],
        [(N.CONTENT_FORMAT, u(287)), (N.BLOCK2, coap.block_encode(3, 1, 6)), (N.SIZE2, u(5000))],
        [(N.URI_PATH, b"sen"), (N.BLOCK1, coap.block_encode(0, 1, 2)), (N.SIZE1, u(1234))],
        [(N.BLOCK2, coap.block_encode(9, 0, 2)), (N.BLOCK1, coap.block_encode((1 << 20) - 1, 0, 4))],
        [(N.URI_PATH, "caf\u00e9".encode()), (N.URI_QUERY, b"rt=ace.est*"), (N.URI_QUERY, b"a=b")],
        [(N.MAX_AGE, u(60)), (N.CONTENT_FORMAT, u(0))],
        [(N.URI_HOST, b"h" * 300), (N.URI_PATH, b"p" * 269), (N.URI_PATH, b"q" * 268), (N.URI_PATH, b"r" * 1000)],
        [(N.NO_RESPONSE, u(26)), (269, b"x"), (270, b""), (2048, b"abc"), (65000, b"z" * 13), (65535, b"")],
        [(N.URI_PATH, b"%d" % i) for i in range(40)],
    ],
)
def test_fixed_messages_both_ways(options):
    for mtype, code, payload in ((N.CON, N.GET, b""), (N.ACK, N.CONTENT, b"\x30\x82" * 300), (N.NON, N.POST, b"x")):
        check_both_ways(mtype, code, 0xA5A5, b"\x01\x02\x03\x04", options, payload)


def test_empty_and_reset_messages():
    for t in (N.CON, N.ACK, N.RST):
        w = check_both_ways(t, 0, 0x1234, b"", [], b"")
        assert len(w) == 4


def test_option_value_too_long_to_encode():
    m = coap.Message(N.CON, N.GET, 1, b"", [(N.URI_PATH, bytes(65805))])
    with pytest.raises(LocalProtocolError):
        m.encode()
    big = coap.Message(N.CON, N.GET, 1, b"", [(N.URI_PATH, bytes(65804))])
    w = big.encode()
    assert w[4:7] == b"\xbe\xff\xff" and coap.decode(w, max_message=70000).options == big.options
    assert list(aiocoap.Message.decode(w).opt.option_list())[0].encode() == bytes(65804)


# --- hypothesis: arbitrary messages -------------------------------------


def _value_for(num):
    fmt = OptionNumber(num).format
    if fmt is StringOption:
        return st.text(max_size=40).map(lambda s: s.encode())
    if fmt is BlockOption:
        return st.tuples(st.integers(0, (1 << 20) - 1), st.booleans(), st.integers(0, 6)).map(
            lambda t: coap.block_encode(*t)
        )
    if fmt is ContentFormatOption:
        return st.integers(0, 65535).map(coap.uint_encode)
    if fmt is UintOption:
        return st.integers(0, 0xFFFFFFFF).map(coap.uint_encode)
    return st.one_of(st.binary(max_size=20), st.binary(min_size=260, max_size=700))


_numbers = st.one_of(
    st.sampled_from([1, 3, 4, 5, 7, 8, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 258, 268, 269, 270, 2048]),
    st.integers(0, 65535),
)
_option = _numbers.flatmap(lambda n: st.tuples(st.just(n), _value_for(n)))
_message = st.tuples(
    st.integers(0, 3),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.binary(max_size=8),
    st.lists(_option, max_size=12),
    st.one_of(st.just(b""), st.binary(min_size=1, max_size=1200)),
)


@settings(max_examples=300, deadline=None)
@given(_message)
def test_hypothesis_ours_to_aiocoap_and_back(msg):
    mtype, code, mid, token, options, payload = msg
    # our encoder sorts options stably: aiocoap must see the same order
    wire = coap.Message(mtype, code, mid, token, options, payload).encode()
    a = aiocoap.Message.decode(wire)
    assert aio_fields(a) == (mtype, code, mid, token, sorted(options, key=lambda o: o[0]), payload)


@settings(max_examples=300, deadline=None)
@given(_message)
def test_hypothesis_aiocoap_to_ours_identical_bytes(msg):
    mtype, code, mid, token, options, payload = msg
    aw = aio_message(mtype, code, mid, token, options, payload).encode()
    d = coap.decode(aw, **BIG)
    assert our_fields(d) == aio_fields(aiocoap.Message.decode(aw))
    assert d.encode() == aw
    buf = bytearray(len(aw) + 3)
    assert d.encode_into(buf, 3) == len(buf) and buf[3:] == aw
