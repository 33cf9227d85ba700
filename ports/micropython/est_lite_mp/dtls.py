# est-lite MicroPython DTLS 1.2 client on the `tls` module (Mbed TLS).
#
#   c = DtlsClient("192.0.2.1", 5684, cadata=ca_der, cert=dev_der, key=key_der)
#   c.send(coap_bytes)            # first send completes the handshake
#   n = c.recv_into(buf, 5000)    # bytes received, None on timeout, -1: a record too large for buf
#   c.close()
#
# Facts about this `tls` build that shape the code (measured, docs/dtls.md):
# - certificates and keys are DER `bytes`; one CA per load_verify_locations().
# - the UDP socket must be connect()ed and non-blocking: Mbed TLS retransmits
#   only when it is called again, and a blocking socket hangs on one loss.
# - there is no handshake-done signal: cipher() crashes before the handshake
#   ends and read() answers "would block" both while handshaking and after.
#   A write succeeds only once the handshake is over, so the first send()
#   drives the handshake (with its own deadline) and then marks the session up.
# - with CERT_REQUIRED, wrap_socket(server_hostname=...) makes Mbed TLS check
#   the name against the certificate's DNS and IP subjectAltNames.
# - verify_callback(cert_memoryview, depth) must return 0 or a NEGATIVE
#   Mbed TLS error: a positive value leaks out of write() as a byte count.
# - close() sends no close_notify; servers evict idle sessions.
# - Mbed TLS resends a lost handshake flight after 1 s at the earliest
#   (doubling) and this `tls` cannot change that. wrap_socket() takes any
#   stream (readinto/write/ioctl), so the UDP socket goes in through _Link,
#   which keeps our last handshake flight and resends it after an RTT-based
#   timeout (est_lite_mp.client.Rto); the server takes the copy as a retransmission
#   and resends its own flight (RFC 6347 §4.2.4), and Mbed TLS drops the
#   duplicates it then receives (record sequence numbers / message_seq).
import io
import select
import socket
import time

try:
    from micropython import const
except ImportError:  # CPython (import checks only)

    def const(x):
        return x


from est_lite.errors import LocalProtocolError, SecurityError, TransportError

try:
    _ticks = time.ticks_ms
    _tdiff = time.ticks_diff
except AttributeError:  # CPython

    def _ticks():
        return int(time.monotonic() * 1000)

    def _tdiff(a, b):
        return a - b


_ERR_X509_CERT_VERIFY_FAILED = const(-0x2700)
_ERR_SSL_TIMEOUT = const(-0x6800)
_ERR_SSL_FATAL_ALERT = const(-0x7780)
_ERR_SSL_PEER_CLOSE_NOTIFY = const(-0x7880)
_POLLIN = const(1)
_POLLOUT = const(4)
_MP_STREAM_POLL = const(3)
_MP_STREAM_CLOSE = const(4)
_FLIGHT_GAP_MS = const(300)  # writes further apart than this are not one flight
_HS_INITIAL_MS = const(1000)  # resend timer without an estimator (RFC 6347: 1 s)
_NEVER = const(1 << 29)
_SEQ_GAP = const(24)

# Offered in this order where the build has them (this build has no CCM).
SUITES = ("TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8", "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256")


