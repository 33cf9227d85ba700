"""coaps_transport.plain_request (the EST fast path's decoder, on
est_lite.coap) reads what aiocoap's Message.decode reads, or declines
(None) so that aiocoap decodes: every request the fast path answers must
look the same to the EST resources either way."""

import os

from aiocoap import CON, NON, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from est_lite import coap
from est_lite_cpython.coaps_transport import plain_request

REMOTE = object()


def same_as_aiocoap(data):
    r = plain_request(data, REMOTE)
    if r is None:
        return None
    m = Message.decode(data)  # whatever the fast path accepts, aiocoap decodes too
    assert r.code == m.code and r.mid == m.mid and r.token == m.token and r.payload == m.payload
    assert r.mtype is m.mtype and r.mtype in (CON, NON)
    assert r.opt.uri_path == tuple(m.opt.uri_path)
    assert r.opt.uri_query == tuple(m.opt.uri_query)
    assert r.opt.content_format == (None if m.opt.content_format is None else int(m.opt.content_format))
    assert r.opt.accept == (None if m.opt.accept is None else int(m.opt.accept))
    assert r.opt.block1 is None and r.opt.block2 is None and m.opt.block1 is None and m.opt.block2 is None
    assert sorted(o.number for o in r.opt.option_list()) == sorted(int(o.number) for o in m.opt.option_list())
    assert r.remote is REMOTE
    return r


def test_an_enrollment_request():
    data = coap.request(2, (".well-known", "est", "sen"), b"\x01\x02\x03\x04", 4660, content_format=286,
                        payload=os.urandom(200)).encode()
    r = same_as_aiocoap(data)
    assert r is not None and r.opt.uri_path == (".well-known", "est", "sen") and r.opt.content_format == 286


def test_labels_queries_accept_and_non():
    data = coap.request(1, (".well-known", "est", "lbl", "crts"), b"\x09", 1, type=1, accept=287,
                        extra_options=[(15, "rt=ace.est*")]).encode()
    r = same_as_aiocoap(data)
    assert r is not None and r.mtype is NON and r.opt.accept == 287 and r.opt.uri_query == ("rt=ace.est*",)


def test_declines_what_it_does_not_read():
    for kw in (dict(block1=(0, 1, 6)), dict(block2=(1, 0, 6)), dict(size1=300),
               dict(extra_options=[(35, "coap://x/")]), dict(extra_options=[(2049, b"x")])):
        data = coap.request(2, (".well-known", "est", "sen"), b"\x01", 7, content_format=286, payload=b"x", **kw)
        assert plain_request(data.encode(), REMOTE) is None, kw
    ack = coap.Message(type=2, code=0x44, mid=3, token=b"\x01", payload=b"x").encode()
    assert plain_request(ack, REMOTE) is None  # responses and ACKs are not requests
    empty = coap.Message(type=0, code=0, mid=3).encode()
    assert plain_request(empty, REMOTE) is None  # a CoAP ping goes to aiocoap
    bad_utf8 = coap.Message(type=0, code=1, mid=3, options=[(11, b"\xff\xfe")]).encode()
    assert plain_request(bad_utf8, REMOTE) is None
    twice = coap.Message(type=0, code=2, mid=3, options=[(12, b"\x01\x1e"), (12, b"\x01\x1e")]).encode()
    assert plain_request(twice, REMOTE) is None
    assert plain_request(b"\x40", REMOTE) is None and plain_request(b"", REMOTE) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_never_raise_and_agree(data):
    same_as_aiocoap(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1), st.integers(1, 31), st.integers(0, 0xFFFF), st.binary(max_size=8),
       st.lists(st.tuples(st.sampled_from([11, 12, 15, 17, 23, 27, 60]), st.binary(max_size=6)), max_size=5),
       st.binary(max_size=40))
def test_built_requests_agree(t, code, mid, token, options, payload):
    try:
        data = coap.Message(t, code, mid, token, options, payload).encode()
    except Exception:  # noqa: BLE001 - an unencodable combination: nothing to compare
        return
    same_as_aiocoap(data)
