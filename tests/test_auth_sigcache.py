"""DefaultAuthenticator's cache of verified certificate signatures: a client
certificate seen again costs no second signature verification, but a
different certificate (a forged one with the same names included) is
verified on its own, and expiry and revocation are checked on every
request."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_server import ConfigStub, TrustStub, issue_cert, make_vendor_ca

from est_lite.errors import SecurityError
from est_lite_cpython.auth import DefaultAuthenticator, UntrustedCertificate
from est_lite_cpython.ca import init_ca


def _counting(monkeypatch):
    calls = []
    orig = x509.Certificate.verify_directly_issued_by

    def counted(self, issuer):
        calls.append(self.serial_number)
        return orig(self, issuer)

    monkeypatch.setattr(x509.Certificate, "verify_directly_issued_by", counted)
    return calls


def test_second_connection_skips_the_signature_check(tmp_path, monkeypatch):
    vendor = make_vendor_ca(str(tmp_path))
    a = DefaultAuthenticator(None, ConfigStub(idevid=TrustStub([vendor["cert"]])))
    _, leaf = issue_cert(vendor["cert"], vendor["key"], "dev-1")
    calls = _counting(monkeypatch)
    for _ in range(3):
        # a fresh object each time, as the front end loads the peer certificate per connection
        again = x509.load_der_x509_certificate(leaf.public_bytes(serialization.Encoding.DER))
        assert a.verify_client_cert([again], ["idevid"]).trust_name == "idevid"
    assert calls == [leaf.serial_number]


def test_forged_certificate_with_the_same_names_is_verified_and_refused(tmp_path, monkeypatch):
    vendor = make_vendor_ca(str(tmp_path))
    a = DefaultAuthenticator(None, ConfigStub(idevid=TrustStub([vendor["cert"]])))
    _, leaf = issue_cert(vendor["cert"], vendor["key"], "dev-1")
    a.verify_client_cert([leaf], ["idevid"])
    # same subject, issuer name and serial, signed by another key
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
              .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(leaf.serial_number)
              .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc)
              .sign(forger, hashes.SHA256()))
    calls = _counting(monkeypatch)
    with pytest.raises(UntrustedCertificate):
        a.verify_client_cert([forged], ["idevid"])
    assert calls == [forged.serial_number]


def test_expiry_and_revocation_still_checked_after_caching(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    now = [ca.clock()]
    a = DefaultAuthenticator(ca, ConfigStub(), clock=lambda: now[0])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dev")]), days=2)
    assert a.verify_client_cert([cert], ["ca"]).trust_name == "ca"
    assert a._sig_ok  # cached
    now[0] += 3 * 86400
    with pytest.raises(SecurityError, match="expired"):
        a.verify_client_cert([cert], ["ca"])
    now[0] = ca.clock()
    ca.revoke(cert.serial_number)
    with pytest.raises(SecurityError, match="revoked"):
        a.verify_client_cert([cert], ["ca"])
    ca.store.close()


def test_cache_is_bounded(tmp_path):
    vendor = make_vendor_ca(str(tmp_path))
    a = DefaultAuthenticator(None, ConfigStub(idevid=TrustStub([vendor["cert"]])), max_cached_signatures=3)
    for i in range(7):
        _, leaf = issue_cert(vendor["cert"], vendor["key"], "dev-%d" % i)
        a.verify_client_cert([leaf], ["idevid"])
        assert 1 <= len(a._sig_ok) <= 3


def test_issued_by_me_verifies_each_certificate_once(tmp_path, monkeypatch):
    ca = init_ca(str(tmp_path / "ca"))
    key = ec.generate_private_key(ec.SECP256R1())
    mine = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "m")]), days=2)
    # the same names and serial, signed by another key
    forged = (x509.CertificateBuilder().subject_name(mine.subject).issuer_name(ca.issuer.subject)
              .public_key(key.public_key()).serial_number(mine.serial_number)
              .not_valid_before(mine.not_valid_before_utc).not_valid_after(mine.not_valid_after_utc)
              .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    calls = _counting(monkeypatch)
    assert ca.issued_by_me(mine) and ca.issued_by_me(mine)
    assert calls == [mine.serial_number]
    assert not ca.issued_by_me(forged) and not ca.issued_by_me(forged)
    assert calls == [mine.serial_number] + [forged.serial_number] * 2  # a failure is never cached
    ca.store.close()
