"""EST over HTTPS (RFC 7030 + RFC 8951) in front of an `EstService`.

Stack: a listening socket, pyOpenSSL `SSL.Connection`s on the accepted
sockets, and HTTP/1.1 parsed here (EST needs only Content-Length/chunked
bodies and a few headers). pyOpenSSL gives the TLS object directly: the
peer certificate chain, tls-unique (`get_peer_finished()`, TLS 1.2) and the
RFC 9266 tls-exporter (`export_keying_material`, TLS 1.3), which stdlib
`ssl` and `http.server` cannot (no exporter; no makefile() on pyOpenSSL
connections).

Two ways to run the connections, one connection code (`_serve`, a
generator that yields whenever the socket would block):
- io="loop" (the default with the built-in CA and authenticator): one
  thread, non-blocking sockets, an epoll/kqueue selector. Requests are
  answered on that thread: the built-in CA answers in well under a
  millisecond, and no thread hand-offs or GIL switches are paid per
  connection. Idle or slow clients cost a socket each, not a thread.
- io="threads" (the default with another CA backend or authenticator,
  which may block on the network): a fixed pool of worker threads taking
  turns at accept() (leader/followers), each driving one connection over a
  blocking socket with kernel timeouts.

    srv = EstHttpsServer(service, cert_file, key_file, host="127.0.0.1", port=0)
    port = srv.start()          # listening; port 0 picks a free one
    ...
    srv.stop()
"""

import binascii
import functools
import logging
import os
import re
import select
import selectors
import socket
import struct
import threading
import time

from cryptography import x509
from OpenSSL import SSL

from est_lite import numbers
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError, SecurityError

from .auth import AuthenticationRequired, DigestChallenger, parse_auth_params
from .dtls_server import host_key
from .service import AuthContext, PendingApproval
from .store import GroupCommit, current_group

log = logging.getLogger("est_lite.server")

_REASONS = {
    200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Payload Too Large", 415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# TLS 1.2 suites: ECDSA first (our CA issues P-256 server certs), AEAD only
_CIPHERS_12 = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
)

# SSL_MODE_NO_AUTO_CHAIN (ssl.h; pyOpenSSL does not export it, see dtls.py)
_MODE_NO_AUTO_CHAIN = 0x00000008

_CIPHERS_13 = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"


_WDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_date_cache = [(None, "")]  # [(second, its IMF-fixdate)]: one slot, replaced whole (threads)


def _http_date():
    """Now as an RFC 9110 IMF-fixdate, for the Date header an origin server
    with a clock must send (RFC 9110 §6.6.1); formatted once a second."""
    t = int(time.time())
    c = _date_cache[0]
    if c[0] != t:
        g = time.gmtime(t)
        c = (t, "%s, %02d %s %04d %02d:%02d:%02d GMT" % (_WDAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon - 1],
                                                          g.tm_year, g.tm_hour, g.tm_min, g.tm_sec))
        _date_cache[0] = c
    return c[1]


class HttpError(EstError):
    """An HTTP-level problem of the request (status set per instance)."""


class _Closed(Exception):
    pass


class _TimedOut(Exception):
    """Thrown into a connection generator whose wait has expired."""


_STRAY = (b"\r", b"\n", b"\x00")  # bytes tolerated before a request

# what a connection generator waits for (with an absolute monotonic deadline)
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# (io="loop") the answer holds a certificate whose row the loop's GroupCommit
# has queued: resumed after the flush that wrote it
_COMMIT = "commit"


class _EpollPoller:
    """The few selector calls the event loop makes, on select.epoll directly
    (Linux). selectors' register/modify/unregister and select cost about
    10 k instructions each in Python (a SelectorKey namedtuple, fileno
    look-ups, event translation); these about 1 k. select() returns
    (socket, data) pairs; error and hang-up events are reported as ready,
    as selectors does."""

    __slots__ = ("_ep", "_map", "_mask")

    def __init__(self):
        self._ep = select.epoll()
        self._map = {}  # fd -> (socket, data)
        self._mask = {_READ: select.EPOLLIN, _WRITE: select.EPOLLOUT, _READ | _WRITE: select.EPOLLIN | select.EPOLLOUT}

    def register(self, sock, events, data):
        fd = sock.fileno()
        self._ep.register(fd, self._mask[events])
        self._map[fd] = (sock, data)

    def modify(self, sock, events, data):
        fd = sock.fileno()
        self._ep.modify(fd, self._mask[events])
        self._map[fd] = (sock, data)

    def unregister(self, sock):
        fd = sock.fileno()
        self._ep.unregister(fd)
        del self._map[fd]

    def select(self, timeout):
        m = self._map
        return [m[fd] for fd, _ev in self._ep.poll(timeout) if fd in m]

    def close(self):
        self._ep.close()
        self._map.clear()


class _SelectorsPoller:
    """_EpollPoller's interface over selectors.DefaultSelector (kqueue,
    poll, ...) where there is no epoll."""

    __slots__ = ("_sel",)

    def __init__(self):
        self._sel = selectors.DefaultSelector()

    def register(self, sock, events, data):
        self._sel.register(sock, events, data)

    def modify(self, sock, events, data):
        self._sel.modify(sock, events, data)

    def unregister(self, sock):
        self._sel.unregister(sock)

    def select(self, timeout):
        return [(key.fileobj, key.data) for key, _ev in self._sel.select(timeout)]

    def close(self):
        self._sel.close()


def _poller():
    return _EpollPoller() if hasattr(select, "epoll") else _SelectorsPoller()


class _PyOps:
    """The RawOps interface (dtls.RawOps) over pyOpenSSL's public calls, for
    a pyOpenSSL without the attributes RawOps relies on."""

    @staticmethod
    def handshake(tls):
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    @staticmethod
    def read(tls):
        try:
            return tls.recv(65536)
        except SSL.WantReadError:
            return None

    @staticmethod
    def write(tls, data):
        return tls.send(data)

    @staticmethod
    def bio_write(tls, data):
        tls.bio_write(data)

    @staticmethod
    def pending(tls):
        try:
            return tls.bio_read(1 << 20)
        except SSL.WantReadError:
            return b""


def _ops():
    from .dtls import raw_ops

    return raw_ops() or _PyOps()


