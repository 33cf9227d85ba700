# micropython-heapsize: 176K
# Portable tests of est_lite/client.py (CPython and the MicroPython unix port).
# Certificates, keys and the CsrAttrs body come from client_vectors.py,
# generated once with `cryptography` by tests/make_client_vectors.py.
from _util import raises

import client_vectors as V
from _coap_script import TOK, answer, block, blockopt, cf, path, req, serve_get, uint
from est_lite import client as C
from est_lite import coap
from est_lite import numbers as N
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError, ServerError, TransportError
from est_lite_cpython import codec_server as W

# --- names made on first use (module __getattr__) ---
def test_lazy_public_names():
    # states, inputs and defaults keep their documented values
    assert [getattr(C, n) for n in C.STATE_NAMES] == list(range(8))
    assert [getattr(C, n) for n in C.INPUT_NAMES] == list(range(7))
    assert (C.ACK_TIMEOUT, C.ACK_RANDOM_FACTOR, C.MAX_RETRANSMIT) == (2, 1.5, 4)
    assert (C.SEPARATE_TIMEOUT, C.DEFAULT_RETRY_AFTER) == (93, 60)
    assert C.SENDING == (C.IDLE, C.BLOCK1_CONTINUE, C.BLOCK2_CONTINUE, C.AUTH_CONTINUE)
    # an event class is one object, made once, whichever way it is reached
    names = ("CaCerts", "CsrAttrs", "Enrolled", "ServerKeyGen", "RetryAfter", "AuthRequired")
    for n in names:
        k = getattr(C, n)
        assert k is getattr(C, n) and issubclass(k, C.Event) and k.__name__ == n
    e = C.decode_result(N.OP_CACERTS, N.CF_PKIX_CERT, b"0\x00")
    assert type(e) is C.CaCerts and e.certs == [b"0\x00"] and repr(e) == "CaCerts([b'0\\x00'],)"
    e = C.ServerKeyGen(b"k", 284, b"c", [])
    assert (e.key_der, e.key_type, e.cert, e.chain) == (b"k", 284, b"c", [])
    for bad in ("NoSuchName", "certs", "Event2"):
        raises(AttributeError, getattr, C, bad)


def test_coap_path_without_paths_module():
    # CoapOperation builds the label-less path itself; it must equal paths.coap_path
    from est_lite import paths

    for op in range(5):
        for skc in (False, True):
            o = C.CoapOperation(op, body=b"" if op < 2 else b"0\x00", skc=skc)
            assert list(o._path) == paths.coap_path(op, None, skc), (op, skc)
        o = C.CoapOperation(op, label="lbl", body=b"" if op < 2 else b"0\x00")
        assert list(o._path) == paths.coap_path(op, "lbl"), op


def test_request_buffer_fits_the_largest_request():
    # the buffer is sized for the request (at most max_message); every block fits
    body = bytes(range(256)) * 5
    for szx in (0, 2, 6):
        o = C.CoapOperation(2, label="a" * 63, body=body, token=b"12345678", accept=287, szx=szx)
        assert len(o._mv) <= 1152
        d = bytes(o.send(0))
        m = coap.decode(d)
        assert bytes(m.payload) == body[: 16 << szx] and len(d) <= len(o._mv)
    o = C.CoapOperation(2, body=body, szx=6, max_message=200)
    raises(LocalProtocolError, o.send, 0)