class _Link(io.IOBase):
    # The connected, non-blocking UDP socket as Mbed TLS sees it. While
    # `hs` is set it records the handshake flight being written (the writes
    # after the last datagram read) and feeds the estimator one RTT sample
    # per flight: from the LAST transmission of the flight (ours or Mbed
    # TLS's) to the next datagram read. Karn's rule would take no sample
    # from a resent flight; then one early loss leaves the estimator empty
    # for the whole handshake. A reply to an earlier copy makes the sample
    # too small: the floor (Rto.min_ms) and the per-flight backoff bound the
    # cost to an early duplicate flight.
    def __init__(self, sock, rto, max_flight, scratch=None):
        self.s = sock
        self.rto = rto
        self.max = max_flight
        # where the flight's copies go: a caller's memoryview that is idle
        # during the handshake (EstClient's receive buffer), else one
        # bytearray per datagram
        self.b = scratch
        if scratch is not None and len(scratch) < max_flight:
            self.max = len(scratch)
        self.p = select.poll()
        self.p.register(sock, _POLLIN)
        self.hs = True
        self.f = []  # datagrams of our current flight
        self.n = 0  # their bytes
        self.rx = True  # a datagram was read since the last write: the next write starts a flight
        self.t = _ticks()  # last write, resend or read
        self.t0 = None  # last transmission of the flight, for an RTT sample
        self.tries = 0  # transmissions of the current flight after the first
        self.resent = 0  # statistics: flights we resent
        self.seq = 0  # next record sequence number for our resent epoch-0 records
        # After the handshake Mbed TLS gets one record per read, and one
        # read per DtlsClient.recv_into: the TLS socket's recv_into reads
        # records until its buffer is full, and would return back-to-back
        # datagrams (a duplicate; an empty ACK and its separate response)
        # or the records of one datagram as one message.
        # A record larger than the caller's buffer is dropped: Mbed TLS would
        # hand it over in pieces, and the next read would join the last piece
        # and the next record.
        self.one = _NEVER  # largest record for this recv_into; 0: one was handed over ("would block")
        self.rest = b""  # records after the first of the last datagram (rare)

    def readinto(self, b):
        c = self.one
        if not c:
            return None
        r = self.rest
        n = len(r)
        if n:
            b[:n] = r
        else:
            n = self.s.readinto(b)
        self.rest = b""
        if n and not self.hs:
            self.one = 0
            k = 13 + (b[11] << 8 | b[12])  # the first record (n < 13: k > n)
            if k < n:
                self.rest = bytes(b[k:n])
                n = k
            if k > c:
                self.one = -1  # recv_into says so (-1)
                return None
        if n and self.hs:
            now = _ticks()
            if self.t0 is not None and self.rto is not None:
                self.rto.sample(_tdiff(now, self.t0))
            self.t0 = None
            self.rx = True
            self.t = now
        return n

    def write(self, b):
        if self.hs:
            now = _ticks()
            if self.rx or _tdiff(now, self.t) > _FLIGHT_GAP_MS:
                if self.rx:  # a new flight
                    self.tries = 0
                    self.rx = False
                else:  # Mbed TLS resending the flight on its own timer (new record numbers)
                    self.tries += 1
                self.t0 = now
                self.f = []
                self.n = 0
            n = len(b)
            if self.n + n <= self.max:
                if self.b is None:
                    d = bytearray(b)
                else:
                    d = self.b[self.n:self.n + n]
                    d[:] = b
                self.f.append(d)
                self.n += n
                # resent epoch-0 records get numbers _SEQ_GAP above Mbed TLS's, so
                # the peer's replay check (RFC 6347 §4.1.2.6) takes them and Mbed
                # TLS's own later records stay inside the peer's 64-record window
                m = _records(d, None) + _SEQ_GAP
                if m > self.seq:
                    self.seq = m
            self.t = now
        return self.s.write(b)

    def due(self):
        # ms until our resend of the flight is due (<= 0: now).
        if not self.f:
            return _NEVER
        # also after part of the answer came: the peer resends its whole
        # flight when ours arrives again
        t = _HS_INITIAL_MS if self.rto is None else self.rto.timeout(self.tries)
        return t - _tdiff(_ticks(), self.t)

    def resend(self):
        for d in self.f:
            self.seq = _records(d, self.seq)
            try:
                self.s.write(d)
            except OSError:
                pass
        self.tries += 1
        self.resent += 1
        self.t = self.t0 = _ticks()

    def wait(self, ms):
        for _ in self.p.ipoll(ms):
            pass

    def ioctl(self, req, arg):
        if req == _MP_STREAM_POLL:
            r = _POLLOUT & arg
            for _o, ev in self.p.ipoll(0):
                r |= ev & arg
            return r
        if req == _MP_STREAM_CLOSE:
            self.f = None
            self.s.close()
        return 0


def _records(d, seq):
    # Walk the DTLS records of datagram d (bytearray). seq None: the largest
    # epoch-0 sequence number in it (-1: none). Else renumber its epoch-0
    # (plaintext handshake) records seq, seq+1, ... and return the next
    # number; encrypted records (epoch 1: our Finished) cannot be renumbered
    # and go out as they are (the peer drops them as replays).
    off = 0
    top = -1
    n = len(d)
    while off + 13 <= n:
        if d[off + 3] == 0 and d[off + 4] == 0:
            if seq is None:
                v = 0
                for i in range(off + 5, off + 11):
                    v = v << 8 | d[i]
                if v > top:
                    top = v
            else:
                v = seq
                for i in range(off + 10, off + 4, -1):
                    d[i] = v & 0xFF
                    v >>= 8
                seq += 1
        off += 13 + (d[off + 11] << 8 | d[off + 12])
    return top if seq is None else seq


