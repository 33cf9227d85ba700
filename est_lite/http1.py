# HTTP/1.1 for EST over HTTPS (RFC 7030 as corrected by RFC 8951), sans-IO.
#
# - build_request / build_est_request: request bytes (Host, Content-Length,
#   base64 bodies in 64-column lines); basic_auth / digest_auth values
# - ResponseParser: receive_data(bytes) / next_event() -> NEED_DATA | Response
#   (Content-Length, chunked, read-to-EOF, 1xx skipped, reset() for keep-alive)
# - decode_b64_body: RFC 8951 tolerant base64, decoded window by window
# - parse_multipart / build_multipart / split_serverkeygen (RFC 7030 §4.4.2)
# - parse_challenges / pick_digest (WWW-Authenticate, RFC 7235 / 7616)
# The port owns the socket and feeds bytes in. See docs/http1.md.

from binascii import a2b_base64, b2a_base64

from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError, const

_MT_PKCS7 = const("application/pkcs7-mime")  # = numbers.MT_PKCS7 (numbers is not loaded here)

NEED_DATA = "NEED_DATA"
RETRY_AFTER_DEFAULT = const(60)  # seconds, for a Retry-After HTTP-date without a Date to measure it from

_B64WIN = const(1024)  # input bytes per base64 decoding window
_PREALLOC = const(4096)  # a Content-Length body is allocated up to this at once, then grows as bytes arrive

# parser states
_HEAD = const(0)
_LEN = const(1)  # Content-Length body, or body up to EOF (need = max_body + 1)
_CDATA = const(2)
_CEND = const(3)
_CSIZE = const(4)
_TRAIL = const(5)
_DONE = const(6)
_GONE = const(7)  # the Response was returned


def _only(s, chars="0123456789"):
    # non-empty and every character in chars (int()/isdigit() accept too much)
    return s != "" and not s.strip(chars)


def _istok(s):
    # a non-empty RFC 9110 token
    return s != "" and not [c for c in s if c <= " " or c >= "\x7f" or c in '"(),/:;<=>?@[\\]{}']


def _text(b):
    b = bytes(b)
    try:
        return str(b, "utf-8")
    except UnicodeError:
        return str(bytes(x if x < 128 else 63 for x in b), "ascii")


def _limit(what, name, v):
    return LimitError("%s exceeds %s=%d" % (what, name, v))


def _check(what, s, bad):
    for c in s:
        if c < " " and c != "\t" or c == "\x7f" or c in bad:
            raise LocalProtocolError("%s %r: forbidden character %r" % (what, s, c))


# ---------------------------------------------------------------- requests


