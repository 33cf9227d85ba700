"""The CPython client runtime over EST-coaps (DTLS 1.2, RFC 9148) against the
reference CoAPs server: the five operations on one DTLS session, easy
provisioning and renewal, the bootstrap pin checked in the handshake (the
device certificate never leaves on a mismatch), 5.03 + Max-Age, a revoked
certificate on re-enroll, a lossy link and a server that is down."""

import random
import socket

import pytest
from helpers_client import ClockClient, approve_pending, der, load_cert, point, root_der
from helpers_coaps import EstBothServer, idevid_device, key_der, operational_device
from helpers_dtls import LossyRelay

from est_lite.csr import CsrBuilder
from est_lite.errors import SecurityError, TransportError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore
from est_lite_cpython.crypto import P256Key
from est_lite_cpython.dtls import fingerprint


@pytest.fixture
def both(tmp_path):
    s = EstBothServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def coaps(srv, dev, port=None, **kw):
    kw.setdefault("trust", root_der(srv))
    return EstClient("coaps://127.0.0.1:%d" % (port or srv.coaps_port), cert=der(dev.cert), key=key_der(dev.key),
                     **kw)


def server_leaf(srv):
    with open(srv.ca.server_cert_file, "rb") as f:
        return f.read()


def test_five_operations_on_one_session(both):
    srv = both
    dev = idevid_device(srv)
    c = coaps(srv, dev)
    try:
        assert [load_cert(x) for x in c.cacerts()] == [srv.ca.root]
        assert c.csrattrs() is not None
        k = P256Key.generate()
        ev = c.enroll(CsrBuilder().subject(cn="coaps-5").sign(k), k.public_key)
        cert = load_cert(ev.cert)
        cert.verify_directly_issued_by(srv.ca.issuer)
        assert point(cert) == k.public_key
        ev2 = c.serverkeygen(CsrBuilder().subject(cn="coaps-skg").sign(P256Key.generate()))
        assert point(load_cert(ev2.cert)) == P256Key.load_der(ev2.key_der).public_key
        assert srv.coaps_stats()["dtls_handshakes"] == 1  # one session for all of them
    finally:
        c.close()
    k2 = P256Key.generate()
    c2 = EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=root_der(srv), cert=ev.cert, key=k.export_pkcs8())
    ev3 = c2.reenroll(CsrBuilder().subject(cn="coaps-5").sign(k2), k2.public_key)
    c2.close()
    assert point(load_cert(ev3.cert)) == k2.public_key


def test_provision_and_renew(both, tmp_path):
    srv = both
    store = CredStore(str(tmp_path / "d"))
    c = coaps(srv, idevid_device(srv))
    r = c.provision(store, cn="coaps-prov", dns=["coaps-prov.example"])
    c.close()
    got = store.load()
    assert got.cert == r.cert and got.ca == [root_der(srv)]
    assert point(load_cert(got.cert)) == P256Key.load_der(got.key).public_key
    # renewal: authenticated by the stored (operational) certificate over DTLS
    c2 = EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=got.ca)
    r2 = c2.renew_if_needed(store, threshold=10 ** 9)
    got2 = store.load()
    assert r2.gen == got2.gen == 2 and got2.key != got.key
    assert load_cert(got2.cert).subject == load_cert(got.cert).subject


def test_bootstrap_pin_of_the_server_certificate(both, tmp_path):
    srv = both
    c = coaps(srv, idevid_device(srv), trust=None, pin=fingerprint(server_leaf(srv)))
    r = c.provision(CredStore(str(tmp_path / "b")), cn="coaps-pinned")
    assert c.bootstrapped and c.trust == [root_der(srv)]
    assert load_cert(r.cert).subject.rfc4514_string() == "CN=coaps-pinned"


def _recording_relay(srv):
    up = []

    def drop(direction, i, data):
        if direction == "up":
            up.append(bytes(data))
        return False

    return LossyRelay(("127.0.0.1", srv.coaps_port), drop), up