class _Io:
    """The socket side of one TLS connection on memory BIOs: pull() reads
    what the socket has into OpenSSL, push() sends what OpenSSL wrote. Both
    are generators that yield (_READ or _WRITE, deadline) when the socket
    would block (a non-blocking socket, or a blocking one whose kernel
    timeout expired); _TimedOut thrown there reaches the caller. One recv
    takes several TLS records at once, and what OpenSSL writes between two
    waits for input goes out in one send (the handshake flight; the session
    tickets, answer and close_notify)."""

    __slots__ = ("sock", "tls", "ops", "io_timeout_s")

    def __init__(self, sock, tls, ops, io_timeout_s):
        self.sock = sock
        self.tls = tls
        self.ops = ops
        self.io_timeout_s = io_timeout_s

    def pull(self, until):
        while True:
            try:
                d = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                yield _READ, until
                continue
            except OSError:
                raise _Closed() from None
            if not d:
                raise _Closed()
            self.ops.bio_write(self.tls, d)
            return

    def push(self, until):
        """Send what OpenSSL wrote, all of it by the monotonic time `until`
        (_TimedOut after it): a client that reads a few bytes per
        io_timeout_s must not hold the connection for ever."""
        data = self.ops.pending(self.tls)
        off = 0
        while off < len(data):
            if off and time.monotonic() > until:  # (threads: a blocking send returned part of it)
                raise _TimedOut()
            try:
                off += self.sock.send(data[off:] if off else data)
            except (BlockingIOError, InterruptedError):
                now = time.monotonic()
                if now > until:
                    raise _TimedOut() from None
                yield _WRITE, min(until, now + self.io_timeout_s)
            except OSError:
                raise _Closed() from None

    def push_now(self):
        """Best effort, never waits: e.g. the alert of a failed handshake."""
        try:
            data = self.ops.pending(self.tls)
            if data:
                self.sock.send(data)
        except (OSError, SSL.Error):
            pass


def b64_lines(der, width=64):
    """base64 in 64-column CRLF-terminated lines (RFC 8951 interop)."""
    s = binascii.b2a_base64(der, newline=False)
    if not s:
        return b""
    return b"\r\n".join([s[i:i + width] for i in range(0, len(s), width)]) + b"\r\n"


def decode_body(body, content_transfer_encoding=None):
    """Request body -> DER, tolerant of what EST clients send: base64 with or
    without line breaks (CR/LF/SP/TAB anywhere), trailing NULs, missing
    padding, any Content-Transfer-Encoding header; raw DER when the header
    says binary or the body is not base64 but starts like DER."""
    data = bytes(body)
    cte = (content_transfer_encoding or "").strip().lower()
    if cte in ("binary", "8bit") and data[:1] == b"\x30":
        return data
    cleaned = data.translate(None, b" \t\r\n\x00\x0b\x0c")
    if cleaned:
        pad = (-len(cleaned)) % 4
        try:
            return binascii.a2b_base64(cleaned + b"=" * pad, strict_mode=True)
        except binascii.Error:
            pass
    if data[:1] == b"\x30":
        return data
    if not cleaned:
        raise RemoteProtocolError("request body is empty: expected a base64 PKCS#10 CSR")
    raise RemoteProtocolError("request body is not valid base64 (RFC 8951: base64 of the DER CSR)")


class _Request:
    __slots__ = ("method", "target", "version", "headers", "body")

    def header(self, name, default=None):
        return self.headers.get(name, default)


class _Conn:
    """One TLS connection: buffered reads, an HTTP/1.1 request parser and
    buffered answers. The reading and writing methods are generators that
    yield (_READ or _WRITE, deadline) when the socket would block (see
    EstHttpsServer._serve)."""

    def __init__(self, server, tls, sock, addr, ops, io):
        self.server = server
        self.tls = tls
        self.sock = sock
        self.addr = addr
        self.ops = ops
        self.io = io
        self.buf = bytearray()
        self.out = []  # answer bytes waiting for flush()
        self.deadline = 0.0
        self.count = 0  # requests answered on this connection
        # TLS 1.3: what OpenSSL writes after the handshake while a request
        # is awaited (its NewSessionTicket messages, a KeyUpdate answer) is
        # nothing the client waits for: it goes out with the answer, in the
        # same send, instead of in a send of its own (TLS 1.2's last flight
        # is awaited by the client: there it is sent before reading)
        self.hold = False
        # (io="loop") the path of a request answered ok whose certificate
        # waits for the group commit: its "-> ok" line comes after that
        self.ok_path = None

    def _fill(self):
        while True:
            now = time.monotonic()
            if now > self.deadline:
                raise HttpError("request took too long", http_status=408)
            try:
                data = self.ops.read(self.tls)
            except SSL.Error:  # close_notify, a broken record: the connection is over
                raise _Closed() from None
            if data:
                self.buf += data
                return
            if not self.hold:
                try:
                    yield from self.io.push(self.deadline)  # e.g. TLS 1.2's last flight
                except _TimedOut:  # the client does not read
                    raise _Closed() from None
            try:
                yield from self.io.pull(min(self.deadline, now + self.server.io_timeout_s))
            except _TimedOut:
                if time.monotonic() > self.deadline:
                    raise HttpError("request took too long", http_status=408) from None
                raise HttpError("timed out reading the request", http_status=408) from None

    def read_request(self):
        cfg = self.server
        self.deadline = time.monotonic() + cfg.request_timeout_s
        while True:
            if self.buf[:1] in _STRAY:  # tolerate stray CR/LF (and NULs) between requests
                i = 0
                while i < len(self.buf) and self.buf[i] in b"\r\n\x00":
                    i += 1
                del self.buf[:i]
            end = self.buf.find(b"\r\n\r\n")
            sep = 4
            lf = self.buf.find(b"\n\n", 0, end if end >= 0 else len(self.buf))  # bare-LF lines, earlier
            if lf >= 0:
                end = lf
                sep = 2
            if end >= 0:
                break
            if len(self.buf) > cfg.max_header_bytes:
                raise HttpError("request header exceeds %d bytes" % cfg.max_header_bytes, http_status=431)
            if self.count and self.buf and not self.buf[:1].isalpha():
                raise _Closed()  # not HTTP (e.g. trailing bytes after the last body): drop quietly
            try:
                yield from self._fill()
            except HttpError as e:
                # no byte of a request yet: an idle (keep-alive) connection
                # ends quietly; a 408 would be read as the answer to the
                # request the client sends next
                if e.http_status == 408 and not self.buf:
                    raise _Closed() from None
                raise
        if end > cfg.max_header_bytes:
            raise HttpError("request header exceeds %d bytes" % cfg.max_header_bytes, http_status=431)
        head = bytes(self.buf[:end])
        del self.buf[:end + sep]
        try:
            lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        except UnicodeDecodeError:  # latin-1 never fails; kept for clarity
            raise HttpError("request header is not text", http_status=400) from None
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha():
            if self.count:
                raise _Closed()  # garbage after a previous request: trailing bytes, not a request
            raise HttpError("malformed request line", http_status=400)
        req = _Request()
        req.method, req.target, req.version = parts
        if req.version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError("HTTP version %s is not supported" % req.version[:16], http_status=505)
        hdrs = {}
        for ln in lines[1:]:
            if not ln:
                continue
            if ln[0] in " \t" and hdrs:  # obsolete line folding
                k = list(hdrs)[-1]
                hdrs[k] += " " + ln.strip()
                continue
            k, c, v = ln.partition(":")
            if not c or not k or k != k.strip():
                raise HttpError("malformed header line", http_status=400)
            k = k.lower()
            v = v.strip()
            if k in hdrs:  # repeated Content-Length too: differing values are refused in _read_body
                hdrs[k] += ", " + v
            else:
                hdrs[k] = v
            if len(hdrs) > 64:
                raise HttpError("too many header fields", http_status=431)
        req.headers = hdrs
        req.body = yield from self._read_body(hdrs, req.method)
        return req

    def _read_body(self, hdrs, method):
        maxb = self.server.max_body_bytes
        te = hdrs.get("transfer-encoding", "").lower()
        if te:
            if te.split(",")[-1].strip() != "chunked":
                raise HttpError("Transfer-Encoding %s is not supported" % te, http_status=501)
            return (yield from self._read_chunked(maxb))
        cl = hdrs.get("content-length")
        if cl is None:
            if method in ("POST", "PUT"):
                raise HttpError("a request body needs Content-Length", http_status=411)
            return b""
        vals = {v.strip() for v in cl.split(",")}
        v = next(iter(vals))
        # ASCII digits only: str.isdigit() also takes e.g. latin-1 superscripts, which int() refuses
        if len(vals) != 1 or not v.isascii() or not v.isdigit():
            raise HttpError("malformed Content-Length", http_status=400)
        v = v.lstrip("0") or "0"
        if len(v) > 15 or int(v) > maxb:  # a huge value: no int() of thousands of digits
            raise LimitError("request body of %s bytes exceeds the limit of %d bytes" % (v[:16], maxb))
        n = int(v)
        while len(self.buf) < n:
            try:
                yield from self._fill()
            except _Closed:
                raise HttpError("request body truncated: Content-Length %d, got %d bytes" % (n, len(self.buf)),
                                http_status=400) from None
        body = bytes(self.buf[:n])
        del self.buf[:n]
        return body

    def _read_chunked(self, maxb):
        parts = []
        total = 0
        while True:
            while b"\n" not in self.buf:
                if len(self.buf) > 1024:
                    raise HttpError("malformed chunk header", http_status=400)
                yield from self._fill()
            i = self.buf.index(b"\n")
            line = bytes(self.buf[:i]).split(b";")[0].strip()
            del self.buf[:i + 1]
            # hex digits only: int(x, 16) also takes "-5", "+5", "0x5" and "1_0"
            if not line or len(line) > 15 or line.strip(b"0123456789abcdefABCDEF"):
                raise HttpError("malformed chunk size", http_status=400)
            n = int(line, 16)
            if n == 0:
                while True:  # trailers up to the empty line
                    while b"\n" not in self.buf:
                        if len(self.buf) > self.server.max_header_bytes:
                            raise HttpError("chunked trailer exceeds %d bytes" % self.server.max_header_bytes,
                                            http_status=431)
                        yield from self._fill()
                    i = self.buf.index(b"\n")
                    ln = bytes(self.buf[:i]).strip()
                    del self.buf[:i + 1]
                    if not ln:
                        return b"".join(parts)
            total += n
            if total > maxb:
                raise LimitError("request body exceeds the limit of %d bytes" % maxb)
            while len(self.buf) < n + 1:
                yield from self._fill()
            parts.append(bytes(self.buf[:n]))
            del self.buf[:n]
            while self.buf[:1] in (b"\r",):
                del self.buf[:1]
            while not self.buf:
                yield from self._fill()
            if self.buf[:1] == b"\n":
                del self.buf[:1]

    def send(self, data):
        """Queue answer bytes; flush() writes them."""
        self.out.append(data)

    def flush(self, close=False):
        """Encrypt the queued answer (and close_notify when `close`) and send
        it all in one go."""
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out = []
        try:
            off = 0
            while off < len(data):  # into the memory BIO: never blocks (a record at a time)
                off += self.ops.write(self.tls, data[off:] if off else data)
            if close:
                self.tls.shutdown()
        except SSL.Error:
            raise _Closed() from None
        try:  # the whole answer within request_timeout_s, as the whole request
            yield from self.io.push(time.monotonic() + self.server.request_timeout_s)
        except _TimedOut:
            raise _Closed() from None


