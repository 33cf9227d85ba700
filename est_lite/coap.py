# CoAP messages (RFC 7252) and block-wise transfer helpers (RFC 7959).
# Sans-IO: bytes in, Message out; Message in, bytes (or a caller's buffer) out.
#
# Ownership: decode() copies only the token (<= 8 bytes, hashable for request
# matching). Option values and the payload of a decoded Message are
# memoryview slices of the input: no copies. They compare equal to bytes
# (`v == b"x"`) and bytes(v) copies them; if the input is a receive buffer you
# will reuse, copy what you keep first.
#
# Options are a list of (number, value) pairs with bytes-like values (build
# uint values with uint_encode, text with str.encode). Encoding writes them
# sorted by number, keeping the given order of repeated options.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError

# option numbers used by request() (same values as est_lite.numbers)
_URI_PATH = const(11)
_CONTENT_FORMAT = const(12)
_ACCEPT = const(17)
_BLOCK2 = const(23)
_BLOCK1 = const(27)
_SIZE2 = const(28)
_SIZE1 = const(60)

_BYTES = (bytes, bytearray, memoryview)


def _nib(v):  # option header nibble for a delta or length
    return v if v < 13 else 13 if v < 269 else 14


def _put(buf, q, v):  # extended delta/length bytes; returns the next offset
    if v > 268:
        buf[q] = (v - 269) >> 8
        buf[q + 1] = (v - 269) & 255
        return q + 2
    if v > 12:
        buf[q] = v - 13
        return q + 1
    return q


def _get(mv, p, v):  # value of a delta/length nibble v with its extension at p
    if v == 13:
        return mv[p] + 13
    if v == 14:
        return (mv[p] << 8 | mv[p + 1]) + 269
    return v


