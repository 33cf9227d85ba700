"""asyncio DTLS 1.2 server endpoint on one UDP socket (pyOpenSSL, memory BIOs).

    server = DtlsServer(cert, key, trusted_cas=[ca], on_datagram=handle)
    host, port = await server.start(("127.0.0.1", 0))
    ...
    def handle(peer, data):          # peer: DtlsPeer
        peer.send(b"echo " + data)
    ...
    server.close()

Cookie exchange is stateless and done here, before OpenSSL sees anything: a
ClientHello without a valid cookie is answered with a HelloVerifyRequest that
we build ourselves (cookie = keyed BLAKE2s-128 over the client address and the
ClientHello parameters, under a secret rotated every `cookie_lifetime`
seconds; the previous secret is still accepted) and nothing is stored. Only a
ClientHello carrying a valid cookie creates a session: a pyOpenSSL Connection
that is handed the datagram through `DTLSv1_listen()` (so OpenSSL's state
machine knows the cookie round trip happened), then `do_handshake()`.

Client certificates are required and verified against `trusted_cas` (a list,
or a callable returning the current list, evaluated for each new session),
then each certificate of the verified chain goes through `is_revoked(cert)` if
given. Sessions are bounded (`max_sessions`), time out while handshaking
(`handshake_timeout`) and are evicted when idle (`idle_timeout`; MicroPython
clients never send close_notify). One host (an IPv4 address, an IPv6 /64)
holds at most `max_handshakes_per_host` sessions that are still
handshaking: an unauthenticated peer that answers the cookie and goes
silent cannot fill the table from many ports.
"""

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import socket
import struct

from est_lite.errors import LocalProtocolError

from . import dtls as _d

log = logging.getLogger("est_lite.dtls_server")


def host_key(address):
    """What max_handshakes_per_host counts by: the IPv4 address (also when
    IPv4-mapped in IPv6), or the /64 prefix of an IPv6 address."""
    host = address[0]
    if ":" not in host:
        return host
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    try:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])[:8]
    except (OSError, ValueError):
        return host


_HS_CLIENT_HELLO = 1
_HS_HELLO_VERIFY_REQUEST = 3
_COOKIE_LEN = 16


# --- stateless cookie exchange --------------------------------------------------------------


class ClientHelloInfo:
    """What the cookie covers, parsed from an unfragmented epoch-0 ClientHello."""

    __slots__ = ("record_seq", "client_version", "random", "session_id", "cookie", "suites", "compression")

    def __init__(self, record_seq, client_version, random, session_id, cookie, suites, compression):
        self.record_seq = record_seq  # epoch(2) + sequence(6), echoed in the HelloVerifyRequest
        self.client_version = client_version
        self.random = random
        self.session_id = session_id
        self.cookie = cookie
        self.suites = suites
        self.compression = compression


_HS_HEADER = struct.Struct("!BBHHBHBH")  # msg_type, length (3), message_seq, fragment_offset (3), fragment_length (3)
_CT_HANDSHAKE = _d.CT_HANDSHAKE
_CT_APPLICATION_DATA = _d.CT_APPLICATION_DATA
_RECORD_HEADER = _d.RECORD_HEADER


def parse_client_hello(datagram):
    """Return ClientHelloInfo if the datagram starts with an epoch-0 handshake
    record holding a complete ClientHello, else None. Never raises on
    malformed input: whatever is not a parseable ClientHello is None."""
    n = len(datagram)
    if n < 25 or datagram[0] != _CT_HANDSHAKE or datagram[3] or datagram[4]:  # epoch 0 only
        return None
    if (datagram[1] << 8 | datagram[2]) not in _d.DTLS_VERSIONS:
        return None
    end = 13 + (datagram[11] << 8 | datagram[12])
    if end > n:
        return None
    mt, lh, ll, _seq, oh, ol, fh, fl = _HS_HEADER.unpack_from(datagram, 13)
    mlen = lh << 16 | ll
    if mt != _HS_CLIENT_HELLO or oh or ol or (fh << 16 | fl) != mlen or 25 + mlen > end:
        return None  # fragmented ClientHello: not supported for the stateless check (as OpenSSL)
    bend = 25 + mlen  # the body is datagram[25:bend]
    if mlen < 35:
        return None
    p = 59  # after client_version (2) and random (32)
    sid_len = datagram[p]
    p += 1
    if sid_len > 32 or p + sid_len + 1 > bend:
        return None
    sid = datagram[p : p + sid_len]
    p += sid_len
    cookie_len = datagram[p]
    p += 1
    if p + cookie_len + 2 > bend:
        return None
    cookie = datagram[p : p + cookie_len]
    p += cookie_len
    suites_len = datagram[p] << 8 | datagram[p + 1]
    p += 2
    if suites_len == 0 or suites_len % 2 or p + suites_len + 1 > bend:
        return None
    suites = datagram[p : p + suites_len]
    p += suites_len
    comp_len = datagram[p]
    p += 1
    if comp_len == 0 or p + comp_len > bend:
        return None
    return ClientHelloInfo(bytes(datagram[3:11]), bytes(datagram[25:27]), bytes(datagram[27:59]), bytes(sid),
                           bytes(cookie), bytes(suites), bytes(datagram[p : p + comp_len]))


