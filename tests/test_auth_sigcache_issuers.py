"""DefaultAuthenticator's signature cache is per (certificate, issuer
certificate): a certificate verified under one CA is not taken as signed by
another CA certificate with the same name but another key (a re-keyed or
impostor CA), and a chain through an intermediate is cached link by link."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_server import ConfigStub, TrustStub, issue_cert, make_vendor_ca

from est_lite_cpython.auth import DefaultAuthenticator, UntrustedCertificate


def _ca(name, key=None, issuer=None, issuer_key=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = key or ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    c = (x509.CertificateBuilder().subject_name(n).issuer_name(issuer.subject if issuer else n)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .sign(issuer_key or key, hashes.SHA256()))
    return c, key


def _counting(monkeypatch):
    calls = []
    orig = x509.Certificate.verify_directly_issued_by

    def counted(self, issuer):
        calls.append((self.subject.rfc4514_string(), issuer.subject.rfc4514_string()))
        return orig(self, issuer)

    monkeypatch.setattr(x509.Certificate, "verify_directly_issued_by", counted)
    return calls


def test_same_name_other_key_is_verified_and_refused(tmp_path, monkeypatch):
    vendor = make_vendor_ca(str(tmp_path))
    impostor, _ = _ca(vendor["cert"].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    a = DefaultAuthenticator(None, ConfigStub(good=TrustStub([vendor["cert"]]), bad=TrustStub([impostor])))
    _, leaf = issue_cert(vendor["cert"], vendor["key"], "dev-1")
    assert a.verify_client_cert([leaf], ["good"]).trust_name == "good"
    calls = _counting(monkeypatch)
    with pytest.raises(UntrustedCertificate):
        a.verify_client_cert([leaf], ["bad"])
    assert len(calls) == 1  # not answered from the cache of the other CA
    assert a.verify_client_cert([leaf], ["bad", "good"]).trust_name == "good"
    assert len(calls) == 2  # the impostor again (failures are not cached), the good CA from the cache


def test_chain_through_intermediate_cached_per_link(tmp_path, monkeypatch):
    root, root_key = _ca("Root")
    inter, inter_key = _ca("Intermediate", issuer=root, issuer_key=root_key)
    _, leaf = issue_cert(inter, inter_key, "dev-2")
    a = DefaultAuthenticator(None, ConfigStub(t=TrustStub([root])))
    calls = _counting(monkeypatch)
    for _ in range(3):
        ident = a.verify_client_cert([leaf, inter], ["t"])
        assert [c.subject.rfc4514_string() for c in ident.chain] == ["CN=dev-2", "CN=Intermediate", "CN=Root"]
    assert calls == [("CN=dev-2", "CN=Intermediate"), ("CN=Intermediate", "CN=Root")]


def test_subject_text_built_once_per_certificate(tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization

    vendor = make_vendor_ca(str(tmp_path))
    a = DefaultAuthenticator(None, ConfigStub(idevid=TrustStub([vendor["cert"]])), max_cached_signatures=2)
    _, one = issue_cert(vendor["cert"], vendor["key"], "dev-1")
    _, two = issue_cert(vendor["cert"], vendor["key"], "dev-2")
    texts = []
    orig = x509.Name.rfc4514_string

    def counted(self, *args, **kw):
        t = orig(self, *args, **kw)
        texts.append(t)
        return t

    monkeypatch.setattr(x509.Name, "rfc4514_string", counted)
    for _ in range(3):
        again = x509.load_der_x509_certificate(one.public_bytes(serialization.Encoding.DER))
        assert a.verify_client_cert([again], ["idevid"]).subject == "CN=dev-1"
    assert texts == ["CN=dev-1"]
    assert a.verify_client_cert([two], ["idevid"]).subject == "CN=dev-2"
    assert texts == ["CN=dev-1", "CN=dev-2"]
    for i in range(3):  # the cache stays bounded
        _, other = issue_cert(vendor["cert"], vendor["key"], "dev-x%d" % i)
        assert a.verify_client_cert([other], ["idevid"]).subject == "CN=dev-x%d" % i
        assert len(a._subject_text) <= 2
