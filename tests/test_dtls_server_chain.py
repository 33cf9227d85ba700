"""DtlsServer: what a client that sends its certificate chain looks like to
the server. OpenSSL's server-side SSL_get_peer_cert_chain leaves the
client's own certificate out, so `peer_chain` must put the leaf first
itself; the verify callback's converted certificates become
`verified_chain`; the exporter is computed on first use."""

from est_lite_cpython.dtls_client import DtlsClient
from helpers_dtls import Pki, ServerThread


def test_client_chain_leaf_first_and_verified_chain():
    pki = Pki()
    sub = pki.ca.intermediate()
    dev = sub.issue("device via intermediate")
    st = ServerThread(pki)
    try:
        with DtlsClient("127.0.0.1", st.port, [pki.ca.root.cert], cert=dev.cert, key=dev.key, chain=[sub.root.cert],
                        timeout=10) as c:
            c.send(b"x")
            assert c.recv(5) == b"echo x"
            peer = st.peers[-1]
            assert peer.peer_certificate == dev.cert  # not the intermediate
            assert peer.peer_chain == [dev.cert, sub.root.cert]
            assert peer.verified_chain == [dev.cert, sub.root.cert, pki.ca.root.cert]
            assert peer.exporter == c.exporter and len(peer.exporter) == 32
    finally:
        st.stop()


def test_leaf_only_client():
    pki = Pki()
    st = ServerThread(pki)
    try:
        with DtlsClient("127.0.0.1", st.port, [pki.ca.root.cert], cert=pki.client.cert, key=pki.client.key,
                        timeout=10) as c:
            c.send(b"y")
            assert c.recv(5) == b"echo y"
            peer = st.peers[-1]
            assert peer.peer_chain == [pki.client.cert]
            assert peer.verified_chain == [pki.client.cert, pki.ca.root.cert]
    finally:
        st.stop()
