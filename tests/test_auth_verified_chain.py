"""DefaultAuthenticator with a VerifiedChain (the chain OpenSSL verified in
the DTLS handshake rides along): no signature is checked twice, but a path
that does not end in the label's trust set is still built and checked, and
validity periods and CRLs are still enforced."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from helpers_server import ConfigStub, TrustStub, issue_cert, make_vendor_ca

from est_lite.errors import SecurityError
from est_lite_cpython.auth import DefaultAuthenticator, UntrustedCertificate, VerifiedChain


def _auth(tmp_path, crls=()):
    vendor = make_vendor_ca(str(tmp_path))
    other = make_vendor_ca(str(tmp_path), name="Other CA")
    cfg = ConfigStub(idevid=TrustStub([vendor["cert"]], crls), other=TrustStub([other["cert"]]))
    return DefaultAuthenticator(None, cfg), vendor, other


def test_verified_path_skips_the_signature_checks(tmp_path, monkeypatch):
    a, vendor, _ = _auth(tmp_path)
    _, leaf = issue_cert(vendor["cert"], vendor["key"], "dev-1")
    built = []
    orig = a._build
    monkeypatch.setattr(a, "_build", lambda *args: built.append(1) or orig(*args))
    ident = a.verify_client_cert(VerifiedChain([leaf], [leaf, vendor["cert"]]), ["idevid"])
    assert ident.leaf is leaf and ident.chain[-1] == vendor["cert"] and ident.trust_name == "idevid"
    assert built == []
    # a plain list (the HTTPS front end) still builds and verifies the path
    assert a.verify_client_cert([leaf], ["idevid"]).chain[-1] == vendor["cert"]
    assert built == [1]


def test_verified_path_to_another_anchor_is_not_trusted(tmp_path):
    a, vendor, other = _auth(tmp_path)
    _, leaf = issue_cert(other["cert"], other["key"], "dev-2")
    with pytest.raises(UntrustedCertificate):
        a.verify_client_cert(VerifiedChain([leaf], [leaf, other["cert"]]), ["idevid"])
    # a path whose leaf is not the certificate presented is ignored, not believed
    _, mine = issue_cert(vendor["cert"], vendor["key"], "dev-3")
    with pytest.raises(UntrustedCertificate):
        a.verify_client_cert(VerifiedChain([leaf], [mine, vendor["cert"]]), ["idevid"])


def test_verified_path_still_checks_validity_and_crl(tmp_path):
    vendor = make_vendor_ca(str(tmp_path))
    _, bad = issue_cert(vendor["cert"], vendor["key"], "revoked")
    _, old = issue_cert(vendor["cert"], vendor["key"], "expired", days=-1, not_before_days=-10)
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(vendor["cert"].subject)
           .last_update(now - datetime.timedelta(days=1)).next_update(now + datetime.timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(bad.serial_number)
                                    .revocation_date(now - datetime.timedelta(hours=1)).build())
           .sign(vendor["key"], hashes.SHA256()))
    a = DefaultAuthenticator(None, ConfigStub(idevid=TrustStub([vendor["cert"]], [crl])))
    with pytest.raises(SecurityError, match="revoked"):
        a.verify_client_cert(VerifiedChain([bad], [bad, vendor["cert"]]), ["idevid"])
    with pytest.raises(SecurityError, match="expired"):
        a.verify_client_cert(VerifiedChain([old], [old, vendor["cert"]]), ["idevid"])
