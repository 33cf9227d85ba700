"""The CPython client runtime (est_lite_cpython.client.EstClient) over HTTPS
against the reference server: the five operations, easy provisioning into a
credential store, renewal, pinned bootstrap, what is refused before any
credential leaves, retry-after, deadlines, PoP linking on TLS 1.2 and 1.3,
an HTTP CONNECT proxy and a CRL of the server's chain."""

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers_client import ClockClient, ConnectProxy, ImpostorTls, approve_pending, der, load_cert, point, root_der
from helpers_server import PASSWORD, USER

from est_lite.csr import CsrBuilder
from est_lite.errors import SecurityError, ServerError, TransportError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore, StoreError
from est_lite_cpython.crypto import P256Key
from est_lite_cpython.dtls import fingerprint


def client(srv, **kw):
    kw.setdefault("trust", root_der(srv))
    kw.setdefault("user", USER)
    kw.setdefault("password", PASSWORD)
    return EstClient("https://localhost:%d" % srv.port, **kw)


def csr(cn="dev"):
    k = P256Key.generate()
    return k, CsrBuilder().subject(cn=cn).sign(k)


def issued_ok(srv, cert_der, key):
    c = load_cert(cert_der)
    c.verify_directly_issued_by(srv.ca.issuer)
    assert point(c) == key.public_key
    return c


def test_five_operations(est_server):
    srv = est_server
    c = client(srv)
    try:
        assert [load_cert(x) for x in c.cacerts()] == [srv.ca.root]
        assert c.csrattrs() is not None
        k, body = csr("five-1")
        ev = c.enroll(body, k.public_key)
        cert = issued_ok(srv, ev.cert, k)
        assert cert.subject.rfc4514_string() == "CN=five-1"
        skg_k, skg_csr = csr("five-skg")
        ev2 = c.serverkeygen(skg_csr)
        key2 = P256Key.load_der(ev2.key_der)
        issued_ok(srv, ev2.cert, key2)
    finally:
        c.close()
    # re-enroll authenticated by the issued certificate only (no password)
    k2 = P256Key.generate()
    c2 = client(srv, user=None, password=None, cert=ev.cert, key=k.export_pkcs8())
    try:
        ev3 = c2.reenroll(CsrBuilder().subject(cn="five-1").sign(k2), k2.public_key)
    finally:
        c2.close()
    issued_ok(srv, ev3.cert, k2)


def test_csrattrs_of_a_label(est_server):
    c = client(est_server, label="strict")
    a = c.csrattrs()
    c.close()
    assert a.wants_challenge_password
    assert a.key_curve == "1.2.840.10045.3.1.7" and a.signature_alg == "1.2.840.10045.4.3.2"


def test_provision_end_to_end_store_and_renewal(est_server, tmp_path):
    srv = est_server
    store = CredStore(str(tmp_path / "dev"))
    c = client(srv)
    r = c.provision(store, cn="prov-1", dns=["prov-1.example"])
    c.close()
    got = store.load()
    assert got.cert == r.cert and got.ca == [root_der(srv)] and r.gen == got.gen == 1
    key = P256Key.load_der(got.key)
    cert = issued_ok(srv, got.cert, key)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["prov-1.example"]
    for n in os.listdir(store.path):
        assert stat.S_IMODE(os.stat(os.path.join(store.path, n)).st_mode) == 0o600, n
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    # not due yet (90-day certificate, default threshold a third of it)
    assert client(srv).renew_if_needed(store) is None
    # due: new key, same subject and SAN, authenticated by the current certificate (no password given)
    c2 = EstClient("https://localhost:%d" % srv.port, trust=got.ca)
    r2 = c2.renew_if_needed(store, threshold=10 ** 9)
    got2 = store.load()
    assert r2.gen == got2.gen == 2 and got2.key != got.key
    cert2 = issued_ok(srv, got2.cert, P256Key.load_der(got2.key))
    assert cert2.subject == cert.subject
    assert cert2.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # keep the key
    r3 = c2.renew_if_needed(store, threshold=10 ** 9, rotate_key=False)
    assert store.load().key == got2.key and r3.gen == 3