def test_wrong_pin_aborts_before_the_device_certificate_is_sent(both):
    srv = both
    dev = idevid_device(srv)
    relay, up = _recording_relay(srv)
    try:
        c = coaps(srv, dev, port=relay.port, trust=None, pin=b"\x42" * 32, deadline=None)
        with pytest.raises(SecurityError, match="pinned"):
            c.cacerts()
        assert up and not [d for d in up if der(dev.cert) in d]
        # control: with the right pin the certificate does go out (DTLS 1.2 sends it in clear)
        c = coaps(srv, dev, port=relay.port, trust=None, pin=fingerprint(server_leaf(srv)))
        assert c.cacerts()
        c.close()
        assert [d for d in up if der(dev.cert) in d]
    finally:
        relay.close()


def test_untrusted_server_aborts_before_the_device_certificate_is_sent(both, tmp_path):
    from helpers_server import make_vendor_ca

    srv = both
    dev = idevid_device(srv)
    relay, up = _recording_relay(srv)
    (tmp_path / "other").mkdir()
    try:
        c = coaps(srv, dev, port=relay.port, trust=der(make_vendor_ca(str(tmp_path / "other"))["cert"]),
                  deadline=None)
        with pytest.raises(SecurityError):
            c.cacerts()
        c = coaps(srv, dev, port=relay.port, server_name="evil.example", deadline=None)
        with pytest.raises(SecurityError, match="evil.example"):
            c.cacerts()
        assert up and not [d for d in up if der(dev.cert) in d]
    finally:
        relay.close()


def test_503_max_age_then_success(both, tmp_path):
    srv = both
    dev = operational_device(srv)  # the manual label trusts this CA's certificates
    approved = []

    def on_sleep(n):
        approved.append(approve_pending(srv))

    c = ClockClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=root_der(srv), cert=der(dev.cert),
                    key=key_der(dev.key), label="manual", on_sleep=on_sleep)
    r = c.provision(CredStore(str(tmp_path / "m")), cn="coaps-waits")
    assert approved == [1] and 7 <= c.sleeps[0] <= 7 * 1.25  # Max-Age 7 plus jitter
    assert load_cert(r.cert).subject.rfc4514_string() == "CN=coaps-waits"


def test_revoked_certificate_on_reenroll_keeps_the_store(both, tmp_path):
    srv = both
    store = CredStore(str(tmp_path / "r"))
    coaps(srv, idevid_device(srv)).provision(store, cn="coaps-revoked")
    before = store.load()
    srv.ca.revoke(load_cert(before.cert).serial_number)
    c = EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=before.ca, deadline=None)
    with pytest.raises(SecurityError):
        c.renew_if_needed(store, threshold=10 ** 9)
    after = store.load()
    assert (after.gen, after.cert, after.key) == (before.gen, before.cert, before.key)


def test_lossy_link(both, tmp_path):
    srv = both
    rng = random.Random(7)
    relay = LossyRelay(("127.0.0.1", srv.coaps_port), lambda d, i, data: rng.random() < 0.2)
    try:
        c = coaps(srv, idevid_device(srv), port=relay.port)
        c.ack_timeout = 0.5
        r = c.provision(CredStore(str(tmp_path / "l")), cn="coaps-lossy")
        c.close()
        assert load_cert(r.cert).subject.rfc4514_string() == "CN=coaps-lossy"
        assert relay.dropped["up"] + relay.dropped["down"] > 0
    finally:
        relay.close()


def test_server_down_gives_up_within_the_deadline(both):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = ClockClient("coaps://127.0.0.1:%d" % port, trust=root_der(both), deadline=20, timeout=2)
    with pytest.raises(TransportError, match="deadline"):
        c.cacerts()
    assert len(c.sleeps) >= 1 and c.offset <= 20


def test_no_http_passwords_over_coaps(both):
    from est_lite.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="RFC 9148"):
        EstClient("coaps://127.0.0.1:1", trust=root_der(both), user="a", password="b")
