# The CBOR subset needed by application/multipart-core (RFC 8710), the
# container of the EST-coaps server-side key generation response (RFC 9148).
#
# Subset: unsigned integers (< 2**64), byte strings, definite-length arrays
# and null (RFC 8710 lets a part be null: "optional part not given").
# Anything else -- text strings, maps, tags, negative integers, floats, other
# simple values, indefinite lengths -- is refused: RemoteProtocolError when
# decoding, LocalProtocolError when encoding.
#
# Decoded byte strings are memoryview slices of the input (zero-copy); call
# bytes() on them to keep them after the input buffer is reused.
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError

_BYTES = (bytes, bytearray, memoryview)
_SUBSET = "outside the CBOR subset (uint, bytes, array, null)"


def _head(out, mt, n):
    if n < 24:
        out.append(bytes((mt | n,)))
        return
    k = 1  # argument bytes: 1, 2, 4 or 8 for additional information 24..27
    ai = mt | 24
    while n >> (k << 3):
        k <<= 1
        ai += 1
    if k > 8:
        raise LocalProtocolError("integer %d is above 2**64-1" % n)
    out.append(bytes((ai,)) + n.to_bytes(k, "big"))


def _enc(o, out):
    if o is None:
        out.append(b"\xf6")
    elif type(o) is int and o >= 0:
        _head(out, 0, o)
    elif isinstance(o, _BYTES):
        _head(out, 0x40, len(o))
        out.append(bytes(o) if type(o) is memoryview else o)
    elif isinstance(o, (list, tuple)):
        _head(out, 0x80, len(o))
        for x in o:
            _enc(x, out)
    else:
        raise LocalProtocolError("%r is %s" % (o, _SUBSET))


def encode(obj):
    """CBOR bytes for obj: int >= 0, bytes-like, list/tuple of those, None."""
    out = []
    _enc(obj, out)
    return b"".join(out)


def _dec(mv, pos, depth, budget):
    n = len(mv) - pos  # bytes left
    if n < 1:
        raise RemoteProtocolError("CBOR data truncated")
    b = mv[pos]
    pos += 1
    if b == 0xF6:
        return None, pos
    mt = b >> 5
    v = b & 31
    if mt & 1 or mt > 4 or v > 27:
        raise RemoteProtocolError("CBOR head 0x%02x is %s" % (b, _SUBSET))
    if v > 23:
        k = 1 << (v - 24)
        if k >= n:
            raise RemoteProtocolError("CBOR data truncated")
        v = int.from_bytes(mv[pos : pos + k], "big")
        pos += k
        n -= k
    n -= 1
    if mt == 0:
        return v, pos
    if v > n:
        raise RemoteProtocolError("CBOR length %d exceeds the %d bytes left" % (v, n))
    if mt == 2:
        return mv[pos : pos + v], pos + v
    budget[0] -= v
    if depth < 1 or budget[0] < 0:
        raise LimitError("CBOR arrays nested too deep or with too many items")
    out = []
    for _ in range(v):
        x, pos = _dec(mv, pos, depth - 1, budget)
        out.append(x)
    return out, pos


def decode(data, max_depth=4, max_items=64):
    """One CBOR item that fills data exactly. max_depth bounds array nesting,
    max_items the total count of array elements."""
    mv = memoryview(data)
    obj, pos = _dec(mv, 0, max_depth, [max_items])
    if pos < len(mv):
        raise RemoteProtocolError("%d bytes after the CBOR item" % (len(mv) - pos))
    return obj


def encode_multipart(parts):
    """application/multipart-core for [(content_format, bytes or None), ...]."""
    items = []
    for cf, p in parts:
        if type(cf) is not int or not 0 <= cf < 65536 or not (p is None or isinstance(p, _BYTES)):
            raise LocalProtocolError("multipart part (%r, %r) needs a content-format 0..65535 and bytes or None" % (cf, type(p)))
        items += (cf, p)
    return encode(items)


def decode_multipart(data, max_items=8):
    """[(content_format, memoryview or None), ...] from application/multipart-core.
    max_items counts CBOR array elements (two per part)."""
    v = decode(data, 2, max_items)
    parts = []
    if type(v) is list and not len(v) & 1:
        for i in range(0, len(v), 2):
            cf = v[i]
            p = v[i + 1]
            if type(cf) is not int or cf > 65535 or type(p) is list or type(p) is int:
                break
            parts.append((cf, p))
        else:
            return parts
    raise RemoteProtocolError("not multipart-core: an array of content-format (0..65535), bytes-or-null pairs")