# --- the state table ---
def test_table_walks_and_rejects():
    s = C.IDLE
    for inp in (C.SEND, C.CONTINUE1, C.SEND, C.MORE2, C.SEND, C.FINAL):
        s = C.transition(s, inp)
    assert s == C.DONE
    assert C.transition(C.AWAIT_RESPONSE, C.RETRY) == C.RETRY_AFTER
    assert C.transition(C.AUTH_CONTINUE, C.SEND) == C.AWAIT_RESPONSE
    e = raises(LocalProtocolError, C.transition, C.DONE, C.SEND)
    assert "SEND" in str(e) and "DONE" in str(e)
    raises(LocalProtocolError, C.transition, C.AWAIT_RESPONSE, C.SEND)
    raises(RemoteProtocolError, C.transition, C.IDLE, C.FINAL)
    raises(RemoteProtocolError, C.transition, C.BLOCK2_CONTINUE, C.MORE2)
    raises(RemoteProtocolError, C.transition, C.ERROR, C.FAIL)
    # every state is reachable and every non-terminal state can fail
    seen = set([C.IDLE])
    for (st, inp), nxt in C.TRANSITIONS.items():
        seen.add(nxt)
    assert seen == set(range(len(C.STATE_NAMES)))
    for st in (C.IDLE, C.AWAIT_RESPONSE, C.BLOCK1_CONTINUE, C.BLOCK2_CONTINUE, C.AUTH_CONTINUE):
        assert C.transition(st, C.FAIL) == C.ERROR
    for st in (C.DONE, C.RETRY_AFTER, C.ERROR):
        for inp in range(len(C.INPUT_NAMES)):
            assert (st, inp) not in C.TRANSITIONS


def test_constructor_checks():
    raises(LocalProtocolError, C.CoapOperation, N.OP_FULLCMC, body=b"x")
    raises(LocalProtocolError, C.CoapOperation, 99)
    raises(LocalProtocolError, C.CoapOperation, N.OP_CACERTS, body=b"x")
    raises(LocalProtocolError, C.CoapOperation, N.OP_SIMPLEENROLL)
    raises(LocalProtocolError, C.CoapOperation, N.OP_CACERTS, szx=7)
    raises(LocalProtocolError, C.CoapOperation, N.OP_CACERTS, token=bytes(9))
    raises(LocalProtocolError, C.CoapOperation, N.OP_CACERTS, label="sen")
    raises(LocalProtocolError, C.CoapOperation, N.OP_CACERTS, label="a/b")
    op = C.CoapOperation(N.OP_CACERTS, rand=1.0)
    raises(LocalProtocolError, op.send, 0)


def test_request_shape_and_paths():
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, mid=0x1234)
    r = req(op.send(0))
    assert (r.type, r.code, r.mid, bytes(r.token)) == (N.CON, N.GET, 0x1234, TOK)
    assert path(r) == [".well-known", "est", "crts"]
    assert coap.opt(r, N.ACCEPT) is None and coap.opt(r, N.BLOCK2) is None and not r.payload
    assert op.state == C.AWAIT_RESPONSE and op.next_event() is C.NEED_DATA
    op = C.CoapOperation(N.OP_SERVERKEYGEN, "arbitrary", body=b"csr", skc=True, accept=N.CF_MULTIPART_CORE, szx=2)
    r = req(op.send(0))
    assert r.code == N.POST and path(r) == [".well-known", "est", "arbitrary", "skc"]
    assert coap.uint_decode(coap.opt(r, N.CONTENT_FORMAT)) == N.CF_PKCS10
    assert coap.uint_decode(coap.opt(r, N.ACCEPT)) == N.CF_MULTIPART_CORE
    assert blockopt(r, N.BLOCK2) == (0, 0, 2)  # early size negotiation
    assert coap.opt(r, N.BLOCK1) is None and bytes(r.payload) == b"csr"
    r = req(C.CoapOperation(N.OP_SIMPLEREENROLL, body=b"x").send(0))
    assert path(r)[-1] == "sren"
    r = req(C.CoapOperation(N.OP_CSRATTRS).send(0))
    assert path(r)[-1] == "att"


def test_mid_source_shared():
    mids = C.MidSource(b"\xff\xfe")
    a = C.CoapOperation(N.OP_CACERTS, mid=mids)
    b = C.CoapOperation(N.OP_CSRATTRS, mid=mids)
    assert req(a.send(0)).mid == 0xFFFE
    assert req(b.send(0)).mid == 0xFFFF
    assert mids.next() == 0  # wraps
    assert C.MidSource(0x12345).mid == 0x2345


