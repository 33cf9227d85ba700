"""Fuzzing the client operations (hypothesis): arbitrary and mutated
datagrams / bytes into running CoAP and HTTP operations. Invariant: only
EstError subclasses escape, and nothing is buffered beyond the named
limits."""

import sys
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/portable")

import client_vectors as V  # noqa: E402
from est_lite import coap  # noqa: E402
from est_lite import client as C  # noqa: E402
from est_lite import numbers as N  # noqa: E402
from est_lite.errors import EstError, LimitError  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPS = [N.OP_CACERTS, N.OP_CSRATTRS, N.OP_SIMPLEENROLL, N.OP_SIMPLEREENROLL, N.OP_SERVERKEYGEN]
TOKEN = b"\x01\x02\x03\x04"


def coap_op(op, szx=2, max_body=512):
    body = b"" if N.OP_METHODS[op] == N.GET else bytes(300)
    o = C.CoapOperation(op, body=body, token=TOKEN, mid=0x100, szx=szx, max_body=max_body)
    first = o.send(0)
    return o, coap.decode(bytes(first))


def drive(o, now):
    """Everything the port would call; only EstError may escape next_event."""
    sent = []
    for _ in range(4):
        d = o.send(now)
        if d is None:
            break
        sent.append(bytes(d))
    try:
        o.next_event()
    except EstError:
        pass
    t = o.next_timeout()
    assert t is None or t >= 0
    asm = o._asm
    assert asm is None or len(asm.body) <= o.max_body
    return sent


def options():
    numbers = st.sampled_from([N.CONTENT_FORMAT, N.BLOCK1, N.BLOCK2, N.SIZE2, N.MAX_AGE, N.ETAG, 2049])
    value = st.one_of(
        st.binary(max_size=4),
        st.builds(coap.block_encode, st.integers(0, 20), st.integers(0, 1), st.integers(0, 6)),
        st.sampled_from([coap.uint_encode(c) for c in (0, 62, 281, 285, 287)]),
    )
    return st.lists(st.tuples(numbers, value), max_size=5)


@SETTINGS
@given(st.sampled_from(OPS), st.lists(st.binary(max_size=80), max_size=8))
def test_coap_arbitrary_datagrams(op, datagrams):
    o, _ = coap_op(op)
    for i, d in enumerate(datagrams):
        o.receive_data(d, i)
        drive(o, i)


@SETTINGS
@given(
    st.sampled_from(OPS),
    st.lists(
        st.tuples(
            st.sampled_from([N.ACK, N.CON, N.NON, N.RST]),
            st.one_of(st.sampled_from([N.CHANGED, N.CONTENT, N.CONTINUE, N.NOT_FOUND, 0xA3, 0x8D]), st.integers(0, 255)),
            st.booleans(),
            options(),
            st.binary(max_size=70),
        ),
        max_size=12,
    ),
)
def test_coap_answers_with_our_token(op, answers):
    # answers that match our token and (mostly) our message id, with random
    # codes and block options: they reach the block-wise and result logic
    o, r = coap_op(op, szx=0, max_body=200)
    for i, (t, code, same_mid, opts, payload) in enumerate(answers):
        if code == 0 and t in (N.ACK, N.RST):
            tok, payload, opts = b"", b"", []
        else:
            tok = TOKEN
        mid = o._mid if same_mid else (o._mid + 1) & 0xFFFF
        try:
            d = coap.Message(t, code, mid, tok, opts, payload).encode()
        except EstError:
            continue
        o.receive_data(d, i)
        drive(o, i)


def valid_answers():
    big = bytes(range(256)) * 3
    return [
        (N.CF_PKIX_CERT, V.CA),
        (N.CF_PKCS7_CERTS, V.P7_LEAF_CA),
        (N.CF_CSRATTRS, V.CSRATTRS),
        (N.CF_PKIX_CERT, big),
    ]


def scripted_answer(r, cf, body, srv_szx):
    """A correct server's answer to request r (Block1 2.31 / Block2 blocks)."""
    b1 = coap.opt(r, N.BLOCK1)
    if b1 is not None:
        num, m, szx = coap.block_decode(b1)
        if m:
            opts = [(N.BLOCK1, coap.block_encode(num, 1, min(szx, srv_szx)))]
            return coap.Message(N.ACK, N.CONTINUE, r.mid, r.token, opts, b"").encode()
    b2 = coap.opt(r, N.BLOCK2)
    num, _, szx = (0, 0, 6) if b2 is None else coap.block_decode(b2)
    szx = min(szx, srv_szx)
    m, piece = coap.block_slice(body, num, szx)
    opts = [(N.CONTENT_FORMAT, coap.uint_encode(cf)), (N.BLOCK2, coap.block_encode(num, m, szx))]
    return coap.Message(N.ACK, N.CHANGED, r.mid, r.token, opts, bytes(piece)).encode()


