# CoAP messages (RFC 7252) and block-wise transfer helpers (RFC 7959).
# Sans-IO: bytes in, Message out; Message in, bytes (or a caller's buffer) out.
#
# Ownership: decode() copies only the token (<= 8 bytes, hashable for request
# matching). Option values and the payload of a decoded Message are
# memoryview slices of the input: no copies. They compare equal to bytes
# (`v == b"x"`) and bytes(v) copies them; if the input is a receive buffer you
# will reuse, copy what you keep first.
#
# Options are a list of (number, value) pairs. Values are bytes-like; on
# encode an int is taken as a uint option value and a str as UTF-8. encode()
# writes them sorted by number, keeping the given order of repeated options.
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError
from est_lite.numbers import (
    ACCEPT,
    BLOCK1,
    BLOCK2,
    CON,
    CONTENT_FORMAT,
    SIZE1,
    SIZE2,
    URI_PATH,
    code_str,
)

_BYTES = (bytes, bytearray, memoryview)


class Message:
    def __init__(self, type=CON, code=0, mid=0, token=b"", options=None, payload=b""):
        self.type = type
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else options
        self.payload = payload

    def _ordered(self):
        # Options in wire order with bytes-like values; self.options itself
        # when it already is (no allocation in the common case).
        opts = self.options
        last = 0
        for o in opts:
            if o[0] < last or not isinstance(o[1], _BYTES):
                break
            last = o[0]
        else:
            return opts
        out = []
        for num, v in opts:
            if type(v) is int:
                v = uint_encode(v)
            elif type(v) is str:
                v = v.encode()
            i = len(out)
            while i and out[i - 1][0] > num:  # stable insertion sort
                i -= 1
            out.insert(i, (num, v))
        return out

    def _size(self, opts):
        if not (0 <= self.type <= 3 and 0 <= self.code <= 255 and 0 <= self.mid <= 65535):
            raise LocalProtocolError("type, code or message id out of range")
        n = len(self.token)
        if n > 8:
            raise LocalProtocolError("token of %d bytes: CoAP allows at most 8" % n)
        if self.code == 0 and (n or opts or self.payload):
            raise LocalProtocolError("an Empty message (code 0.00) has no token, options or payload")
        n += 4
        last = 0
        for num, v in opts:
            if not isinstance(v, _BYTES):
                raise LocalProtocolError("option %r value must be bytes, str or int" % (num,))
            ln = len(v)
            d = num - last
            if d < 0 or num > 65535 or ln > 65804:
                raise LocalProtocolError("option %r with a %d-byte value cannot be encoded" % (num, ln))
            n += 1 + (d > 12) + (d > 268) + (ln > 12) + (ln > 268) + ln
            last = num
        if self.payload:
            n += 1 + len(self.payload)
        return n

    def size(self):
        """Encoded length in bytes."""
        return self._size(self._ordered())

    def encode_into(self, buf, off=0):
        """Write the message into buf (bytearray or writable memoryview) at
        off; return the end offset. Nothing is allocated for a message whose
        options are already sorted bytes."""
        opts = self._ordered()
        end = off + self._size(opts)
        if end > len(buf):
            raise LocalProtocolError("buffer too small: message needs %d bytes at offset %d" % (end - off, off))
        tok = self.token
        p = off + 4 + len(tok)
        buf[off] = 0x40 | self.type << 4 | len(tok)
        buf[off + 1] = self.code
        buf[off + 2] = self.mid >> 8
        buf[off + 3] = self.mid & 255
        buf[off + 4 : p] = tok
        last = 0
        for num, v in opts:
            d = num - last
            last = num
            ln = len(v)
            q = p + 1
            if d < 13:
                h = d << 4
            elif d < 269:
                h = 0xD0
                buf[q] = d - 13
                q += 1
            else:
                h = 0xE0
                d -= 269
                buf[q] = d >> 8
                buf[q + 1] = d & 255
                q += 2
            if ln < 13:
                h |= ln
            elif ln < 269:
                h |= 13
                buf[q] = ln - 13
                q += 1
            else:
                h |= 14
                buf[q] = (ln - 269) >> 8
                buf[q + 1] = (ln - 269) & 255
                q += 2
            buf[p] = h
            p = q + ln
            buf[q:p] = v
        if self.payload:
            buf[p] = 0xFF
            buf[p + 1 : end] = self.payload
        return end

    def encode(self):
        buf = bytearray(self.size())
        self.encode_into(buf)
        return bytes(buf)

    def __eq__(self, o):
        return (
            isinstance(o, Message)
            and self.type == o.type
            and self.code == o.code
            and self.mid == o.mid
            and self.token == o.token
            and self.payload == o.payload
            and self._ordered() == o._ordered()
        )

    def __repr__(self):
        return "<CoAP %s %s mid=%d token=%s options=%r payload=%d bytes>" % (
            ("CON", "NON", "ACK", "RST")[self.type & 3],
            code_str(self.code),
            self.mid,
            bytes(self.token).hex(),
            [(n, bytes(v)) for n, v in self.options],
            len(self.payload),
        )


