# TLS over TCP for the MicroPython EST client (the `tls` module, Mbed TLS).
#
#   t = TlsStream(host, 443, [ca_der], None, "est.example", cert_der, key_der, 30)
#   t.connect(); t.write(req); data = t.read(2048); t.close()
#
# trust: CA DER list (Mbed TLS checks the chain and the name against the
# DNS/IP subjectAltNames); pin instead: SHA-256 of a certificate of the
# chain the server presents, checked in the verify callback during the
# handshake (before our certificate is sent). No channel binding: this
# `tls` has no tls-unique/exporter API (binding is None).
import socket

from est_lite.errors import SecurityError, TransportError

_VERIFY_FAILED = -0x2700  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED


class TlsStream:
    binding = None

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
        self._hit = False

    def _check(self, der, depth):
        import hashlib

        try:
            self._hit = self._hit or hashlib.sha256(der).digest() == self.pin
            if self.pending_ok:
                self.chain.insert(0, bytes(der))  # called top first: leaf ends up first
                if not depth and not self._hit:
                    self.pending = True
                    return 0
        except Exception:  # noqa: BLE001 - must not raise inside Mbed TLS
            return _VERIFY_FAILED
        return 0 if depth or self._hit else _VERIFY_FAILED

    def connect(self):
        import tls

        try:
            ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
            raw = socket.socket(ai[0], socket.SOCK_STREAM)
        except OSError as e:
            raise TransportError("cannot resolve %s: %s" % (self.host, e))
        try:
            raw.settimeout(self.timeout)
            raw.connect(ai[-1])
        except OSError as e:
            raw.close()
            raise TransportError("cannot connect to %s:%d: %s" % (self.host, self.port, e))
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
        self._hit = self.pending = False
        self.chain = []
        try:
            self.s = ctx.wrap_socket(raw, server_hostname=self.name)
        except (OSError, ValueError) as e:
            raw.close()
            if self.pin is not None and not self._hit and not self.pending:
                raise SecurityError("TLS handshake with %s refused: the server's chain does not contain the pinned "
                                    "certificate" % self.host)
            if isinstance(e, ValueError) or (e.args and isinstance(e.args[0], int) and e.args[0] < 0):
                raise SecurityError("TLS handshake with %s failed: %s" % (self.host, _one(e)))
            raise TransportError("TLS handshake with %s failed: %s" % (self.host, _one(e)))
        if self.pin is not None and not self._hit and not self.pending:
            self.close()
            raise SecurityError("the server certificate was never checked against the pin")

    def peer_der(self):
        return self.chain

    def write(self, data):
        try:
            self.s.write(data)
        except OSError as e:
            self.close()
            raise TransportError("writing to %s failed: %s" % (self.host, _one(e)))

    def read(self, n):
        """Up to n bytes; b"" when the server closed the connection."""
        try:
            d = self.s.read(n)
        except OSError as e:
            self.close()
            raise TransportError("reading from %s failed: %s" % (self.host, _one(e)))
        if d is None:
            self.close()
            raise TransportError("no answer from %s within %d s" % (self.host, self.timeout))
        return d

    def close(self):
        s = self.s
        self.s = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def _one(e):
    return " ".join([str(a) for a in e.args]).replace("\n", " ")
