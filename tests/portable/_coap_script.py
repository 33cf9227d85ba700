# Helpers for the portable client tests: a scripted CoAP server side.
from est_lite import coap
from est_lite import numbers as N

TOK = b"\xa1\xb2\xc3\xd4"


def req(d):
    """Decode a datagram the client sent."""
    assert d is not None, "the client sent nothing"
    return coap.decode(bytes(d))


def answer(r, code, payload=b"", opts=(), type=N.ACK, mid=None, token=None):
    """A response to request r (piggybacked by default)."""
    return coap.Message(
        type, code, r.mid if mid is None else mid, r.token if token is None else token, list(opts), payload
    ).encode()


def uint(n):
    return coap.uint_encode(n)


def cf(n):
    return (N.CONTENT_FORMAT, uint(n))


def block(option, num, m, szx):
    return (option, coap.block_encode(num, m, szx))


def path(m):
    return [bytes(v).decode() for v in coap.opts(m, N.URI_PATH)]


def blockopt(m, number):
    v = coap.opt(m, number)
    return None if v is None else coap.block_decode(v)


def serve_get(op, body, content_format, szx, now=0):
    """Answer every request of op from body in Block2 blocks of 16 << szx
    (or whole when it fits); returns the final event and request count."""
    n = 0
    while True:
        d = op.send(now)
        if d is None:
            return op.next_event(), n
        r = req(d)
        n += 1
        b2 = blockopt(r, N.BLOCK2)
        want = szx if b2 is None else min(szx, b2[2])
        num = 0 if b2 is None else b2[0]
        size = 16 << want
        if len(body) <= size and num == 0:
            op.receive_data(answer(r, N.CONTENT, body, [cf(content_format)]), now)
            continue
        m, piece = coap.block_slice(body, num, want)
        opts = [cf(content_format), block(N.BLOCK2, num, m, want)]
        if num == 0:
            opts.append((N.SIZE2, uint(len(body))))
        op.receive_data(answer(r, N.CONTENT, bytes(piece), opts), now)


