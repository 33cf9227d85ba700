# Minimal DER (X.690) reader and writer.
#
# Reader: functions take a buffer (bytes, bytearray or, best, a memoryview)
# and absolute offsets, and return offsets; slicing a memoryview with them
# gives views, not copies. Only DER is accepted: single-byte tags, definite
# and minimal lengths, every element inside its parent. Malformed input
# raises RemoteProtocolError (LimitError for a named limit);
# IndexError/ValueError never escape.
#
# Writer: functions return bytes. tlv(tag, *parts) joins the parts once
# behind one header; header(tag, n) lets a caller assemble big structures
# from a list of parts with a single final b"".join. (check, null and
# implicit, used only by tests and servers, are in est_lite_cpython.codec_server.)

from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError, const

# --- universal tags ---
_BOOLEAN = const(0x01)
_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OCTET_STRING = const(0x04)
_NULL = const(0x05)
_OID = const(0x06)
_UTF8_STRING = const(0x0C)
_PRINTABLE_STRING = const(0x13)
_IA5_STRING = const(0x16)
_UTC_TIME = const(0x17)
_GENERALIZED_TIME = const(0x18)
_SEQUENCE = const(0x30)
_SET = const(0x31)
_CONSTRUCTED = const(0x20)
_CONTEXT = const(0x80)  # class bits of a context-specific tag ([n] = 0x80|n, constructed 0xA0|n)

# Default limits (named keyword arguments everywhere)
_MAX_LENGTH = const(0x10000)  # largest content length read_tlv accepts
_MAX_DEPTH = const(12)  # nesting levels codec_server.der_check descends
_MAX_INT_BYTES = const(33)  # read_int: 32-byte scalars plus a sign byte

# The public names of the constants above (der.SEQUENCE, der.MAX_LENGTH,
# ...) and the OID contents below come from __getattr__ at the end: no
# module dict entries on a device.
#   OID_EC_PUBLIC_KEY 1.2.840.10045.2.1      OID_P256 1.2.840.10045.3.1.7 (secp256r1)
#   OID_P384 1.3.132.0.34 (secp384r1)        OID_ECDSA_SHA256 1.2.840.10045.4.3.2
#   OID_DATA 1.2.840.113549.1.7.1            OID_SIGNED_DATA 1.2.840.113549.1.7.2


def _err(msg, off):
    return RemoteProtocolError("DER: %s at offset %d" % (msg, off))


# ---------------------------------------------------------------- reader


def read_tlv(buf, off=0, end=None, max_length=_MAX_LENGTH):
    """Read one TLV at buf[off]. Returns (tag, content_start, content_end);
    content_end is also the offset of the next element. The element must end
    at or before `end` (default len(buf))."""
    if end is None:
        end = len(buf)
    if off + 2 > end:
        raise _err("truncated", off)
    tag = buf[off]
    n = buf[off + 1]
    p = off + 2
    if tag & 0x1F == 0x1F:
        raise _err("high tag number form", off)
    if n & 0x80:
        k = n & 0x7F
        if not k:
            raise _err("indefinite length (BER)", off)
        if k > 4:
            raise LimitError("DER: %d-byte length field" % k)
        if p + k > end:
            raise _err("truncated", off)
        n = 0
        for i in range(p, p + k):  # no slice: nothing allocated per element
            n = n << 8 | buf[i]
        p += k
        if n >> (8 * k - 8) == 0 or n < 0x80:
            raise _err("non-minimal length", off)
    if n > max_length:
        raise LimitError("DER: %d-byte element > max_length=%d" % (n, max_length))
    if p + n > end:
        raise _err("length past end", off)
    return tag, p, p + n


def read(buf, off, tag, end=None, max_length=_MAX_LENGTH):
    """Read one TLV that must have the given tag. Returns (content_start,
    content_end)."""
    t, s, e = read_tlv(buf, off, end, max_length)
    if t != tag:
        raise _err("expected tag 0x%02x, got 0x%02x" % (tag, t), off)
    return s, e


def iter_tlv(buf, start, end, max_length=_MAX_LENGTH):
    """Yield (tag, content_start, content_end) for each element in
    buf[start:end] (the contents of a constructed value)."""
    while start < end:
        t, s, e = read_tlv(buf, start, end, max_length)
        yield t, s, e
        start = e


def read_int(buf, start, end, max_bytes=_MAX_INT_BYTES):
    """INTEGER contents -> int (signed). Rejects empty and non-minimal
    encodings."""
    n = end - start
    if n > max_bytes:
        raise LimitError("DER: %d-byte INTEGER > max_bytes=%d" % (n, max_bytes))
    v = 0
    for i in range(start, end):
        v = v << 8 | buf[i]
    if n < 1 or n > 1 and (v >> (8 * n - 9)) in (0, 0x1FF):
        raise _err("empty or non-minimal INTEGER", start)
    if v >> (8 * n - 1):
        v -= 1 << (8 * n)
    return v


def read_bit_string(buf, start, end):
    """BIT STRING contents -> (unused_bits, data_start, data_end)."""
    u = buf[start] if end > start else 8
    if u > 7 or u and end == start + 1:
        raise _err("bad BIT STRING", start)
    return u, start + 1, end