def _extms(tls):
    """True if this TLS 1.2 connection negotiated the extended master
    secret (True when OpenSSL cannot say: pyOpenSSL builds without the call)."""
    try:
        from OpenSSL._util import lib

        return lib.SSL_get_extms_support(tls._ssl) == 1
    except AttributeError:  # pragma: no cover - a binding without SSL_get_extms_support
        return True


_CTL = re.compile("[\x00-\x1f\x7f]")


def _has_ctl(text):
    return _CTL.search(text) is not None


def _ssl_reason(e):
    """The reason strings of a pyOpenSSL error (its args are a list of
    (library, function, reason) tuples), or its text."""
    try:
        reasons = [r[2] for r in e.args[0] if r[2]]
    except (IndexError, TypeError):
        reasons = []
    return ", ".join(reasons) or str(e)


def load_tls_identity(ctx, cert_file, key_file):
    """Load a server's certificate chain file and private key into a
    pyOpenSSL context, each step with its own one-line LocalProtocolError
    naming the file (missing or unreadable, not PEM, a key that does not
    match the certificate) instead of OpenSSL's error list."""
    for path, what in ((cert_file, "TLS certificate"), (key_file, "TLS private key")):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise LocalProtocolError("cannot read the %s %s: %s" % (what, path, e.strerror or e)) from None
    try:
        ctx.use_certificate_chain_file(cert_file)
    except SSL.Error as e:
        raise LocalProtocolError("cannot load the TLS certificate %s: %s (a PEM chain, leaf first)"
                                 % (cert_file, _ssl_reason(e))) from None
    try:
        ctx.use_privatekey_file(key_file)
        ctx.check_privatekey()
    except SSL.Error as e:
        reason = _ssl_reason(e)
        if "mismatch" in reason or "does not match" in reason:  # OpenSSL checks while loading the key too
            raise LocalProtocolError("the TLS private key %s does not belong to the certificate %s (%s)"
                                     % (key_file, cert_file, reason)) from None
        raise LocalProtocolError("cannot load the TLS private key %s: %s (an unencrypted PEM key)"
                                 % (key_file, reason)) from None


