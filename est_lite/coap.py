# CoAP messages (RFC 7252) and block-wise transfer helpers (RFC 7959).
# Sans-IO: bytes in, Message out; Message in, bytes (or a caller's buffer) out.
#
# decode() copies only the token (<= 8 bytes, hashable). Option values and
# the payload are memoryview slices of the input (equal to bytes; bytes(v)
# copies): copy what you keep before reusing a receive buffer.
#
# Options are a list of (number, value) pairs with bytes-like values. They
# are written sorted by number, repeats in their given order.
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError, const

_BLOCK2 = const(23)
_BLOCK1 = const(27)
_BYTES = (bytes, bytearray, memoryview)


def _nib(v):  # option header nibble for a delta or length
    return v if v < 13 else 13 if v < 269 else 14


def _put(buf, q, v):  # extended delta/length bytes at q (buf None: none); returns the next offset
    if v > 268:
        if buf is not None:
            buf[q] = (v - 269) >> 8
            buf[q + 1] = (v - 269) & 255
        return q + 2
    if v > 12:
        if buf is not None:
            buf[q] = v - 13
        return q + 1
    return q


def _sort(o):
    # stable by number (MicroPython's sort is not stable); o itself if sorted
    n = 0
    for x in o:
        if x[0] < n:
            break
        n = x[0]
    else:
        return o
    out = []
    for x in o:
        i = len(out)
        while i and out[i - 1][0] > x[0]:
            i -= 1
        out.insert(i, x)
    return out


class Message:
    def __init__(self, type=0, code=0, mid=0, token=b"", options=None, payload=b""):
        self.type = type  # CON 0, NON 1, ACK 2, RST 3
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options or []
        self.payload = payload

    def size(self):
        """Encoded length in bytes."""
        return self.encode_into(None)

    def encode_into(self, buf, off=0):
        """Write the message into buf (bytearray or writable memoryview) at
        off; return the end offset (buf None: only measure and validate)."""
        o = _sort(self.options)
        t = self.token
        n = len(t)
        c = self.code
        pl = self.payload
        if self.type >> 2 or c >> 8 or self.mid >> 16 or n > 8 or not c and (n or o or pl):
            raise LocalProtocolError("bad CoAP type/code/mid, %d-byte token, or Empty message with content" % n)
        if buf is not None:
            if self.encode_into(None, off) > len(buf):
                raise LocalProtocolError("CoAP buffer too small")
            buf[off] = 0x40 | self.type << 4 | n
            buf[off + 1] = c
            buf[off + 2] = self.mid >> 8
            buf[off + 3] = self.mid & 255
            buf[off + 4 : off + 4 + n] = t
        p = off + 4 + n
        last = 0
        for num, v in o:
            if not isinstance(v, _BYTES) or num < last or num >> 16 or len(v) > 65804:
                raise LocalProtocolError("bad CoAP option %r" % (num,))
            d = num - last
            last = num
            n = len(v)
            if buf is not None:
                buf[p] = _nib(d) << 4 | _nib(n)
            p = _put(buf, _put(buf, p + 1, d), n)
            if buf is not None:
                buf[p : p + n] = v
            p += n
        if pl:
            if buf is not None:
                buf[p] = 0xFF
                buf[p + 1 : p + 1 + len(pl)] = pl
            p += 1 + len(pl)
        return p

    def encode(self):
        buf = bytearray(self.size())
        self.encode_into(buf)
        return bytes(buf)

    def _k(self):
        o = [(n, bytes(v) if type(v) is memoryview else v) for n, v in _sort(self.options)]
        return self.type, self.code, self.mid, self.token, o, self.payload

    def __eq__(self, o):  # MicroPython derives != from this
        return isinstance(o, Message) and self._k() == o._k()

    def __repr__(self):
        return "<CoAP %r>" % (self._k(),)


def decode(data, max_options=32, max_message=1152):
    """Message from one datagram. Raises RemoteProtocolError for a message
    format error and LimitError past max_options or max_message."""
    n = len(data)
    if n > max_message:
        raise LimitError("CoAP message > max_message=%d" % max_message)
    mv = memoryview(data)
    b = mv[0] if n > 3 else 0
    p = 4 + (b & 15)
    if b >> 6 != 1 or b & 15 > 8 or p > n or mv[1] == 0 and n > 4:
        raise RemoteProtocolError("bad CoAP header or Empty message with content")
    msg = Message(b >> 4 & 3, mv[1], mv[2] << 8 | mv[3], bytes(mv[4:p]))
    o = msg.options
    num = 0
    try:
        while p < n:
            b = mv[p]
            p += 1
            if b == 0xFF:
                if p == n:
                    raise IndexError
                msg.payload = mv[p:]
                break
            # the delta, then the length: nibble 13 adds one byte, 14 two
            for sh in (4, 0):
                v = b >> sh & 15
                if v == 13:
                    v = mv[p] + 13
                    p += 1
                elif v == 14:
                    v = (mv[p] << 8 | mv[p + 1]) + 269
                    p += 2
                elif v == 15:
                    raise IndexError
                if sh:
                    num += v
            if num >> 16 or p + v > n:
                raise IndexError
            if len(o) >= max_options:
                raise LimitError("CoAP options > max_options=%d" % max_options)
            o.append((num, mv[p : p + v]))
            p += v
    except IndexError:
        raise RemoteProtocolError("bad CoAP option after %d" % num)
    return msg