class Message:
    def __init__(self, type=0, code=0, mid=0, token=b"", options=None, payload=b""):
        self.type = type  # CON 0, NON 1, ACK 2, RST 3
        self.code = code
        self.mid = mid
        self.token = token
        self.options = [] if options is None else options
        self.payload = payload

    def _ordered(self):
        # The options sorted by number, stable for repeats (MicroPython's
        # sort is not stable): self.options itself when already in order.
        opts = self.options
        last = 0
        for o in opts:
            if o[0] < last:
                break
            last = o[0]
        else:
            return opts
        out = []
        for o in opts:  # insertion sort
            i = len(out)
            while i and out[i - 1][0] > o[0]:
                i -= 1
            out.insert(i, o)
        return out

    def _size(self, opts):
        n = len(self.token)
        if self.type >> 2 or self.code >> 8 or self.mid >> 16 or n > 8 or self.code == 0 and (n or opts or self.payload):
            raise LocalProtocolError(
                "bad CoAP type %r, code %r, mid %r or %d-byte token, or an Empty message with content"
                % (self.type, self.code, self.mid, n)
            )
        n += 4
        last = 0
        for num, v in opts:
            if not isinstance(v, _BYTES) or num - last < 0 or num > 65535 or len(v) > 65804:
                raise LocalProtocolError("option %r: value must be bytes (at most 65804), number 0..65535" % (num,))
            ln = len(v)
            d = num - last
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
        off; return the end offset. Allocates nothing when the options are
        already sorted bytes-like values."""
        opts = self._ordered()
        end = off + self._size(opts)
        if end > len(buf):
            raise LocalProtocolError("buffer too small: the message needs %d bytes at offset %d" % (end - off, off))
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
            buf[p] = _nib(d) << 4 | _nib(ln)
            p = _put(buf, _put(buf, p + 1, d), ln)
            buf[p : p + ln] = v
            p += ln
        if self.payload:
            buf[p] = 0xFF
            buf[p + 1 : end] = self.payload
        return end

    def encode(self):
        buf = bytearray(self.size())
        self.encode_into(buf)
        return bytes(buf)

    def _key(self):
        return self.type, self.code, self.mid, self.token, self.payload, self._ordered()

    def __eq__(self, o):  # MicroPython derives != from this
        return isinstance(o, Message) and self._key() == o._key()

    def __repr__(self):
        return "<CoAP %r options=%r payload=%d bytes>" % (self._key()[:4], [(n, bytes(v) if isinstance(v, memoryview) else v) for n, v in self.options], len(self.payload))


def decode(data, max_options=32, max_message=1152):
    """Message from one datagram. Raises RemoteProtocolError for a message
    format error and LimitError past max_options or max_message."""
    n = len(data)
    if n > max_message:
        raise LimitError("CoAP message of %d bytes exceeds max_message=%d" % (n, max_message))
    mv = memoryview(data)
    b = mv[0] if n > 3 else 0
    p = 4 + (b & 15)
    if b >> 6 != 1 or b & 15 > 8 or p > n or mv[1] == 0 and n > 4:
        raise RemoteProtocolError("bad CoAP header: %d bytes, first byte 0x%02x (version 1, token length 0..8; Empty message has no content)" % (n, b))
    msg = Message(b >> 4 & 3, mv[1], mv[2] << 8 | mv[3], bytes(mv[4:p]))
    opts = msg.options
    num = 0
    try:
        while p < n:
            b = mv[p]
            p += 1
            if b == 0xFF:
                if p == n:
                    raise RemoteProtocolError("CoAP payload marker followed by an empty payload")
                msg.payload = mv[p:]
                break
            d = b >> 4
            ln = b & 15
            if d == 15 or ln == 15:
                raise RemoteProtocolError("reserved CoAP option nibble 15 (0x%02x)" % b)
            num += _get(mv, p, d)
            p += (d > 12) + (d > 13)
            ln = _get(mv, p, ln)
            p += (b & 15 > 12) + (b & 15 > 13)
            if num > 65535 or p + ln > n:
                raise IndexError
            if len(opts) >= max_options:
                raise LimitError("more than max_options=%d CoAP options" % max_options)
            opts.append((num, mv[p : p + ln]))
            p += ln
    except IndexError:
        raise RemoteProtocolError("CoAP option %d truncated or numbered above 65535" % num)
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
    if type(n) is not int or not 0 <= n <= 0xFFFFFFFF:
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
    type=0,
    content_format=None,
    accept=None,
    payload=b"",
    block1=None,
    block2=None,
    size1=None,
    size2=None,
    extra_options=(),
):
    """A validated request Message. path_segments are str (UTF-8) or bytes,
    one Uri-Path option each; block1/block2 are (num, m, szx); the
    extra_options (number, value) pairs, value bytes, str (UTF-8) or int
    (uint), are merged in number order."""
    o = []
    for s in path_segments:
        if isinstance(s, str):
            s = s.encode()
        if len(s) > 255:
            raise LocalProtocolError("Uri-Path segment longer than 255 bytes")
        o.append((_URI_PATH, s))
    for num, v in (
        (_CONTENT_FORMAT, content_format),
        (_ACCEPT, accept),
        (_BLOCK2, block2),
        (_BLOCK1, block1),
        (_SIZE2, size2),
        (_SIZE1, size1),
    ):
        if v is not None:
            o.append((num, block_encode(*v) if num in (_BLOCK1, _BLOCK2) else uint_encode(v)))
    for num, v in extra_options:
        o.append((num, v.encode() if isinstance(v, str) else uint_encode(v) if isinstance(v, int) else v))
    msg = Message(type, code, mid, token, o, payload)
    msg.options = msg._ordered()
    msg._size(msg.options)  # validate now, not at send time
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
    mv = body if isinstance(body, memoryview) else memoryview(body)
    return (1 if off + size < n else 0), mv[off : off + size]


def blocks(body, szx):
    """Yield (num, m, view) for every block of body at block size 16 << szx."""
    num = 0
    m = 1
    while m:
        m, v = block_slice(body, num, szx)
        yield num, m, v
        num += 1


class BlockAssembler:
    """Reassembles a block-wise body (Block1 on a server, Block2 on a client).
    Feed blocks in order with add(); it returns the body (a bytearray) once a
    block with M=0 arrives, else None. The block size may shrink during the
    transfer (RFC 7959 §2.3), never grow."""

    def __init__(self, max_body=4096):
        self.max_body = max_body
        self.body = bytearray()
        self.szx = 6
        self.done = False

    def next_num(self):
        """Block number to ask for next, at the current block size."""
        return len(self.body) >> (self.szx + 4)

    def add(self, num, m, szx, payload):
        got = len(self.body)
        ln = len(payload)
        if self.done or szx > self.szx or num << (szx + 4) != got:
            raise RemoteProtocolError(
                "block %d (SZX %d) out of sequence: gap, overlap, larger block size than SZX %d,"
                " or after the last block; %d bytes received" % (num, szx, self.szx, got)
            )
        if ln > 16 << szx or m and ln != 16 << szx:
            raise RemoteProtocolError("block %d carries %d bytes, its block size is %d" % (num, ln, 16 << szx))
        if got + ln > self.max_body:
            raise LimitError("block-wise body exceeds max_body=%d bytes" % self.max_body)
        self.body.extend(payload)
        self.szx = szx
        if not m:
            self.done = True
            return self.body
        return None
