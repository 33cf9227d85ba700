# TLS over TCP for the MicroPython EST client (the `tls` module, Mbed TLS).
#
#   t = TlsStream(host, 443, [ca_der], None, "est.example", cert_der, key_der, 30)
#   t.connect(); t.write(req); data = t.read(2048); t.close()
#
# trust: CA DER list (Mbed TLS checks the chain and the name against the
# DNS/IP subjectAltNames); pin instead: SHA-256 of a certificate of the
# chain the server presents, checked in the verify callback during the
# handshake (before our certificate is sent); every certificate below the
# pinned one must be signed by the next (est_lite_mp.pincheck.PinCheck).
# No channel binding: this `tls` has no tls-unique/exporter API (binding
# is None).
import io
import select
import socket
import time

from est_lite.errors import SecurityError, TransportError, const

_VERIFY_FAILED = const(-0x2700)  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED


class _Tcp(io.IOBase):
    # The non-blocking TCP socket as Mbed TLS sees it. During the handshake
    # (`end` set, ticks ms) a read or write waits for the socket, but not
    # past `end`: the whole handshake is bounded, where a blocking socket's
    # timeout bounded each read and a server trickling its handshake could
    # hold the client for minutes. Afterwards (`end` None) it does not wait:
    # TlsStream polls. Errors go back to Mbed TLS as negative errno values
    # (an exception must not cross Mbed TLS).
    def __init__(self, s, end):
        self.s = s
        self.end = end
        self.late = False
        self.p = select.poll()
        self.p.register(s, 5)  # POLLIN | POLLOUT

    def _io(self, f, b, ev):
        while True:
            try:
                n = f(b)
            except OSError as e:
                return -(e.args[0] if e.args and isinstance(e.args[0], int) and e.args[0] > 0 else 5)
            end = self.end
            if n is not None or end is None:
                return n
            left = time.ticks_diff(end, time.ticks_ms())
            if left <= 0:
                self.late = True
                return -110  # ETIMEDOUT: Mbed TLS ends the handshake
            self.p.modify(self.s, ev)
            self.p.poll(left)

    def readinto(self, b):
        return self._io(self.s.readinto, b, 1)

    def write(self, b):
        return self._io(self.s.write, b, 4)

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL
            self.p.modify(self.s, 5)
            r = 0
            for _o, ev in self.p.ipoll(0):
                r |= ev & (arg | 24)  # and POLLHUP | POLLERR
            return r
        if req == 4:  # MP_STREAM_CLOSE
            self.s.close()
        return 0


