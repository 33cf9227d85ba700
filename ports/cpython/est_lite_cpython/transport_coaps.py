"""DTLS 1.2 for the EST-coaps client on CPython: est_lite_cpython.dtls_client
with the server checked *inside* the handshake.

    t = CoapsTransport("est.example", 5684, trust=[ca], cert=c, key=k)
    t.connect(); t.send(datagram); data = t.recv(timeout=2.0)
    t.binding      # tls-unique of the session (RFC 5929), for PoP linking
    t.close()

DtlsClient checks a bootstrap pin after the handshake, when our certificate
has already been sent. Here the pin (SHA-256 of one certificate of the chain
the server presents) is checked in OpenSSL's verify callback, so a mismatch
aborts the handshake before our Certificate flight; the server name is
checked there as well in trust-anchor mode. `crls` (cryptography CRLs) are
checked by OpenSSL for the server's chain.
"""

from est_lite.errors import LocalProtocolError, SecurityError

from . import dtls as _d
from .dtls_client import DtlsClient


class CoapsTransport:
    def __init__(self, host, port, *, trust=None, pin=None, server_name=None, cert=None, key=None, chain=(),
                 timeout=30.0, crls=None, mtu=1200, local_address=None):
        if trust is None and pin is None:
            raise LocalProtocolError("give trust anchors to verify the server, or a pin for the bootstrap")
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.pin = pin
        self._seen = []
        self._error = None
        self.client = DtlsClient(host, port, trust_cas=trust, server_name=self.server_name, cert=cert, key=key,
                                 chain=chain, pin=self._pin_after if pin is not None else None, mtu=mtu,
                                 timeout=timeout, local_address=local_address, connect=False)
        from OpenSSL import SSL, crypto

        ctx = self.client._ctx  # noqa: SLF001 - replace the verify callback (see module comment)
        if pin is None and crls:
            store = ctx.get_cert_store()
            for crl in crls:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        self.binding = None
        self.peer_chain = []

    def _verify(self, conn, x509, errno, depth, ok):
        try:
            cert = x509.to_cryptography()
            if self.pin is not None:
                self._seen.append(_d.fingerprint(cert))
                if depth or self.pin in self._seen:
                    return True
                self._error = ("server's certificate chain does not contain the pinned certificate "
                               "(sha256:%s); pin the server certificate or one the server sends in its chain"
                               % self.pin.hex())
                return False
            if not ok:
                if self._error is None:
                    self._error = "server certificate at depth %d: %s (%s)" % (
                        depth, _d.verify_error_string(errno), cert.subject.rfc4514_string())
                return False
            if depth == 0:
                _d.check_server_name(cert, self.server_name)
            return True
        except SecurityError as e:
            self._error = str(e)
        except Exception as e:  # noqa: BLE001 - must not unwind through OpenSSL
            self._error = "server certificate check failed: %s" % e
        return False

    def _pin_after(self, chain):
        # DtlsClient's own check after the handshake: the same rule again
        return any(_d.fingerprint(c) == self.pin for c in chain)

    def connect(self):
        if self.client.established:
            return
        self._seen = []
        self._error = None
        try:
            self.client.handshake()
        except SecurityError as e:
            if self._error:
                raise SecurityError("DTLS handshake with %s:%d refused: %s" % (self.host, self.port, self._error)) \
                    from None
            raise SecurityError(str(e)) from None
        self.binding = self.client.tls_unique
        self.peer_chain = list(self.client.peer_chain)

    def send(self, datagram):
        self.client.send(datagram)

    def recv(self, timeout):
        return self.client.recv(timeout=max(0.0, timeout))

    def close(self):
        self.client.close()

    def recv_into(self, buf, timeout):
        """One datagram into buf (its length), or None after timeout seconds."""
        d = self.client.recv(timeout=max(0.0, timeout))
        if d is None:
            return None
        n = min(len(d), len(buf))
        buf[:n] = d[:n]
        return n