def opt(msg, number):
    """First value of option `number`, or None."""
    for n, v in msg.options:
        if n == number:
            return v


def opts(msg, number):
    """All values of option `number`, in order."""
    return [v for n, v in msg.options if n == number]


def uint_encode(n):
    """Minimal big-endian bytes of a uint option value (0 -> b"")."""
    if type(n) is not int or n >> 32 or n < 0:
        raise LocalProtocolError("uint %r not 0..2**32-1" % (n,))
    k = 0
    while n >> (k << 3):
        k += 1
    return n.to_bytes(k, "big")


def uint_decode(value, max_len=4):
    if len(value) > max_len:
        raise RemoteProtocolError("uint option > %d bytes" % max_len)
    return int.from_bytes(value, "big")


def szx_size(szx):
    """Block size for a SZX exponent 0..6 (16..1024 bytes)."""
    if not 0 <= szx <= 6:
        raise LocalProtocolError("SZX %r not 0..6" % (szx,))
    return 16 << szx


def block_decode(value):
    """(num, m, szx) from a Block1/Block2 option value."""
    v = uint_decode(value, 3)
    if v & 7 == 7:
        raise RemoteProtocolError("block option with SZX 7")
    return v >> 4, v >> 3 & 1, v & 7


def block_encode(num, m, szx):
    if num >> 20 or num < 0:
        raise LocalProtocolError("block number %r not 0..2**20-1" % (num,))
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
    one Uri-Path option each; block1/block2 are (num, m, szx); extra_options
    are (number, value) pairs, value bytes, str (UTF-8) or int (uint)."""
    o = []
    for s in path_segments:
        if isinstance(s, str):
            s = s.encode()
        if len(s) > 255:
            raise LocalProtocolError("Uri-Path > 255 bytes")
        o.append((11, s))
    for num, x in ((12, content_format), (17, accept), (23, block2), (27, block1), (28, size2), (60, size1)):
        if x is not None:
            o.append((num, block_encode(*x) if num == _BLOCK1 or num == _BLOCK2 else uint_encode(x)))
    for num, x in extra_options:
        o.append((num, x.encode() if isinstance(x, str) else uint_encode(x) if isinstance(x, int) else x))
    msg = Message(type, code, mid, token, _sort(o), payload)
    msg.encode_into(None)  # validate now, not at send time
    return msg


def block_slice(body, num, szx):
    """(m, view) for block `num` of body: view is a memoryview slice and m is
    1 when more blocks follow. RemoteProtocolError for a block number beyond
    the body (a peer asked for it)."""
    size = szx_size(szx)
    n = len(body)
    off = num * size
    if off > n or off == n and num:
        raise RemoteProtocolError("block %d beyond the body" % num)
    return (1 if off + size < n else 0), memoryview(body)[off : off + size]


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
    add() takes blocks in order and returns the body (a bytearray) once a
    block with M=0 arrives, else None. The block size may shrink during the
    transfer (RFC 7959 §2.3), never grow. size: the peer's Size1/Size2, if
    any: the body buffer is made that large at once (no regrowing copies),
    .got counts the bytes received (len(.body) until then is size)."""

    def __init__(self, max_body=4096, size=0):
        self.max_body = max_body
        self.body = bytearray(size if 0 < size <= max_body else 0)
        self.got = 0
        self.szx = 6
        self.done = False

    def next_num(self):
        """Block number to ask for next, at the current block size."""
        return self.got >> (self.szx + 4)

    def add(self, num, m, szx, payload):
        got = self.got
        ln = len(payload)
        if self.done or szx > self.szx or num << (szx + 4) != got:
            raise RemoteProtocolError(
                "block %d out of sequence (gap, overlap, larger SZX, after the last)" % num
            )
        if ln > 16 << szx or m and ln != 16 << szx:
            raise RemoteProtocolError("block %d: %d bytes for size %d" % (num, ln, 16 << szx))
        if got + ln > self.max_body:
            raise LimitError("block-wise body > max_body=%d" % self.max_body)
        b = self.body
        if got + ln <= len(b):
            b[got : got + ln] = payload
        else:
            b[got:] = payload  # past a size hint (or none): the buffer grows
        got = self.got = got + ln
        self.szx = szx
        if not m:
            self.done = True
            if got < len(b):  # the size hint was larger than the body
                self.body = b = b[:got]
            return b