class TlsStream:
    binding = None
    # callable -> seconds left before the caller's deadline (None: none);
    # http_once sets EstClient._left: `timeout` bounds one read or write,
    # this the whole answer (a server trickling it a byte at a time)
    left = None

    def __init__(self, host, port, trust, pin, name, cert, key, timeout, pending_ok=False):
        self.host, self.port = host, port
        # pin not in the presented chain and no client certificate: finish
        # the handshake, keep the chain, and let EstClient check the pin
        # against the /cacerts answer (nothing secret is sent before)
        self.pending_ok = pending_ok and cert is None
        self.pending = False
        self.chain = []
        self.trust, self.pin, self.name = trust, pin, name
        self.cert, self.key = cert, key
        self.timeout = timeout
        self.s = None
        self._poll = None
        self._pc = None
        if pin is not None:
            from est_lite_mp.pincheck import PinCheck

            self._pc = PinCheck(pin, None)

    @property
    def _hit(self):
        return self._pc is not None and self._pc.hit

    def _check(self, der, depth):
        # The verify callback (top of the chain first, the leaf at depth 0
        # decides): the pinned certificate must be in the chain and every
        # certificate below it signed by the next (pincheck.PinCheck). Must
        # return 0 or a negative Mbed TLS error, and must not raise.
        try:
            ok = self._pc(der, depth)
            if self.pending_ok:
                self.chain.insert(0, bytes(der))  # called top first: leaf ends up first
                if not depth and not self._pc.hit:
                    self.pending = True  # bootstrap() checks the chain against the /cacerts answer
                    return 0
        except Exception:  # noqa: BLE001 - must not raise inside Mbed TLS (MemoryError)
            return _VERIFY_FAILED
        return 0 if ok else _VERIFY_FAILED

    def connect(self):
        import tls

        try:
            ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
            raw = socket.socket(ai[0], socket.SOCK_STREAM)
        except OSError as e:
            raise TransportError("cannot resolve %s: %s" % (self.host, e))
        end = time.ticks_add(time.ticks_ms(), int(self.timeout * 1000))  # connect and handshake
        try:
            raw.settimeout(self.timeout)
            raw.connect(ai[-1])
            raw.setblocking(False)
        except OSError as e:
            raw.close()
            raise TransportError("cannot connect to %s:%d: %s" % (self.host, self.port, e))
        link = _Tcp(raw, end)
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        if self.cert is not None:
            ctx.load_cert_chain(bytes(self.cert), bytes(self.key))
        if self.pin is not None:
            ctx.verify_mode = tls.CERT_OPTIONAL
            ctx.verify_callback = self._check
        else:
            ctx.verify_mode = tls.CERT_REQUIRED
            for ca in self.trust:
                ctx.load_verify_locations(bytes(ca))
        self.pending = False
        self.chain = []
        try:
            self.s = ctx.wrap_socket(link, server_hostname=self.name)
        except (OSError, ValueError) as e:
            raw.close()
            if link.late:
                raise TransportError("TLS handshake with %s not finished within %.1f s" % (self.host, self.timeout))
            pc = self._pc
            if pc is not None and pc.why is not None and not self.pending:
                raise SecurityError("TLS handshake with %s refused before anything was sent: %s"
                                    % (self.host, pc.why))
            a = e.args[0] if e.args else 0
            if a == -0x7280:  # MBEDTLS_ERR_SSL_CONN_EOF
                raise TransportError("%s:%d closed the connection during the TLS handshake" % (self.host, self.port))
            if isinstance(e, ValueError) or (isinstance(a, int) and a < 0):
                raise SecurityError("TLS handshake with %s failed: %s" % (self.host, _one(e)))
            raise TransportError("TLS handshake with %s failed: %s" % (self.host, _one(e)))
        if self.pin is not None and not self.pending and (not self._hit or self._pc.why is not None):
            self.close()
            raise SecurityError("the server certificate was never checked against the pin")
        # stream read(n) of a blocking socket waits for all n bytes (no
        # short reads): non-blocking from here, polled with our own timeout
        link.end = None
        self._poll = select.poll()
        self._poll.register(self.s, select.POLLIN)

    def peer_der(self):
        return self.chain

    def _wait(self, start):
        left = int(self.timeout * 1000) - time.ticks_diff(time.ticks_ms(), start)
        f = self.left
        d = f() if f is not None else None
        if d is not None and d * 1000 < left:
            left = int(d * 1000)
            if left <= 0:
                self.close()
                raise TransportError("no complete answer from %s before the deadline" % self.host)
        if left <= 0:
            self.close()
            raise TransportError("no answer from %s within %d s" % (self.host, self.timeout))
        for _ in self._poll.ipoll(min(left, 50)):
            pass

    def write(self, data):
        mv = memoryview(data)
        start = time.ticks_ms()
        try:
            while mv:
                n = self.s.write(mv)
                if n:
                    mv = mv[n:]
                else:
                    self._wait(start)
        except OSError as e:
            self.close()
            raise TransportError("writing to %s failed: %s" % (self.host, _one(e)))

    def read(self, n):
        """Up to n bytes; b"" when the server closed the connection."""
        start = time.ticks_ms()
        while True:
            try:
                d = self.s.read(n)
            except OSError as e:
                self.close()
                raise TransportError("reading from %s failed: %s" % (self.host, _one(e)))
            if d is not None:
                return d
            self._wait(start)

    def close(self):
        s = self.s
        self.s = self._poll = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def _one(e):
    return " ".join([str(a) for a in e.args]).replace("\n", " ")


