"""Blocking DTLS 1.2 client for CPython: one connected UDP socket and a
pyOpenSSL Connection on memory BIOs.

    with DtlsClient("127.0.0.1", 5684, trust_cas=[ca_der], cert=cert, key=key) as c:
        c.send(coap_bytes)
        reply = c.recv(timeout=5.0)      # bytes, or None on timeout
        c.tls_unique, c.exporter, c.peer_chain

The server is verified inside the handshake, before our certificate goes
out (OpenSSL's verify callback; a failure aborts the handshake with a
SecurityError): its chain must end in one of `trust_cas` (and pass the
`crls`, if given), and its certificate's subjectAltName must cover
`server_name` (default: `host`; a DNS name or an IP literal).

Pinned bootstrap (RFC 7030 §4.1.1, the first /cacerts): `pin` replaces both
checks, also inside the handshake. It is either
  - 32 bytes, the SHA-256 of one certificate of the chain the server
    presents (`dtls.fingerprint(cert)`): the server certificate itself, or
    a CA certificate the server sends after it; every certificate below the
    pinned one must be signed by the next one (check_pin), or
  - a callable receiving the presented chain (leaf first, cryptography
    certificates) and returning True to accept; it must compare something
    strong, and it runs inside OpenSSL's callback (exceptions count as a
    refusal).
"""

import select
import socket
import time

from est_lite.errors import LocalProtocolError, SecurityError, TransportError

from . import dtls as _d


def check_pin(pin, chain):
    """None if the presented `chain` (cryptography certificates, leaf first)
    satisfies the bootstrap `pin`, else the reason (a sentence). A 32-byte
    pin must be the SHA-256 of a certificate of the chain, and each
    certificate below it must be signed by the one after it (so a CA pin
    cannot be met by a forged leaf that only names the CA as its issuer).
    A callable pin gets the chain and decides."""
    if not chain:
        return "the server sent no certificate"
    if callable(pin):
        try:
            ok = pin(list(chain))
        except Exception as e:  # noqa: BLE001 - runs inside OpenSSL's callback
            return "the pin callback failed: %s" % e
        return None if ok else "server certificate chain does not match the pinned bootstrap identity"
    fps = [_d.fingerprint(c) for c in chain]
    if pin not in fps:
        return ("server's certificate chain does not contain the pinned certificate (sha256:%s); pin the "
                "server certificate or one the server sends in its chain (est-lite serve: --coaps-send-chain all "
                "sends the root)" % bytes(pin).hex())
    for i in range(fps.index(pin)):
        if not _d.issued_by(chain[i], chain[i + 1]):
            return ("server's certificate chain contains the pinned certificate (sha256:%s) but %s is not "
                    "signed by %s" % (bytes(pin).hex(), chain[i].subject.rfc4514_string(),
                                      chain[i + 1].subject.rfc4514_string()))
    # the pinned certificate and those below it within their dates, unless
    # the clock is not set (est_lite_mp.certs.utc_seconds: before 2024), as
    # on MicroPython (est_lite_mp.pincheck)
    from est_lite_mp import certs

    t = certs.utc_seconds()
    for i in range(fps.index(pin) + 1 if t is not None else 0):
        nb, na = chain[i].not_valid_before_utc.timestamp(), chain[i].not_valid_after_utc.timestamp()
        if nb > t or na < t:
            return ("server certificate at depth %d (%s) is %s by this machine's clock (valid %s to %s, the clock "
                    "reads %s UTC)" % (i, chain[i].subject.rfc4514_string(), "not valid yet" if nb > t else "expired",
                                       certs._text(nb), certs._text(na), certs._text(t)))
    return None


# OpenSSL verify errors that mean "does not chain to the trust anchors":
# unable to get issuer certificate (2), self-signed leaf (18) or root (19)
# not trusted, unable to get local issuer certificate (20)
_UNTRUSTED = (2, 18, 19, 20)


