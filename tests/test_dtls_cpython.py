"""CPython DtlsClient <-> DtlsServer over loopback UDP: echo, suites, channel
bindings, server identity checks, client certificate policy, chain sent,
small MTU, loss."""

import pytest

from est_lite.errors import LocalProtocolError, SecurityError, TransportError
from est_lite_cpython import dtls as d
from est_lite_cpython.dtls_client import DtlsClient
from helpers_dtls import LossyRelay, Pki, ServerThread
from helpers_pki import TestPki


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture
def server(pki):
    st = ServerThread(pki)
    yield st
    st.stop()


def client(pki, port, host="127.0.0.1", **kw):
    kw.setdefault("cert", pki.client.cert)
    kw.setdefault("key", pki.client.key)
    kw.setdefault("timeout", 10)
    return DtlsClient(host, port, kw.pop("trust_cas", [pki.ca.root.cert]), **kw)


def test_echo_ccm8_and_channel_bindings_agree(pki, server):
    with client(pki, server.port) as c:
        assert c.cipher == d.SUITE_CCM8  # RFC 7925 suite preferred when offered
        assert c.extended_master_secret is True
        c.send(b"hello")
        assert c.recv(5) == b"echo hello"
        c.send(b"again")
        assert c.recv(5) == b"echo again"
        peer = server.peers[0]
        # tls-unique is the first Finished of the full handshake: the client's
        assert c.tls_unique == c._conn.get_finished()
        assert peer.tls_unique == c.tls_unique and len(c.tls_unique) == 12
        assert peer.exporter == c.exporter and len(c.exporter) == 32
        assert peer.tls_unique != peer.exporter
        assert peer.cipher == d.SUITE_CCM8
        # the server sees the client's certificate and the verified chain to our root
        assert peer.peer_certificate == pki.client.cert
        assert peer.verified_chain[0] == pki.client.cert and peer.verified_chain[-1] == pki.ca.root.cert
        # the server sent its leaf only
        assert c.peer_chain == [pki.server.cert]
        assert server.session_count() == 1
    # close() sent close_notify: the session is gone on the server
    server.call(lambda: None)
    for _ in range(50):
        if server.session_count() == 0:
            break
        import time

        time.sleep(0.02)
    assert server.session_count() == 0
    assert server.closed and server.closed[0][1] == "client sent close_notify"


def test_bindings_differ_per_session(pki, server):
    with client(pki, server.port) as a, client(pki, server.port) as b:
        assert a.tls_unique != b.tls_unique and a.exporter != b.exporter
        a.send(b"a")
        b.send(b"b")
        assert a.recv(5) == b"echo a" and b.recv(5) == b"echo b"


def test_gcm_negotiates_when_client_offers_only_gcm(pki, server):
    with client(pki, server.port, ciphers=[d.SUITE_GCM]) as c:
        assert c.cipher == d.SUITE_GCM
        c.send(b"x")
        assert c.recv(5) == b"echo x"
        assert server.peers[0].cipher == d.SUITE_GCM


def test_ipv6_loopback(pki):
    st = ServerThread(pki, bind=("::1", 0))
    try:
        with client(pki, st.port, host="::1") as c:
            c.send(b"six")
            assert c.recv(5) == b"echo six"
    finally:
        st.stop()


def test_hostname_verification(pki, server):
    # "localhost" and 127.0.0.1 are in the SAN; another name is not
    with client(pki, server.port, server_name="localhost") as c:
        assert c.established
    e = pytest.raises(SecurityError, client, pki, server.port, server_name="evil.example")
    assert "evil.example" in str(e.value) and "localhost" in str(e.value)
    e = pytest.raises(SecurityError, client, pki, server.port, server_name="127.0.0.2")
    assert "127.0.0.2" in str(e.value)


def test_untrusted_server_is_refused(pki, server):
    e = pytest.raises(SecurityError, client, pki, server.port, trust_cas=[pki.other_ca.root.cert])
    assert "unable to get local issuer" in str(e.value) or "verify" in str(e.value)


def test_pinned_bootstrap(pki, server):
    want = d.fingerprint(pki.server.cert)
    seen = []

    def pin(chain):
        seen.append(chain)
        return d.fingerprint(chain[0]) == want

    # no trust anchors at all: the pin decides (and hostname is not checked)
    with client(pki, server.port, trust_cas=None, pin=pin, server_name="whatever") as c:
        c.send(b"p")
        assert c.recv(5) == b"echo p"
    assert seen[0][0] == pki.server.cert
    e = pytest.raises(SecurityError, client, pki, server.port, trust_cas=None, pin=lambda chain: False)
    assert "pinned" in str(e.value)
    pytest.raises(LocalProtocolError, DtlsClient, "127.0.0.1", server.port, None)