def b64_encode_lines(der, width=64, eol=b"\r\n"):
    """base64 of der in lines of width (a multiple of 4) characters, each
    ending with eol, written into one bytearray."""
    n = max(width // 4, 1) * 3
    mv = memoryview(der)
    k = len(mv)
    out = bytearray((k + 2) // 3 * 4 + (k + n - 1) // n * len(eol))
    j = 0
    for i in range(0, k, n):
        x = b2a_base64(mv[i : i + n], newline=False) + eol
        out[j : j + len(x)] = x
        j += len(x)
    return out


def build_request(
    method,
    path,
    host,
    content_type=None,
    body=b"",
    headers=(),
    authorization=None,
    accept=None,
    user_agent="est-lite",
    transfer_encoding="base64",
    keep_alive=True,
):
    """Request bytes. Content-Length goes with every body and every method
    but GET/HEAD; Content-Transfer-Encoding (None to omit) only with a body."""
    if not _istok(method):
        raise LocalProtocolError("bad HTTP method %r" % method)
    if path[:1] != "/":
        raise LocalProtocolError("path %r: no leading '/'" % path)
    _check("path", path, " ")
    if not host:
        raise LocalProtocolError("empty Host")
    _check("host", host, " /")
    h = [
        ("Host", host),
        ("User-Agent", user_agent),
        ("Accept", accept),
        ("Authorization", authorization),
        ("Content-Type", content_type),
        ("Content-Transfer-Encoding", body and content_type and transfer_encoding),
        ("Content-Length", (body or method not in ("GET", "HEAD")) and str(len(body))),
        ("Connection", "keep-alive" if keep_alive else "close"),
    ]
    h.extend(headers)
    out = ["%s %s HTTP/1.1\r\n" % (method, path)]
    for name, value in h:
        if value:
            if not _istok(name):
                raise LocalProtocolError("bad header name %r" % name)
            _check("header value", value, "")
            out.append("%s: %s\r\n" % (name, value))
    out.append("\r\n")
    return "".join(out).encode() + body


def build_est_request(op, host, der=b"", label=None, path=None, **kw):
    """Request for EST operation op (numbers.OP_*): GET for cacerts and
    csrattrs; otherwise POST of base64(der) as application/pkcs10
    (application/pkcs7-mime for fullcmc). path: instead of the operation's
    (a same-origin redirection). Other keywords: build_request."""
    if path is None:
        from est_lite.paths import https_path

        path = https_path(op, label)
    if op < 2:
        return build_request("GET", path, host, **kw)
    ct = _MT_PKCS7 if op == 5 else "application/pkcs10"
    return build_request("POST", path, host, ct, b64_encode_lines(der), **kw)


# ---------------------------------------------------------------- authentication


def basic_auth(user, password):
    """Authorization value for HTTP Basic (RFC 7617), UTF-8."""
    if ":" in user:
        raise LocalProtocolError("Basic user-id with ':'")
    return "Basic " + str(b2a_base64(("%s:%s" % (user, password)).encode(), newline=False), "ascii")


# ---------------------------------------------------------------- messages


def parse_media_type(value):
    """'Multipart/Mixed ; boundary="est"' -> ('multipart/mixed', {'boundary': 'est'}).
    Lenient: malformed parameters are skipped; parameter values keep case."""
    items = (value or "").split(";")
    params = {}
    for it in items[1:]:
        k, eq, v = it.partition("=")
        k = k.strip(" \t").lower()
        v = v.strip(" \t")
        if eq and k:
            if len(v) > 1 and v[0] == '"' == v[-1]:
                v = v[1:-1]
            params[k] = v
    return items[0].strip(" \t").lower(), params


def _headers(lines):
    out = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:  # obs-fold: join with one space
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        if not colon or not _istok(name):
            raise RemoteProtocolError("malformed header line %r" % line[:60])
        out.append((name.lower(), value.strip(" \t")))
    return out


class Part:
    """A multipart body part (and the base of Response): headers
    [(lower-case name, value)], body, content_type (lower, no params), params."""

    def __init__(self, headers, body):
        self.headers = headers
        self.body = body
        self.content_type, self.params = parse_media_type(self.header("content-type"))

    def header(self, name):
        """First value of header name (any case), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def _list(self, name):
        # comma-separated elements of all name headers, lower-case, no spaces
        return ",".join(v for k, v in self.headers if k == name).lower().replace(" ", "").split(",")


class Response(Part):
    """status (int), reason, version, headers, body (bytearray), keep_alive,
    content_type, params, retry_after (seconds as int: the delta-seconds,
    or an HTTP-date minus the answer's Date header, both the server's
    clock; RETRY_AFTER_DEFAULT if that cannot be had; None if absent)."""

    def __init__(self, version, status, reason, headers):
        super().__init__(headers, bytearray())
        self.version = version
        self.status = status
        self.reason = reason
        c = self._list("connection")
        self.keep_alive = "keep-alive" in c if version == "HTTP/1.0" else "close" not in c
        v = self.header("retry-after")
        if v is not None:
            if _only(v):
                v = int(v) if len(v) < 10 else 999999999
            else:  # an HTTP-date: how far past this answer's Date (http1_rare)
                from est_lite.http1_rare import date_delay

                v = date_delay(v, self.header("date"))
        self.retry_after = v

    def __repr__(self):
        return "<Response %d %s>" % (self.status, self.content_type)


class ResponseParser:
    """Sans-IO HTTP/1.1 response parser for one connection.
    receive_data(data) buffers bytes (b"" means EOF); next_event() returns
    NEED_DATA or a Response; reset() starts the next response (keep-alive).
    max_header bounds the head (and each chunk line, and the trailers),
    max_body the body. method "HEAD": responses have no body."""

    def __init__(self, max_header=4096, max_body=16384, method="GET"):
        self.max_header = max_header
        self.max_body = max_body
        self.method = method
        self._buf = bytearray()
        self._eof = False
        self.reset()

    def reset(self, method=None):
        """Get ready for the next response on the same connection; bytes
        already received after the last response are kept."""
        if method:
            self.method = method
        self._state = _HEAD
        self._lines = []
        self._n = 0
        self._resp = None

    def receive_data(self, data):
        if data:
            if self._eof:
                raise LocalProtocolError("receive_data after EOF")
            self._buf.extend(data)
        else:
            self._eof = True

    def next_event(self):
        buf = self._buf
        if self._state == _GONE:
            raise LocalProtocolError("reset() for the next response")
        while self._state < _DONE:
            st = self._state
            if st <= _CDATA and st != _HEAD:  # _LEN, _CDATA
                body = self._resp.body
                g = len(body) if st == _CDATA else self._got
                k = min(self._need - g, len(buf))
                body[g : g + k] = memoryview(buf)[:k]
                buf[:k] = b""
                g += k
                self._got = g
                if g > self.max_body:
                    raise _limit("body", "max_body", self.max_body)
                if g < self._need:
                    break
                self._state = _DONE if st == _LEN else _CEND
                continue
            line = self._line()
            if line is None:
                break
            if st == _HEAD:
                if line or self._lines:  # blank lines before the status line: skipped
                    self._lines.append(line)
                    if not line:
                        self._head()
            elif st == _CEND:
                if line:
                    raise RemoteProtocolError("no CRLF after chunk data")
                self._state = _CSIZE
                self._n = 0
            elif st == _TRAIL:
                if not line:
                    self._state = _DONE
            else:  # _CSIZE
                h = line.split(";", 1)[0].strip(" \t")
                if not _only(h, "0123456789abcdefABCDEF"):
                    raise RemoteProtocolError("bad chunk size %r" % line[:40])
                h = h.lstrip("0") or "0"
                n = int(h, 16) if len(h) < 9 else self.max_body + 1
                self._need = len(self._resp.body) + n
                if self._need > self.max_body:
                    raise _limit("chunked body", "max_body", self.max_body)
                self._state = _CDATA if n else _TRAIL
        else:
            self._state = _GONE
            return self._resp
        if self._eof:
            if self._state == _LEN and self._need > self.max_body:  # body delimited by EOF
                self._state = _GONE
                return self._resp
            raise RemoteProtocolError(
                "connection closed %s" % ("before a response" if self._state == _HEAD and not buf else "mid-response")
            )
        return NEED_DATA

    def _line(self):
        # next line (CRLF or bare LF) as str without its end, or None
        buf = self._buf
        j = buf.find(b"\n")
        if j < 0 or j >= self.max_header:
            if len(buf) > self.max_header:
                raise _limit("line", "max_header", self.max_header)
            return None
        self._n += j + 1
        if self._n > self.max_header:
            raise _limit("header section", "max_header", self.max_header)
        line = _text(buf[: j - (j > 0 and buf[j - 1] == 13)])
        buf[: j + 1] = b""
        return line

    def _head(self):
        lines = self._lines
        self._lines = []
        self._n = 0
        v, c, reason = (lines[0] + "  ").split(" ", 2)
        if v not in ("HTTP/1.1", "HTTP/1.0") or len(c) != 3 or not _only(c) or not "100" <= c < "600":
            raise RemoteProtocolError("bad HTTP status line %r" % lines[0][:60])
        if c < "200":  # 1xx: informational, skipped
            return
        r = self._resp = Response(v, int(c), reason.strip(" "), _headers(lines[1:-1]))
        te = [x for x in r._list("transfer-encoding") if x not in ("", "identity")]
        cl = set(r._list("content-length"))
        self._got = 0
        if self.method == "HEAD" or c in ("204", "304"):
            self._state = _DONE
        elif te:
            if te != ["chunked"]:
                raise RemoteProtocolError("unsupported Transfer-Encoding %r" % ",".join(te))
            self._state = _CSIZE
        elif cl != {""}:
            n = cl.pop()
            if cl or not _only(n):
                raise RemoteProtocolError("bad Content-Length %r" % r.header("content-length"))
            if len(n) > 12 or int(n) > self.max_body:
                raise _limit("Content-Length " + n, "max_body", self.max_body)
            self._need = int(n)
            r.body = bytearray(min(self._need, _PREALLOC))
            self._state = _LEN
        else:
            # no length: the connection cannot be reused. A 202 (with Retry-After,
            # seen in the wild on kept-alive connections) has no body; anything
            # else is read up to EOF.
            r.keep_alive = False
            self._need = self.max_body + 1
            self._state = _DONE if c == "202" else _LEN


# ---------------------------------------------------------------- bodies


def decode_b64_body(body, max_out=16384):
    """DER from a base64 body, tolerant as RFC 8951 asks: CR, LF, SP and TAB
    anywhere, trailing NUL bytes; any other character -> RemoteProtocolError.
    Decodes _B64WIN input bytes at a time (no cleaned copy of the whole body)."""
    mv = memoryview(body)
    end = len(mv)
    while end and mv[end - 1] in (0, 9, 10, 13, 32):
        end -= 1
    out = []
    total = 0
    w = b""
    for i in range(0, end, _B64WIN):
        raw = bytes(mv[i : min(i + _B64WIN, end)])
        ws = raw.split()
        ws.insert(0, w)
        w = b"".join(ws)
        last = i + _B64WIN >= end
        n = len(w) if last else len(w) // 4 * 4
        d = w[:n]
        w = w[n:]
        s = d.rstrip(b"=") if last else d
        p = n - len(s)
        try:
            x = a2b_base64(d)
        except ValueError:
            x = b""
        if b"\x0b" in raw or b"\x0c" in raw or b"=" in s or p > 2 or n % 4 or len(x) != n // 4 * 3 - p:
            raise RemoteProtocolError("invalid base64 body")
        total += len(x)
        if total > max_out:
            raise _limit("decoded body", "max_out", max_out)
        out.append(x)
    return b"".join(out)


def __getattr__(name):
    # parse_challenges, pick_digest, digest_auth (a 401), parse_multipart and
    # split_serverkeygen (serverkeygen) live in est_lite.http1_rare, loaded
    # on first use: a device that never sees them does not hold their code
    from est_lite import http1_rare

    return getattr(http1_rare, name)