def test_pinned_bootstrap_with_the_ca_fingerprint(est_server, tmp_path):
    # the server sends its leaf only: the pinned root must be in the /cacerts
    # answer and the server's chain must verify up to it
    srv = est_server
    c = EstClient("https://127.0.0.1:%d" % srv.port, pin="sha256:" + fingerprint(srv.ca.root).hex(), user=USER,
                  password=PASSWORD)
    r = c.provision(CredStore(str(tmp_path / "s")), cn="pinned-1")
    assert c.bootstrapped and c.trust == [root_der(srv)]
    issued_ok(srv, r.cert, P256Key.load_der(CredStore(str(tmp_path / "s")).load().key))


def test_pinned_bootstrap_with_the_server_certificate(est_server):
    srv = est_server
    with open(srv.ca.server_cert_file, "rb") as f:
        leaf = f.read()
    c = EstClient("https://localhost:%d" % srv.port, pin=fingerprint(leaf), user=USER, password=PASSWORD)
    certs = c.cacerts()
    assert c.bootstrapped and certs == c.trust == [root_der(srv)]
    k, body = csr("pinned-2")
    issued_ok(srv, c.enroll(body, k.public_key).cert, k)


def test_wrong_pin_refused_and_no_credential_sent(tmp_path, est_server):
    # an impostor answers /cacerts with its own CA: the pin (our real root)
    # matches nothing; the client presented no certificate and no password
    from est_lite_cpython.codec_server import build_certs_only

    imp = None

    def answer(data):
        p7 = build_certs_only([der(imp.ca["cert"])])
        import base64

        b = base64.encodebytes(p7)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: %d\r\n\r\n" % len(b)) + b

    imp = ImpostorTls(tmp_path, answer)
    try:
        k = P256Key.generate()
        cert = est_server.ca.issue_raw(k.key.public_key(), x509.Name.from_rfc4514_string("CN=victim"), days=5)
        c = EstClient("https://localhost:%d" % imp.port, pin=fingerprint(est_server.ca.root), cert=der(cert),
                      key=k.export_pkcs8(), user=USER, password=PASSWORD, deadline=None)
        with pytest.raises(SecurityError, match="pinned certificate"):
            c.provision(CredStore(str(tmp_path / "v")), cn="victim")
        assert imp.connections and all(r["client_cert"] is None for r in imp.connections)
        sent = b"".join(r["data"] for r in imp.connections)
        assert b"GET /.well-known/est/cacerts" in sent and b"Authorization" not in sent and b"POST" not in sent
        assert not os.path.exists(str(tmp_path / "v" / "manifest"))
    finally:
        imp.close()


def test_untrusted_server_refused_in_the_handshake(tmp_path, est_server):
    imp = ImpostorTls(tmp_path)
    try:
        k = P256Key.generate()
        cert = est_server.ca.issue_raw(k.key.public_key(), x509.Name.from_rfc4514_string("CN=victim"), days=5)
        c = EstClient("https://localhost:%d" % imp.port, trust=root_der(est_server), cert=der(cert),
                      key=k.export_pkcs8(), user=USER, password=PASSWORD, deadline=None)
        with pytest.raises(SecurityError, match="certificate"):
            c.cacerts()
        assert len(imp.connections) == 1
        assert imp.connections[0]["client_cert"] is None and imp.connections[0]["data"] == b""
    finally:
        imp.close()


def test_server_name_must_match(est_server):
    c = client(est_server, server_name="evil.example", deadline=None)
    with pytest.raises(SecurityError, match="evil.example"):
        c.cacerts()
    c = EstClient("https://127.0.0.1:%d" % est_server.port, trust=root_der(est_server))
    assert c.cacerts()  # IP SAN