def handshake_progress(datagram):
    """How far the plaintext (epoch-0) handshake records of a datagram reach:
    the largest (message_seq, fragment end) among them, or None if it holds
    none. A client that repeats a flight sends nothing beyond what it sent
    before, so a datagram whose progress is not above what our last flight
    answered is a retransmission. Never raises on malformed input."""
    n = len(datagram)
    best = None
    off = 0
    while n - off >= 13:  # the whole records; the walk stops at a truncated one
        end = off + 13 + (datagram[off + 11] << 8 | datagram[off + 12])
        if end > n:
            break
        if end - off >= 25 and datagram[off] == _CT_HANDSHAKE and not datagram[off + 3] and not datagram[off + 4]:
            _, _, _, seq, oh, ol, fh, fl = _HS_HEADER.unpack_from(datagram, off + 13)
            p = (seq, (oh << 16 | ol) + (fh << 16 | fl))
            if best is None or p > best:
                best = p
        off = end
    return best


def _plain_records(mv):
    """(offset, length) of each whole epoch-0 record in a datagram; the walk
    stops at a truncated record."""
    n = len(mv)
    off = 0
    while n - off >= _RECORD_HEADER:
        rlen = struct.unpack_from("!H", mv, off + 11)[0]
        if off + _RECORD_HEADER + rlen > n:
            return
        if mv[off + 3] == 0 and mv[off + 4] == 0:
            yield off, rlen
        off += _RECORD_HEADER + rlen


def build_hello_verify_request(info, cookie):
    """The HelloVerifyRequest record answering `info` (RFC 6347 §4.2.1): record
    and server_version DTLS 1.0, the ClientHello's record sequence number,
    message_seq 0, never fragmented."""
    body = b"\xfe\xff" + bytes([len(cookie)]) + cookie
    blen = len(body).to_bytes(3, "big")
    hs = bytes([_HS_HELLO_VERIFY_REQUEST]) + blen + b"\x00\x00" + b"\x00\x00\x00" + blen + body
    return bytes([_d.CT_HANDSHAKE]) + b"\xfe\xff" + info.record_seq + struct.pack("!H", len(hs)) + hs


class CookieJar:
    """Keyed-hash (BLAKE2s) cookies under a secret rotated every `lifetime` seconds; a cookie
    from the previous secret is still accepted. Holds no per-client state."""

    def __init__(self, lifetime=300.0, now=0.0):
        if lifetime <= 0:
            raise LocalProtocolError("cookie_lifetime must be positive")
        self.lifetime = lifetime
        self._secrets = [os.urandom(32), os.urandom(32)]
        self._rotated = now

    def _maybe_rotate(self, now):
        if now - self._rotated >= self.lifetime:
            self._secrets = [os.urandom(32), self._secrets[0]]
            self._rotated = now

    @staticmethod
    def _mac(secret, addr, info):
        # keyed BLAKE2s (a PRF, as RFC 6347 §4.2.1 asks of the cookie) over the
        # client address and the ClientHello parameters, lengths first so the
        # encoding is unambiguous; CPython's own BLAKE2 costs a third of an
        # OpenSSL HMAC call
        v, r, sid, su, co = info.client_version, info.random, info.session_id, info.suites, info.compression
        msg = b"".join((("%s|%d|" % (addr[0], addr[1])).encode(),
                        struct.pack("!HHHHH", len(v), len(r), len(sid), len(su), len(co)), v, r, sid, su, co))
        return hashlib.blake2s(msg, key=secret, digest_size=_COOKIE_LEN).digest()

    def make(self, addr, info, now):
        self._maybe_rotate(now)
        return self._mac(self._secrets[0], addr, info)

    def check(self, addr, info, now):
        self._maybe_rotate(now)
        if len(info.cookie) != _COOKIE_LEN:
            return False
        for s in self._secrets:
            if hmac.compare_digest(self._mac(s, addr, info), info.cookie):
                return True
        return False


# --- sessions -------------------------------------------------------------------------------


# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED (admit_out_of_date)
_DATE_ERRORS = (9, 10)


class DtlsPeer:
    """One DTLS session with one client address. Handed to `on_datagram`
    with every decrypted datagram; the same object for the whole session.

    After the handshake: `address`, `peer_chain` (what the client sent, leaf
    first, cryptography certificates), `verified_chain` (leaf ... trust
    anchor), `tls_unique`, `exporter` (RFC 5705, label EXPORTER-Channel-Binding,
    32 bytes; computed on first use), `cipher`, `extended_master_secret`,
    `max_payload` (largest datagram `send()` fits in one MTU-sized record)."""

    __slots__ = (
        "id", "address", "_sockaddr", "_server", "_conn", "established", "closed", "created", "last_rx",
        "peer_chain", "verified_chain", "tls_unique", "_exporter", "_cipher", "extended_master_secret",
        "max_payload", "verify_error", "date_error", "_vcerts", "_hello_random", "_hello_seq", "_seq_shift",
        "_hs_progress", "_flight_progress",
        "_flight", "_flight_at", "_retx", "_cookie", "busy", "__weakref__",
    )
    _next_id = 0

    def __init__(self, server, address, conn, now):
        DtlsPeer._next_id += 1
        self.id = DtlsPeer._next_id
        self.address = tuple(address[:2])  # (host, port)
        self._sockaddr = address  # as the socket reported it (keeps IPv6 scope)
        self._server = server
        self._conn = conn
        self.established = False
        self.closed = False
        self.created = now
        self.last_rx = now
        self.busy = 0  # requests of this session still being answered (EstCoapsServer): not idle
        self.peer_chain = []
        self.verified_chain = []
        self.tls_unique = None
        self._exporter = None
        self._cipher = None
        self.extended_master_secret = None
        self.max_payload = None
        self.verify_error = None
        self.date_error = None  # admit_out_of_date: why the client certificate is outside its dates
        self._vcerts = {}  # depth -> cryptography certificate, filled by the verify callback
        self._hello_random = None  # random of the ClientHello (with cookie) that opened the session
        self._hello_seq = 0  # record number of that ClientHello
        self._seq_shift = None  # added to the numbers of our plaintext records (see _renumber)
        self._hs_progress = (-1, 0)  # furthest client handshake fragment seen (handshake_progress)
        self._flight = None  # our last handshake flight (datagrams), kept to answer a repeated client flight
        self._flight_progress = (-1, 0)  # _hs_progress when that flight went out: what it answered
        self._flight_at = 0.0  # when it last went out
        self._retx = None
        self._cookie = None

    def __repr__(self):
        return "<DtlsPeer #%d %s %s>" % (self.id, self.address, "up" if self.established else "handshaking")

    @property
    def peer_certificate(self):
        return self.peer_chain[0] if self.peer_chain else None

    @property
    def cipher(self):
        """The negotiated suite's OpenSSL name (None before the handshake)."""
        if self._cipher is None and self.established:
            self._cipher = self._conn.get_cipher_name()
        return self._cipher

    @property
    def exporter(self):
        """RFC 5705 exporter (label EXPORTER-Channel-Binding, 32 bytes), or
        None before the handshake; computed on first use (most sessions
        never need a channel binding)."""
        if self._exporter is None and self.established:
            try:
                self._exporter = _d.exporter(self._conn)
            except _d._ssl().Error:  # pragma: no cover - OpenSSL without the session's secrets
                return None
        return self._exporter

    def send(self, data):
        """Encrypt one datagram and send it to the peer."""
        if self.closed or not self.established:
            raise LocalProtocolError("DTLS session with %s is not established" % (self.address,))
        self._server._send_app(self, data)

    def close(self, reason="closed locally"):
        """Send close_notify and forget the session."""
        self._server._close(self, reason, notify=True)