def oid_str(content):
    """OID contents (bytes/memoryview) -> dotted text '1.2.840.10045.2.1'."""
    n = len(content)
    if n > 64:
        raise LimitError("DER: %d-byte OID" % n)
    if not n or content[n - 1] & 0x80:
        raise RemoteProtocolError("DER: bad OID")
    out = []
    v = 0
    for b in content:
        if not v and b == 0x80:
            raise RemoteProtocolError("DER: bad OID")
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            if not out:
                x = min(v // 40, 2)
                out.append(str(x))
                v -= 40 * x
            out.append(str(v))
            v = 0
    return ".".join(out)


def oid_bytes(text):
    """Dotted OID text -> DER contents (bytes). LocalProtocolError for
    malformed text."""
    p = text.split(".") if isinstance(text, str) else ()
    bad = len(p) < 2 or [x for x in p if not x or x.strip("0123456789")]
    if bad or int(p[0]) > 2 or int(p[0]) < 2 and int(p[1]) > 39:
        raise LocalProtocolError("not a dotted OID: %r" % (text,))
    out = bytearray()
    for i in range(1, len(p)):
        v = int(p[i]) + (40 * int(p[0]) if i == 1 else 0)
        k = 7
        while v >> k:
            k += 7
        while k:
            k -= 7
            out.append(v >> k & 0x7F | (0x80 if k else 0))
    return bytes(out)


# ---------------------------------------------------------------- writer


def header(tag, n):
    """Tag and length bytes for n bytes of content."""
    if n < 0x80:
        return bytes((tag, n))
    if n >> 24:
        raise LocalProtocolError("DER: too long")
    k = 1 if n < 0x100 else 2 if n < 0x10000 else 3
    return bytes((tag, 0x80 | k)) + n.to_bytes(k, "big")


def tlv(tag, *parts):
    """One element whose content is the concatenation of parts (bytes,
    bytearray or memoryview)."""
    ps = [header(tag, sum(len(p) for p in parts))]
    for p in parts:
        ps.append(bytes(p) if type(p) is memoryview else p)
    return b"".join(ps)


def seq(*parts):
    return tlv(_SEQUENCE, *parts)


def set_of(*parts):
    """SET OF: DER orders the encoded elements as octet strings."""
    return tlv(_SET, *sorted(bytes(p) for p in parts))


def integer(n):
    """INTEGER in minimal two's complement (any sign)."""
    k = 1
    while not -(1 << (8 * k - 1)) <= n < 1 << (8 * k - 1):
        k += 1
    return header(_INTEGER, k) + (n % (1 << (8 * k))).to_bytes(k, "big")


def oid(o):
    """OBJECT IDENTIFIER from dotted text or from ready contents (bytes)."""
    return tlv(_OID, oid_bytes(o) if isinstance(o, str) else o)


def bit_string(data, unused=0):
    if not 0 <= unused <= 7 or unused and not data:
        raise LocalProtocolError("bad BIT STRING unused bits")
    return tlv(_BIT_STRING, bytes((unused,)), data)


def octet_string(data):
    return tlv(_OCTET_STRING, data)


def is_printable_char(c):
    """PrintableString alphabet (X.680 §41.4) for a byte value."""
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b" '()+,-./:=?"


def _text(tag, s, ok=None):
    b = s.encode() if isinstance(s, str) else bytes(s)
    for c in b:
        if ok and not ok(c):
            raise LocalProtocolError("character %r not allowed in %r" % (chr(c), s))
    return tlv(tag, b)


def utf8(s):
    return _text(_UTF8_STRING, s)


def printable(s):
    return _text(_PRINTABLE_STRING, s, is_printable_char)


def ia5(s):
    return _text(_IA5_STRING, s, lambda c: c < 0x80)


def boolean(v):
    return b"\x01\x01\xff" if v else b"\x01\x01\x00"


def explicit(n, inner):
    """[n] EXPLICIT: constructed context tag around one encoded element."""
    return tlv(0xA0 | n, inner)


def __getattr__(name):
    # the public constants, made when asked for (see the top of the module)
    k = (
        "BOOLEAN INTEGER BIT_STRING OCTET_STRING NULL OID UTF8_STRING PRINTABLE_STRING IA5_STRING UTC_TIME"
        " GENERALIZED_TIME SEQUENCE SET CONSTRUCTED CONTEXT MAX_LENGTH MAX_DEPTH MAX_INT_BYTES"
    ).split()
    if name in k:
        return (
            _BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _NULL, _OID, _UTF8_STRING, _PRINTABLE_STRING,
            _IA5_STRING, _UTC_TIME, _GENERALIZED_TIME, _SEQUENCE, _SET, _CONSTRUCTED, _CONTEXT,
            _MAX_LENGTH, _MAX_DEPTH, _MAX_INT_BYTES,
        )[k.index(name)]
    k = "OID_EC_PUBLIC_KEY OID_P256 OID_P384 OID_ECDSA_SHA256 OID_DATA OID_SIGNED_DATA".split()
    if name in k:
        return (
            b"\x2a\x86\x48\xce\x3d\x02\x01",
            b"\x2a\x86\x48\xce\x3d\x03\x01\x07",
            b"\x2b\x81\x04\x00\x22",
            b"\x2a\x86\x48\xce\x3d\x04\x03\x02",
            b"\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01",
            b"\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02",
        )[k.index(name)]
    raise AttributeError(name)
