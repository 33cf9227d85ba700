# est-lite client runtime: EST (HTTPS) and EST-coaps (DTLS) for a device.
# Portable: this is the MicroPython client; est_lite_cpython.client
# subclasses it with CPython transports and crypto (same API).
#
#   c = EstClient("coaps://est.example:5684", pin=fp, cert=idevid_der, key=idevid_key_der)
#   r = c.provision(CredStore("/est"), cn="dev-42")   # cacerts, csrattrs, key, CSR, enroll, verify, store
#   c.renew_if_needed(CredStore("/est"))              # re-enroll when a third of the validity is left
#   c.close()
#
# Granular: cacerts() -> [DER], csrattrs() -> CsrAttrs or None,
# enroll(csr) / reenroll(csr) -> Enrolled(cert, chain),
# serverkeygen(csr) -> ServerKeyGen(key_der, key_type, cert, chain).
# A csr is DER bytes, or a callable binding -> DER called for each attempt
# with the channel binding of the session carrying it (None when the port
# has none): RFC 7030 §3.5 PoP linking.
#
# Every operation is retried after 202 / 5.03 (Retry-After / Max-Age plus
# jitter) and after link failures (exponential backoff) while the next try
# fits before the deadline (seconds from the start of the call).
# Imports are lazy: a CoAP-only enrollment never loads the HTTP modules.
import time

from est_lite.errors import EstError, LocalProtocolError, SecurityError, TransportError, const

try:
    _ticks = time.ticks_ms
    _tdiff = time.ticks_diff
except AttributeError:  # CPython
    def _ticks():
        return int(time.monotonic() * 1000)

    def _tdiff(a, b):
        return a - b

_T0 = _ticks()


def parse_server(uri):
    """(scheme, host, port, label) from coaps://host[:port][/label] or
    https://host[:port][/.well-known/est][/label]; IPv6 in brackets."""
    i = -1
    if isinstance(uri, str):
        for c in uri.encode():  # bytes: iterating a str interns each character on MicroPython
            if c <= 32 or c in b"\x7f?#":
                raise LocalProtocolError("server URI %r has a space, control character, query or fragment" % uri)
        i = uri.find("://")
    scheme = uri[:i].lower() if i > 0 else ""
    if scheme not in ("coaps", "https"):
        raise LocalProtocolError("server must be a coaps:// or https:// URI, got %r" % (uri,))
    rest = uri[i + 3:]
    j = rest.find("/")
    hp, path = (rest, "") if j < 0 else (rest[:j], rest[j:])
    if "@" in hp:
        raise LocalProtocolError("server URI %r has user info: give the user with user=" % uri)
    if hp.count(":") > 1 and hp[0] != "[":
        raise LocalProtocolError("server URI %r: IPv6 address not in brackets" % uri)
    port = 5684 if scheme == "coaps" else 443
    if hp.startswith("["):
        k = hp.find("]")
        host = hp[1:k]
        p = hp[k + 1:]
    else:
        k = hp.rfind(":")
        host, p = (hp, "") if k < 0 else (hp[:k], hp[k:])
    if p:
        try:
            port = int(p[1:])
        except ValueError:
            port = 0
        if not p.startswith(":") or not 0 < port < 65536:
            raise LocalProtocolError("bad port in %r" % uri)
    if not host:
        raise LocalProtocolError("no host in %r" % uri)
    segs = [s for s in path.split("/") if s]
    if segs[:2] == [".well-known", "est"]:
        segs = segs[2:]
    if len(segs) > 1:
        raise LocalProtocolError("server URI path may only name a label, got %r" % path)
    return scheme, host, port, segs[0] if segs else None


def parse_pin(pin):
    """32 bytes from b'...' (32), 'sha256:<hex>' or '<hex>' (colons allowed)."""
    if pin is None or isinstance(pin, bytes) and len(pin) == 32:
        return pin
    s = pin.decode() if isinstance(pin, (bytes, bytearray)) else str(pin)
    if s.lower().startswith("sha256:"):
        s = s[7:]
    s = s.replace(":", "").strip()
    try:
        b = bytes.fromhex(s)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise LocalProtocolError("pin must be sha256:<64 hex digits> (the SHA-256 of a server certificate)")
    return b