# --- RFC 7252 retransmission ---
def test_retransmission_schedule_and_give_up():
    # rand 0.5: initial timeout 2 * (1 + 0.5 * 0.5) = 2.5 s, then doubling
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, mid=7, rand=0.5)
    first = bytes(op.send(100))
    times = []
    t = op.next_timeout()
    while t is not None:
        assert op.send(t - 0.25) is None  # not due yet
        d = op.send(t)
        if d is None:
            break
        assert bytes(d) == first  # same message id, same bytes
        times.append(t)
        t = op.next_timeout()
    assert times == [102.5, 107.5, 117.5, 137.5]
    assert t == 177.5  # 100 + 31 * 2.5: give up after MAX_RETRANSMIT
    assert op.retransmissions == 4 and op.state == C.ERROR and op.next_timeout() is None
    e = raises(TransportError, op.next_event)
    assert "4 retransmissions" in str(e)
    raises(TransportError, op.next_event)  # stays failed


def test_retransmission_parameters_and_rand_callable():
    calls = []

    def rand():
        calls.append(1)
        return 0.0

    op = C.CoapOperation(N.OP_CACERTS, rand=rand, ack_timeout=1, max_retransmit=1)
    op.send(0)
    assert op.next_timeout() == 1 and calls == [1]
    assert op.send(1) is not None and op.next_timeout() == 3
    assert op.send(3) is None
    raises(TransportError, op.next_event)


def test_piggybacked_and_duplicates_and_late():
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, mid=100, accept=N.CF_PKIX_CERT)
    r = req(op.send(0))
    assert coap.uint_decode(coap.opt(r, N.ACCEPT)) == N.CF_PKIX_CERT
    # a late answer for another message id, and one with a foreign token
    op.receive_data(answer(r, N.CONTENT, b"zz", [cf(N.CF_PKIX_CERT)], mid=99), 1)
    op.receive_data(answer(r, N.CONTENT, b"zz", [cf(N.CF_PKIX_CERT)], token=b"\x00"), 1)
    op.receive_data(b"\x40", 1)  # garbage
    op.receive_data(b"", 1)
    assert op.ignored == 4 and op.next_event() is C.NEED_DATA
    good = answer(r, N.CONTENT, V.CA, [cf(N.CF_PKIX_CERT)])
    op.receive_data(good, 1)
    ev = op.next_event()
    assert isinstance(ev, C.CaCerts) and ev.certs == [V.CA]
    op.receive_data(good, 2)  # duplicate
    assert op.next_event() is ev and op.ignored == 5
    assert op.send(1000) is None and op.next_timeout() is None


def test_empty_ack_then_separate_response():
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr-der", token=TOK, mid=10, accept=N.CF_PKIX_CERT)
    r = req(op.send(0))
    op.receive_data(coap.Message(N.ACK, 0, r.mid).encode(), 1)
    assert op.next_timeout() == 1 + C.SEPARATE_TIMEOUT
    assert op.send(2) is None and op.send(50) is None  # no retransmission after the ACK
    sep = answer(r, N.CHANGED, V.LEAF, [cf(N.CF_PKIX_CERT)], type=N.CON, mid=0x4242)
    op.receive_data(sep, 60)
    assert bytes(op.send(60)) == b"\x60\x00\x42\x42"  # our ACK of the separate response
    assert op.send(60) is None
    ev = op.next_event()
    assert isinstance(ev, C.Enrolled) and ev.cert == V.LEAF and ev.chain == []
    op.receive_data(sep, 61)  # the server did not get our ACK: ACK again, ignore
    assert bytes(op.send(61)) == b"\x60\x00\x42\x42"
    assert op.next_event() is ev


def test_separate_response_before_ack_and_non():
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, accept=N.CF_PKIX_CERT)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, V.CA, [cf(N.CF_PKIX_CERT)], type=N.NON, mid=5), 1)
    assert op.send(1) is None  # a NON needs no ACK
    assert op.next_event().certs == [V.CA]


def test_separate_response_timeout():
    op = C.CoapOperation(N.OP_CACERTS, separate_timeout=30)
    r = req(op.send(0))
    op.receive_data(coap.Message(N.ACK, 0, r.mid).encode(), 1)
    assert op.send(30.5) is None and op.next_event() is C.NEED_DATA
    assert op.send(31) is None
    e = raises(TransportError, op.next_event)
    assert "separate" in str(e)


