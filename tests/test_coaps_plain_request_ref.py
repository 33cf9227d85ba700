"""coaps_transport.plain_request reads a datagram directly; it must accept
exactly what the est_lite.coap-based reading it replaced accepted (kept
here as the reference), with the same result, and decline (None) the rest."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from aiocoap import CON, NON
from est_lite import coap
from est_lite.errors import EstError
from est_lite_cpython.coaps_transport import plain_request

REMOTE = object()


def reference(datagram):
    """The previous plain_request (est_lite.coap.decode, then the option walk)."""
    try:
        m = coap.decode(datagram)
    except EstError:
        return None
    code = m.code
    if m.type > 1 or not 1 <= code <= 31:
        return None
    path, query, cf, acc, nums = [], [], None, None, []
    try:
        for n, v in m.options:
            if n == 11:
                path.append(str(v, "utf-8"))
            elif n == 15:
                query.append(str(v, "utf-8"))
            elif n == 12 and cf is None and len(v) <= 2:
                cf = int.from_bytes(v, "big")
            elif n == 17 and acc is None and len(v) <= 2:
                acc = int.from_bytes(v, "big")
            else:
                return None
            nums.append(n)
    except UnicodeDecodeError:
        return None
    return (code, CON if m.type == 0 else NON, m.mid, m.token, bytes(m.payload), tuple(path), tuple(query), cf, acc,
            nums)


def check(data):
    want = reference(data)
    r = plain_request(data, REMOTE)
    if want is None:
        assert r is None, data
        return None
    assert r is not None, data
    got = (r.code, r.mtype, r.mid, r.token, r.payload, r.opt.uri_path, r.opt.uri_query, r.opt.content_format,
           r.opt.accept, r.opt._numbers)
    assert got == want and r.remote is REMOTE
    assert type(r.payload) is bytes and type(r.token) is bytes
    return r


def test_enrollment_and_friends():
    sen = coap.request(2, (".well-known", "est", "sen"), b"\x01\x02\x03\x04", 4660, content_format=286,
                       payload=os.urandom(300)).encode()
    assert check(sen) is not None
    lbl = coap.request(1, (".well-known", "est", "a-much-longer-label-name-x", "crts"), b"", 65535, type=1,
                       accept=287, extra_options=[(15, "rt=ace.est*")]).encode()
    assert check(lbl).mtype is NON
    for bad in (b"", b"\x40\x01\x00", sen[:-len(sen) + 4] + b"\xff", b"\x60\x02\x00\x01", b"\x49\x01\x00\x01",
                b"\x50\x00\x00\x01", b"\x40\x41\x00\x01", bytes([0x40, 1, 0, 1, 0xF0]), bytes([0x40, 1, 0, 1, 0xE0, 0, 0]),
                bytes([0x40, 1, 0, 1, 0xBF]), bytes([0x40, 1, 0, 1, 0xB3, 0xFF, 0xFE, 0xFD]),
                bytes([0x40, 1, 0, 1, 0xB1]) + b"a" * 0 + b"\xff", bytes([0x40, 1, 0, 1, 0xC3, 1, 2, 3]),
                bytes([0x40, 1, 0, 1, 0xC1, 1, 0x01, 2]), bytes([0x40, 1, 0, 1]) + b"\xb1a" + b"\x01a" * 40,
                bytes([0x40, 2, 0, 1]) + b"\xb1a" * 1 + b"\x01a" * 31 + b"\xff" + b"x" * 1200):
        check(bad)
    assert check(bytes([0x40, 1, 0, 1]) + b"\xb1a" + b"\x01a" * 31) is not None  # 32 options: the limit
    assert check(bytes([0x40, 1, 0, 1]) + b"\xb1a" + b"\x01a" * 32) is None
    assert check(bytes([0x40, 1, 0, 1, 0xBD, 0]) + b"p" * 13) is not None  # one-byte extended length


_opt = st.one_of(
    st.tuples(st.sampled_from([11, 15]), st.one_of(st.text(max_size=20).map(lambda t: t.encode()),
                                                    st.binary(max_size=20))),
    st.tuples(st.sampled_from([12, 17]), st.binary(max_size=3)),
    st.tuples(st.integers(0, 300), st.binary(max_size=16)),
)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 3), st.integers(0, 255), st.integers(0, 65535), st.binary(max_size=8), st.lists(_opt, max_size=8),
       st.binary(max_size=40))
def test_same_as_reference_on_built_messages(t, code, mid, token, opts, payload):
    try:
        data = coap.Message(t, code, mid, token, opts, payload).encode()
    except EstError:
        return
    check(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_same_as_reference_on_bytes(data):
    check(data)
    check(bytes([0x40 | (data[0] & 0x1F if data else 0), 2, 0, 7]) + data)


def test_plain_options_are_understood_so_the_critical_check_can_skip_them():
    from est_lite_cpython.coaps_server import _UNDERSTOOD, check_critical_options
    from est_lite_cpython.coaps_transport import _PLAIN_OPTIONS

    assert _PLAIN_OPTIONS <= _UNDERSTOOD
    r = check(coap.request(2, (".well-known", "est", "sen"), b"\x01", 1, content_format=286, accept=281,
                           extra_options=[(15, "q")], payload=b"x").encode())
    assert r.opt.only_understood
    check_critical_options(r)


def test_the_est_prefix_shortcut_reads_as_the_reference():
    from est_lite_cpython.coaps_transport import _EST_PREFIX

    head = bytes([0x42, 2, 0x12, 0x34]) + b"\xab\xcd"
    assert check(head + _EST_PREFIX).opt.uri_path == (".well-known", "est")
    for tail in (b"", b"\x03sen", b"\x03sen\x12\x01\x1e\xff" + b"csr", b"\x03sen\xff", b"\x01", b"\x04\xff\xfe\xfd\xfc",
                 b"\x13sen", b"\x10", b"\xf0", b"\x03lbl\x04crts\x41q=1\x22\x01\x19", b"\xd0\x00", b"\x1d",
                 b"\x03sen" + b"\x01a" * 29, b"\x03sen" + b"\x01a" * 30):
        check(head + _EST_PREFIX + tail)
        check(bytes([0x52, 1, 0, 9]) + b"\xab\xcd" + _EST_PREFIX + tail)
        check(bytes([0x62, 1, 0, 9]) + b"\xab\xcd" + _EST_PREFIX + tail)  # an ACK: declined


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48))
def test_the_est_prefix_with_any_tail(tail):
    from est_lite_cpython.coaps_transport import _EST_PREFIX

    check(bytes([0x41, 2, 0, 1, 7]) + _EST_PREFIX + tail)
