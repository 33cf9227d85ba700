# The CBOR subset of application/multipart-core (RFC 8710), the container
# of the EST-coaps server-side key generation response (RFC 9148): unsigned
# integers (< 2**64), byte strings, definite-length arrays and null (RFC
# 8710 lets a part be null: "optional part not given"). Anything else is
# refused with RemoteProtocolError. Decoding only: the encoders are in the
# CPython port (est_lite_cpython.codec_server).
#
# Decoded byte strings are memoryview slices of the input (zero-copy); call
# bytes() on them to keep them after the input buffer is reused.
from est_lite.errors import LimitError, RemoteProtocolError


def _dec(mv, pos, depth, budget):
    # (item, next position); IndexError when truncated
    n = len(mv) - pos - 1  # bytes left after the head byte
    b = mv[pos]
    pos += 1
    if b == 0xF6:
        return None, pos
    mt = b >> 5
    v = b & 31
    if mt & 1 or mt > 4 or v > 27:
        raise RemoteProtocolError("CBOR head 0x%02x outside the subset (uint, bytes, array, null)" % b)
    if v > 23:
        k = 1 << (v - 24)
        if k > n:
            raise IndexError
        v = int.from_bytes(mv[pos : pos + k], "big")
        pos += k
        n -= k
    if mt == 0:
        return v, pos
    if v > n:
        raise RemoteProtocolError("CBOR length %d > %d bytes left" % (v, n))
    if mt == 2:
        return mv[pos : pos + v], pos + v
    budget[0] -= v
    if depth < 1 or budget[0] < 0:
        raise LimitError("CBOR arrays beyond max_depth or max_items")
    out = []
    for _ in range(v):
        x, pos = _dec(mv, pos, depth - 1, budget)
        out.append(x)
    return out, pos


def decode(data, max_depth=4, max_items=64):
    """One CBOR item that fills data exactly. max_depth bounds array nesting,
    max_items the total count of array elements."""
    mv = memoryview(data)
    try:
        obj, pos = _dec(mv, 0, max_depth, [max_items])
    except IndexError:
        raise RemoteProtocolError("CBOR data truncated")
    if pos < len(mv):
        raise RemoteProtocolError("%d bytes after the CBOR item" % (len(mv) - pos))
    return obj


def decode_multipart(data, max_items=8):
    """[(content_format, memoryview or None), ...] from application/multipart-core.
    max_items counts CBOR array elements (two per part)."""
    v = decode(data, 2, max_items)
    if type(v) is list and not len(v) & 1:
        parts = []
        for i in range(0, len(v), 2):
            cf = v[i]
            p = v[i + 1]
            if type(cf) is not int or cf > 65535 or type(p) in (list, int):
                break
            parts.append((cf, p))
        else:
            return parts
    raise RemoteProtocolError("not multipart-core: pairs of content-format (0..65535) and bytes or null")
