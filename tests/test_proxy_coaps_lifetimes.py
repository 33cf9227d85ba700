"""Lifetimes on the EST-coaps server and the proxy/RA (brief AO).

1. A device whose certificate of this CA is only outside its dates gets,
   over CoAPs as over HTTPS, an answer naming the reason (4.03 "client
   certificate ... expired on ...") on every request of the session,
   instead of a bare fatal DTLS alert; nothing is issued; a certificate
   of an untrusted CA still fails the handshake.

No test sleeps: expired certificates are issued with past dates, the
service's clock is injected where the policy clock matters."""

import datetime
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_client import root_der
from helpers_coaps import CoapsSession, Device, EstBothServer, idevid_device
from helpers_pki import _name
from helpers_server import issue_cert, make_csr, make_vendor_ca
from test_client_runtime_mp import coaps_cfg, mplib, run  # noqa: F401 - mplib is a fixture

from est_lite.errors import EstError, SecurityError, ServerError, TransportError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore

DAY = 86400


@pytest.fixture
def srv(tmp_path):
    s = EstBothServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _cert_of(srv, cn, nb_days, na_days, key=None, nb=None, na=None):
    """A certificate of the server's CA valid from now + nb_days to now +
    na_days (or the datetimes nb, na)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(srv.ca.issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(nb or now + datetime.timedelta(days=nb_days))
            .not_valid_after(na or now + datetime.timedelta(days=na_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(srv.ca._key, hashes.SHA256()))
    return Device(key, cert)


def _every_request_refused(srv, dev, match):
    before = srv.issued_count()
    with srv.dtls_client(dev, timeout=5) as dc:  # the handshake completes
        s = CoapsSession(dc)
        calls = [("cacerts", lambda: s.cacerts()), ("csrattrs", lambda: s.csrattrs()),
                 ("enroll", lambda: s.enroll(make_csr(dev.cn, dev.key)[1])),
                 ("reenroll", lambda: s.reenroll(make_csr(dev.cn, dev.key)[1])),
                 ("serverkeygen", lambda: s.serverkeygen(make_csr(dev.cn)[1]))]
        for what, call in calls:
            with pytest.raises(EstError) as ei:
                call()
            assert "4.03" in str(ei.value) and match in str(ei.value), (what, str(ei.value))
    assert srv.issued_count() == before


def test_coaps_expired_client_certificate_gets_403_naming_expiry(srv):
    # fails on the previous code: the handshake ended with a fatal alert
    dev = _cert_of(srv, "expired-dev", -100, -10)
    _every_request_refused(srv, dev, "client certificate CN=expired-dev expired on")


def test_coaps_not_yet_valid_client_certificate_gets_403(srv):
    dev = _cert_of(srv, "future-dev", 2, 30)
    _every_request_refused(srv, dev, "client certificate CN=future-dev is not valid before")


def test_coaps_out_of_date_refused_even_if_the_policy_clock_disagrees(srv):
    # the handshake (this host's clock) saw an expired certificate; the
    # service, whose clock reads a second before its notAfter, would accept
    # it: still refused, with the handshake's reason (fail closed)
    nb = srv.ca.issuer.not_valid_before_utc
    na = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(seconds=2)
    assert na > nb + datetime.timedelta(seconds=2)
    dev = _cert_of(srv, "clock-dev", 0, 0, nb=nb, na=na)
    srv.service.authenticator.clock = lambda: na.timestamp() - 1
    _every_request_refused(srv, dev, "certificate has expired")


def test_coaps_untrusted_ca_and_bad_signature_still_fail_the_handshake(srv, tmp_path):
    before = srv.issued_count()
    other = make_vendor_ca(str(tmp_path), "Rogue Vendor")
    k, c = issue_cert(other["cert"], other["key"], "rogue")
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(k, c), timeout=5)
    # expired AND from an untrusted CA: the dates do not open the door
    k, c = issue_cert(other["cert"], other["key"], "rogue-old", days=-1, not_before_days=-10)
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(k, c), timeout=5)
    # expired, this CA's name as issuer but signed by another key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    forged = (x509.CertificateBuilder().subject_name(_name("forged")).issuer_name(srv.ca.issuer.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
              .sign(other["key"], hashes.SHA256()))
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(key, forged), timeout=5)
    assert srv.issued_count() == before


def test_coaps_expired_and_revoked_is_still_refused_in_the_handshake(srv):
    dev = _cert_of(srv, "old-revoked", -100, -10)
    # (a revoked certificate is refused whatever its dates: the alert says certificate_revoked)
    srv.ca.store.add_certificate(dev.cert, label="")
    srv.ca.revoke(dev.cert.serial_number)
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(dev, timeout=5)


def _expired_store(srv, path, cn):
    from cryptography.hazmat.primitives import serialization

    dev = _cert_of(srv, cn, -100, -10)
    store = CredStore(path)
    store.save(key=dev.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
               cert=dev.cert.public_bytes(serialization.Encoding.DER), ca=[root_der(srv)])
    return store


def test_cpython_client_over_coaps_renewal_names_the_expiry(srv, tmp_path):
    store = _expired_store(srv, str(tmp_path / "gw"), "gw-old")
    old = store.load()
    before = srv.issued_count()
    c = EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=root_der(srv), deadline=None)
    try:
        with pytest.raises(ServerError) as ei:
            c.renew_if_needed(store)
    finally:
        c.close()
    assert "4.03" in str(ei.value) and "client certificate CN=gw-old expired on" in str(ei.value), str(ei.value)
    assert store.load().cert == old.cert and srv.issued_count() == before


def test_micropython_client_over_coaps_renewal_names_the_expiry(srv, tmp_path, mplib):  # noqa: F811
    dev = idevid_device(srv)
    store = _expired_store(srv, os.path.join(str(tmp_path), "store"), "mp-dev")
    first = store.load()
    before = srv.issued_count()
    base = coaps_cfg(srv, tmp_path, dev)
    rc, out = run(mplib, tmp_path, dict(server=base["server"], trust=base["trust"], steps=["renew"]))
    assert rc == 1 and "4.03" in out and "client certificate CN=mp-dev expired on" in out, out
    assert "fatal alert" not in out, out
    assert CredStore(os.path.join(str(tmp_path), "store")).load().cert == first.cert
    assert srv.issued_count() == before