def decode(data, max_options=32, max_message=1152):
    """Message from one datagram. Raises RemoteProtocolError for a malformed
    message (a CoAP message format error) and LimitError past the limits."""
    n = len(data)
    if n > max_message:
        raise LimitError("CoAP message of %d bytes exceeds max_message=%d" % (n, max_message))
    if n < 4:
        raise RemoteProtocolError("CoAP message of %d bytes is shorter than the 4-byte header" % n)
    mv = memoryview(data)
    b = mv[0]
    tkl = b & 15
    if b >> 6 != 1 or tkl > 8:
        raise RemoteProtocolError("not a CoAP version 1 message or token length %d > 8" % tkl)
    code = mv[1]
    p = 4 + tkl
    if code == 0 and n > 4:
        raise RemoteProtocolError("Empty message (code 0.00) carries %d bytes after the header" % (n - 4))
    if p > n:
        raise RemoteProtocolError("token truncated")
    msg = Message(b >> 4 & 3, code, mv[2] << 8 | mv[3], bytes(mv[4:p]))
    opts = msg.options
    num = 0
    try:
        while p < n:
            b = mv[p]
            p += 1
            if b == 0xFF:
                if p == n:
                    raise RemoteProtocolError("payload marker followed by an empty payload")
                msg.payload = mv[p:]
                break
            d = b >> 4
            ln = b & 15
            if d == 13:
                d = mv[p] + 13
                p += 1
            elif d == 14:
                d = (mv[p] << 8 | mv[p + 1]) + 269
                p += 2
            if ln == 13:
                ln = mv[p] + 13
                p += 1
            elif ln == 14:
                ln = (mv[p] << 8 | mv[p + 1]) + 269
                p += 2
            num += d
            if d == 15 or ln == 15 or num > 65535:
                raise RemoteProtocolError("reserved option delta/length nibble 15 or option number above 65535")
            if p + ln > n:
                raise RemoteProtocolError("option %d value truncated" % num)
            if len(opts) >= max_options:
                raise LimitError("more than max_options=%d CoAP options" % max_options)
            opts.append((num, mv[p : p + ln]))
            p += ln
    except IndexError:
        raise RemoteProtocolError("option header truncated")
    return msg


def opt(msg, number):
    """First value of option `number`, or None."""
    for n, v in msg.options:
        if n == number:
            return v
    return None


def opts(msg, number):
    """All values of option `number`, in order."""
    return [v for n, v in msg.options if n == number]


def uint_encode(n):
    """Minimal big-endian bytes of a uint option value (0 -> b"")."""
    if not 0 <= n <= 0xFFFFFFFF:
        raise LocalProtocolError("uint option value %r is not in 0..2**32-1" % (n,))
    k = 0
    while n >> (k << 3):
        k += 1
    return n.to_bytes(k, "big")


def uint_decode(value, max_len=4):
    if len(value) > max_len:
        raise RemoteProtocolError("uint option value of %d bytes, at most %d allowed" % (len(value), max_len))
    return int.from_bytes(value, "big")