def test_server_down_gives_up_within_the_deadline(tmp_path):
    from helpers_server import make_vendor_ca

    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = ClockClient("https://127.0.0.1:%d" % port, trust=der(make_vendor_ca(str(tmp_path))["cert"]), deadline=30)
    with pytest.raises(TransportError, match="deadline") as e:
        c.cacerts()
    assert "127.0.0.1:%d" % port in str(e.value)
    assert len(c.sleeps) >= 2 and c.offset <= 30
    assert c.sleeps[1] >= 2 * c.backoff  # exponential backoff


def test_202_then_success_with_retry_after(est_server, tmp_path):
    srv = est_server

    def on_sleep(n):
        assert approve_pending(srv) == 1

    c = ClockClient("https://localhost:%d" % srv.port, trust=root_der(srv), user=USER, password=PASSWORD,
                    label="manual", on_sleep=on_sleep)
    r = c.provision(CredStore(str(tmp_path / "m")), cn="waits-1")
    assert len(c.sleeps) == 1 and 7 <= c.sleeps[0] <= 7 * 1.25  # Retry-After 7 plus jitter
    assert load_cert(r.cert).subject.rfc4514_string() == "CN=waits-1"


def test_a_long_retry_after_is_waited_in_full(tmp_path, monkeypatch):
    """RFC 7030 §4.2.3: the client MUST wait at least the Retry-After. A
    server asking for 2 hours, a deadline of 3: the real EstClient (its own
    _sleep, time.sleep replaced by a clock that moves) waits the 2 hours
    at once; before, one wait was capped at retry_max_s = 3600 s and the
    server was asked again after an hour. The cap is now opt-in."""
    import est_lite_cpython.client as cm
    from helpers_server import EstTestServer

    srv = EstTestServer(tmp_path, extra_toml="[profiles.slow]\nmanual_approval = true\nretry_after = 7200\n")
    try:
        slept = []

        class Moved(EstClient):
            def _mono(self):
                return cm.time.monotonic() + sum(slept)

        def sleep(s):
            slept.append(s)
            assert approve_pending(srv) == 1

        monkeypatch.setattr(cm.time, "sleep", sleep)
        c = Moved("https://localhost:%d" % srv.port, trust=root_der(srv), user=USER, password=PASSWORD,
                  label="slow", deadline=3 * 3600)
        k, body = csr("waits-long")
        assert c.enroll(body).cert
        assert len(slept) == 1 and 7200 <= slept[0] <= 7200 * 1.25, slept
        assert EstClient.retry_max_s is None
    finally:
        srv.stop()


def test_202_past_the_deadline_fails_at_once(est_server):
    c = ClockClient("https://localhost:%d" % est_server.port, trust=root_der(est_server), user=USER,
                    password=PASSWORD, label="manual", deadline=5)
    k, body = csr("waits-2")
    with pytest.raises(TransportError, match="deadline"):
        c.enroll(body)
    assert c.sleeps == []


def test_revoked_certificate_on_reenroll_keeps_the_store(est_server, tmp_path):
    srv = est_server
    store = CredStore(str(tmp_path / "r"))
    client(srv).provision(store, cn="revoked-1")
    before = store.load()
    srv.ca.revoke(load_cert(before.cert).serial_number)
    c = EstClient("https://localhost:%d" % srv.port, trust=before.ca, deadline=None)
    with pytest.raises(ServerError) as e:
        c.renew_if_needed(store, threshold=10 ** 9)
    assert e.value.http_status == 403 and "revoked" in str(e.value)
    after = store.load()
    assert (after.gen, after.cert, after.key) == (before.gen, before.cert, before.key)