# DtlsClient(host, port, ...): the parameters (a comment, not a docstring:
# MicroPython keeps docstring text in the parse tree when it compiles this
# file from source on a device, and the whole module is one parse tree)
#   cadata           CA certificate DER bytes, or a list of them (trust anchors)
#   server_hostname  name or IP literal the server certificate must cover
#                    (default: host)
#   cert, key        device certificate and private key, DER bytes
#   pin              bootstrap mode instead of cadata: the SHA-256 of the
#                    server's leaf certificate DER (32 bytes), or a callable
#                    (der_memoryview, depth) -> bool
#   timeout_ms       handshake deadline
#   max_datagram     receive buffer size (one decrypted datagram)
#   rto              est_lite_mp.client.Rto: resend a lost handshake flight after
#                    its timeout (before Mbed TLS's own 1 s timer) and feed it
#                    the handshake's round trips; None: Mbed TLS timers only
#   max_flight       bytes of our last handshake flight kept for resending
#   flight_buf       memoryview to keep that flight in, idle during the
#                    handshake and not touched after it (EstClient lends its
#                    receive buffer); None: a bytearray per datagram
class DtlsClient:
    # DTLS client over a connected, non-blocking UDP socket (parameters: the comment above)

    def __init__(self, host, port, cadata=None, server_hostname=None, cert=None, key=None, pin=None,
                 timeout_ms=30000, max_datagram=1280, poll_ms=50, ciphers=SUITES, rto=None, max_flight=4096,
                 flight_buf=None):
        if cadata is None and pin is None:
            raise LocalProtocolError("give cadata to verify the server, or a pin for bootstrap")
        if (cert is None) != (key is None):
            raise LocalProtocolError("cert and key go together")
        self.host = host
        self.port = port
        self.server_hostname = server_hostname or host
        self.timeout_ms = timeout_ms
        self.poll_ms = poll_ms
        self.established = False
        self.cipher = None
        self.cadata = cadata
        self.cert = cert
        self.key = key
        self.pin = pin
        self._pin_ok = False
        self.ciphers = ciphers
        self.max_datagram = max_datagram
        self._buf = None
        self._sock = None
        self._ss = None
        self._link = None
        self.rto = rto
        self.max_flight = max_flight
        self.flight_buf = flight_buf

    @property
    def resent(self):
        # Handshake flights we resent ahead of Mbed TLS (statistics).
        return 0 if self._link is None else self._link.resent

    # -- setup --

    def _context(self):
        import tls

        ctx = tls.SSLContext(tls.PROTOCOL_DTLS_CLIENT)
        if self.cert is not None:
            ctx.load_cert_chain(_der(self.cert), _der(self.key))
        if self.pin is not None:
            # the chain is not required to verify; the pin decides at depth 0
            ctx.verify_mode = tls.CERT_OPTIONAL
            ctx.verify_callback = self._verify_pin
        else:
            cas = self.cadata
            if not isinstance(cas, (list, tuple)):
                cas = (cas,)
            for ca in cas:
                ctx.load_verify_locations(_der(ca))
        if self.ciphers:
            # offer only these (a shorter ClientHello); names this build lacks
            # are skipped without get_ciphers(), which costs 2 KB of heap
            mine = []
            for s in self.ciphers:
                try:
                    ctx.set_ciphers([s])
                    mine.append(s)
                except (OSError, ValueError):
                    pass
            if mine:
                ctx.set_ciphers(mine)
        return ctx

    def _verify_pin(self, cert, depth):
        # Runs inside Mbed TLS: must not raise, must return 0 or a negative error.
        try:
            pin = self.pin
            if callable(pin):
                ok = bool(pin(cert, depth))
            elif depth:
                ok = True  # not trusted either way; the leaf below decides
            else:
                import hashlib

                ok = hashlib.sha256(cert).digest() == pin
        except Exception:  # noqa: BLE001 - an exception here would unwind through C
            ok = False
        if depth == 0:
            self._pin_ok = ok
        return 0 if ok else _ERR_X509_CERT_VERIFY_FAILED

    def connect(self):
        # Open the socket and prepare the session; no datagram is sent yet.
        if self._ss is not None:
            return
        try:
            ai = socket.getaddrinfo(self.host, self.port)[0]
            s = socket.socket(ai[0], socket.SOCK_DGRAM)
        except OSError as e:
            raise TransportError("cannot resolve or open a socket for %s: %s" % (self.host, e))
        try:
            s.connect(ai[-1])
            s.setblocking(False)
            ctx = self._context()
            link = _Link(s, self.rto, self.max_flight, self.flight_buf)
            self._ss = ctx.wrap_socket(link, server_hostname=self.server_hostname, do_handshake_on_connect=False)
        except OSError as e:
            s.close()
            raise TransportError("DTLS setup for %s failed: %s" % (self.host, e))
        except ValueError as e:
            s.close()
            raise LocalProtocolError("DTLS setup for %s failed: %s" % (self.host, e))
        self._sock = s
        self._link = link

    # -- data --

    def send(self, data, timeout_ms=None):
        # Send one datagram; the first call also runs the handshake (cookie
        # exchange, retransmissions) within timeout_ms (default: timeout_ms of
        # the client).
        if self._ss is None:
            self.connect()
        ss = self._ss
        start = _ticks()
        limit = self.timeout_ms if timeout_ms is None else timeout_ms
        link = self._link
        while True:
            try:
                n = ss.send(data)
            except OSError as e:
                self._fail(e)
            except ValueError as e:  # certificate verification (Mbed TLS verify info)
                self._abort()
                if self.pin is not None:
                    raise SecurityError("server certificate does not match the bootstrap pin")
                raise SecurityError("server certificate rejected: %s" % _oneline(e))
            if n is not None:
                break
            left = limit - _tdiff(_ticks(), start)
            if left <= 0:
                self._abort()
                if self.established:
                    raise TransportError("DTLS send to %s timed out" % self.host)
                raise TransportError("DTLS handshake with %s:%d timed out after %d ms"
                                     % (self.host, self.port, limit))
            due = link.due()
            if due <= 0:
                link.resend()
                due = link.due()
            link.wait(min(left, self.poll_ms, due))
        if not self.established:
            link.hs = False
            link.f = []  # our last handshake flight is not resent any more
            link.b = None  # nor kept: the lent buffer is the caller's again
            if self.pin is not None and not self._pin_ok:
                self._abort()
                raise SecurityError("server certificate was never checked against the pin")
            self.established = True
            self.cipher = ss.cipher()[0]
        return n

    def recv_into(self, buf, timeout_ms=None):
        # Decrypt one datagram into buf; its length, None after timeout_ms, or -1
        # when a record larger than buf came (dropped: see _Link).
        # Raises TransportError when the server closed the session.
        if not self.established:
            raise LocalProtocolError("send a datagram first (it runs the handshake)")
        ss = self._ss
        start = _ticks()
        limit = self.timeout_ms if timeout_ms is None else timeout_ms
        link = self._link
        while True:
            link.one = len(buf) + 64  # one record per call, at most this large (see _Link)
            try:
                n = ss.recv_into(buf)
            except OSError as e:
                self._fail(e)
            if n is not None:
                if n == 0:
                    self._fail(OSError(_ERR_SSL_PEER_CLOSE_NOTIFY))  # "closed the DTLS session"
                return n
            if link.one < 0:
                return -1  # a record larger than buf came and was dropped
            left = limit - _tdiff(_ticks(), start)
            if left <= 0:
                return None
            link.wait(min(left, self.poll_ms))

    def recv(self, timeout_ms=None):
        # One decrypted datagram as bytes, or None after timeout_ms (or when
        # what came was a record larger than max_datagram, dropped).
        if self._buf is None:
            self._buf = bytearray(self.max_datagram)
        n = self.recv_into(self._buf, timeout_ms)
        return None if n is None or n < 0 else bytes(self._buf[:n])

    def close(self):
        # Free the session and the socket (this `tls` sends no close_notify).
        self._abort()

    # -- errors --

    def _abort(self):
        ss = self._ss
        self._ss = None
        self.established = False
        if ss is not None:
            try:
                ss.close()  # closes the UDP socket too
            except OSError:
                pass
        self._sock = None

    def _fail(self, e):
        code = e.args[0] if e.args else 0
        up = self.established
        self._abort()
        if code == _ERR_SSL_PEER_CLOSE_NOTIFY:
            raise TransportError("server %s closed the DTLS session" % self.host)
        if code == _ERR_SSL_TIMEOUT:
            raise TransportError("DTLS handshake with %s: retransmissions exhausted" % self.host)
        if isinstance(code, int) and code > 0:
            raise TransportError("DTLS with %s:%d: socket error %d" % (self.host, self.port, code))
        if up:
            raise TransportError("DTLS session with %s failed: %s" % (self.host, _oneline(e)))
        if code == _ERR_SSL_FATAL_ALERT:
            raise SecurityError("server %s refused the DTLS handshake (fatal alert): is the device "
                                "certificate trusted by the server?" % self.host)
        if self.pin is not None and not self._pin_ok:
            raise SecurityError("server certificate does not match the bootstrap pin")
        if code == _ERR_X509_CERT_VERIFY_FAILED:
            raise SecurityError("server certificate rejected: %s" % _oneline(e))
        raise SecurityError("DTLS handshake with %s failed: %s" % (self.host, _oneline(e)))


def _der(x):
    # this `tls` takes certificates and keys as bytes only (not bytearray)
    return x if isinstance(x, bytes) else bytes(x)


def _oneline(e):
    return " ".join(str(a) for a in e.args).replace("\n", " ").strip()