def test_foreign_con_gets_rst_and_rst_fails():
    op = C.CoapOperation(N.OP_CACERTS, token=TOK)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, b"x", type=N.CON, mid=77, token=b"zz"), 1)
    assert bytes(op.send(1)) == b"\x70\x00\x00\x4d"  # RST for mid 77
    op.receive_data(coap.Message(N.CON, 0, 78).encode(), 1)  # CoAP ping
    assert bytes(op.send(1)) == b"\x70\x00\x00\x4e"
    op.receive_data(coap.Message(N.RST, 0, r.mid).encode(), 2)
    e = raises(ServerError, op.next_event)
    assert "RST" in str(e)


# --- answers: retry, errors ---
def test_503_max_age_is_retry_after():
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr")
    r = req(op.send(0))
    op.receive_data(answer(r, N.SERVICE_UNAVAILABLE, opts=[(N.MAX_AGE, uint(120))]), 1)
    ev = op.next_event()
    assert isinstance(ev, C.RetryAfter) and ev.seconds == 120 and op.state == C.RETRY_AFTER
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr")
    r = req(op.send(0))
    op.receive_data(answer(r, N.SERVICE_UNAVAILABLE), 1)
    assert op.next_event().seconds == C.DEFAULT_RETRY_AFTER == 60


def test_503_and_404_payload_is_the_diagnostic():
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr")
    r = req(op.send(0))
    op.receive_data(answer(r, N.SERVICE_UNAVAILABLE, b"enrollment request 5 is waiting for approval",
                           opts=[(N.MAX_AGE, uint(7))]), 1)
    ev = op.next_event()
    assert ev.seconds == 7 and ev.diagnostic == "enrollment request 5 is waiting for approval"
    assert "RetryAfter" in repr(ev)
    op = C.CoapOperation(N.OP_CSRATTRS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.NOT_FOUND, b"unknown EST label 'strickt'"), 1)
    ev = op.next_event()
    assert ev.attrs is None and ev.diagnostic == "unknown EST label 'strickt'"
    op = C.CoapOperation(N.OP_CSRATTRS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.NOT_FOUND), 1)
    assert op.next_event().diagnostic is None
    assert C.RetryAfter(5).diagnostic is None  # made without one


def test_error_answers_raise_server_error_with_diagnostic():
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr")
    r = req(op.send(0))
    op.receive_data(answer(r, N.FORBIDDEN, b"subject not allowed", [cf(0)]), 1)
    e = raises(ServerError, op.next_event)
    assert e.coap_code == N.FORBIDDEN and e.diagnostic == "subject not allowed"
    assert "4.03" in str(e) and "subject not allowed" in str(e)
    assert op.state == C.ERROR
    op = C.CoapOperation(N.OP_CACERTS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.INTERNAL_SERVER_ERROR, b"\xff\xfe"), 1)
    e = raises(ServerError, op.next_event)
    assert e.coap_code == N.INTERNAL_SERVER_ERROR and "5.00" in str(e)


def test_csrattrs_not_found_means_none():
    op = C.CoapOperation(N.OP_CSRATTRS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.NOT_FOUND), 1)
    ev = op.next_event()
    assert isinstance(ev, C.CsrAttrs) and ev.attrs is None
    op = C.CoapOperation(N.OP_CSRATTRS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, b"", [cf(N.CF_CSRATTRS)]), 1)
    assert op.next_event().attrs is None


def test_malformed_answers_are_remote_errors():
    for code, payload, fmt in (
        (N.CONTENT, V.CA, N.CF_CSRATTRS),  # wrong content format
        (0x60, b"", None),  # 3.00: not a response class we know
        (N.CONTINUE, b"", None),  # 2.31 without an upload
    ):
        op = C.CoapOperation(N.OP_CACERTS)
        r = req(op.send(0))
        op.receive_data(answer(r, code, payload, [] if fmt is None else [cf(fmt)]), 1)
        raises(RemoteProtocolError, op.next_event)