def _direct_verify(ctx, mode, server):
    """Install the server's verify callback at the C level, without
    pyOpenSSL's wrapper, and make a client certificate refused as revoked end
    the handshake with the certificate_revoked alert (RFC 5246 §7.2.2)
    instead of internal_error. Returns False (and leaves pyOpenSSL's
    callback, set by the caller, in place) without the binding functions
    this needs.

    pyOpenSSL's wrapper wraps the current certificate in an X509 object,
    which we only turned into DER (through a fresh memory BIO) for
    cryptography; here the certificate goes to DER through one memory BIO
    the server keeps, and `server._verify` gets the DER. The outcome is
    pyOpenSSL's: X509_V_OK set when accepted, an exception kept in the
    context's verify helper (`_problems`, re-raised by the handshake call).

    OpenSSL picks the alert from the X509_STORE_CTX error when the verify
    callback fails; our revocation check fails a certificate OpenSSL found
    valid, so that error is X509_V_OK, which maps to internal_error: when
    `server._verify` refused for revocation (server._refused_revoked), the
    error becomes X509_V_ERR_CERT_REVOKED."""
    try:
        from OpenSSL._util import ffi, lib
        from OpenSSL.SSL import Connection

        reverse = Connection._reverse_mapping
        get_cert, get_error = lib.X509_STORE_CTX_get_current_cert, lib.X509_STORE_CTX_get_error
        get_depth, get_ex = lib.X509_STORE_CTX_get_error_depth, lib.X509_STORE_CTX_get_ex_data
        ssl_idx = lib.SSL_get_ex_data_X509_STORE_CTX_idx()
        set_error, v_ok, revoked_err = lib.X509_STORE_CTX_set_error, lib.X509_V_OK, lib.X509_V_ERR_CERT_REVOKED
        i2d_bio, bio_read = lib.i2d_X509_bio, lib.BIO_read
        problems = ctx._verify_helper._problems
        bio = ffi.gc(lib.BIO_new(lib.BIO_s_mem()), lib.BIO_free)
        set_verify, raw_ctx = lib.SSL_CTX_set_verify, ctx._context
    except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
        return False
    size = 8192
    buf = ffi.new("char[]", size)
    buffer = ffi.buffer

    def der_of(x509):
        if i2d_bio(bio, x509) != 1:
            raise LocalProtocolError("cannot encode the client certificate")
        parts = []
        while True:
            n = bio_read(bio, buf, size)
            if n <= 0:
                break
            parts.append(buffer(buf, n)[:])
            if n < size:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def cb(ok, store_ctx):
        try:
            server._refused_revoked = False
            conn = reverse[get_ex(store_ctx, ssl_idx)]
            r = server._verify(conn.get_app_data(), der_of(get_cert(store_ctx)), get_error(store_ctx),
                               get_depth(store_ctx), ok)
        except Exception as e:  # noqa: BLE001 - as pyOpenSSL's wrapper: re-raised by the handshake call
            problems.append(e)
            return 0
        if r:
            set_error(store_ctx, v_ok)
            return 1
        if server._refused_revoked:
            set_error(store_ctx, revoked_err)
        return 0

    c_cb = ffi.callback("int (*)(int, X509_STORE_CTX *)", cb, onerror=lambda *exc: 0)
    set_verify(raw_ctx, mode, c_cb)
    ctx._est_verify_cb = (c_cb, bio)  # alive as long as the context
    return True


def _der_subject(der):
    try:
        from cryptography import x509 as cx509

        return cx509.load_der_x509_certificate(der).subject.rfc4514_string()
    except (ValueError, TypeError):  # pragma: no cover
        return "?"