@SETTINGS
@given(
    st.sampled_from(OPS),
    st.sampled_from(valid_answers()),
    st.integers(0, 6),
    st.integers(0, 3),
    st.lists(st.tuples(st.integers(0, 79), st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_coap_mutated_transfer(op, answer, szx, srv_szx, flips):
    # a well-formed block-wise exchange (Block1 upload, Block2 answer) where
    # some of the server's datagrams get a byte changed
    cf, body = answer
    o, r = coap_op(op, szx=szx, max_body=1024)
    for step in range(80):
        data = bytearray(scripted_answer(r, cf, body, srv_szx))
        for at, pos, val in flips:
            if at == step:
                data[pos % len(data)] = val
        o.receive_data(bytes(data), step)
        requests = [d for d in drive(o, step) if d[0] >> 4 & 3 == N.CON]
        if not requests:
            break
        r = coap.decode(requests[-1])


def http_op(op, **kw):
    body = b"" if N.OP_METHODS[op] == N.GET else b"csr"
    o = C.HttpOperation(op, host="h", body=body, max_body=2048, max_header=512, **kw)
    o.send()
    return o


def http_drive(o, data, chunk):
    for i in range(0, len(data), chunk):
        o.receive_data(data[i : i + chunk])
        try:
            o.next_event()
        except EstError:
            return
        o.send()  # a 401 with credentials asks for a second request
    o.receive_data(b"")
    try:
        o.next_event()
    except EstError:
        pass


@SETTINGS
@given(st.sampled_from(OPS), st.binary(max_size=600), st.integers(1, 64), st.booleans())
def test_http_arbitrary_bytes(op, data, chunk, creds):
    o = http_op(op, auth=("u", "p") if creds else None, cnonce=b"c")
    http_drive(o, b"HTTP/1.1 " + data, chunk)


def _ok(ct, b64body, status=200, extra=""):
    return ("HTTP/1.1 %d X\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n\r\n" % (status, ct, extra, len(b64body))).encode() + b64body


def http_valid():
    import binascii

    b = binascii.b2a_base64
    mp = (
        b"--b\r\nContent-Type: application/pkcs8\r\n\r\n" + b(V.LEAF_KEY_P8) + b"--b\r\n"
        b"Content-Type: application/pkcs7-mime\r\n\r\n" + b(V.P7_LEAF_CA) + b"--b--\r\n"
    )
    return [
        _ok(N.MT_PKCS7_CERTS, b(V.P7_CA)),
        _ok(N.MT_PKCS7, b(V.P7_LEAF_CA)),
        _ok(N.MT_CSRATTRS, b(V.CSRATTRS)),
        _ok("multipart/mixed; boundary=b", mp),
        _ok("text/plain", b"", 202, "Retry-After: 10\r\n"),
        _ok("text/plain", b"no", 401, 'WWW-Authenticate: Digest realm="r", nonce="n", qop="auth"\r\n'),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/pkcs7-mime\r\n\r\n"
        + b"%x\r\n" % len(b(V.P7_CA))
        + b(V.P7_CA)
        + b"\r\n0\r\n\r\n",
    ]


@SETTINGS
@given(
    st.sampled_from(OPS),
    st.sampled_from(http_valid()),
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=4),
    st.integers(1, 200),
    st.booleans(),
)
def test_http_mutated_responses(op, data, flips, chunk, creds):
    data = bytearray(data)
    for pos, val in flips:
        data[pos % len(data)] = val
    o = http_op(op, auth=("u", "p") if creds else None, cnonce=b"c")
    http_drive(o, bytes(data), chunk)


def test_http_huge_length_claims_are_refused_without_allocating():
    for head in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\n",
    ):
        o = http_op(N.OP_CACERTS)
        tracemalloc.start()
        try:
            o.receive_data(head)
            try:
                o.next_event()
                raise AssertionError("no error")
            except LimitError:
                pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 100000


def test_coap_size2_claim_is_refused_early():
    o, r = coap_op(N.OP_CACERTS, szx=0, max_body=100)
    opts = [(N.BLOCK2, coap.block_encode(0, 1, 0)), (N.SIZE2, coap.uint_encode(10**9))]
    o.receive_data(coap.Message(N.ACK, N.CONTENT, r.mid, r.token, opts, bytes(16)).encode(), 0)
    try:
        o.next_event()
        raise AssertionError("no error")
    except LimitError:
        pass
    assert o._asm is None