def fd_reserve(limit):
    """File descriptors the loop leaves for the rest of the server (SQLite's
    connections of every thread, the CoAPs socket, key and CRL files, logs)
    under an open-file limit of `limit`."""
    return min(256, max(32, limit // 4))


def connection_cap(max_connections, fds_each=1):
    """(connections the loop -- or worker threads, fds_each descriptors
    each: the socket and the thread's SQLite connection -- the server may
    hold open, the open-file limit that made it lower than max_connections
    or None)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return max_connections, None
    if soft == resource.RLIM_INFINITY or (soft - fd_reserve(soft)) // fds_each >= max_connections:
        return max_connections, None
    return max(1, (soft - fd_reserve(soft)) // fds_each), soft


class _AcceptTrouble:
    """accept() failing (EMFILE and friends): one warning when it starts,
    one line when connections are accepted again, not one per try."""

    def __init__(self):
        self.since = None
        self.lock = threading.Lock()

    def failed(self, e, what):
        with self.lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        log.warning("accept failed: %s; new connections wait in the listen backlog until %s (said once; "
                    "raise the open-file limit, ulimit -n, for more)", e, what)

    def ok(self):
        if self.since is None:
            return
        with self.lock:
            since, self.since = self.since, None
        if since is not None:
            log.warning("accepting connections again (after %.1f s)", time.monotonic() - since)


class EstHttpsServer:
    """EST HTTPS server. `service` is an EstService; cert_file is a PEM
    chain (leaf first), key_file its PEM key. io: "loop" (one thread,
    non-blocking sockets, requests answered on it) or "threads" (`workers`
    threads, one blocking connection each); None picks "loop" when the
    service runs the built-in CA and authenticator (they answer without
    waiting on a network) and "threads" otherwise. max_connections bounds
    the open connections of the loop (more wait in the listen backlog), and
    so does the process's open-file limit (ulimit -n): the loop keeps
    fd_reserve(limit) descriptors for the store, the CoAPs server and the
    files it reads, so a flood of connections does not make them fail;
    max_connections_per_host (None: no limit) bounds those of one host (an
    IPv4 address, an IPv6 /64) in both modes: a further connection from it
    is closed at once, so one peer holding connections open cannot take
    every slot (or every worker) from the others."""

    def __init__(self, service, cert_file, key_file, *, host="127.0.0.1", port=0, tls_min_version="1.2",
                 tls_max_version="1.3", realm=None, workers=32, backlog=256, io_timeout_s=10.0,
                 request_timeout_s=30.0, max_header_bytes=16384, max_body_bytes=65536,
                 max_requests_per_connection=100, digest_nonce_lifetime_s=300, reuse_port=False, io=None,
                 max_connections=1024, max_connections_per_host=64, digest_secret=None):
        if io is None:
            io = "loop" if _blocks_never(service) else "threads"
        if io not in ("loop", "threads"):
            raise LocalProtocolError('io must be "loop" or "threads", not %r' % (io,))
        if io == "threads" and workers < 1:
            raise LocalProtocolError("io = \"threads\" needs workers >= 1")
        if max_connections < 1:
            raise LocalProtocolError("max_connections must be >= 1")
        if max_connections_per_host is not None and max_connections_per_host < 1:
            raise LocalProtocolError("max_connections_per_host must be >= 1, or None (no limit)")
        if not (io_timeout_s > 0 and request_timeout_s > 0):
            raise LocalProtocolError("io_timeout_s and request_timeout_s must be > 0 (seconds)")
        self.service = service
        self.io = io
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self._per_host = {}  # host_key -> open connections (threads: under _live_lock)
        self.host = host
        self.requested_port = port
        self.port = None
        self.workers = workers
        self.backlog = backlog
        self.io_timeout_s = io_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_requests_per_connection = max_requests_per_connection
        self.reuse_port = reuse_port
        cfg = getattr(service, "config", None)
        self.realm = realm or getattr(cfg, "realm", None) or "est-lite"
        self.digest = DigestChallenger(self.realm, lifetime_s=digest_nonce_lifetime_s)
        if digest_secret is not None:  # another process's (see digest_secret())
            self.digest._key, self.digest._opaque = digest_secret
        self.ctx = self._make_context(cert_file, key_file, tls_min_version, tls_max_version)
        self._sock = None
        self._threads = []
        self._family = socket.AF_INET
        self._stopping = threading.Event()
        self._accept_trouble = _AcceptTrouble()
        self._lf_lock = threading.Lock()  # leader/followers state (see _worker)
        self._leading = False
        self._idle = []
        self._live = set()
        self._live_lock = threading.Lock()
        self._wake = None  # (reader, writer) socket pair that wakes the loop
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "refused_per_host": 0}

    def digest_secret(self):
        """What another server process needs to accept this one's HTTP
        Digest nonces (its nonce MAC key and opaque value); pass it as
        `digest_secret`. The nonce-count replay check stays per process."""
        return self.digest._key, self.digest._opaque

    @classmethod
    def from_config(cls, service, config, *, port=None, host=None, reuse_port=False, digest_secret=None):
        cert = config.tls_cert or os.path.join(config.data_dir, "server.pem")
        key = config.tls_key or os.path.join(config.data_dir, "server.key")
        return cls(service, cert, key, host=host or config.listen, port=config.port if port is None else port,
                   tls_min_version=config.tls_min_version, tls_max_version=config.tls_max_version,
                   realm=config.realm, workers=config.workers, io_timeout_s=config.io_timeout_s,
                   request_timeout_s=config.request_timeout_s, max_header_bytes=config.max_header_bytes,
                   max_body_bytes=config.max_body_bytes, max_requests_per_connection=config.max_requests_per_connection,
                   digest_nonce_lifetime_s=config.digest_nonce_lifetime_s, io=getattr(config, "io", None),
                   max_connections=getattr(config, "max_connections", 1024),
                   max_connections_per_host=getattr(config, "max_connections_per_host", 64), reuse_port=reuse_port,
                   digest_secret=digest_secret)

    @staticmethod
    def _make_context(cert_file, key_file, vmin, vmax):
        if vmin not in _TLS_VERSIONS or vmax not in _TLS_VERSIONS or _TLS_VERSIONS[vmin] > _TLS_VERSIONS[vmax]:
            raise LocalProtocolError("TLS versions must be 1.2 or 1.3 with min <= max")
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_TLS_VERSIONS[vmin])
        ctx.set_max_proto_version(_TLS_VERSIONS[vmax])
        load_tls_identity(ctx, cert_file, key_file)
        ctx.set_cipher_list(_CIPHERS_12)
        # TLS 1.3: AES-128-GCM/SHA-256 first (with server preference): the
        # SHA-384 transcript and key schedule of the AES-256 suite most
        # clients list first cost the server about 3% of an enrollment's CPU
        if hasattr(ctx, "set_tls13_ciphersuites"):
            ctx.set_tls13_ciphersuites(_CIPHERS_13)
        # full handshakes only: tls-unique is then always the client's Finished
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # send the chain of cert_file as it is: without this mode OpenSSL
        # builds a chain from the (empty) verify store in every handshake
        # (an X509_STORE_CTX and X509_verify_cert per connection)
        ctx.set_mode(_MODE_NO_AUTO_CHAIN)
        # ask for a client certificate, accept any: EstService validates the
        # chain against the label's trust sets and answers with a readable
        # reason instead of a TLS alert. TLS still proves key possession.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, lambda conn, cert, err, depth, ok: True)
        _accept_any_certificate(ctx, SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE)
        return ctx

    # -- lifecycle --
    def start(self):
        if any(t.is_alive() for t in self._threads):
            # stop() timed out while a request was still being answered:
            # clearing the stop flag now would let that run go on as well
            raise LocalProtocolError("the server has not stopped yet (a request is still being answered); "
                                     "call stop() again before start()")
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                # several server processes share the port; the kernel spreads connections
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # accepted sockets inherit these (Linux copies the listener's socket
            # options): no setsockopt calls per connection
            if self.io == "threads":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeval())
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._timeval())
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((self.host, self.requested_port))
            s.listen(self.backlog)
        except OSError:
            s.close()  # a port in use (or a bad address) must not leak the socket of a library caller
            raise
        self._sock = s
        self._family = fam
        self.port = s.getsockname()[1]
        self._stopping.clear()
        self._threads = []
        if self.io == "loop":
            s.setblocking(False)
            sel = None
            try:
                # here, not in the thread: with no descriptor left (EMFILE)
                # start() fails instead of a loop thread that dies silently
                sel = _poller()
                self._wake = socket.socketpair()
            except OSError:
                if sel is not None:
                    sel.close()
                s.close()
                self._sock = None
                raise
            for w in self._wake:
                w.setblocking(False)
            t = threading.Thread(target=self._loop, args=(sel,), name="est-https-loop", daemon=True)
            t.start()
            self._threads.append(t)
        else:
            # no accept thread: every worker blocks in accept() on the
            # listening socket (the kernel wakes one per connection), so a
            # connection costs no queue hand-off and no extra GIL switch
            n, limit = connection_cap(self.workers, 3)
            if limit is not None:
                log.warning("the open-file limit (ulimit -n) is %d: %d worker threads (not workers = %d), %d "
                            "descriptors kept for the store and CoAPs; raise the limit for more", limit, n,
                            self.workers, fd_reserve(limit))
            for i in range(n):
                w = threading.Thread(target=self._worker, name="est-worker-%d" % i, daemon=True)
                w.start()
                self._threads.append(w)
        log.info("EST HTTPS server on %s port %d (%s)", self.host, self.port,
                 "event loop" if self.io == "loop" else "%d worker threads" % len(self._threads))
        return self.port

    def stop(self, timeout=5.0):
        self._stopping.set()
        if self._wake is not None:  # the loop closes its connections and returns
            try:
                self._wake[1].send(b"x")
            except OSError:
                pass
        elif self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the worker blocked in accept()
            except OSError:
                pass
            try:
                self._sock.close()
            except OSError:
                pass
        with self._lf_lock:  # and the idle ones (a worker checks _stopping under this lock before waiting)
            while self._idle:
                self._idle.pop().release()
            self._leading = False
        with self._live_lock:
            for s in list(self._live):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]  # start() refuses while any is left
        if self._wake is not None:
            for w in self._wake:
                w.close()
            self._wake = None
            if self._sock is not None:
                self._sock.close()

    def serve_forever(self):
        if self._sock is None:
            self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        finally:
            self.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "https://%s:%d" % (h, self.port)

    # -- threads --
    def _worker(self):
        """Leader/followers: one worker at a time (the leader) blocks in
        accept(); the idle others wait on their own lock, the most recently
        idle on top. After accepting, the leader wakes the top one as the
        next leader and handles its connection. The kernel would wake the
        accept() waiter that has waited longest, so connections rotated
        through all the workers, each time on a stack and thread state that
        had left the CPU caches; here the same few workers take turns."""
        lsock = self._sock
        raw_accept = lsock._accept  # (fd, addr) without socket.accept()'s enum look-ups
        fam = self._family
        wake = threading.Lock()
        wake.acquire()
        lf = self._lf_lock
        idle = self._idle
        ops = _ops()
        while True:
            with lf:
                if self._stopping.is_set():
                    return
                follow = self._leading
                if follow:
                    idle.append(wake)
                else:
                    self._leading = True
            if follow:
                wake.acquire()  # released by the leader (or by stop())
                if self._stopping.is_set():
                    return
            while True:
                try:
                    fd, addr = raw_accept()
                    break
                except OSError as e:
                    if self._stopping.is_set():
                        return
                    if not isinstance(e, BlockingIOError):  # EAGAIN: SO_RCVTIMEO of an idle listener
                        self._accept_trouble.failed(e, "a connection closes")
                        time.sleep(0.05)  # EMFILE and friends: back off, keep serving
            self._accept_trouble.ok()
            with lf:  # hand the lead on before handling the connection
                if idle:
                    idle.pop().release()
                else:
                    self._leading = False
            s = socket.socket(fam, socket.SOCK_STREAM, 0, fd)
            host = host_key(addr)
            with self._live_lock:  # stop() sets _stopping, then shuts down _live under this lock
                if self._stopping.is_set():
                    s.close()
                    return
                if not self._host_take(host):
                    s.close()
                    continue
                self._live.add(s)
            try:
                self._handle(s, addr, ops)
            except Exception:  # noqa: BLE001 - a bug in one connection must not kill the worker
                log.exception("connection from %s failed", addr)
            finally:
                with self._live_lock:
                    self._live.discard(s)
                    self._host_drop(host)
                try:
                    s.close()
                except OSError:
                    pass

    # -- one connection --
    def _timeval(self):
        us = max(1, int(self.io_timeout_s * 1e6))  # 0 s 0 us would mean "no timeout"
        return struct.pack("ll", us // 1000000, us % 1000000)

    def _handle(self, s, addr, ops=None):
        """One connection on a worker thread: the connection generator on a
        blocking socket, where waiting means the kernel timeout (SO_RCVTIMEO
        / SO_SNDTIMEO, io_timeout_s) has expired."""
        # blocking socket, kernel timeouts and TCP_NODELAY come from the
        # listening socket (see start); a process-wide default timeout
        # would have made the socket non-blocking: undo that
        if socket.getdefaulttimeout() is not None:
            s.settimeout(None)
        gen = self._serve(s, addr, ops or _ops())
        try:
            next(gen)
            while True:
                gen.throw(_TimedOut())
        except StopIteration:
            pass

    def _serve(self, s, addr, ops):
        """One connection, as a generator: yields (_READ or _WRITE, deadline)
        whenever the socket would block; the driver resumes it when the
        socket is ready or throws _TimedOut into it at the deadline. TLS
        runs on memory BIOs (see _Io)."""
        tls = SSL.Connection(self.ctx, None)
        tls.set_accept_state()
        io = _Io(s, tls, ops, self.io_timeout_s)
        self.stats["connections"] += 1
        # the whole handshake within request_timeout_s: a peer trickling
        # bytes within io_timeout_s must not keep the connection for ever
        end = time.monotonic() + self.request_timeout_s
        try:
            while True:
                now = time.monotonic()
                if now > end:
                    raise _TimedOut()
                yield from io.pull(min(end, now + self.io_timeout_s))  # first the ClientHello
                try:
                    done = ops.handshake(tls)
                except SSL.Error as e:
                    log.debug("TLS handshake with %s failed: %s", addr, e)
                    io.push_now()  # the alert
                    return
                if done:  # TLS 1.2's last server flight goes out before the first read (_Conn._fill)
                    break
                yield from io.push(end)
        except _Closed:
            log.debug("TLS handshake with %s: connection closed", addr)
            return
        except _TimedOut:
            log.debug("TLS handshake with %s timed out", addr)
            return
        conn = _Conn(self, tls, s, addr, ops, io)
        cert_error = None
        try:
            base = self._tls_info(tls, addr)
            conn.hold = base["tls_version"] == "TLSv1.3"
        except (ValueError, x509.InvalidVersion) as e:
            # any certificate passes the TLS layer (see _make_context); one
            # OpenSSL parses but cryptography does not is answered 400
            base = None
            cert_error = RemoteProtocolError("the TLS client certificate cannot be parsed: %s" % str(e)[:200])
        try:
            for _ in range(self.max_requests_per_connection):
                try:
                    req = yield from conn.read_request()
                    if cert_error is not None:
                        raise cert_error
                except _Closed:
                    break
                except EstError as e:
                    self._send_error(conn, None, e, close=True)
                    yield from conn.flush(close=True)
                    yield from self._linger(conn)
                    return
                conn.count += 1
                last = self._stopping.is_set() or conn.count >= self.max_requests_per_connection
                group = current_group()
                mark = len(group.rows) if group is not None else 0
                try:
                    close = self._dispatch(conn, req, base, last, group, mark)
                except Exception:  # noqa: BLE001 - a bug (or a plug-in's) answers 500; the server keeps serving
                    log.exception("%s %s %s: internal error", addr[0], req.method, req.target[:200])
                    self.stats["errors"] += 1
                    conn.out = []
                    self._send(conn, 500, "text/plain; charset=utf-8", b"internal server error\n", True)
                    close = True
                if group is not None and len(group.rows) > mark:
                    # certificates issued for this request: the answer waits
                    # for the loop's commit of their rows (see _loop)
                    end = len(group.rows)
                    yield _COMMIT, float("inf")
                    e = group.error(mark, end)
                    if e is not None:
                        conn.out = []
                        close = True
                        if isinstance(e, EstError):
                            self._send_error(conn, None, e, close=True)
                        else:
                            log.error("%s %s %s: internal error: the CA store: %r", addr[0], req.method,
                                      req.target[:200], e)
                            self.stats["errors"] += 1
                            self._send(conn, 500, "text/plain; charset=utf-8", b"internal server error\n", True)
                    elif conn.ok_path is not None:  # stored (and its 'issued serial' line written): now ok
                        log.info("%s %s %s -> ok", addr[0], req.method, conn.ok_path)
                    conn.ok_path = None
                close = close or last or self._stopping.is_set()  # (stop() may come during the request)
                yield from conn.flush(close=close)
                if close:
                    return
        except _Closed:
            return
        # the peer closed or sent what is not a request: say goodbye
        try:
            tls.shutdown()
        except SSL.Error:
            pass
        io.push_now()

    def _linger(self, conn, *, max_bytes=1 << 20, seconds=0.5):
        """After an early error answer (already followed by close_notify),
        read and drop what the client is still sending for a moment, so
        closing does not reset the connection before the client has read
        the answer."""
        if self.io == "threads":  # short kernel waits, so the deadline below is kept
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100000))
            except OSError:
                return
        end = time.monotonic() + seconds
        got = 0
        while got < max_bytes and time.monotonic() < end:
            try:
                d = conn.ops.read(conn.tls)
            except (SSL.Error, OSError):
                return
            if d:
                got += len(d)
                continue
            try:
                yield from conn.io.pull(end)
            except _TimedOut:
                pass
            except _Closed:
                return

    # -- event loop --
    def _loop(self, sel):
        """io="loop": accept, and step every connection generator when its
        socket is ready or its deadline has passed (sel: its _poller)."""
        lsock = self._sock
        raw_accept = lsock._accept  # (fd, addr) without socket.accept()'s enum look-ups
        fam = self._family
        ops = _ops()
        wake = self._wake[0]
        sel.register(wake, _READ, None)
        sel.register(lsock, _READ, None)
        listening = True
        paused = 0.0  # accept() failed (EMFILE and friends): not before this time
        cap, limit = connection_cap(self.max_connections)
        if limit is not None:
            log.warning("the open-file limit (ulimit -n) is %d: at most %d HTTPS connections at once (not "
                        "max_connections = %d), %d descriptors kept for the store and CoAPs; raise the limit "
                        "for more", limit, cap, self.max_connections, fd_reserve(limit))
        trouble = self._accept_trouble
        conns = {}  # socket -> [generator, events, deadline]
        due = [float("inf")]  # earliest deadline of a waiting connection (or later)
        stopping = self._stopping
        mono = time.monotonic
        # group commit: the certificates issued in one pass of the loop are
        # written in one transaction once its ready connections are handled
        # (commit_parked), their answers held until then
        group = GroupCommit()
        parked = []  # (socket, rec) waiting for that commit (_COMMIT)

        def step(s, rec, exc):
            try:
                want, until = rec[0].send(None) if exc is None else rec[0].throw(exc)
            except StopIteration:
                want = None
            except Exception:  # noqa: BLE001 - a bug in one connection must not stop the server
                log.exception("connection failed")
                want = None
            if want is _COMMIT:  # still registered for its last wait: resumed in this pass, before any select
                rec[2] = until
                parked.append((s, rec))
                return
            if want is None:
                if rec[1]:
                    sel.unregister(s)
                del conns[s]
                self._host_drop(rec[3])
                try:
                    s.close()
                except OSError:
                    pass
                return
            if want != rec[1]:
                if rec[1]:
                    sel.modify(s, want, rec)
                else:
                    sel.register(s, want, rec)
                rec[1] = want
            rec[2] = until
            if until < due[0]:
                due[0] = until

        def commit_parked():
            while parked:  # one commit for the certificates of this pass, then their answers
                batch = parked[:]
                del parked[:]
                group.flush()
                for c, rec in batch:
                    step(c, rec, None)

        group.install()
        try:
            while not stopping.is_set():
                now = mono()
                accept = False
                for sock, rec in sel.select(min(1.0, max(0.0, due[0] - now))):
                    if rec is not None:
                        step(sock, rec, None)
                    elif sock is wake:
                        try:
                            wake.recv(64)
                        except OSError:
                            pass
                    else:
                        accept = True
                # the answers that wait for it before the handshakes of new connections
                commit_parked()
                # new connections after the ones in progress, a few per pass:
                # a ClientHello costs the loop ~0.3 ms, and the connections
                # already under way finish first (the rest wait in the backlog)
                for _ in range(8 if accept else 0):
                    if len(conns) >= cap:
                        break
                    try:
                        fd, addr = raw_accept()
                    except BlockingIOError:
                        break
                    except OSError as e:  # EMFILE and friends: pause accepting, keep serving
                        trouble.failed(e, "one of the %d open connections closes" % len(conns))
                        paused = mono() + 0.1
                        break
                    trouble.ok()
                    c = socket.socket(fam, socket.SOCK_STREAM, 0, fd)
                    host = host_key(addr)
                    if not self._host_take(host):
                        c.close()
                        continue
                    c.setblocking(False)
                    rec = [self._serve(c, addr, ops), 0, 0.0, host]
                    conns[c] = rec
                    step(c, rec, None)
                now = mono()
                if now >= due[0]:
                    due[0] = float("inf")
                    for c, rec in list(conns.items()):
                        if rec[2] <= now:
                            step(c, rec, _TimedOut())
                        elif rec[2] < due[0]:
                            due[0] = rec[2]
                commit_parked()  # (none parks above: no request is read there; in case one ever does)
                want = len(conns) < cap
                if paused:  # after a failed accept()
                    if mono() < paused:
                        want = False
                    else:
                        paused = 0.0
                if listening != want:
                    if listening:
                        sel.unregister(lsock)
                    else:
                        sel.register(lsock, _READ, None)
                    listening = not listening
                if not listening:
                    due[0] = min(due[0], mono() + 0.1)
        finally:
            if group.rows:  # (stopping) certificates whose answers will not go out: in the store all the same
                group.flush()
            group.uninstall()
            for c, rec in list(conns.items()):
                rec[0].close()
                try:
                    c.close()
                except OSError:
                    pass
            self._per_host.clear()
            sel.close()

    def _host_take(self, host):
        """Count a new connection of host; False (and counted as refused)
        when it already has max_connections_per_host open."""
        n = self._per_host.get(host, 0)
        limit = self.max_connections_per_host
        if limit is not None and n >= limit:
            self.stats["refused_per_host"] += 1
            return False
        self._per_host[host] = n + 1
        return True

    def _host_drop(self, host):
        n = self._per_host.get(host, 0) - 1
        if n > 0:
            self._per_host[host] = n
        else:
            self._per_host.pop(host, None)

    def _tls_info(self, tls, addr):
        version = tls.get_protocol_version_name()
        info = {"remote": addr, "tls_version": version, "peer_chain": None, "tls_unique": None, "tls_exporter": None}
        if version == "TLSv1.3":
            # computed on first use (AuthContext): only PoP-linked CSRs need it
            info["tls_exporter"] = functools.partial(tls.export_keying_material, b"EXPORTER-Channel-Binding", 32)
        elif _extms(tls):
            # full handshake (no resumption, no renegotiation) with the
            # extended master secret: the client's Finished came first and
            # binds this connection only (RFC 7627; without EMS tls-unique
            # is the triple-handshake binding RFC 9266 warns about: none)
            info["tls_unique"] = tls.get_peer_finished()
        leaf = tls.get_peer_certificate(as_cryptography=True)
        if leaf is not None:
            chain = [leaf]
            for c in tls.get_peer_cert_chain(as_cryptography=True) or ():
                if c != leaf:
                    chain.append(c)
            info["peer_chain"] = chain
        return info

    # -- HTTP --
    def _dispatch(self, conn, req, base, last=False, group=None, mark=0):
        """Handle one request; returns True to close the connection.
        `last`: the server closes after this answer (it says so). `group`:
        the loop's GroupCommit (rows from `mark` on are this request's): the
        "-> ok" line of an answer holding a queued certificate is left to
        _serve, after the commit."""
        self.stats["requests"] += 1
        close = last or req.header("connection", "").lower() == "close" or (
            req.version == "HTTP/1.0" and req.header("connection", "").lower() != "keep-alive")
        label = None
        try:
            path = req.target.split("?", 1)[0]
            if not path.startswith("/"):
                raise HttpError("request target must be a path", http_status=400)
            segs = path[1:].split("/")
            if len(segs) > 1 and segs[-1] == "":
                segs = segs[:-1]  # tolerate a trailing slash
            try:
                op, label, short = numbers.parse_path(segs)
            except LocalProtocolError as e:
                raise HttpError("no EST resource at %s: %s" % (path[:200], e), http_status=404) from None
            if short:
                raise HttpError("%s is an EST-coaps (RFC 9148) name; over HTTPS use %s" % (
                    segs[-1], numbers.HTTP_NAMES[op]), http_status=404)
            want = "GET" if numbers.OP_METHODS[op] == numbers.GET else "POST"
            if req.method != want:
                e = HttpError("%s needs %s, not %s" % (numbers.HTTP_NAMES[op], want, req.method[:16]), http_status=405)
                e.allow = want
                raise e
            ctx = self._auth_context(req, base, op, label)
            svc = self.service
            if op == numbers.OP_CACERTS:
                self._send(conn, 200, numbers.MT_PKCS7_CERTS, b64_lines(svc.cacerts(label, ctx)), close, b64=True)
            elif op == numbers.OP_CSRATTRS:
                der = svc.csrattrs(label, ctx)
                if der:
                    self._send(conn, 200, numbers.MT_CSRATTRS, b64_lines(der), close, b64=True)
                else:
                    self._send(conn, 204, None, b"", close)
            elif op == numbers.OP_FULLCMC:
                svc.fullcmc(label, req.body, ctx)
            else:
                try:
                    der = decode_body(req.body, req.header("content-transfer-encoding"))
                except RemoteProtocolError:
                    # an unauthenticated client (e.g. curl --digest probing
                    # with an empty body) must see 401, not a body complaint
                    svc.check_auth(numbers.HTTP_NAMES[op], label, ctx)
                    raise
                if op == numbers.OP_SIMPLEENROLL:
                    p7 = svc.simpleenroll(label, der, ctx)
                    self._send(conn, 200, numbers.MT_PKCS7_CERTS, b64_lines(p7), close, b64=True)
                elif op == numbers.OP_SIMPLEREENROLL:
                    p7 = svc.simplereenroll(label, der, ctx)
                    self._send(conn, 200, numbers.MT_PKCS7_CERTS, b64_lines(p7), close, b64=True)
                else:
                    p8, p7, _cert = svc.serverkeygen(label, der, ctx)
                    boundary = "est-lite-" + binascii.hexlify(os.urandom(12)).decode()
                    body = b"".join([
                        b"--", boundary.encode(), b"\r\nContent-Type: ", numbers.MT_PKCS8.encode(),
                        b"\r\nContent-Transfer-Encoding: base64\r\n\r\n", b64_lines(p8),
                        b"--", boundary.encode(), b"\r\nContent-Type: ", numbers.MT_PKCS7_CERTS.encode(),
                        b"\r\nContent-Transfer-Encoding: base64\r\n\r\n", b64_lines(p7),
                        b"--", boundary.encode(), b"--\r\n",
                    ])
                    self._send(conn, 200, "multipart/mixed; boundary=%s" % boundary, body, close)
            if group is not None and len(group.rows) > mark:
                conn.ok_path = path[:200]
            else:
                log.info("%s %s %s -> ok", conn.addr[0], req.method, path[:200])
        except PendingApproval as e:
            self._send(conn, 202, numbers.MT_TEXT_PLAIN, (e.msg + "\n").encode(), close,
                       extra=[("Retry-After", str(int(e.retry_after)))])
            log.info("%s %s %s -> 202 (%s)", conn.addr[0], req.method, req.target[:200], e.msg)
        except EstError as e:
            self._send_error(conn, label, e, close=close)
        return close

    def _auth_context(self, req, base, op, label):
        ctx = AuthContext("https", peer_chain=base["peer_chain"], tls_unique=base["tls_unique"],
                          tls_exporter=base["tls_exporter"], tls_version=base["tls_version"], remote=base["remote"])
        if op in (numbers.OP_CACERTS,):
            return ctx
        authz = req.header("authorization")
        if not authz:
            return ctx
        scheme, _, rest = authz.strip().partition(" ")
        scheme = scheme.lower()
        auth = self.service.authenticator
        try:
            if scheme == "basic":
                try:
                    raw = binascii.a2b_base64(rest.strip(), strict_mode=True).decode("utf-8")
                except (binascii.Error, ValueError):
                    raise AuthenticationRequired("malformed HTTP Basic credentials") from None
                user, sep, pw = raw.partition(":")
                if not sep:
                    raise AuthenticationRequired("malformed HTTP Basic credentials (no ':')")
                if _has_ctl(raw):  # RFC 7617 §2: no control characters (PBKDF2 would take "pw\0" as "pw")
                    raise AuthenticationRequired("malformed HTTP Basic credentials (a control character)")
                if not auth.verify_password(user, pw, label):
                    raise AuthenticationRequired("wrong user name or password")
                ctx.http_user, ctx.http_scheme = user, "basic"
            elif scheme == "digest":
                if not _does_digest(auth):
                    raise AuthenticationRequired("HTTP Digest is not offered by this server: use Basic")
                params = parse_auth_params(rest)
                user = self.digest.verify(params, req.method, req.target,
                                          lambda u, r, a: auth.digest_ha1(u, r, a, label))
                ctx.http_user, ctx.http_scheme = user, "digest"
            else:
                raise AuthenticationRequired("HTTP authentication scheme %s is not supported" % scheme[:20])
        except AuthenticationRequired as e:
            ctx.http_auth_error = e
        return ctx

    def _send(self, conn, status, ctype, body, close, *, b64=False, extra=()):
        head = "HTTP/1.1 %d %s\r\nDate: %s\r\n" % (status, _REASONS.get(status, "Status"), _http_date())
        if ctype:
            head += "Content-Type: " + ctype + "\r\n"
        if b64:
            head += "Content-Transfer-Encoding: base64\r\n"
        head += "Content-Length: %d\r\n" % len(body)
        for k, v in extra:
            head += "%s: %s\r\n" % (k, v)
        if close:
            head += "Connection: close\r\n"
        conn.send(b"".join((head.encode("latin-1"), b"\r\n", body)))

    def _send_error(self, conn, label, e, *, close):
        status = getattr(e, "http_status", 500) or 500
        if status < 400:
            status = 500
        self.stats["errors"] += 1
        extra = []
        msg = e.msg if isinstance(e, EstError) else str(e)
        if status == 401 or isinstance(e, AuthenticationRequired):
            prof = None
            try:
                prof = self.service.config.profile(label)
            except (AttributeError, EstError):
                prof = None
            methods = prof.auth if prof is not None else ("basic", "digest")
            if "basic" in methods:
                extra.append(("WWW-Authenticate", 'Basic realm="%s", charset="UTF-8"' % self.realm))
            if "digest" in methods and _does_digest(self.service.authenticator):
                for c in self.digest.challenges(stale=getattr(e, "stale", False)):
                    extra.append(("WWW-Authenticate", c))
            status = 401 if extra else 403
        if getattr(e, "allow", None):
            extra.append(("Allow", e.allow))
        if status >= 500 and not isinstance(e, (SecurityError, RemoteProtocolError, HttpError)) and status != 501:
            log.error("%s: internal error: %s", conn.addr[0], msg)
        else:
            log.info("%s -> %d %s", conn.addr[0], status, msg)
        body = (msg + "\n").encode("utf-8", "replace")
        try:
            self._send(conn, status, "text/plain; charset=utf-8", body, close, extra=extra)
        except _Closed:
            pass


def _accept_any_certificate(ctx, mode):
    """Replace the C-level verify callback that pyOpenSSL's set_verify
    installed (its wrapper around a Python callback) by one doing what that
    wrapper does when the callback says yes: set the error to X509_V_OK and
    return 1, for every certificate and error. Without the wrapper's work
    per call (an X509 object, the Connection look-up, the call into the
    lambda), about 20 k instructions per call and 2-3 calls per client
    certificate. Without the binding functions it needs, pyOpenSSL's stays."""
    try:
        from OpenSSL._util import ffi, lib

        set_error, v_ok, set_verify = lib.X509_STORE_CTX_set_error, lib.X509_V_OK, lib.SSL_CTX_set_verify
        raw = ctx._context
    except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
        return False

    def yes(ok, store_ctx):
        set_error(store_ctx, v_ok)
        return 1

    cb = ffi.callback("int (*)(int, X509_STORE_CTX *)", yes, onerror=lambda *exc: 0)
    set_verify(raw, mode, cb)
    ctx._est_accept_any = cb  # alive as long as the context
    return True


def _blocks_never(service):
    """True when the service's CA and authenticator are the built-in ones,
    which answer without waiting on another server."""
    from .auth import DefaultAuthenticator
    from .ca import LocalCA

    return type(getattr(service, "ca", None)) is LocalCA and \
        type(getattr(service, "authenticator", None)) is DefaultAuthenticator


def _does_digest(authenticator):
    """Whether the authenticator serves HTTP Digest: it has a digest_ha1
    method (one that is absent or set to None means Basic only, e.g. a
    RADIUS or LDAP check that never sees the password's HA1)."""
    return getattr(authenticator, "digest_ha1", None) is not None


def server_from_config(config, *, port=None, host=None, ca=None, authenticator=None, csrattrs_provider=None,
                       reuse_port=False):
    """Build CA, service and HTTPS server from a ServerConfig (not started)."""
    from .ca import LocalCA
    from .service import EstService

    ca = ca or LocalCA(config.data_dir, synchronous=config.synchronous)
    svc = EstService(ca, config, authenticator, csrattrs_provider)
    return EstHttpsServer.from_config(svc, config, port=port, host=host, reuse_port=reuse_port)