def untrusted_hint(errno):
    """What an OpenSSL 'does not chain to the trust anchors' error means
    for an EST client (empty for other errors)."""
    if errno not in _UNTRUSTED:
        return ""
    return ("; the server's chain does not lead to the trusted CA certificates (trust=, --trust, or the store's): "
            "another CA, or the CA was re-keyed (docs/client-runtime.md: 'The CA was re-keyed')")


def _check_pin_arg(pin):
    if pin is None or callable(pin):
        return pin
    if isinstance(pin, (bytes, bytearray)) and len(pin) == 32:
        return bytes(pin)
    raise LocalProtocolError("pin must be the 32-byte SHA-256 of a server certificate or a callable(chain)")


def _shared_verify_cb(conn, x509, errno, depth, ok):
    # Runs inside the handshake, before our Certificate flight; False aborts
    # the handshake. Must not raise.
    client = conn.get_app_data()
    if client is None:
        return False
    try:
        if client._pin is not None:
            # the pin decides (OpenSSL has no trust anchors here and reports
            # every certificate as unverified); decided on the presented
            # chain at depth 0, which OpenSSL always visits last
            if depth:
                return True
            if client._pin_error is None and not client._pin_ok:
                chain = _d.peer_chain(conn)
                client._pin_error = check_pin(client._pin, chain)
                client._pin_ok = client._pin_error is None
            return client._pin_ok
        if not ok:
            if client._verify_error is None:
                client._verify_error = "server certificate at depth %d: %s (%s)%s" % (
                    depth, _d.verify_error_string(errno), _d.subject_text(x509), untrusted_hint(errno),
                )
            return False
        if depth == 0:
            _d.check_server_name(x509.to_cryptography(), client.server_name)
        return True
    except SecurityError as e:
        client._verify_error = str(e)
    except Exception as e:  # noqa: BLE001 - must not unwind through OpenSSL
        client._verify_error = "server certificate check failed: %s" % e
    return False


class ClientContext:
    """One OpenSSL client context (suites, our certificate and key, the
    trusted CAs) that many DtlsClient sessions can share, so each session
    does not load keys and trust anchors again:

        ctx = ClientContext([ca_der], cert=cert, key=key)
        with DtlsClient("est.example", 5684, context=ctx) as c: ...

    pinned=True builds a context for pinned bootstrap (the `pin` of each
    DtlsClient decides, inside the handshake; no trust anchors). `crls`
    (cryptography CRL objects) are checked by OpenSSL for every certificate
    of the server's chain (trust-anchor mode)."""

    def __init__(self, trust_cas=None, cert=None, key=None, *, chain=(), ciphers=_d.CLIENT_SUITES, pinned=False,
                 crls=None):
        SSL = _d._ssl()
        if trust_cas is None and not pinned:
            raise LocalProtocolError("give trust_cas to verify the server, or pinned=True for bootstrap")
        ctx = _d.base_context(False, ciphers, cert, key, chain)
        if pinned and crls:
            raise LocalProtocolError("crls need trust anchors; a pinned context has none")
        if not pinned:
            _d.add_trust_anchors(ctx, trust_cas)
            if crls:
                from OpenSSL import crypto

                store = ctx.get_cert_store()
                for crl in crls:
                    store.add_crl(crl)
                store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        # one callback for both modes: the DtlsClient of the connection (its
        # app data) holds the pin or the server name. OpenSSL still checks the
        # handshake signatures with the leaf's key in pinned mode.
        ctx.set_verify(SSL.VERIFY_PEER, _shared_verify_cb)
        self.ctx = ctx
        self.pinned = pinned
        self.has_cert = cert is not None