class DtlsServer:
    """DTLS 1.2 server on one UDP socket. See the module docstring.

    cert, key          server certificate and its private key (DER/PEM/cryptography)
    chain              extra certificates sent after the leaf (default: none,
                       the leaf alone keeps handshakes small)
    trusted_cas        CA certificates client chains must end in, or a callable
                       returning them (called for each new session)
    on_datagram        callable(peer, data) for every decrypted datagram
    on_established     callable(peer) after a completed handshake (optional)
    on_closed          callable(peer, reason) when an established session ends
    is_revoked         callable(cryptography cert) -> bool, asked for each
                       certificate of a verified client chain (optional)
    flight_resend_gap  when a client repeats its last handshake flight (ours
                       was lost), our last flight goes out again at once
                       (RFC 6347 §4.2.4) instead of on OpenSSL's own timer
                       (1 s, doubling), at most once per this many seconds
                       (the copies of one client flight arrive together; a
                       client's next repeat comes one of its RTOs later, and
                       the MicroPython port's RTO floor is 20 ms, so the gap
                       must stay well below that)
    evict_idle_after   when max_sessions are in use, a new client (its
                       address proven by the cookie) takes the place of the
                       established session silent for longest, if silent
                       for at least this many seconds (closed with
                       close_notify); None: refuse new clients until a slot
                       frees (idle_timeout, handshake_timeout, close_notify)
    admit_out_of_date  a client chain that OpenSSL refuses only because a
                       certificate of it is expired or not yet valid (errors
                       9 and 10; it chains to a trusted CA, every signature
                       checked, revocation asked as usual) completes the
                       handshake with `peer.date_error` saying why: the
                       application must then refuse every request of that
                       session, with the reason (EstCoapsServer answers
                       4.03 "client certificate ... expired on ..."), as an
                       HTTPS server does after its handshake. Any other
                       verification failure still ends the handshake.
    """

    def __init__(
        self,
        cert,
        key,
        trusted_cas,
        on_datagram,
        *,
        chain=(),
        on_established=None,
        on_closed=None,
        is_revoked=None,
        ciphers=_d.SERVER_SUITES,
        mtu=_d.DEFAULT_MTU,
        max_sessions=64,
        max_handshakes_per_host=16,
        idle_timeout=120.0,
        handshake_timeout=30.0,
        cookie_lifetime=300.0,
        max_datagram=4096,
        verify_depth=4,
        flight_resend_gap=0.005,
        evict_idle_after=10.0,
        admit_out_of_date=False,
    ):
        if max_sessions < 1:
            raise LocalProtocolError("max_sessions must be at least 1")
        if max_handshakes_per_host is not None and max_handshakes_per_host < 1:
            raise LocalProtocolError("max_handshakes_per_host must be at least 1, or None (no limit)")
        if idle_timeout <= 0 or handshake_timeout <= 0:
            raise LocalProtocolError("idle_timeout and handshake_timeout must be positive")
        if evict_idle_after is not None and not evict_idle_after >= 0:
            raise LocalProtocolError("evict_idle_after must be a number of seconds >= 0, or None")
        if mtu < _d.MIN_MTU:
            raise LocalProtocolError("mtu %d is below the minimum of %d" % (mtu, _d.MIN_MTU))
        self._cert = _d.load_certificate(cert)
        self._key = _d.load_private_key(key)
        self._chain = _d.load_certificates(chain)
        self._trusted_cas = trusted_cas
        self.on_datagram = on_datagram
        self.on_established = on_established
        self.on_closed = on_closed
        self.is_revoked = is_revoked
        self.ciphers = tuple(ciphers)
        self.mtu = mtu
        self.max_sessions = max_sessions
        self.max_handshakes_per_host = max_handshakes_per_host
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.max_datagram = max_datagram
        self.verify_depth = verify_depth
        self.flight_resend_gap = flight_resend_gap
        self.evict_idle_after = evict_idle_after
        self.admit_out_of_date = admit_out_of_date
        self._cookie_lifetime = cookie_lifetime
        self._cookies = None
        self._raw = _d.raw_ops()  # pyOpenSSL's calls without its wrappers (None: the public API)
        self._ssl_mod = _d._ssl()
        self._ca_cache = {}  # DER -> cryptography certificate of CA certificates in client chains
        self._refused_revoked = False  # set by _verify for _direct_verify (certificate_revoked alert)
        self._contexts = {}  # trust-set fingerprint tuple -> SSL.Context
        self._last_cas = (None, None)  # (list object trusted_cas() returned, its fingerprint tuple)
        self.sessions = {}  # socket address -> DtlsPeer
        self.stats = dict(
            datagrams=0,
            ignored=0,
            hello_verify_sent=0,
            refused_full=0,
            refused_host_handshakes=0,
            evicted_for_new=0,
            handshakes=0,
            handshake_failures=0,
            handshake_timeouts=0,
            idle_evictions=0,
            flight_resends=0,
        )
        self._transport = None
        self._loop = None
        self._sweep = None  # the one timer for handshake and idle deadlines (armed while sessions exist)
        # deadlines are checked this often: late by at most this much, and no
        # timer per session to create and cancel
        self._sweep_interval = max(0.05, min(1.0, min(handshake_timeout, idle_timeout) / 8.0))
        self.local_address = None
        # build one context now so configuration errors surface at construction
        self._context()

    # -- lifecycle --

    async def start(self, bind=("127.0.0.1", 0), *, reuse_port=False):
        """Bind the UDP socket; returns the bound (host, port). reuse_port:
        SO_REUSEPORT, so several processes can serve one port (the kernel
        hashes each client's address to one socket, so a DTLS session stays
        with the process that holds it)."""
        import socket

        self._loop = asyncio.get_running_loop()
        self._cookies = CookieJar(self._cookie_lifetime, self._loop.time())
        infos = socket.getaddrinfo(bind[0], bind[1], 0, socket.SOCK_DGRAM)
        fam, _, _, _, addr = infos[0]
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        self._transport = _UdpEndpoint(self._loop, sock, self)
        self.local_address = sock.getsockname()[:2]
        return self.local_address

    def close(self):
        """Send close_notify to every session and close the socket."""
        for peer in list(self.sessions.values()):
            self._close(peer, "server shutting down", notify=True)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def session_count(self):
        return len(self.sessions)

    # -- contexts --

    def _context(self):
        SSL = _d._ssl()
        cas = self._trusted_cas() if callable(self._trusted_cas) else self._trusted_cas
        if cas is self._last_cas[0] and self._last_cas[1] in self._contexts:
            return self._contexts[self._last_cas[1]]  # the same list object as last time: no re-hashing
        src = cas
        cas = _d.load_certificates(cas)
        if not cas:
            raise LocalProtocolError("trusted_cas is empty: no client could ever be accepted")
        fp = tuple(_d.fingerprint(c) for c in cas)
        ctx = self._contexts.get(fp)
        if ctx is not None:
            self._last_cas = (src, fp)
            return ctx
        ctx = _d.base_context(True, self.ciphers, self._cert, self._key, self._chain)
        ctx.set_options(SSL.OP_NO_RENEGOTIATION)  # as RFC 7925 has it; so no handshake (nor its timers) once up
        _d.add_trust_anchors(ctx, cas)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_cb)
        _direct_verify(ctx, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self)
        ctx.set_verify_depth(self.verify_depth)
        # DTLSv1_listen insists on both callbacks. We only call it for a
        # ClientHello whose cookie we already checked, so generation never
        # happens and verification confirms what we checked.
        ctx.set_cookie_generate_callback(lambda conn: os.urandom(_COOKIE_LEN))
        ctx.set_cookie_verify_callback(_listen_cookie_ok)
        if len(self._contexts) >= 8:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[fp] = ctx
        self._last_cas = (src, fp)
        return ctx

    def _ca_certificate(self, der, depth):
        """The cryptography certificate of a certificate (DER) seen in the
        verify callback. The CA certificates above the leaf are the same few
        in every handshake: they are kept by DER (at most 64), so their
        parsed names (the revocation check compares them) are built once."""
        cache = self._ca_cache
        cert = cache.get(der)
        if cert is None:
            from cryptography import x509 as cx509

            cert = cx509.load_der_x509_certificate(der)
            if depth > 0:
                if len(cache) >= 64:
                    cache.pop(next(iter(cache)))
                cache[der] = cert
        return cert

    def _verify_cb(self, conn, x509, errno, depth, ok):
        """pyOpenSSL's verify callback (used when _direct_verify cannot
        install its own)."""
        from OpenSSL import crypto

        self._refused_revoked = False
        return self._verify(conn.get_app_data(), crypto.dump_certificate(crypto.FILETYPE_ASN1, x509), errno, depth,
                            ok)

    def _verify(self, peer, der, errno, depth, ok):
        """The verify callback's decision for the certificate (DER) at
        `depth` of the client's chain; OpenSSL's verdict is `ok`/`errno`."""
        if not ok:
            if errno in _DATE_ERRORS and self.admit_out_of_date:
                if peer is not None and peer.date_error is None:
                    peer.date_error = "client certificate at depth %d: %s (%s)" % (
                        depth, _d.verify_error_string(errno), _der_subject(der))
                return True  # OpenSSL goes on with the rest of the checks (the callback is asked again, ok=1)
            if peer is not None and peer.verify_error is None:
                peer.verify_error = "client certificate at depth %d: %s (%s)" % (
                    depth, _d.verify_error_string(errno), _der_subject(der),
                )
            return False
        cert = self._ca_certificate(der, depth)  # once: the revocation hook and verified_chain share it
        if peer is not None and peer._vcerts is not None:
            peer._vcerts[depth] = cert
        if self.is_revoked is not None:
            try:
                revoked = self.is_revoked(cert)
            except Exception:  # noqa: BLE001 - a failing revocation hook must fail closed
                log.exception("is_revoked hook failed; refusing the client")
                if peer is not None:
                    peer.verify_error = "revocation check of the client certificate at depth %d failed" % depth
                return False  # (alert internal_error: the certificate is not known to be revoked)
            if revoked:
                if peer is not None:
                    peer.verify_error = "client certificate at depth %d is revoked (%s)" % (
                        depth, cert.subject.rfc4514_string(),
                    )
                self._refused_revoked = True  # _direct_verify: the alert is certificate_revoked
                return False
        return True

    # -- datagrams in --

    def _datagram(self, data, addr):
        stats = self.stats
        stats["datagrams"] += 1
        if len(data) < _RECORD_HEADER or len(data) > self.max_datagram:
            stats["ignored"] += 1
            return
        peer = self.sessions.get(addr)
        epoch0_hs = data[0] == _CT_HANDSHAKE and not data[3] and not data[4]
        if peer is not None and not epoch0_hs:
            self._feed(peer, data)  # not an epoch-0 handshake record: not a new ClientHello
            return
        info = parse_client_hello(data)
        if peer is not None and not peer.established and (info is None or info.random == peer._hello_random):
            # the handshake in progress: the client's next flight, or its
            # ClientHello again (a retransmission keeps its random). A
            # ClientHello with another random is a client that restarted in
            # the middle of its handshake: handled below as a new one (it was
            # fed to the old handshake, whose flight came back as if it were
            # a repeat, and the client got no HelloVerifyRequest until the
            # handshake timed out)
            self._feed(peer, data)
            return
        if info is None:
            if peer is None:
                self.stats["ignored"] += 1
                return
            self._feed(peer, data)
            return
        # A ClientHello from an address without a handshake in progress: a new
        # client, or a known client that restarted (RFC 6347 §4.2.8). Nothing
        # changes before the cookie is valid.
        now = self._loop.time()
        if not info.cookie or not self._cookies.check(addr, info, now):
            if peer is None and len(self.sessions) >= self.max_sessions and self._idlest(now) is None:
                self.stats["refused_full"] += 1
                return
            cookie = self._cookies.make(addr, info, now)
            self._sendto(build_hello_verify_request(info, cookie), addr)
            self.stats["hello_verify_sent"] += 1
            return
        if peer is not None:
            if info.random == peer._hello_random:
                # the ClientHello that opened this session, delivered again
                # (a network that duplicates datagrams, or a replay): not a
                # new handshake, and no reason to drop the session
                self.stats["ignored"] += 1
                return
            self._close(peer, "client started a new handshake", notify=False)
        limit = self.max_handshakes_per_host
        if limit is not None:
            host = host_key(addr)
            n = 0
            for p in self.sessions.values():
                if not p.established and not p.closed and host_key(p.address) == host:
                    n += 1
            if n >= limit:
                # silence, as when full: the client's ClientHello timer
                # retries once one of its host's handshakes ends
                self.stats["refused_host_handshakes"] += 1
                return
        if len(self.sessions) >= self.max_sessions:
            old = self._idlest(now)
            if old is None:
                self.stats["refused_full"] += 1
                return
            # full: the established session silent for longest makes room
            # (MicroPython clients never send close_notify, so without this a
            # fleet of them fills the table for idle_timeout)
            self.stats["evicted_for_new"] += 1
            self._close(old, "evicted for a new client (server full)", notify=True)
        self._new_session(addr, data, info.cookie, now, info.random, int.from_bytes(info.record_seq[2:], "big"))

    def _idlest(self, now):
        """The established session silent for longest, if for at least
        evict_idle_after seconds; else None."""
        if self.evict_idle_after is None:
            return None
        best = None
        for peer in self.sessions.values():
            if peer.established and not peer.closed and not peer.busy and (best is None or
                                                                           peer.last_rx < best.last_rx):
                best = peer
        if best is None or now - best.last_rx < self.evict_idle_after:
            return None
        return best

    def _new_session(self, addr, data, cookie, now, random=None, hello_seq=0):
        SSL = _d._ssl()
        try:
            conn = _d.new_connection(self._context(), self.mtu)
        except LocalProtocolError:
            log.exception("cannot build the DTLS context for a new session")
            return
        peer = DtlsPeer(self, addr, conn, now)
        peer._cookie = cookie
        peer._hello_random = random
        peer._hs_progress = handshake_progress(data) or peer._hs_progress
        peer._hello_seq = hello_seq
        conn.set_app_data(peer)
        conn.set_accept_state()
        self._bio_write(conn, data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            self.stats["ignored"] += 1  # OpenSSL did not like the ClientHello after all
            return
        except SSL.Error as e:
            log.debug("DTLSv1_listen refused a ClientHello from %s: %s", addr, e)
            self.stats["ignored"] += 1
            return
        self.sessions[addr] = peer
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._sweep_interval, self._sweep_deadlines)
        self._progress(peer)

    def _feed(self, peer, data):
        repeat = False
        if peer._flight is not None and data[0] != _CT_APPLICATION_DATA:
            p = handshake_progress(data)
            if p is not None:
                if p > peer._hs_progress:
                    peer._hs_progress = p
                # a repeat reaches no further than the client flight our last
                # flight answered. Not "than anything seen": when a flight of
                # two datagrams loses its first, the second raises
                # _hs_progress, and the resent first is the client's next
                # flight (ours arrived), not a reason to send ours again
                repeat = p <= peer._flight_progress
        raw = self._raw
        if raw is not None:
            raw.bio_write(peer._conn, data)
        else:
            peer._conn.bio_write(data)
        sent = self._progress(peer)
        if repeat and not sent and not peer.closed and peer._flight is not None:
            self._resend_flight(peer)

    def _resend_flight(self, peer):
        """The client sent its last flight again, so ours did not arrive:
        send it again now, as it went out (same records: the client has not
        seen their sequence numbers). OpenSSL would wait for its timer."""
        now = self._loop.time()
        if now - peer._flight_at < self.flight_resend_gap:
            return
        peer._flight_at = now
        self.stats["flight_resends"] += 1
        for dg in peer._flight:
            self._sendto(dg, peer._sockaddr)

    def _progress(self, peer):
        SSL = self._ssl_mod
        conn = peer._conn
        raw = self._raw
        if not peer.established:
            try:
                done = raw.handshake(conn) if raw is not None else self._do_handshake(conn)
            except SSL.Error as e:
                self._flush(peer)  # the alert, if OpenSSL wrote one
                self.stats["handshake_failures"] += 1
                log.info(
                    "DTLS handshake with %s failed: %s%s",
                    peer.address, _d.ssl_error_text(e), (" - " + peer.verify_error) if peer.verify_error else "",
                )
                self._close(peer, "handshake failed", notify=False)
                return True
            if not done:
                return self._flush_flight(peer)
            sent = self._flush_flight(peer)  # ChangeCipherSpec + Finished
            self._established(peer)
            if peer.closed:
                return sent
        else:
            sent = False
        while True:
            try:
                data = raw.read(conn) if raw is not None else self._recv(conn)
            except SSL.ZeroReturnError:
                self._flush(peer)
                self._close(peer, "client sent close_notify", notify=False)
                return True
            except SSL.Error as e:
                self._flush(peer)
                log.info("DTLS session with %s failed: %s", peer.address, _d.ssl_error_text(e))
                self._close(peer, "DTLS error", notify=False)
                return True
            if not data:
                break
            peer._flight = None  # the client has our Finished: nothing left to repeat
            # only authenticated data keeps a session alive: garbage sent with
            # a client's address must not defeat idle eviction
            peer.last_rx = self._loop.time()
            try:
                self.on_datagram(peer, data)
            except Exception:  # noqa: BLE001 - one bad request must not kill the endpoint
                log.exception("on_datagram handler failed for %s", peer.address)
            if peer.closed:
                return True
        return bool(self._flush(peer)) or sent

    # the Connection calls of every datagram: RawOps when available

    def _do_handshake(self, conn):
        """True once the handshake is complete, False while it waits."""
        if self._raw is not None:
            return self._raw.handshake(conn)
        try:
            conn.do_handshake()
        except _d._ssl().WantReadError:
            return False
        return True

    def _recv(self, conn):
        """One decrypted datagram, or None when there is none."""
        if self._raw is not None:
            return self._raw.read(conn)
        try:
            return conn.recv(65535)
        except _d._ssl().WantReadError:
            return None

    def _bio_write(self, conn, data):
        if self._raw is not None:
            self._raw.bio_write(conn, data)
        else:
            conn.bio_write(data)

    def _drain(self, conn):
        if self._raw is not None:
            return self._raw.drain(conn, self.mtu)
        return _d.drain_bio(conn, self.mtu)

    def _established(self, peer):
        conn = peer._conn
        peer.established = True
        # the chain the verify callback saw (depth 0 .. n, already converted
        # for the revocation check), else OpenSSL's record of it
        vc = peer._vcerts
        try:
            peer.verified_chain = [vc[i] for i in range(len(vc))] if vc else _d.verified_chain(conn)
        except KeyError:  # a depth the callback did not see
            peer.verified_chain = _d.verified_chain(conn)
        peer._vcerts = None
        peer.peer_chain = _server_peer_chain(conn, peer.verified_chain)
        peer.tls_unique = _d.tls_unique(conn, server=True)
        peer.extended_master_secret = _d.extended_master_secret(conn)
        try:
            peer.max_payload = conn.get_cleartext_mtu()
        except NotImplementedError:  # pragma: no cover
            peer.max_payload = self.mtu - 64
        self.stats["handshakes"] += 1
        peer.last_rx = self._loop.time()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("DTLS session with %s up: %s", peer.address, peer.cipher)
        if self.on_established is not None:
            try:
                self.on_established(peer)
            except Exception:  # noqa: BLE001
                log.exception("on_established handler failed for %s", peer.address)

    # -- datagrams out --

    def _sendto(self, datagram, addr):
        if self._transport is not None:
            self._transport.sendto(datagram, addr)

    def _flush(self, peer):
        """Send what OpenSSL wrote; returns the datagrams."""
        raw = self._raw
        if raw is not None:  # _drain, inline: one call per datagram in and out
            data = raw.pending(peer._conn)
            if not data:
                dgs = []
            elif len(data) <= self.mtu:
                dgs = [data]
            else:
                dgs = _d.pack_datagrams(_d.split_records(data), self.mtu)
        else:
            dgs = self._drain(peer._conn)
        if dgs:
            if peer._seq_shift is None or peer._seq_shift:
                dgs = [_renumber(peer, dg) for dg in dgs]
            t, addr = self._transport, peer._sockaddr
            if t is not None:
                for dg in dgs:
                    t.sendto(dg, addr)
        if peer.closed or (peer.established and peer._retx is None):
            return dgs  # no OpenSSL timer runs in an established session (renegotiation is off)
        t = peer._conn.DTLSv1_get_timeout()
        retx = peer._retx
        if t is None:
            if retx is not None:
                retx.cancel()
                peer._retx = None
            return dgs
        when = self._loop.time() + max(t, 0.001)
        if retx is not None:
            if abs(retx.when() - when) < 0.002:
                return dgs  # the same OpenSSL deadline: keep the timer
            retx.cancel()
        peer._retx = self._loop.call_at(when, self._retransmit, peer)
        return dgs

    def _flush_flight(self, peer):
        """_flush during the handshake: a new flight is remembered."""
        dgs = self._flush(peer)
        if dgs:
            peer._flight = dgs
            peer._flight_at = self._loop.time()
            peer._flight_progress = peer._hs_progress
        return bool(dgs)

    def _retransmit(self, peer):
        SSL = _d._ssl()
        peer._retx = None
        if peer.closed:
            return
        try:
            peer._conn.DTLSv1_handle_timeout()
        except SSL.Error as e:
            self._flush(peer)
            self.stats["handshake_failures"] += 1
            log.info("DTLS retransmissions to %s exhausted: %s", peer.address, _d.ssl_error_text(e))
            self._close(peer, "retransmissions exhausted", notify=False)
            return
        self._flush(peer)

    def _send_app(self, peer, data):
        SSL = _d._ssl()
        try:
            if self._raw is not None:
                self._raw.write(peer._conn, bytes(data))
            else:
                peer._conn.send(bytes(data))
        except SSL.Error as e:
            raise LocalProtocolError("cannot send %d bytes to %s: %s" % (len(data), peer.address, _d.ssl_error_text(e)))
        self._flush(peer)

    # -- timeouts --

    def _sweep_deadlines(self):
        """Every sweep interval while sessions exist: end handshakes older
        than handshake_timeout and sessions idle for idle_timeout."""
        self._sweep = None
        now = self._loop.time()
        for peer in list(self.sessions.values()):
            self._check_deadline(peer, now)
        if self.sessions and self._transport is not None:
            self._sweep = self._loop.call_later(self._sweep_interval, self._sweep_deadlines)

    def _check_deadline(self, peer, now):
        if peer.closed:
            return
        if not peer.established:
            if now - peer.created >= self.handshake_timeout:
                self.stats["handshake_timeouts"] += 1
                self._close(peer, "handshake timeout", notify=False)
        elif not peer.busy and now - peer.last_rx >= self.idle_timeout:
            self.stats["idle_evictions"] += 1
            self._close(peer, "idle timeout", notify=True)

    def _close(self, peer, reason, notify):
        if peer.closed:
            return
        SSL = _d._ssl()
        if notify and peer.established:
            try:
                peer._conn.shutdown()
            except SSL.Error:
                pass
            for dg in _d.drain_bio(peer._conn, self.mtu):
                self._sendto(dg, peer._sockaddr)
        peer.closed = True
        if peer._retx is not None:
            peer._retx.cancel()
            peer._retx = None
        if self.sessions.get(peer._sockaddr) is peer:
            del self.sessions[peer._sockaddr]
        peer._conn.set_app_data(None)
        log.debug("DTLS session with %s closed: %s", peer.address, reason)
        if peer.established and self.on_closed is not None:
            try:
                self.on_closed(peer, reason)
            except Exception:  # noqa: BLE001
                log.exception("on_closed handler failed for %s", peer.address)