def test_client_without_certificate_is_refused_and_leaves_no_session(pki, server):
    e = pytest.raises(SecurityError, client, pki, server.port, cert=None, key=None)
    assert "alert" in str(e.value) or "certificate" in str(e.value)
    assert server.session_count() == 0
    assert server.stats()["handshake_failures"] == 1
    assert server.stats()["handshakes"] == 0


def test_client_with_untrusted_certificate_is_refused(pki, server):
    pytest.raises(SecurityError, client, pki, server.port, cert=pki.stranger.cert, key=pki.stranger.key)
    assert server.session_count() == 0
    assert server.stats()["handshake_failures"] == 1


def test_expired_client_certificate_is_refused(pki, server):
    old = pki.ca.issue("expired device", client=True, expired=True)
    pytest.raises(SecurityError, client, pki, server.port, cert=old.cert, key=old.key)
    assert server.session_count() == 0


def test_revocation_hook(pki):
    banned = pki.ca.issue("revoked device", client=True)
    asked = []

    def is_revoked(cert):
        asked.append(cert)
        return cert.serial_number == banned.cert.serial_number

    st = ServerThread(pki, is_revoked=is_revoked)
    try:
        pytest.raises(SecurityError, client, pki, st.port, cert=banned.cert, key=banned.key)
        assert st.session_count() == 0
        with client(pki, st.port) as c:
            c.send(b"ok")
            assert c.recv(5) == b"echo ok"
        # asked about every certificate of the verified chain (root and leaf)
        assert pki.client.cert in asked and pki.ca.root.cert in asked
    finally:
        st.stop()


def test_revocation_hook_failure_fails_closed(pki):
    def broken(cert):
        raise RuntimeError("CRL store unavailable")

    st = ServerThread(pki, is_revoked=broken)
    try:
        pytest.raises(SecurityError, client, pki, st.port)
        assert st.session_count() == 0
    finally:
        st.stop()


def test_trusted_cas_callable_is_consulted_per_session(pki):
    trust = [[pki.ca.root.cert]]
    st = ServerThread(pki, trusted_cas=lambda: trust[0])
    try:
        with client(pki, st.port) as c:
            assert c.established
        pytest.raises(SecurityError, client, pki, st.port, cert=pki.stranger.cert, key=pki.stranger.key)
        trust[0] = [pki.ca.root.cert, pki.other_ca.root.cert]
        with client(pki, st.port, cert=pki.stranger.cert, key=pki.stranger.key) as c:
            c.send(b"s")
            assert c.recv(5) == b"echo s"
    finally:
        st.stop()


def test_server_chain_is_configurable(pki):
    sub = pki.ca.intermediate()
    leaf = sub.issue("server via intermediate", dns=["localhost"], ips=["127.0.0.1"], server=True)
    srv_pki = Pki.__new__(Pki)
    srv_pki.__dict__.update(pki.__dict__)
    srv_pki.server = leaf
    # leaf alone: a client that only knows the root cannot build the chain
    st = ServerThread(srv_pki)
    try:
        pytest.raises(SecurityError, client, pki, st.port)
        # ... but one that was given the intermediate can (RFC 7030 /cacerts style)
        with client(pki, st.port, trust_cas=[pki.ca.root.cert, sub.root.cert]) as c:
            assert c.peer_chain == [leaf.cert]
    finally:
        st.stop()
    st = ServerThread(srv_pki, chain=[sub.root.cert])
    try:
        with client(pki, st.port) as c:
            assert c.peer_chain == [leaf.cert, sub.root.cert]
            assert c.verified_chain[-1] == pki.ca.root.cert
    finally:
        st.stop()


def test_small_mtu_handshake_and_data(pki):
    st = ServerThread(pki, mtu=300)
    relay = LossyRelay((st.host, st.port))
    try:
        with client(pki, relay.port, mtu=300) as c:
            assert c.max_payload < 300
            c.send(b"m" * 200)
            assert c.recv(5) == b"echo " + b"m" * 200
        assert max(relay.sizes["up"]) <= 300
        assert max(relay.sizes["down"]) <= 300
        # the certificate flight was really split over several datagrams
        assert len(relay.sizes["down"]) >= 4
    finally:
        relay.close()
        st.stop()