class DtlsClient:
    def __init__(
        self,
        host,
        port,
        trust_cas=None,
        server_name=None,
        cert=None,
        key=None,
        *,
        chain=(),
        pin=None,
        mtu=_d.DEFAULT_MTU,
        timeout=30.0,
        ciphers=_d.CLIENT_SUITES,
        max_datagram=4096,
        local_address=None,
        connect=True,
        context=None,
        crls=None,
    ):
        pin = _check_pin_arg(pin)
        if context is not None:
            if crls:
                raise LocalProtocolError("crls belong to the ClientContext when one is shared")
            if context.pinned != (pin is not None):
                raise LocalProtocolError("a pinned ClientContext needs a pin, and a pin needs a pinned ClientContext")
        elif trust_cas is None and pin is None:
            raise LocalProtocolError("give trust_cas to verify the server, or an explicit pin callback for bootstrap")
        if timeout is None or timeout <= 0:
            raise LocalProtocolError("timeout must be a positive number of seconds")
        self.host = host
        self.port = port
        self.server_name = server_name if server_name is not None else host
        self.mtu = mtu
        self.timeout = timeout
        self.max_datagram = max_datagram
        self.local_address = local_address  # (host, port) to bind the UDP socket to, if given
        self._pin = pin
        self._pin_error = None
        self._pin_ok = False
        self._verify_error = None
        self._has_cert = cert is not None or (context is not None and getattr(context, "has_cert", False))
        if context is None:
            context = ClientContext(trust_cas, cert, key, chain=chain, ciphers=ciphers, pinned=pin is not None,
                                    crls=crls)
        self._ctx = context.ctx
        self._conn = None
        self._sock = None
        self.established = False
        self.closed = False
        self.tls_unique = None
        self.exporter = None
        self.peer_chain = []
        self.verified_chain = []
        self.cipher = None
        self.extended_master_secret = None
        self.max_payload = None
        if connect:
            self.handshake()

    # -- context manager --

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- socket --

    def _open_socket(self):
        try:
            infos = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM)
        except socket.gaierror as e:
            raise TransportError("cannot resolve %s: %s" % (self.host, e))
        family, stype, proto, _, sockaddr = infos[0]
        s = socket.socket(family, stype, proto)
        try:
            if self.local_address is not None:
                s.bind(self.local_address)
            s.connect(sockaddr)
        except OSError as e:
            s.close()
            raise TransportError("cannot reach %s:%s: %s" % (self.host, self.port, e))
        s.setblocking(False)
        self._sock = s

    def _send_pending(self):
        for dg in _d.drain_bio(self._conn, self.mtu):
            try:
                self._sock.send(dg)
            except OSError as e:
                raise TransportError("sending to %s:%s failed: %s" % (self.host, self.port, e))

    def _wait_datagram(self, wait):
        """One datagram from the socket, or None after `wait` seconds."""
        r, _, _ = select.select([self._sock], [], [], max(wait, 0))
        if not r:
            return None
        try:
            data = self._sock.recv(self.max_datagram + 1)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionRefusedError:
            raise TransportError("%s:%s refused the datagram (ICMP port unreachable)" % (self.host, self.port))
        except OSError as e:
            raise TransportError("receiving from %s:%s failed: %s" % (self.host, self.port, e))
        if len(data) > self.max_datagram:
            return b""  # oversized: dropped, as a record layer would
        return data

    # -- handshake --

    def handshake(self):
        """Run the handshake (cookie exchange and retransmissions included)
        within `timeout` seconds, then check the server's identity."""
        SSL = _d._ssl()
        if self.established:
            return
        if self.closed:
            raise LocalProtocolError("this DtlsClient is closed")
        self._open_socket()
        self._pin_error = self._verify_error = None
        self._pin_ok = False
        self._conn = _d.new_connection(self._ctx, self.mtu)
        self._conn.set_app_data(self)
        if self.server_name and not _d.is_ip(self.server_name):
            self._conn.set_tlsext_host_name(self.server_name.encode("idna"))
        self._conn.set_connect_state()
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    self._conn.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                self._send_pending()
                if not self._pump(deadline):
                    raise TransportError(
                        "DTLS handshake with %s:%s timed out after %.1f s" % (self.host, self.port, self.timeout)
                    )
        except SSL.Error as e:
            self._send_pending_quietly()
            self._abort()
            why = self._pin_error or self._verify_error
            if why:
                raise SecurityError("DTLS handshake with %s:%s refused: %s" % (self.host, self.port, why)) from None
            if "certificate revoked" in _err(e):
                raise SecurityError("DTLS handshake with %s:%s refused: the server says our certificate has been "
                                    "revoked (TLS alert certificate_revoked); enroll again with another credential"
                                    % (self.host, self.port)) from None
            text = _err(e)
            if self._has_cert and ("alert unknown ca" in text or "alert bad certificate" in text):
                # the server's verdict on OUR certificate (ours on its certificate is _verify_error)
                raise SecurityError("DTLS handshake with %s:%s refused: the server does not accept our client "
                                    "certificate (%s: e.g. an IDevID whose issuer it does not trust, or an "
                                    "unknown or revoked certificate)" % (self.host, self.port, text)) from None
            raise SecurityError("DTLS handshake with %s:%s failed: %s" % (self.host, self.port, text)) from None
        except TransportError:
            self._abort()
            raise
        self._send_pending()
        conn = self._conn
        self.peer_chain = _d.peer_chain(conn)
        self.verified_chain = _d.verified_chain(conn)
        # the verify callback has decided; this only guards against a handshake
        # that completed without it (it would be an OpenSSL behaviour change)
        if not self.peer_chain or (self._pin is not None and not self._pin_ok):
            self.close()
            raise SecurityError("DTLS handshake with %s:%s: the server's certificate was not checked"
                                % (self.host, self.port))
        self.established = True
        self.tls_unique = _d.tls_unique(conn, server=False)
        self.exporter = _d.exporter(conn)
        self.cipher = conn.get_cipher_name()
        self.extended_master_secret = _d.extended_master_secret(conn)
        self.max_payload = conn.get_cleartext_mtu()

    def _pump(self, deadline):
        """Wait for one datagram (or the DTLS retransmission timer) and feed
        it. False once the deadline has passed."""
        SSL = _d._ssl()
        now = time.monotonic()
        if now >= deadline:
            return False
        t = self._conn.DTLSv1_get_timeout()
        wait = deadline - now if t is None else min(t, deadline - now)
        data = self._wait_datagram(wait)
        if data:
            self._conn.bio_write(data)
        elif data is None:
            try:
                self._conn.DTLSv1_handle_timeout()
            except SSL.Error as e:
                raise TransportError("DTLS retransmissions to %s:%s exhausted: %s" % (self.host, self.port, _err(e)))
            self._send_pending()
        return True

    # -- data --

    def send(self, datagram):
        """Encrypt and send one datagram (one DTLS record)."""
        SSL = _d._ssl()
        self._require_up()
        try:
            self._conn.send(bytes(datagram))
        except SSL.Error as e:
            raise TransportError("DTLS send failed: %s" % _err(e))
        self._send_pending()

    def recv(self, timeout=None):
        """The next decrypted datagram, or None if none arrives within
        `timeout` seconds (default: the client's timeout). Raises
        TransportError if the server closed the session."""
        SSL = _d._ssl()
        self._require_up()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                data = self._conn.recv(65535)
                if data:
                    return data
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self._abort()
                raise TransportError("server %s:%s closed the DTLS session" % (self.host, self.port))
            except SSL.Error as e:
                self._abort()
                raise TransportError("DTLS session with %s:%s failed: %s" % (self.host, self.port, _err(e)))
            self._send_pending()  # e.g. a retransmitted final flight
            if not self._pump(deadline):
                return None

    def close(self):
        """Send close_notify (best effort) and close the socket."""
        SSL = _d._ssl()
        if self.closed:
            return
        if self._conn is not None and self.established:
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._send_pending_quietly()
        self._abort()

    def _abort(self):
        self.closed = True
        self.established = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_pending_quietly(self):
        try:
            self._send_pending()
        except TransportError:
            pass

    def _require_up(self):
        if not self.established or self.closed:
            raise LocalProtocolError("DTLS session is not established")


_err = _d.ssl_error_text