# RTO estimator (RFC 6298 / RFC 8961 shape) in integer milliseconds:
#   r = Rto(); r.sample(12); r.timeout(); r.timeout(2)  (after 2 retransmissions)
# One per client and peer (EstClient.rto): the DTLS handshake's flights and
# every CoAP exchange feed it. It lives here (not in a module of its own:
# one .mpy less to ship; est_lite_mp.dtls takes any object with
# sample()/timeout()).
_G = const(1)  # clock granularity (ms), RFC 6298 §2.3 "max(G, K*RTTVAR)"
# Temporal sharing (RFC 9040 §4.2, as Linux TCP's metrics cache): the last
# SRTT/RTTVAR per server (host, port) -> [s8, v4, ticks], seeding the
# estimator of the next client to that server, so a process that enrolls
# again (renewal, a gateway or station enrolling many identities) does not
# start from the 1 s of "no knowledge". Kept EstClient.rtt_keep_s, at most
# _PATHS_MAX servers.
_PATHS = {}
_PATHS_MAX = const(4)


class Rto:
    """initial_ms: timeout before any sample (RFC 8961: 1 s; RFC 7252's
    ACK_TIMEOUT is 2 s). min_ms: floor of a measured timeout (it must cover
    the server's think time, which the samples include). max_ms: ceiling,
    also of a backed-off timeout. k: RTTVAR multiplier (RFC 6298: 4)."""

    def __init__(self, initial_ms=1000, min_ms=100, max_ms=60000, k=4):
        for name, v in (("initial_ms", initial_ms), ("min_ms", min_ms), ("max_ms", max_ms), ("k", k)):
            if not isinstance(v, int) or v < 0:
                raise LocalProtocolError("Rto %s must be a non-negative int, got %r" % (name, v))
        if not min_ms <= max_ms or not 0 < initial_ms <= max_ms or not max_ms:
            raise LocalProtocolError("Rto needs 0 < initial_ms <= max_ms and min_ms <= max_ms")
        self.initial_ms = initial_ms
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.k = k
        self._s8 = -1  # SRTT * 8, ms (-1: no sample yet); fixed point as in Linux TCP
        self._v4 = 0  # RTTVAR * 4
        self.samples = 0

    @property
    def srtt(self):
        """Smoothed RTT (ms), None before the first sample."""
        return None if self._s8 < 0 else self._s8 >> 3

    @property
    def rttvar(self):
        return self._v4 >> 2

    def sample(self, rtt_ms):
        """Feed one round-trip time (ms) of a datagram that was sent once."""
        if not isinstance(rtt_ms, int):
            try:
                rtt_ms = int(rtt_ms)
            except (TypeError, ValueError, OverflowError):
                raise LocalProtocolError("an RTT sample is a number of ms, got %r" % (rtt_ms,))
        if rtt_ms < 0:
            raise LocalProtocolError("an RTT sample cannot be negative (%d ms)" % rtt_ms)
        if rtt_ms > self.max_ms:
            rtt_ms = self.max_ms
        if self._s8 < 0:
            self._s8 = rtt_ms << 3  # SRTT = R
            self._v4 = rtt_ms << 1  # RTTVAR = R/2
        else:
            # SRTT += (R - SRTT)/8;  RTTVAR += (|R - SRTT| - RTTVAR)/4
            d = rtt_ms - (self._s8 >> 3)
            self._s8 += d
            if d < 0:
                d = -d
            self._v4 += d - (self._v4 >> 2)
        self.samples += 1

    def timeout(self, backoff=0):
        """Retransmission timeout in ms after `backoff` retransmissions."""
        if self._s8 < 0:
            t = self.initial_ms
        else:
            v = (self.k * self._v4) >> 2
            t = (self._s8 >> 3) + (v if v > _G else _G)
            if t < self.min_ms:
                t = self.min_ms
        m = self.max_ms
        while backoff > 0 and t < m:
            t <<= 1
            backoff -= 1
        return t if t < m else m


# --- MicroPython transports (est_lite_cpython.client has its own) ---