def test_records_are_packed_into_datagrams_up_to_the_mtu(pki):
    st = ServerThread(pki, mtu=1200)
    relay = LossyRelay((st.host, st.port))
    try:
        with client(pki, relay.port) as c:
            assert c.established
        # HelloVerifyRequest, then ServerHello..ServerHelloDone in ONE datagram,
        # then CCS+Finished in one: three datagrams from the server
        assert len(relay.sizes["down"]) == 3
        assert max(relay.sizes["down"]) <= 1200
        assert max(relay.sizes["up"]) <= 1200
    finally:
        relay.close()
        st.stop()


def test_lost_flights_are_retransmitted(pki):
    # drop the first copy of each of the server's handshake flights and of the
    # client's second ClientHello and its certificate flight
    def drop(direction, i, data):
        return (direction == "down" and i in (1, 2)) or (direction == "up" and i in (1, 3))

    st = ServerThread(pki)
    relay = LossyRelay((st.host, st.port), drop)
    try:
        with client(pki, relay.port, timeout=30) as c:
            c.send(b"after loss")
            assert c.recv(10) == b"echo after loss"
        assert relay.dropped["down"] == 2 and relay.dropped["up"] == 2
        assert st.stats()["handshakes"] == 1
    finally:
        relay.close()
        st.stop()


def test_handshake_timeout_raises_transport_error():
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # a silent peer
    try:
        pki = Pki()
        e = pytest.raises(TransportError, client, pki, s.getsockname()[1], timeout=1.5)
        assert "timed out" in str(e.value)
    finally:
        s.close()


def test_recv_timeout_returns_none(pki):
    st = ServerThread(pki, handler=lambda peer, data: None)
    try:
        with client(pki, st.port) as c:
            c.send(b"no answer")
            assert c.recv(0.3) is None
    finally:
        st.stop()


def test_server_close_notify_reaches_client(pki, server):
    with client(pki, server.port) as c:
        server.call(lambda: [p.close() for p in list(server.server.sessions.values())])
        pytest.raises(TransportError, c.recv, 5)


def test_server_bad_configuration():
    from est_lite_cpython.dtls_server import DtlsServer

    p = Pki()
    pytest.raises(LocalProtocolError, DtlsServer, p.server.cert, p.server.key, [], lambda *a: None)
    pytest.raises(LocalProtocolError, DtlsServer, p.server.cert, p.client.key, [p.ca.root.cert], lambda *a: None)
    pytest.raises(LocalProtocolError, DtlsServer, p.server.cert, p.server.key, [p.ca.root.cert], lambda *a: None,
                  ciphers=["ECDHE-ECDSA-AES128-CCM8:ALL"])
    pytest.raises(LocalProtocolError, DtlsServer, p.server.cert, p.server.key, [p.ca.root.cert], lambda *a: None,
                  mtu=100)
    pytest.raises(LocalProtocolError, d.load_certificate, b"not a certificate")


def test_check_server_name_rules():
    pki = TestPki()
    cert = pki.issue("x", dns=["*.example.com", "exact.example.org"], ips=["10.0.0.1", "fe80::1"]).cert
    d.check_server_name(cert, "a.example.com")
    d.check_server_name(cert, "EXACT.example.org.")
    d.check_server_name(cert, "10.0.0.1")
    d.check_server_name(cert, "[fe80::1]")
    for bad in ("example.com", "a.b.example.com", "exact.example.org.evil", "10.0.0.2", "fe80::2", ""):
        pytest.raises(SecurityError, d.check_server_name, cert, bad)
    nosan = pki.issue("localhost").cert
    pytest.raises(SecurityError, d.check_server_name, nosan, "localhost")


def test_split_and_pack_records():
    r1 = b"\x16\xfe\xfd" + b"\x00" * 8 + b"\x00\x05" + b"abcde"
    r2 = b"\x17\xfe\xfd" + b"\x00" * 8 + b"\x00\x03" + b"xyz"
    assert d.split_records(r1 + r2) == [r1, r2]
    assert d.split_records(r1 + r2[:5]) == [r1, r2[:5]]  # truncated tail kept, not lost
    assert d.pack_datagrams([r1, r2, r1], 40) == [r1 + r2, r1]
    assert d.pack_datagrams([r1, r2], 10) == [r1, r2]  # oversize records go alone
    assert d.pack_datagrams([], 100) == []