def test_corrupt_store_is_reported_not_loaded(est_server, tmp_path):
    store = CredStore(str(tmp_path / "c"))
    client(est_server).provision(store, cn="corrupt-1")
    p = os.path.join(store.path, "cert.1")
    data = bytearray(open(p, "rb").read())
    data[100] ^= 0x40
    open(p, "wb").write(bytes(data))
    c = EstClient("https://localhost:%d" % est_server.port, trust=root_der(est_server))
    with pytest.raises(StoreError, match="cert"):
        c.renew_if_needed(store, threshold=10 ** 9)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_pop_linking(est_server, tmp_path, version):
    srv = est_server
    c = client(srv, label="pop", tls_version=version)
    r = c.provision(CredStore(str(tmp_path / version)), cn="pop-" + version, pop=True)
    assert load_cert(r.cert).subject.rfc4514_string() == "CN=pop-" + version
    c = client(srv, label="pop", tls_version=version, deadline=None)
    with pytest.raises(ServerError, match="challengePassword|PoP|binding") as e:
        c.provision(CredStore(str(tmp_path / ("no" + version))), cn="nopop", pop=False)
    assert e.value.http_status == 403


def test_auth_required_without_credentials(est_server):
    c = client(est_server, user=None, password=None, deadline=None)
    k, body = csr("anon")
    with pytest.raises(SecurityError, match="requires authentication"):
        c.enroll(body)


def test_wrong_password(est_server):
    c = client(est_server, password="wrong", deadline=None)
    with pytest.raises(ServerError) as e:
        c.enroll(csr("x")[1])
    assert e.value.http_status == 401


def test_http_connect_proxy(est_server, tmp_path):
    proxy = ConnectProxy(require_auth="Basic cHg6c2VjcmV0")  # px:secret
    try:
        c = client(est_server, proxy="http://px:secret@127.0.0.1:%d" % proxy.port)
        r = c.provision(CredStore(str(tmp_path / "p")), cn="via-proxy")
        c.close()
        assert load_cert(r.cert).subject.rfc4514_string() == "CN=via-proxy"
        assert proxy.requests and all(q == "CONNECT localhost:%d HTTP/1.1" % est_server.port for q in proxy.requests)
        c = client(est_server, proxy="http://127.0.0.1:%d" % proxy.port, deadline=None)
        with pytest.raises(TransportError, match="proxy refused CONNECT"):
            c.cacerts()
    finally:
        proxy.close()


def _crl(srv, serials):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = x509.CertificateRevocationListBuilder().issuer_name(srv.ca.root.subject).last_update(now).next_update(
        now + datetime.timedelta(days=1))
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build())
    key = serialization.load_pem_private_key(open(os.path.join(srv.data_dir, "root.key"), "rb").read(), None)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_crl_check_of_the_server_certificate(est_server):
    srv = est_server
    leaf = x509.load_pem_x509_certificate(open(srv.ca.server_cert_file, "rb").read())
    c = client(srv, crls=[_crl(srv, [12345])])
    assert c.cacerts()
    c.close()
    c = client(srv, crls=[_crl(srv, [leaf.serial_number])], deadline=None)
    with pytest.raises(SecurityError, match="revoked"):
        c.cacerts()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, 0, 2e6, "60", True])
def test_a_deadline_given_per_call_is_checked_as_the_constructors(tmp_path, monkeypatch, bad):
    """provision() and renew_if_needed() take a deadline for that call;
    it was not checked. A NaN (or infinite) one bounded nothing: with no
    cap on one wait (bab2286) a server's Retry-After of up to 999,999,999 s
    was slept in full, and a server that cannot be reached was retried
    without end. Now the constructor's rule: a number of seconds in
    (0, 1e6], said before anything is sent."""
    import est_lite_cpython.client as cm
    from est_lite.errors import LocalProtocolError
    from est_lite_cpython.credstore import CredStore

    def sleep(s):
        raise AssertionError("waited %r s" % s)

    monkeypatch.setattr(cm.time, "sleep", sleep)
    c = EstClient("https://127.0.0.1:1", trust=[_unused_root()], user=USER, password=PASSWORD)
    store = CredStore(str(tmp_path / "s"))
    for call in (lambda: c.provision(store, cn="d", deadline=bad), lambda: c.renew_if_needed(store, deadline=bad)):
        with pytest.raises(LocalProtocolError, match="deadline must be a number of seconds"):
            call()


def _unused_root():
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unused root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(k, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
