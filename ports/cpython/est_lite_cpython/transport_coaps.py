"""DTLS 1.2 for the EST-coaps client on CPython: est_lite_cpython.dtls_client
with the server checked *inside* the handshake.

    t = CoapsTransport("est.example", 5684, trust=[ca], cert=c, key=k)
    t.connect(); t.send(datagram); data = t.recv(timeout=2.0)
    t.binding      # tls-unique of the session (RFC 5929), for PoP linking
    t.close()

The server is checked inside the handshake by DtlsClient itself (see
est_lite_cpython.dtls_client): trust anchors + server name, or the pin (the
SHA-256 of one certificate of the chain the server presents, with the chain
below it verified). A mismatch aborts the handshake before our Certificate
flight. `crls` (cryptography CRLs) are checked by OpenSSL for the server's
chain.

`left`: a callable returning the seconds left before the caller's deadline
(None: none). No wait for a datagram goes past it: a server that answers
with an empty ACK and then nothing (the core waits up to 93 s for the
separate response) or with datagrams the core ignores cannot hold the
client past its deadline; TransportError when it has passed.
"""

from est_lite.errors import LocalProtocolError, SecurityError, TransportError

from .dtls_client import DtlsClient


class CoapsTransport:
    def __init__(self, host, port, *, trust=None, pin=None, server_name=None, cert=None, key=None, chain=(),
                 timeout=30.0, crls=None, mtu=1200, local_address=None, left=None):
        if trust is None and pin is None:
            raise LocalProtocolError("give trust anchors to verify the server, or a pin for the bootstrap")
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.pin = pin
        self.client = DtlsClient(host, port, trust_cas=trust if pin is None else None, server_name=self.server_name,
                                 cert=cert, key=key, chain=chain, pin=pin, mtu=mtu, timeout=timeout,
                                 local_address=local_address, connect=False, crls=crls if pin is None else None)
        self.binding = None
        self.peer_chain = []
        self.left = left
        self.anonymous = cert is None

    def _bound(self, timeout):
        timeout = max(0.0, timeout)
        if self.left is None:
            return timeout
        left = self.left()
        if left is None:
            return timeout
        if left <= 0:
            raise TransportError("no answer from %s:%d before the deadline" % (self.host, self.port))
        return min(timeout, left)

    def connect(self):
        if self.client.established:
            return
        try:
            self.client.handshake()
        except SecurityError as e:
            # RFC 9148 authenticates the client in the DTLS handshake: a
            # server that requires a certificate refuses one without it with
            # this alert alone (a hint, not a check before: some servers
            # accept anonymous clients)
            if not self.anonymous or "alert handshake failure" not in e.msg:
                raise
            raise SecurityError("%s (EST-coaps servers usually require a client certificate: give cert= and key=)"
                                % e.msg, e.coap_code, e.http_status, e.diagnostic) from None
        self.binding = self.client.tls_unique
        self.peer_chain = list(self.client.peer_chain)

    def check_trust(self, trust):
        """RFC 9148 §9.1: a client that goes on in the session of a pinned
        bootstrap after /crts "SHOULD revalidate the server certificate
        chain against the updated Explicit TA". SecurityError unless the
        chain the server presented verifies against `trust` (the /crts
        certificates) and covers the server name, as the next session's
        handshake will require."""
        from OpenSSL import crypto

        from . import dtls as _d

        chain = self.peer_chain
        if not chain:
            raise SecurityError("no server certificate chain to check against the CA certificates")
        store = crypto.X509Store()
        for c in _d.anchor_order(_d.load_certificates(trust)):
            store.add_cert(crypto.X509.from_cryptography(c))
        try:
            crypto.X509StoreContext(store, crypto.X509.from_cryptography(chain[0]),
                                    [crypto.X509.from_cryptography(c) for c in chain[1:]]).verify_certificate()
        except crypto.X509StoreContextError as e:
            raise SecurityError("the server's certificate (%s) does not verify against the CA certificates it "
                                "served (%s): later sessions would refuse it; its certificate must come from "
                                "this EST CA" % (chain[0].subject.rfc4514_string(), e)) from None
        _d.check_server_name(chain[0], self.server_name)

    def send(self, datagram):
        self.client.send(datagram)

    def recv(self, timeout):
        return self.client.recv(timeout=self._bound(timeout))

    def close(self):
        self.client.close()

    def recv_into(self, buf, timeout):
        """One datagram into buf (its length), or None after timeout seconds."""
        d = self.client.recv(timeout=self._bound(timeout))
        if d is None:
            return None
        n = min(len(d), len(buf))
        buf[:n] = d[:n]
        return n