# --- results ---
def test_cacerts_pkcs7_and_enroll_leaf_choice():
    op = C.CoapOperation(N.OP_CACERTS)
    ev, n = serve_get(op, V.P7_CA, N.CF_PKCS7_CERTS, 6)
    assert ev.certs == [V.CA]
    # enroll answer with [CA, leaf]: the leaf is the one that issues nothing,
    # or the one carrying our public key
    for pk in (None, V.LEAF_PUB):
        op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr", public_key=pk)
        r = req(op.send(0))
        op.receive_data(answer(r, N.CHANGED, V.P7_LEAF_CA, [cf(N.CF_PKCS7_CERTS)]), 0)
        ev = op.next_event()
        assert ev.cert == V.LEAF and ev.chain == [V.CA]
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr", public_key=V.CA_PUB[:-1] + b"\x00")
    r = req(op.send(0))
    op.receive_data(answer(r, N.CHANGED, V.P7_LEAF_CA, [cf(N.CF_PKCS7_CERTS)]), 0)
    e = raises(RemoteProtocolError, op.next_event)
    assert "public key" in str(e)
    # a bad PKCS#7
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=b"csr")
    r = req(op.send(0))
    op.receive_data(answer(r, N.CHANGED, V.P7_LEAF_CA[:-5], [cf(N.CF_PKCS7_CERTS)]), 0)
    raises(RemoteProtocolError, op.next_event)


def test_csrattrs_decoded():
    op = C.CoapOperation(N.OP_CSRATTRS)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, V.CSRATTRS, [cf(N.CF_CSRATTRS)]), 0)
    ev = op.next_event()
    assert isinstance(ev, C.CsrAttrs) and ev.der == V.CSRATTRS and ev.attrs is not None


def test_serverkeygen_multipart_core():
    from est_lite import cbor

    for skc, certpart, leaf in ((False, (N.CF_PKCS7_CERTS, V.P7_LEAF_CA), V.LEAF), (True, (N.CF_PKIX_CERT, V.LEAF), V.LEAF)):
        op = C.CoapOperation(N.OP_SERVERKEYGEN, body=b"csr", skc=skc, szx=3, public_key=V.CA_PUB)
        body = W.encode_multipart([(N.CF_PKCS8, V.LEAF_KEY_P8), certpart])
        ev, n = serve_get(op, body, N.CF_MULTIPART_CORE, 3)
        assert isinstance(ev, C.ServerKeyGen)
        assert ev.key_der == V.LEAF_KEY_P8 and ev.key_type == N.CF_PKCS8 and ev.cert == leaf
    bad = (
        (N.CF_PKIX_CERT, W.encode_multipart([(N.CF_PKCS8, V.LEAF_KEY_P8), (N.CF_PKIX_CERT, V.LEAF)])),
        (N.CF_MULTIPART_CORE, W.encode_multipart([(N.CF_PKCS8, V.LEAF_KEY_P8)])),
        (N.CF_MULTIPART_CORE, W.encode_multipart([(N.CF_PKCS8, None), (N.CF_PKIX_CERT, V.LEAF)])),
        (N.CF_MULTIPART_CORE, W.encode_multipart([(0, b"x"), (N.CF_PKIX_CERT, V.LEAF)])),
        (N.CF_MULTIPART_CORE, b"\xa0"),
    )
    for fmt, body in bad:
        op = C.CoapOperation(N.OP_SERVERKEYGEN, body=b"csr")
        r = req(op.send(0))
        op.receive_data(answer(r, N.CHANGED, body, [cf(fmt)]), 0)
        raises(RemoteProtocolError, op.next_event)


def test_events_repr():
    assert "RetryAfter" in repr(C.RetryAfter(5)) and "5" in repr(C.RetryAfter(5))
    from est_lite import http1

    assert C.NEED_DATA is http1.NEED_DATA  # one NEED_DATA for the whole core


# --- retry scheduling ---
def test_retry_delay():
    assert C.retry_delay(100, 0, 1000, None, 0.0) == 1100
    assert C.retry_delay(100, 0, 1000, None, 0.5) == 1112.5  # + up to 25 % jitter, never less
    assert C.retry_delay(None, 0, 0, None, 0.0) == 5
    assert C.retry_delay(None, 3, 0, None, 0.0) == 40
    assert C.retry_delay(None, 50, 0, None, 0.0) == 3600  # capped
    assert C.retry_delay(10, 0, 0, 10, 0.0) == 10
    e = raises(TransportError, C.retry_delay, 10, 0, 0, 12, 0.9)
    assert "deadline" in str(e)
    raises(LocalProtocolError, C.retry_delay, 10, 0, 0, None, 1.0)
    assert isinstance(e, EstError)