class _MpCoaps:
    # est_lite_mp.dtls.DtlsClient: the first send runs the handshake
    binding = None

    def __init__(self, host, port, trust, pin, name, cert, key, timeout, rto=None, flight_buf=None):
        from est_lite_mp.dtls import DtlsClient

        self._pc = None
        if pin:
            from est_lite_mp.pincheck import PinCheck

            # the verify callback: pinned certificate in the chain, the ones below it signed by the next
            self._pc = PinCheck(pin, None)
        self.c = DtlsClient(host, port, cadata=trust, server_hostname=name, cert=cert, key=key,
                            pin=self._pc, timeout_ms=int(timeout * 1000), rto=rto, flight_buf=flight_buf)

    def connect(self):
        self.c.connect()

    def send(self, d):
        try:
            self.c.send(d)  # the first one runs the handshake
        except SecurityError:
            pc = self._pc
            if pc is not None and pc.why is not None:
                raise SecurityError("DTLS handshake refused before our certificate was sent: %s" % pc.why)
            raise

    def recv_into(self, buf, timeout):
        return self.c.recv_into(buf, max(0, int(timeout * 1000)))

    def close(self):
        self.c.close()


class EstClient:
    """server: coaps:// or https:// URI (an optional label as the path, or
    label=). trust: CA certificates (DER, list) the server must chain to;
    pin: bootstrap instead of trust -- SHA-256 of a certificate in the
    server's chain (32 bytes or 'sha256:hex'), checked during the handshake;
    after the first cacerts() the received CA certificates are the trust
    anchors. cert/key: client certificate and key (DER) for the (D)TLS
    handshake; user/password: HTTP Basic/Digest (HTTPS only).
    server_name: the name the server certificate must cover (default: the
    URI host). timeout: one handshake or request (s); deadline: default
    overall limit of each call (s, None: no retries)."""

    szx = 6
    ack_timeout = 2
    max_body = 4096
    backoff = 5  # first backoff after a link failure (s)
    idle_close = 30  # close the session before a longer retry wait (servers evict idle sessions)
    # RTT-based timers (docs/client-runtime.md, "Datagram loss"): the DTLS
    # handshake's round trips and every CoAP exchange feed an RFC 6298
    # estimator (est_lite_mp.client.Rto) kept for the client's life; a lost
    # handshake flight is resent after its RTO (MicroPython port) and each
    # CoAP request's ACK_TIMEOUT is the RTO, with more retransmissions so
    # the give-up span stays RFC 7252's. adaptive = False: ack_timeout and
    # Mbed TLS's 1 s handshake timer, as before.
    adaptive = True
    rto_initial_ms = 1000  # handshake resend timer before any sample (RFC 6347 / RFC 8961: 1 s)
    rto_min_ms = 20  # floor of a measured RTO (2 ticks of a 100 Hz RTOS; RFC 9002 has only the clock's)
    rto_max_ms = 60000
    rtt_keep_s = 600  # reuse a server's RTT estimate this long after a session (0: never)
    max_retransmit = 4  # RFC 7252 MAX_RETRANSMIT at ack_timeout
    min_retry = 1  # shortest wait (s) before repeating after 202 / 5.03 (a Max-Age of 0 is not a busy loop)
    said = None  # during a retry wait (_sleep): the server's text with its 202 / 5.03, None after a link failure
    # provision()/renew_if_needed() on MicroPython: one DTLS session for
    # the whole enrollment (cacerts, csrattrs, enroll), kept open while the
    # key and the CSR are made. False (opt-in for boards short of RAM):
    # close it meanwhile, so its memory (on bare-metal ports Mbed TLS's
    # ~25-32 KB from the GC heap) is free for the key generation and the
    # CSR; enroll then opens a second session (one handshake more, and
    # twice the exposure to datagram loss).
    keep_session = True
    # follow_rollover (not defined here: True; one interned name less in an
    # enrollment): renew_if_needed() asks /cacerts in the renewal's session
    # and follows a root CA key update (RFC 7030 §4.1.3): a new root becomes
    # a trust anchor, stored with the new certificate, only when a
    # certificate of its key is signed by a root already trusted
    # (est_lite_mp.rollover; docs/client-runtime.md). Set it to False for
    # one request less per renewal: the stored CA certificates stay as they are.

    def __init__(self, server, trust=None, pin=None, cert=None, key=None, user=None, password=None, label=None,
                 server_name=None, timeout=30, deadline=120):
        self.scheme, self.host, self.port, lab = parse_server(server)
        self.label = label or lab
        if label and lab and label != lab:
            raise LocalProtocolError("label given twice: %r and %r" % (lab, label))
        if trust is not None and not isinstance(trust, (list, tuple)):
            trust = [trust]
        self.pin = parse_pin(pin)
        if trust is None and self.pin is None:
            raise LocalProtocolError("give trust anchors (trust=) or a bootstrap pin (pin=); there is no implicit trust")
        if (cert is None) != (key is None):
            raise LocalProtocolError("cert and key go together")
        if user is not None and self.scheme == "coaps":
            raise LocalProtocolError("HTTP user/password do not exist over CoAPs (RFC 9148): use a client certificate")
        self.trust = trust
        self.cert, self.key = cert, key
        self.auth = (user, password or "") if user is not None else None
        self.server_name = server_name or self.host
        self.timeout = timeout
        self.deadline = deadline
        self.bootstrapped = False  # the trust anchors came from a pinned cacerts()
        self._t = None  # transport of the current session
        self._last = None  # HTTPS: transport that carried the last answer (kept after close)
        self._anon = False  # HTTPS bootstrap without credentials
        self._mid = None  # next CoAP message id (kept as an int: core modules may be reloaded)
        self._buf = self._rx = None
        self._end = None
        self.rto = None  # est_lite_mp.client.Rto, made with the first session when adaptive

    # --- port hooks (est_lite_cpython.client overrides them) ---

    def _mono(self):
        return _tdiff(_ticks(), _T0) / 1000

    def _sleep(self, s):
        if s > 0:
            time.sleep(s)

    def _rand_bytes(self, n):
        import os

        return os.urandom(n)

    def _rand(self):
        b = self._rand_bytes(3)
        return (b[0] << 16 | b[1] << 8 | b[2]) / 16777216

    def _crypto(self):
        from est_lite_mp import crypto

        return crypto

    def _open_coaps(self, trust, pin, timeout):
        # the receive buffer is idle during the handshake: it keeps our last flight for resending
        return _MpCoaps(self.host, self.port, trust, pin, self.server_name, self.cert, self.key, timeout, self.rto,
                        self._rx)

    def _open_https(self, trust, pin, timeout):
        from est_lite_mp import https  # (not est_lite_mp.https: one interned name less)

        return https.TlsStream(self.host, self.port, trust, pin, self.server_name, self.cert, self.key, timeout,
                               self._anon)

    # --- sessions ---

    def _left(self):
        return None if self._end is None else self._end - self._mono()

    def _session(self):
        if self._t is None:
            if self.adaptive and self.rto is None and self.scheme == "coaps":
                r = self.rto = Rto(initial_ms=self.rto_initial_ms, min_ms=self.rto_min_ms, max_ms=self.rto_max_ms)
                c = _PATHS.get((self.host, self.port))
                if c is not None and _tdiff(_ticks(), c[2]) < self.rtt_keep_s * 1000:
                    r._s8, r._v4 = c[0], c[1]  # no sample of ours yet: r.samples stays 0
            if self._mid is None and self.scheme == "coaps":
                b = self._rand_bytes(2)
                self._mid = b[0] << 8 | b[1]
                self._buf = bytearray(1152)  # requests
                self._rx = memoryview(bytearray(1280))  # datagrams received; both kept for the client's life
            left = self._left()
            to = self.timeout if left is None else max(0.5, min(self.timeout, left))
            pin = self.pin if self.trust is None else None
            t = self._open_coaps(self.trust, pin, to) if self.scheme == "coaps" else self._open_https(self.trust, pin,
                                                                                                      to)
            try:
                t.connect()
            except BaseException:
                t.close()
                raise
            self._t = t
            if self.scheme == "https":
                self._last = t  # est_lite_mp.https.bootstrap reads the server chain from it after close()
        return self._t

    def close(self):
        """End the session (DTLS/TLS); the next operation opens a new one."""
        t = self._t
        self._t = None
        r = self.rto
        if r is not None and r.samples and self.rtt_keep_s:
            k = (self.host, self.port)
            if k not in _PATHS and len(_PATHS) >= _PATHS_MAX:
                _PATHS.pop(next(iter(_PATHS)))
            _PATHS[k] = [r._s8, r._v4, _ticks()]
        if t is not None:
            t.close()

    @property
    def binding(self):
        """Channel binding of the current session (tls-unique / exporter), or
        None (no session yet, or the port has none: MicroPython)."""
        return None if self._t is None else self._t.binding

    # --- one attempt ---

    def _coap_timers(self):
        # (ack_timeout s, max_retransmit) for the next request
        r = self.rto
        if r is None or not r.samples:
            return self.ack_timeout, self.max_retransmit
        ms = r.timeout()
        n = self.max_retransmit
        t = ms
        while t < self.ack_timeout * 1000 and n < 12:
            t <<= 1  # as many more doublings as the RTO is below ACK_TIMEOUT
            n += 1
        return ms / 1000, n

    def _coap_once(self, op, body, pk):
        from est_lite import client as C

        t = self._session()
        ms = C.MidSource(self._mid)
        at, mr = self._coap_timers()
        o = C.CoapOperation(op, label=self.label, body=body, token=self._rand_bytes(4), mid=ms, szx=self.szx,
                            public_key=pk, rand=self._rand, ack_timeout=at, max_retransmit=mr,
                            max_body=self.max_body, buf=self._buf)
        mv = self._rx
        rto = self.rto
        sent = None  # time a confirmable request went out (RTT sample unless it is retransmitted)
        rx = 0
        try:
            while True:
                now = self._mono()
                if rto is not None and rto.samples:
                    o.ack_timeout, o.max_retransmit = self._coap_timers()  # read for each new request
                d = o.send(now)
                while d is not None:
                    k = rto.samples if rto is not None else 0
                    t.send(d)  # the first datagram of a session runs the DTLS handshake
                    if rto is not None and rto.samples != k and not o.retransmissions:
                        # the handshake measured the RTT and delayed this first
                        # transmission: its timer starts now, at the new RTO
                        # (CoapOperation computed it before; same random factor)
                        at, o.max_retransmit = self._coap_timers()
                        now = self._mono()
                        o._tmo = o._tmo * at / o.ack_timeout
                        o.ack_timeout = at
                        o._t = now + o._tmo
                    if not d[0] & 0x30:  # CON: a request
                        sent = now if sent is None and o.retransmissions == rx else -1
                    d = o.send(now)
                ev = o.next_event()
                if ev is not C.NEED_DATA:
                    return ev
                w = o.next_timeout()
                end = self._end
                if end is not None and w > end:  # the call's deadline comes first
                    w = end
                    if end <= self._mono():
                        o._fail(TransportError("no answer before the deadline (%s)%s" % (
                            "empty ACK, no separate response" if o._acked else "%d retransmissions" % o.retransmissions,
                            o._ign())))
                        continue  # next_event() raises it
                n = t.recv_into(mv, w - self._mono())
                if n is not None and n < 0:  # a record larger than mv (est_lite_mp.dtls): dropped
                    o.ignored += 1
                elif n:
                    now = self._mono()
                    k = o.ignored
                    o.receive_data(mv[:n], now)
                    if o.ignored == k:  # the answer (not a stray datagram): an RTT sample
                        if rto is not None and sent is not None and sent >= 0:
                            rto.sample(int((now - sent) * 1000))
                        sent = None
                        rx = o.retransmissions
        finally:
            self._mid = ms.mid

    # --- retries ---

    def _run(self, op, csr=None, pk=None):
        from est_lite import client as C

        outer = self._end is None
        if outer and self.deadline is not None:
            self._end = self._mono() + self.deadline
        try:
            attempt = 0
            while True:
                try:
                    if self.scheme == "coaps":
                        t = self._session()
                        body = csr(t.binding) if callable(csr) else csr
                        ev = self._coap_once(op, body or b"", pk)
                    else:
                        from est_lite_mp import https

                        ev = https.http_once(self, op, csr or b"", pk)
                except TransportError as e:
                    self.close()
                    if self._end is None:
                        raise
                    now = self._mono()
                    try:
                        when = C.retry_delay(None, attempt, now, self._end, self._rand(), base=self.backoff)
                    except TransportError:
                        raise TransportError("%s (gave up after %d attempt(s): deadline)" % (e, attempt + 1))
                    self.said = None
                    self._sleep(when - now)
                    attempt += 1
                    continue
                if isinstance(ev, C.RetryAfter):
                    now = self._mono()
                    try:
                        if self._end is None:
                            raise TransportError("")  # no deadline: no retries
                        when = C.retry_delay(max(ev.seconds, self.min_retry), attempt, now, self._end, self._rand())
                    except TransportError:
                        # 5.03 as the code hint: "come back later", not a link failure (the
                        # CLI keeps the key of an enrollment request waiting for approval)
                        d = ev.diagnostic
                        raise TransportError("not done yet: the server asks to retry in %d s (202 / 5.03), past the "
                                             "deadline, after %d attempt(s)%s" % (ev.seconds, attempt + 1,
                                                                                  "" if d is None else ": " + d),
                                             0xA3, 503, d)
                    if when - now > self.idle_close:
                        self.close()
                    self.said = ev.diagnostic
                    self._sleep(when - now)
                    attempt += 1
                    continue
                return ev
        except SecurityError as e:
            # a board without a battery-backed clock reads 1970/2000 after a
            # cold boot: (D)TLS then refuses every server certificate as
            # "not valid yet" (Mbed TLS and OpenSSL check dates against it)
            from est_lite_mp import certs

            if not outer or certs.utc_seconds() is not None:
                raise
            raise SecurityError("%s (this device's clock reads %04d-%02d-%02d, not set: set it (NTP, RTC) first)"
                                % ((e,) + certs.time.gmtime()[:3]))
        finally:
            if outer:
                self._end = None

    def _bootstrap(self):
        if self.trust is None:
            self.cacerts()

    # --- EST operations ---

    def cacerts(self):
        """The CA certificates (list of DER). With a pin and no trust
        anchors this is the bootstrap: they become the trust anchors."""
        if self.trust is None and self.scheme == "https":
            from est_lite_mp import https

            certs = https.bootstrap(self)
        else:
            certs = self._run(0).certs
        if self.trust is None:
            self.trust = certs
            self.bootstrapped = True
        return certs

    def csrattrs(self):
        """est_lite.csrattrs.CsrAttrs, or None when the server has none."""
        self._bootstrap()
        return self._run(1).attrs

    def enroll(self, csr, public_key=None):
        """Enrolled(cert, chain). public_key (65 bytes) picks the issued
        certificate among several."""
        self._bootstrap()
        return self._run(2, csr, public_key)

    def reenroll(self, csr, public_key=None):
        self._bootstrap()
        return self._run(3, csr, public_key)

    def serverkeygen(self, csr):
        """ServerKeyGen(key_der, key_type, cert, chain)."""
        self._bootstrap()
        return self._run(4, csr)

    # --- easy provisioning (est_lite_mp.provision) ---

    def provision(self, store, cn=None, subject=None, dns=(), ip=(), uri=(), key_backend=None, deadline=None,
                  pop=None, now=None, **names):
        """Fetch the CA certificates and CSR attributes, make a key (or use
        key_backend, a Signer), build the CSR honouring the attributes,
        enroll, verify the certificate against the CA chain and the key,
        and commit key, certificate and CA certificates to `store` (a
        CredStore). subject: (oid, value) pairs; names: o=, ou=, c=,
        serial_number=, ... as in CsrBuilder.subject. pop: put the channel
        binding in challengePassword (None: when the server asks for it).
        deadline overrides the client's for this call. Returns a
        provision.Result (cert, chain, ca, public_key, unmet, gen)."""
        from est_lite_mp import provision

        if cn is not None:
            names["cn"] = cn
        return self._with_deadline(deadline, provision.provision, self, store, subject, names, dns, ip, uri,
                                   key_backend, pop, now)

    def renew_if_needed(self, store, threshold=None, rotate_key=True, key_backend=None, deadline=None, now=None):
        """Re-enroll (simplereenroll, authenticated by the stored certificate)
        when less than `threshold` seconds of validity are left (default: a
        third of the certificate's lifetime). A new key unless
        rotate_key=False. The new credentials replace the old ones only once
        verified. Returns a provision.Result, or None when no renewal was
        due."""
        from est_lite_mp import provision

        return self._with_deadline(deadline, provision.renew, self, store, threshold, rotate_key, key_backend, now)

    def _with_deadline(self, deadline, fn, *args):
        if deadline is None:
            deadline = self.deadline
        self._end = None if deadline is None else self._mono() + deadline
        try:
            return fn(*args)
        finally:
            self._end = None

    def _verify_hook(self):
        return None

    def _make_key(self, key_backend):
        return key_backend if key_backend is not None else self._crypto().P256Key.generate()