def _renumber(peer, dg):
    """Our plaintext (epoch-0) records continue from the record number of
    the ClientHello that opened the session, as RFC 6347 §4.2.1 has the
    HelloVerifyRequest do and as OpenSSL 1.1 did. OpenSSL 3 starts the
    ServerHello at 1 whatever the ClientHello carried, so after a resent
    first ClientHello (record 1, 2, ...) our HelloVerifyRequest already used
    that number and Mbed TLS drops the ServerHello as a replay; the client
    only gets past it on OpenSSL's retransmission a second later. Epoch-0
    record numbers are not covered by any MAC, so shifting them is safe;
    encrypted records are left alone."""
    mv = memoryview(dg)
    out = None
    for off, _ in _plain_records(mv):
        seq = int.from_bytes(mv[off + 5 : off + 11], "big")
        if peer._seq_shift is None:
            peer._seq_shift = max(0, peer._hello_seq - seq)
        if not peer._seq_shift:
            return dg
        if out is None:
            out = bytearray(dg)
        out[off + 5 : off + 11] = (seq + peer._seq_shift).to_bytes(6, "big")
    return dg if out is None else bytes(out)


def _server_peer_chain(conn, verified):
    """What the client sent, leaf first. On the server side OpenSSL's
    SSL_get_peer_cert_chain leaves the client's own certificate out (it
    holds only the certificates sent after it), so the leaf comes from the
    verified chain (its depth 0 is the certificate the client presented)."""
    leaf = verified[0] if verified else conn.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    lib = _d._lib()
    try:
        if lib.sk_X509_num(lib.SSL_get_peer_cert_chain(conn._ssl)) <= 0:  # (-1 for no stack)
            return [leaf]  # the client sent its certificate alone (the usual device)
    except AttributeError:  # pragma: no cover - another pyOpenSSL
        pass
    extra = conn.get_peer_cert_chain(as_cryptography=True) or []
    if extra and extra[0] == leaf:
        extra = extra[1:]
    return [leaf] + list(extra)