# --- the HTTP side of est_lite_mp.client.EstClient (both ports) ---


def http_once(cl, op, csr, pk):
    """One attempt of EST operation op over HTTPS for EstClient cl: the
    core's HttpOperation on cl's TLS session, reconnecting when the server
    closes; a CSR bound to the channel (callable csr) is rebuilt for a new
    connection."""
    from est_lite import client as C
    from est_lite.client_http import HttpOperation
    from est_lite.errors import LocalProtocolError

    host = cl.host if ":" not in cl.host else "[%s]" % cl.host
    if cl.port != 443:
        host = "%s:%d" % (host, cl.port)
    for _ in range(3):
        # a kept connection (an earlier operation's, or kept through a
        # retry-after wait) may have been closed by the server while idle:
        # its first request is answered by EOF (or a reset) and never
        # reached the server, so it is sent again once on a new connection
        kept = cl._t is not None
        t = cl._session()
        t.left = cl._left
        b = t.binding
        o = HttpOperation(op, cl.label, host=host, body=csr(b) if callable(csr) else csr, auth=cl.auth,
                          cnonce=cl._rand_bytes(8).hex(), public_key=pk, max_body=cl.max_body * 4)
        while True:
            if o.need_new_connection:
                cl.close()
                t = cl._session()
                t.left = cl._left
                if callable(csr) and t.binding != b:
                    break  # the CSR is bound to the old connection: start over on this one
            req = o.send()
            if req is None:
                raise LocalProtocolError("HTTP operation stalled")
            try:
                t.write(req)
                d = t.read(2048)
            except TransportError:
                if not kept:
                    raise
                d = b""
            if kept and not d:
                cl.close()
                break
            kept = False
            o.receive_data(d)
            ev = o.next_event()
            while ev is C.NEED_DATA and o.state == C.AWAIT_RESPONSE:
                o.receive_data(t.read(2048))
                ev = o.next_event()
            if ev is not C.NEED_DATA:
                if o.need_new_connection:
                    cl.close()
                if isinstance(ev, C.AuthRequired):  # (here, not in EstClient._run: HTTPS only)
                    n = []  # each scheme once (a server may offer Digest twice: SHA-256 and MD5)
                    for c in ev.challenges:
                        if c[0] not in n:
                            n.append(c[0])
                    raise SecurityError("the server requires authentication (%s): give user/password or a client "
                                        "certificate" % (", ".join(n) or "HTTP 401"))
                return ev
    raise TransportError("the server keeps closing the connection during authentication")


def bootstrap(cl):
    """Pinned first /cacerts over HTTPS. /cacerts needs no credentials, so
    it is fetched without any (no client certificate, no password). If the
    pinned certificate was not in the chain the server presented, it must
    be in the answer and the server's chain must verify up to it; only then
    is the answer used. Returns the CA certificates."""
    saved = cl.cert, cl.key, cl.auth
    cl.close()
    cl.cert = cl.key = cl.auth = None
    cl._anon = True
    try:
        certs = cl._run(0).certs
        t = cl._last
        if t.pending:
            import hashlib

            from est_lite_mp import certs as X

            pinned = [c for c in certs if hashlib.sha256(c).digest() == cl.pin]
            if not pinned:
                raise SecurityError("bootstrap refused: the pinned certificate (sha256:%s) is neither in the "
                                    "server's TLS chain nor in its CA certificates" % cl.pin.hex())
            chain = t.peer_der()
            X.check_issued(chain[0], chain[1:] + certs, pinned, None, cl._crypto().verify, cl._verify_hook())
        return certs
    finally:
        cl.close()
        cl.cert, cl.key, cl.auth = saved
        cl._anon = False