def szx_size(szx):
    """Block size for a SZX exponent 0..6 (16..1024 bytes)."""
    if not 0 <= szx <= 6:
        raise LocalProtocolError("SZX %r is not 0..6" % (szx,))
    return 16 << szx


def block_decode(value):
    """(num, m, szx) from a Block1/Block2 option value."""
    v = uint_decode(value, 3)
    if v & 7 == 7:
        raise RemoteProtocolError("block option with reserved SZX 7")
    return v >> 4, v >> 3 & 1, v & 7


def block_encode(num, m, szx):
    if not 0 <= num < 1 << 20:
        raise LocalProtocolError("block number %r is not 0..2**20-1" % (num,))
    szx_size(szx)
    return uint_encode(num << 4 | (8 if m else 0) | szx)


def request(
    code,
    path_segments,
    token,
    mid,
    type=CON,
    content_format=None,
    accept=None,
    payload=b"",
    block1=None,
    block2=None,
    size1=None,
    size2=None,
    extra_options=(),
):
    """A request Message. path_segments are str (UTF-8) or bytes, one Uri-Path
    option each; block1/block2 are (num, m, szx); extra_options (number, value)
    pairs are merged in number order."""
    o = []
    for s in path_segments:
        if isinstance(s, str):
            s = s.encode()
        if len(s) > 255:
            raise LocalProtocolError("Uri-Path segment longer than 255 bytes")
        o.append((URI_PATH, s))
    for num, v in (
        (CONTENT_FORMAT, content_format),
        (ACCEPT, accept),
        (BLOCK2, block2),
        (BLOCK1, block1),
        (SIZE2, size2),
        (SIZE1, size1),
    ):
        if v is not None:
            o.append((num, block_encode(*v) if num in (BLOCK1, BLOCK2) else uint_encode(v)))
    msg = Message(type, code, mid, token, o + list(extra_options), payload)
    msg.options = msg._ordered()
    return msg


def block_slice(body, num, szx):
    """(m, view) for block `num` of body: view is a memoryview slice and m is
    1 when more blocks follow. Raises RemoteProtocolError for a block number
    beyond the body (a peer asked for it)."""
    size = szx_size(szx)
    n = len(body)
    off = num * size
    if off > n or (off == n and num):
        raise RemoteProtocolError("block %d of %d bytes is beyond the %d-byte body" % (num, size, n))
    mv = body if type(body) is memoryview else memoryview(body)
    return (1 if off + size < n else 0), mv[off : off + size]


def blocks(body, szx):
    """Yield (num, m, view) for every block of body at block size 16 << szx."""
    num = 0
    while True:
        m, v = block_slice(body, num, szx)
        yield num, m, v
        if not m:
            return
        num += 1


class BlockAssembler:
    """Reassembles a block-wise body (Block1 on a server, Block2 on a client).
    Feed blocks in order with add(); it returns the body (a bytearray) once a
    block with M=0 arrives, else None. The block size may shrink during the
    transfer (RFC 7959 §2.2/2.3), never grow."""

    def __init__(self, max_body=4096):
        self.max_body = max_body
        self.body = bytearray()
        self.szx = None
        self.done = False

    def next_num(self):
        """Block number to ask for next (at the current block size)."""
        return len(self.body) >> (self.szx + 4) if self.szx is not None else 0

    def add(self, num, m, szx, payload):
        size = 16 << szx
        got = len(self.body)
        ln = len(payload)
        if self.done:
            raise RemoteProtocolError("block %d after the last block" % num)
        if szx > 6 or (self.szx is not None and szx > self.szx):
            raise RemoteProtocolError("block size SZX %d is reserved or larger than before" % szx)
        if num * size != got:
            raise RemoteProtocolError("block %d at offset %d, expected offset %d: gap or overlap" % (num, num * size, got))
        if ln > size or (m and ln != size):
            raise RemoteProtocolError("block %d carries %d bytes, block size is %d" % (num, ln, size))
        if got + ln > self.max_body:
            raise LimitError("block-wise body exceeds max_body=%d bytes" % self.max_body)
        self.body.extend(payload)
        self.szx = szx
        if not m:
            self.done = True
            return self.body
        return None