def _listen_cookie_ok(conn, cookie):
    peer = conn.get_app_data()
    return peer is not None and peer._cookie == bytes(cookie)


class _UdpEndpoint:
    """The UDP socket on the event loop, without asyncio's datagram
    transport: one reader callback drains up to `batch` datagrams per
    wake-up (asyncio's transport takes one per event-loop iteration), and
    datagrams go out with a direct sendto; only when the kernel's send
    buffer is full are they queued (at most `max_queued`, then dropped like
    a lost datagram: DTLS and CoAP retransmit)."""

    def __init__(self, loop, sock, server, *, batch=32, max_queued=512):
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._server = server
        self._batch = batch
        self._max_queued = max_queued
        self._queued = collections.deque()
        self._bufsize = server.max_datagram + 1  # a longer datagram arrives truncated to this and is ignored
        self._closed = False
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self):
        recvfrom = self._sock.recvfrom
        server = self._server
        size = self._bufsize
        for _ in range(self._batch):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNREFUSED from an ICMP error: nothing to read, keep serving
                log.debug("UDP error (ignored): %s", e)
                continue
            try:
                server._datagram(data, addr)
            except Exception:  # noqa: BLE001 - a bug with one peer must not stop the endpoint for all
                log.exception("DTLS server error on a datagram from %s; dropping its session", addr)
                peer = server.sessions.get(addr)
                if peer is not None:
                    server._close(peer, "internal error", notify=False)
            if self._closed:
                return

    def sendto(self, data, addr):
        if self._closed:
            return
        if not self._queued:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._write_ready)
            except OSError as e:
                log.debug("UDP send to %s failed (ignored): %s", addr, e)
                return
        if len(self._queued) < self._max_queued:
            self._queued.append((bytes(data), addr))

    def _write_ready(self):
        while self._queued:
            data, addr = self._queued[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("UDP send to %s failed (ignored): %s", addr, e)
            self._queued.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def close(self):
        if self._closed:
            return
        self._closed = True
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        if self._queued:
            self._loop.remove_writer(fd)
            self._queued.clear()
        self._sock.close()


async def create_dtls_server(cert, key, trusted_cas, on_datagram, bind=("127.0.0.1", 0), **options):
    """Construct and start a DtlsServer; returns it (its bound address is
    `server.local_address`)."""
    server = DtlsServer(cert, key, trusted_cas, on_datagram, **options)
    await server.start(bind)
    return server
