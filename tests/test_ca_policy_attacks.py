"""An adversary's review of what the CA puts into a certificate, of the CA's
own lifetimes and of the HTTPS server's authentication (Basic, Digest,
client certificates, re-enroll, PoP linking, serverkeygen).

Every CSR here is built with `cryptography` so that anything can be put in
it; requests go over HTTPS with stdlib `ssl` (tests/helpers_server.py) or
straight to `EstService` with an `AuthContext`; issued certificates are
read back with `cryptography` and `openssl x509 -text`. Both issuance paths
of `LocalCA` (the hand-assembled DER, `_issue_der`, and the
CertificateBuilder, `_issue_builder`) run every CSR case."""

import base64
import datetime
import ipaddress
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from helpers_server import PASSWORD, USER, make_csr

from est_lite.errors import EstError
from est_lite_cpython.service import AuthContext

AUTH = (USER, PASSWORD)
_T = x509.name._ASN1Type


def _ctx(**kw):
    kw.setdefault("http_user", USER)
    kw.setdefault("http_scheme", "basic")
    return AuthContext("https", **kw)


def _csr(name, exts=(), key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    for e, crit in exts:
        b = b.add_extension(e, critical=crit)
    return key, b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _cn(v, t=_T.UTF8String):
    return x509.NameAttribute(NameOID.COMMON_NAME, v, _type=t, _validate=False)


def _raw_csr(key, subject_der, attributes_der=b""):
    """A CSR assembled by hand (so that anything can be in it), signed by key."""
    from est_lite_cpython.ca import _tlv

    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    info = _tlv(0x30, b"\x02\x01\x00" + subject_der + spki + _tlv(0xA0, attributes_der))
    sig = key.sign(info, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, info + bytes.fromhex("300a06082a8648ce3d040302") + _tlv(0x03, b"\x00" + sig))


def _enroll(srv, der, label=None):
    """The issued certificate, or the EstError raised."""
    try:
        return pkcs7.load_der_pkcs7_certificates(srv.service.simpleenroll(label, der, _ctx()))[0]
    except EstError as e:
        return e


@pytest.fixture(params=["der", "builder"])
def srv(request, est_server):
    """The test server with LocalCA issuing on one path or the other."""
    if request.param == "builder":
        est_server.ca._fast = False
    return est_server


# ---------------------------------------------------------------- 1. CSR contents

_KU_CA = x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                       data_encipherment=True, key_agreement=True, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False)
_HOSTILE_EXTS = [
    (x509.BasicConstraints(ca=True, path_length=None), True),
    (_KU_CA, True),
    (x509.NameConstraints([x509.DNSName("victim.example")], None), True),
    (x509.AuthorityInformationAccess([x509.AccessDescription(
        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier("http://evil.example/ca"))]), False),
    (x509.CRLDistributionPoints([x509.DistributionPoint(
        [x509.UniformResourceIdentifier("http://evil.example/crl")], None, None, None)]), False),
    (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.SERVER_AUTH,
                            x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")]), False),
    (x509.SubjectKeyIdentifier(b"\x01" * 20), False),
    (x509.AuthorityKeyIdentifier(b"\x02" * 20, None, None), False),
]


def test_csr_extensions_never_reach_the_certificate(srv, tmp_path):
    """CA:TRUE, keyCertSign/cRLSign, nameConstraints, an AIA and a CRLDP
    pointing elsewhere, an unknown critical extension, an EKU the profile
    does not give, a chosen SKI/AKI: the certificate carries exactly the
    profile's extensions (and the CSR's SAN, checked), on both paths."""
    key, der = _csr(x509.Name([_cn("greedy-1")]),
                    _HOSTILE_EXTS + [(x509.SubjectAlternativeName([x509.DNSName("greedy-1.example.com")]), False)])
    c = _enroll(srv, der)
    assert isinstance(c, x509.Certificate), c
    ext = {e.oid: e for e in c.extensions}
    assert set(ext) == {x509.OID_BASIC_CONSTRAINTS, x509.OID_KEY_USAGE, x509.OID_AUTHORITY_KEY_IDENTIFIER,
                        x509.OID_SUBJECT_KEY_IDENTIFIER, x509.OID_EXTENDED_KEY_USAGE,
                        x509.OID_SUBJECT_ALTERNATIVE_NAME}
    assert ext[x509.OID_BASIC_CONSTRAINTS].value.ca is False and ext[x509.OID_BASIC_CONSTRAINTS].critical
    ku = ext[x509.OID_KEY_USAGE].value
    assert not ku.key_cert_sign and not ku.crl_sign and not ku.content_commitment and not ku.data_encipherment
    assert list(ext[x509.OID_EXTENDED_KEY_USAGE].value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext[x509.OID_SUBJECT_KEY_IDENTIFIER].value.digest != b"\x01" * 20
    assert ext[x509.OID_AUTHORITY_KEY_IDENTIFIER].value.key_identifier == \
        x509.SubjectKeyIdentifier.from_public_key(srv.ca.issuer.public_key()).digest
    assert ext[x509.OID_SUBJECT_ALTERNATIVE_NAME].critical is False
    assert list(ext[x509.OID_SUBJECT_ALTERNATIVE_NAME].value) == [x509.DNSName("greedy-1.example.com")]
    # what an independent reader sees
    p = tmp_path / "c.pem"
    p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(p)], capture_output=True, text=True,
                          check=True).stdout
    assert "CA:FALSE" in text and "CA:TRUE" not in text
    for word in ("Certificate Sign", "CRL Sign", "Name Constraints", "Authority Information Access",
                 "CRL Distribution", "1.3.6.1.4.1.99999.1", "Code Signing", "Server Authentication", "evil.example"):
        assert word not in text, word
    c.verify_directly_issued_by(srv.ca.issuer)


def test_both_issuance_paths_give_the_same_certificate_for_a_hostile_csr(est_server, monkeypatch):
    """The same hostile request through _issue_der and _issue_builder (the
    serial drawn the same): the same TBSCertificate, field for field."""
    ca = est_server.ca
    _, der = _csr(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME"), _cn("same-1")]),
                  _HOSTILE_EXTS + [(x509.SubjectAlternativeName([x509.DNSName("same-1.example.com"),
                                                                 x509.IPAddress(ipaddress.ip_address("10.1.2.3"))]),
                                    False)])
    fixed = os.urandom(20)
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: fixed if n == 20 else real(n))
    out = []
    for fast in (True, False):
        ca._fast = fast
        out.append(_enroll(est_server, der))
        ca.store._db().execute("DELETE FROM certs")  # the same serial again
    a, b = out
    assert isinstance(a, x509.Certificate) and isinstance(b, x509.Certificate), out
    assert a.tbs_certificate_bytes[:] != b"" and a.serial_number == b.serial_number
    # the validity may differ by the second the two issuances ran in
    assert [e for e in a.extensions] == [e for e in b.extensions]
    assert a.subject.public_bytes() == b.subject.public_bytes()
    assert a.public_key() == b.public_key()


SUBJECT_CASES = [
    ("multi-valued RDN", x509.Name([x509.RelativeDistinguishedName(
        [_cn("mv-1"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME")])]), "multi-valued RDN"),
    ("two CNs", x509.Name([_cn("good-device"), _cn("admin")]), "CN more than once"),
    ("two CNs, fast-path shape", x509.Name([_cn("a", _T.PrintableString), _cn("b", _T.PrintableString)]),
     "CN more than once"),
    ("CN with NUL", x509.Name([_cn("victim.example.com\x00.evil.example")]), "U+0000"),
    ("CN with ESC", x509.Name([_cn("dev\x1b[2Jice")]), "U+001B"),
    ("CN with DEL", x509.Name([_cn("dev\x7fice")]), "U+007F"),
    ("CN with C1 control", x509.Name([_cn("dev\x85ice")]), "U+0085"),
    ("CN with a bidi override", x509.Name([_cn("invoice\u202etxt.exe")]), "U+202E"),
    ("CN with a zero-width joiner", x509.Name([_cn("pay\u200dpal")]), "U+200D"),
    ("CN of 65 characters", x509.Name([_cn("a" * 65, _T.PrintableString)]), "65 characters"),
    ("CN of 2000 characters", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "é" * 2000, _validate=False)]),
     "2000 characters"),
    ("CN as BMPString", x509.Name([_cn("bmp-device", _T.BMPString)]), "BMPString"),
    ("CN as T61String", x509.Name([_cn("t61-device", _T.T61String)]), "T61String"),
    ("CN as UniversalString", x509.Name([_cn("u-device", _T.UniversalString)]), "UniversalString"),
    ("O as BMPString, CN fine", x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME", _type=_T.BMPString),
                                          _cn("dev-o")]), "BMPString"),
    ("country of 3 letters", x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "USA", _validate=False),
                                       _cn("dev-c")]), "allowed: 1..2"),
]


@pytest.mark.parametrize("case", SUBJECT_CASES, ids=[c[0] for c in SUBJECT_CASES])
def test_hostile_subjects_are_refused(srv, case):
    _, name, reason = case
    n = srv.ca.store.count_certificates()
    _, der = _csr(name)
    e = _enroll(srv, der)
    assert isinstance(e, EstError) and e.http_status == 400, e
    assert reason in e.msg, e.msg
    assert srv.ca.store.count_certificates() == n


def test_non_utf8_bytes_in_a_utf8string_are_refused_over_https(est_server):
    """A UTF8String CN holding bytes that are not UTF-8: 400 with a reason,
    nothing issued, over the wire."""
    from est_lite_cpython.ca import _tlv

    cn = _tlv(0x31, _tlv(0x30, bytes.fromhex("0603550403") + b"\x0c\x04\xff\xfeAB"))
    bad = _raw_csr(ec.generate_private_key(ec.SECP256R1()), _tlv(0x30, cn))
    n = est_server.ca.store.count_certificates()
    r = est_server.request("POST", est_server.path("simpleenroll"), bad, auth=AUTH)
    assert r.status == 400 and r.header("content-type").startswith("text/plain"), (r.status, r.text)
    assert est_server.ca.store.count_certificates() == n


def test_subjects_the_policy_keeps(srv):
    """What a device may send still works: repeated OU and DC, an accented
    UTF-8 CN, a 64-character CN, an IA5String emailAddress, on both
    paths; the subject DER is copied as sent."""
    name = x509.Name([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "com", _type=_T.IA5String),
                      x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example", _type=_T.IA5String),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "plant 1"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "line 2"),
                      x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com", _type=_T.IA5String),
                      _cn("capteur-é-" + "x" * 50)])
    _, der = _csr(name)
    c = _enroll(srv, der)
    assert isinstance(c, x509.Certificate), c
    assert c.subject.public_bytes() == name.public_bytes()
    _, der = _csr(x509.Name([_cn("d" * 64, _T.PrintableString)]))
    assert isinstance(_enroll(srv, der), x509.Certificate)


def _san(*names):
    return [(x509.SubjectAlternativeName(list(names)), False)]


def _strict_name(cn="s-1"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME"), _cn(cn)])


SAN_CASES = [
    # (name, label, GeneralNames, reason)
    ("wildcard DNS", None, [x509.DNSName("*.example.com")], "wildcard"),
    ("wildcard DNS inside the allowed domain", "strict", [x509.DNSName("*.example.com")], "wildcard"),
    ("NUL inside the allowed domain", "strict", [x509.DNSName("evil.org\x00.example.com")], "not a host name"),
    ("empty label inside the allowed domain", "strict", [x509.DNSName(".example.com")], "not a host name"),
    ("space in a DNS name", None, [x509.DNSName("a b.example.com")], "not a host name"),
    ("underscore in a DNS name", None, [x509.DNSName("_srv.example.com")], "not a host name"),
    ("label of 64", None, [x509.DNSName("a" * 64 + ".example.com")], "not a host name"),
    ("email with a control", None, [x509.RFC822Name("a\x07@example.com")], "not local@domain"),
    ("email without a domain", None, [x509.RFC822Name("root")], "not local@domain"),
    ("URI with a space", None, [x509.UniformResourceIdentifier("https://a.example/ x")], "not an absolute URI"),
    ("URI without a scheme", None, [x509.UniformResourceIdentifier("//a.example/")], "not an absolute URI"),
    ("IP network instead of an address", None, [x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
     "a network"),
    ("otherName (UPN)", None, [x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x05admin")],
     "type OtherName is not allowed"),
    ("directoryName", None, [x509.DirectoryName(x509.Name([_cn("root")]))], "type DirectoryName"),
    ("registeredID", None, [x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))], "type RegisteredID"),
    ("IP on a DNS-only label", "strict", [x509.DNSName("ok.example.com"),
                                          x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], "type ip"),
    ("URI on a DNS-only label", "strict", [x509.UniformResourceIdentifier("https://ok.example.com/")], "type uri"),
    ("email on a DNS-only label", "strict", [x509.RFC822Name("a@ok.example.com")], "type email"),
]


@pytest.mark.parametrize("case", SAN_CASES, ids=[c[0] for c in SAN_CASES])
def test_hostile_sans_are_refused(srv, case):
    _, label, names, reason = case
    n = srv.ca.store.count_certificates()
    _, der = _csr(_strict_name() if label == "strict" else x509.Name([_cn("san-1")]), _san(*names))
    e = _enroll(srv, der, label)
    assert isinstance(e, EstError) and e.http_status == 400, e
    assert reason in e.msg, e.msg
    assert srv.ca.store.count_certificates() == n


def test_sans_the_policy_keeps(srv):
    _, der = _csr(x509.Name([_cn("keep-1")]), _san(
        x509.DNSName("Keep-1.Example.com"), x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("ops@example.com"), x509.UniformResourceIdentifier("urn:uuid:0e7f4b3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c")))
    c = _enroll(srv, der)
    assert isinstance(c, x509.Certificate), c
    assert len(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 4
    _, der = _csr(_strict_name(), _san(x509.DNSName("a-1.sub.example.com")))
    assert isinstance(_enroll(srv, der, "strict"), x509.Certificate)


def test_two_san_extensions_are_refused_over_https(est_server):
    """A CSR whose extensionRequest holds subjectAltName twice (the second
    naming another host) is refused: the CA never picks one of them."""
    from est_lite_cpython.ca import _tlv

    def san(host):
        return _tlv(0x30, bytes.fromhex("0603551d11") + _tlv(0x04, x509.SubjectAlternativeName(
            [x509.DNSName(host)]).public_bytes()))

    ext_req = _tlv(0x30, bytes.fromhex("06092a864886f70d01090e") + _tlv(0x31, _tlv(
        0x30, san("aaaa.example.com") + san("bbbb.example.com"))))
    bad = _raw_csr(ec.generate_private_key(ec.SECP256R1()), x509.Name([_cn("two-sans")]).public_bytes(), ext_req)
    n = est_server.ca.store.count_certificates()
    r = est_server.request("POST", est_server.path("simpleenroll"), bad, auth=AUTH)
    assert r.status == 400 and r.header("content-type").startswith("text/plain"), (r.status, r.text)
    assert "Duplicate" in r.text or "duplicate" in r.text, r.text
    assert est_server.ca.store.count_certificates() == n


# ---------------------------------------------------------------- 2. lifetimes

def _old_ca(tmp_path, *, age_days, days, intermediate=False, name="old-ca", **kw):
    """A CA made age_days ago with a validity of `days` (server cert too)."""
    import time

    from est_lite_cpython.ca import init_ca

    d = str(tmp_path / name)
    ca = init_ca(d, validity_days=days, intermediate=intermediate, now=time.time() - age_days * 86400, **kw)
    ca.store.close()
    return d


def test_a_certificate_never_outlives_its_ca(tmp_path):
    """The CA has 2 days left, the profile asks 90: the certificate ends
    with the CA (both paths), and no later than the root either."""
    from est_lite_cpython.ca import LocalCA

    d = _old_ca(tmp_path, age_days=8, days=10, intermediate=True)
    ca = LocalCA(d)
    key, der = make_csr("short-1")
    csr = x509.load_der_x509_csr(der)
    for fast in (True, False):
        c = ca.issue_raw(csr.public_key(), csr.subject, days=90, fast=fast)
        assert c.not_valid_after_utc == min(ca.issuer.not_valid_after_utc, ca.root.not_valid_after_utc)
        assert c.not_valid_before_utc >= ca.issuer.not_valid_before_utc
        assert c.not_valid_before_utc < c.not_valid_after_utc
    ca.store.close()


def test_an_expired_ca_issues_nothing(tmp_path):
    """Before: an expired CA issued a certificate whose notBefore (now) was
    after its notAfter (the CA's). Now: a 500 with the reason, over HTTPS
    as at the service, nothing stored."""
    from est_lite_cpython.ca import CaNotValid, LocalCA

    d = _old_ca(tmp_path, age_days=12, days=10)
    ca = LocalCA(d)
    _, der = make_csr("late-1")
    csr = x509.load_der_x509_csr(der)
    for fast in (True, False):
        with pytest.raises(CaNotValid) as ei:
            ca.issue_raw(csr.public_key(), csr.subject, days=90, fast=fast)
        assert "expired on" in str(ei.value) and ei.value.http_status == 500
    assert ca.store.count_certificates() == 1  # the TLS certificate of ca init only
    ca.store.close()


def test_a_ca_from_the_future_issues_nothing(tmp_path):
    """This host's clock is before the CA's notBefore (a CA made on a host
    whose clock was ahead): refused with the reason, not a certificate
    valid before its issuer."""
    from est_lite_cpython.ca import CaNotValid, LocalCA

    d = _old_ca(tmp_path, age_days=-3, days=100)
    ca = LocalCA(d)
    _, der = make_csr("early-1")
    csr = x509.load_der_x509_csr(der)
    with pytest.raises(CaNotValid) as ei:
        ca.issue_raw(csr.public_key(), csr.subject, days=30)
    assert "set the clock" in str(ei.value)
    ca.store.close()


def test_expired_ca_over_https_is_a_readable_500(est_server):
    import time

    ca = est_server.ca
    real = ca.clock
    ca.clock = lambda: ca._ca_after + 10
    try:
        r = est_server.request("POST", est_server.path("simpleenroll"), make_csr("late-2")[1], auth=AUTH)
    finally:
        ca.clock = real
    assert r.status == 500 and r.header("content-type").startswith("text/plain"), (r.status, r.text)
    assert "CA cannot issue" in r.text and "expired on" in r.text
    assert time.time() < ca._ca_after


def _serve(capsys, d, *extra):
    from helpers_cli import cli

    return cli(capsys, "serve", "--data-dir", d, "--port", "0", "--port-file", os.path.join(d, "never"), *extra)


def test_serve_refuses_an_expired_ca(tmp_path, capsys):
    from helpers_cli import one_line

    d = _old_ca(tmp_path, age_days=12, days=10)
    rc, out, err = _serve(capsys, d)
    one_line(rc, err)
    assert "CA certificate" in err and "expired on" in err and "ca init --force" in err
    assert not os.path.exists(os.path.join(d, "never"))


def test_serve_refuses_an_expired_tls_certificate_and_says_how_to_renew_it(tmp_path, capsys):
    """ca init gives the TLS certificate min(CA days, 825): with a CA of
    4000 days made 900 days ago the CA is fine and the TLS certificate
    expired. serve says so in one line with the command that renews it;
    that command, run as printed, makes serve start again."""
    import shlex

    from helpers_cli import cli, one_line

    d = _old_ca(tmp_path, age_days=900, days=4000, name="old ca", server_names=("est.example", "127.0.0.1", "::1"))
    rc, out, err = _serve(capsys, d)
    one_line(rc, err)
    assert "TLS server certificate" in err and "expired on" in err
    cmd = err.split("renew it: ", 1)[1].split("; restart", 1)[0]
    argv = shlex.split(cmd)
    assert argv[:3] == ["est-lite", "ca", "issue"] and "--dns" in argv and "--ip" in argv
    rc, out, err2 = cli(capsys, *argv[1:])
    assert rc == 0, err2
    from est_lite_cpython.ca import check_init_args  # noqa: F401 - the module is importable
    from est_lite_cpython.cli_serve import check_lifetimes
    from est_lite_cpython.config import load_config
    from est_lite_cpython.ca import LocalCA

    cfg = load_config(None, data_dir=d)
    ca = LocalCA(d)
    warnings, error = check_lifetimes(cfg, ca)
    ca.store.close()
    assert error is None and warnings == [], (warnings, error)
    tls = x509.load_pem_x509_certificate(open(os.path.join(d, "server.pem"), "rb").read())
    san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["est.example"]
    assert tls.subject.rfc4514_string() == "CN=est.example"
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_serve_warns_about_a_ca_or_tls_certificate_close_to_expiry(tmp_path):
    from est_lite_cpython.ca import LocalCA
    from est_lite_cpython.cli_serve import check_lifetimes
    from est_lite_cpython.config import load_config

    d = _old_ca(tmp_path, age_days=9, days=20)  # CA and TLS certificate: 11 days left
    cfg = load_config(None, data_dir=d)
    ca = LocalCA(d)
    warnings, error = check_lifetimes(cfg, ca)
    ca.store.close()
    assert error is None
    assert len(warnings) == 2, warnings
    assert "certificates issued from now on end then" in warnings[0] and ("(in 10 days)" in warnings[0] or "(in 11 days)" in warnings[0])
    assert "TLS server certificate" in warnings[1] and "renew it before then: est-lite ca issue" in warnings[1]


def test_ca_init_lifetimes(tmp_path):
    """What ca init gives: a CA of 3650 days, a TLS certificate of 825."""
    from est_lite_cpython.ca import init_ca

    ca = init_ca(str(tmp_path / "ca"))
    tls = x509.load_pem_x509_certificate(open(str(tmp_path / "ca" / "server.pem"), "rb").read())
    life = lambda c: (c.not_valid_after_utc - c.not_valid_before_utc).total_seconds() / 86400  # noqa: E731
    assert round(life(ca.root)) == 3650
    assert round(life(tls)) == 825
    ca.store.close()


def test_a_stale_vendor_crl_is_said_at_start(est_server_factory, tmp_path):
    """A trust set's CRL past its nextUpdate: still used (what it lists
    stays revoked), and serve says at start that it is stale."""
    from est_lite_cpython.cli_serve import check_lifetimes

    probe = est_server_factory()
    v = probe.vendor
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(v["cert"].subject)
           .last_update(now - datetime.timedelta(days=10)).next_update(now - datetime.timedelta(days=3))
           .sign(v["key"], hashes.SHA256()))
    p = tmp_path / "vendor-crl.pem"
    p.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    srv = est_server_factory(extra_toml='\n[trust.stale]\ncerts = ["vendor.pem"]\ncrls = ["%s"]\n' % p)
    warnings, error = check_lifetimes(srv.config, srv.ca)
    assert error is None
    assert any("past its nextUpdate" in w and "trust set stale" in w for w in warnings), warnings


# ---------------------------------------------------------------- 3. authentication

def _identity(srv, name, key, cert):
    from helpers_server import write_identity

    return write_identity(srv.tmp, name, key, cert)


def _issue_from_ca(srv, cn, eku, *, label="", sans=(), ku=None):
    key = ec.generate_private_key(ec.SECP256R1())
    c = srv.ca.issue_raw(key.public_key(), x509.Name([_cn(cn)]), eku=eku, label=label, sans=sans, days=30)
    return key, c


def test_a_server_certificate_of_this_ca_is_not_a_client_certificate(est_server):
    """Before: any certificate of this CA authenticated simpleenroll and
    simplereenroll, the EST server's own TLS certificate (serverAuth) and
    a profile's serverAuth-only certificates included, so whoever holds a
    web server's key certified by this CA could enroll devices and renew
    that name as a client. Now a client certificate whose
    extendedKeyUsage lacks clientAuth is not trusted as one."""
    srv = est_server
    k, c = _issue_from_ca(srv, "web-1", ("serverAuth",))
    cp, kp = _identity(srv, "web", k, c)
    own = (os.path.join(srv.data_dir, "server.pem"), os.path.join(srv.data_dir, "server.key"))
    n = srv.ca.store.count_certificates()
    for cert, key in ((cp, kp), own):
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("web-1")[1], cert=cert, key=key)
        assert r.status in (401, 403) and "clientAuth" in r.text, (r.status, r.text)
        r = srv.request("POST", srv.path("simplereenroll"), make_csr("web-1")[1], cert=cert, key=key)
        assert r.status == 403 and "clientAuth" in r.text, (r.status, r.text)
    assert srv.ca.store.count_certificates() == n
    # a client certificate of the same CA still works, with or without an EKU
    for eku in (("clientAuth",), ()):
        k, c = _issue_from_ca(srv, "dev-eku", eku)
        cp, kp = _identity(srv, "dev", k, c)
        r = srv.request("POST", srv.path("simplereenroll"), make_csr("dev-eku", k)[1], cert=cp, key=kp)
        assert r.status == 200, r.text


def test_a_password_still_works_next_to_a_server_certificate(est_server):
    """The refused certificate does not spoil a valid password on an
    enrollment (the certificate is just not an identity)."""
    srv = est_server
    k, c = _issue_from_ca(srv, "web-2", ("serverAuth",))
    cp, kp = _identity(srv, "web2", k, c)
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("dev-pw")[1], cert=cp, key=kp, auth=AUTH)
    assert r.status == 200, r.text
    assert r.certs()[0].subject.rfc4514_string() == "CN=dev-pw"


def test_basic_unknown_user_costs_what_a_wrong_password_costs(tmp_path, monkeypatch):
    """User enumeration: the answer is the same ('wrong user name or
    password', tested in test_server_badinput), and so is the work: an
    unknown user runs PBKDF2 as a wrong password does (it returned at
    once, a timing oracle of 100,000 iterations)."""
    from est_lite_cpython import auth

    pw = auth.PasswordFile(str(tmp_path / "passwords"), iterations=1000)
    pw.set_password("alice", "s3cret")
    calls = []
    real = auth._pbkdf2
    monkeypatch.setattr(auth, "_pbkdf2", lambda p, s, i: calls.append(i) or real(p, s, i))
    assert not pw.check("alice", "wrong")
    assert not pw.check("mallory", "wrong")
    assert calls == [1000, 1000], calls
    assert pw.check("alice", "s3cret")


@pytest.mark.parametrize("raw, reason", [
    (b"alice:\xff\xfe", "malformed HTTP Basic"),
    (b"alice:", "wrong user name or password"),
    (b":s3cret", "wrong user name or password"),
    (b"alice\x00:s3cret", "control character"),
    (b"alice:s3cret\x00", "control character"),  # PBKDF2-HMAC pads the key with NULs: this matched s3cret
    (b"alice:s3cret\x7f", "control character"),
    (b"alice\x1b:s3cret", "control character"),
])
def test_basic_odd_credentials_are_refused(est_server, raw, reason):
    srv = est_server
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("odd")[1],
                    headers={"Authorization": "Basic " + base64.b64encode(raw).decode()})
    assert r.status == 401 and reason in r.text, (r.status, r.text)
    assert any(v.startswith("Digest ") for v in r.headers_all("www-authenticate"))


# -- Digest (RFC 7616), with the server's own challenges

def _challenge(srv, alg="SHA-256", path=None):
    from est_lite_cpython.auth import parse_auth_params

    r = srv.request("POST", path or srv.path("simpleenroll"), make_csr("probe")[1])
    assert r.status == 401
    for v in r.headers_all("www-authenticate"):
        if v.startswith("Digest ") and ("algorithm=%s" % alg) in v:
            return parse_auth_params(v[len("Digest "):]), r
    raise AssertionError(r.headers)


def _digest(srv, params, uri, *, path=None, user=USER, password=PASSWORD, nc=1, cnonce="c0ffee", edit=None):
    from est_lite_cpython.auth import digest_response

    h = digest_response(params, user, password, "POST", uri, cnonce=cnonce, nc=nc)
    if edit:
        h = edit(h)
    return srv.request("POST", path or uri, make_csr("dig-%d" % nc)[1], headers={"Authorization": h})


def test_digest_valid_then_replayed_nc(est_server):
    srv = est_server
    params, _ = _challenge(srv)
    uri = srv.path("simpleenroll")
    assert _digest(srv, params, uri).status == 200
    r = _digest(srv, params, uri)  # the same nonce and nc again
    assert r.status == 401 and "nc replayed" in r.text, r.text
    assert _digest(srv, params, uri, nc=2).status == 200


def test_digest_response_for_another_label_is_not_accepted_here(est_server):
    """Label switching: a response computed (by the legitimate client) for
    /.well-known/est/manual/simpleenroll, replayed on the default label's
    path with its uri left as it was or changed, is refused."""
    srv = est_server
    params, _ = _challenge(srv)
    other = srv.path("simpleenroll", "manual")
    r = _digest(srv, params, other, path=srv.path("simpleenroll"))
    assert r.status == 401 and "uri does not match" in r.text, r.text
    r = _digest(srv, params, other, path=srv.path("simpleenroll"),
                edit=lambda h: h.replace('uri="%s"' % other, 'uri="%s"' % srv.path("simpleenroll")))
    assert r.status == 401 and "wrong user name or password" in r.text, r.text


def test_digest_nonce_of_another_server_or_start_is_refused(est_server_factory):
    a = est_server_factory()
    b = est_server_factory()
    params, _ = _challenge(a)
    r = _digest(b, params, b.path("simpleenroll"))
    assert r.status == 401 and "opaque value is not ours" in r.text, r.text
    params = dict(params, opaque=_challenge(b)[0]["opaque"])  # b's opaque, a's nonce
    r = _digest(b, params, b.path("simpleenroll"))
    assert r.status == 401 and "nonce was not issued by this server" in r.text, r.text


def test_digest_stale_nonce_gets_a_new_challenge(est_server):
    srv = est_server
    params, _ = _challenge(srv)
    d = srv.server.digest
    real = d.clock
    d.clock = lambda: real() + d.lifetime_s + 5
    try:
        r = _digest(srv, params, srv.path("simpleenroll"))
    finally:
        d.clock = real
    assert r.status == 401 and "expired" in r.text, r.text
    assert any("stale=true" in v for v in r.headers_all("www-authenticate")), r.headers


@pytest.mark.parametrize("edit, reason", [
    (lambda h: h.replace(", qop=auth", ""), "without qop"),
    (lambda h: h.replace(", qop=auth", ", qop=auth-int"), "qop"),
    (lambda h: h.replace('realm="est-lite"', 'realm="other"'), "realm"),
    (lambda h: h.replace("algorithm=SHA-256", "algorithm=SHA-512-256"), "not supported"),
    (lambda h: h.replace('username="alice"', 'username="alice", userhash=true'), None),
    (lambda h: h.replace('username="alice"', 'username="%s"' % __import__("hashlib").sha256(
        b"alice:est-lite").hexdigest()) + ", userhash=true", "wrong user name or password"),
])
def test_digest_malformed_or_downgraded_answers_are_refused(est_server, edit, reason):
    srv = est_server
    params, _ = _challenge(srv)
    r = _digest(srv, params, srv.path("simpleenroll"), edit=edit)
    if reason is None:  # userhash=true with the plain name: the response still binds the name
        assert r.status in (200, 401), r.text
        return
    assert r.status == 401 and reason in r.text, r.text


def test_digest_md5_answer_to_the_sha256_challenge_is_accepted(est_server):
    """Both algorithms are offered with one nonce; a client may answer
    MD5 (RFC 7616 keeps it for old clients): documented, not a downgrade
    an attacker inside TLS could force."""
    srv = est_server
    params, _ = _challenge(srv, "SHA-256")
    params = dict(params, algorithm="MD5")
    assert _digest(srv, params, srv.path("simpleenroll")).status == 200


def test_digest_on_a_cert_only_label_is_refused(est_server):
    srv = est_server
    params, _ = _challenge(srv)
    uri = srv.path("simpleenroll", "certonly")
    r = _digest(srv, params, uri)
    assert r.status == 403 and "digest authentication is not accepted" in r.text, r.text


# -- re-enroll

def _enrolled(srv, cn, label=None, *, org=None, sans=()):
    """(key, cert, cert file, key file) of a certificate enrolled with Basic on label."""
    key, der = make_csr(cn, org=org, sans=sans)
    r = srv.request("POST", srv.path("simpleenroll", label), der, auth=AUTH)
    assert r.status == 200, r.text
    c = r.certs()[0]
    cp, kp = _identity(srv, cn, key, c)
    return key, c, cp, kp


def test_reenroll_on_another_label_than_the_one_that_issued_it(est_server):
    """Before: a certificate enrolled on the default label (clientAuth,
    90 days) renewed on 'strict' (clientAuth + serverAuth, Basic-only
    enrollment) got strict's certificate without strict's credentials.
    A renewal now happens on the label that issued the certificate."""
    srv = est_server
    key, c, cp, kp = _enrolled(srv, "hop-1", org="ACME", sans=["hop-1.example.com"])
    n = srv.ca.store.count_certificates()
    r = srv.request("POST", srv.path("simplereenroll", "strict"),
                    make_csr("hop-1", key, org="ACME", sans=["hop-1.example.com"])[1], cert=cp, key=kp)
    assert r.status == 403 and "issued for" in r.text, (r.status, r.text)
    assert srv.ca.store.count_certificates() == n
    r = srv.request("POST", srv.path("simplereenroll"),
                    make_csr("hop-1", key, org="ACME", sans=["hop-1.example.com"])[1], cert=cp, key=kp)
    assert r.status == 200, r.text


def test_reenroll_with_an_idevid_where_only_operational_certificates_renew(est_server):
    from helpers_server import issue_cert

    srv = est_server
    k, c = issue_cert(srv.vendor["cert"], srv.vendor["key"], "idev-1")
    cp, kp = _identity(srv, "idev", k, c)
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("idev-1", k)[1], cert=cp, key=kp)
    assert r.status == 200, r.text  # the IDevID may enroll (client_cert_trust)
    r = srv.request("POST", srv.path("simplereenroll"), make_csr("idev-1", k)[1], cert=cp, key=kp)
    assert r.status == 403 and "not issued by a CA trusted" in r.text, r.text


def test_reenroll_subject_rules(est_server):
    """The subject compares as X.500 names: the same RDNs in the same
    order, whatever string type (PrintableString vs UTF8String: accepted,
    the new certificate carries the CSR's encoding); another RDN order or
    a changed SAN is refused."""
    srv = est_server
    key, c, cp, kp = _enrolled(srv, "enc-1", org="ACME", sans=["enc-1.example.com"])
    san = _san(x509.DNSName("enc-1.example.com"))
    printable = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME", _type=_T.PrintableString),
                           _cn("enc-1", _T.PrintableString)])
    r = srv.request("POST", srv.path("simplereenroll"), _csr(printable, san, key)[1], cert=cp, key=kp)
    assert r.status == 200, r.text
    swapped = x509.Name([_cn("enc-1"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME")])
    r = srv.request("POST", srv.path("simplereenroll"), _csr(swapped, san, key)[1], cert=cp, key=kp)
    assert r.status == 400 and "keep the subject" in r.text, r.text
    orig = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACME"), _cn("enc-1")])
    r = srv.request("POST", srv.path("simplereenroll"),
                    _csr(orig, _san(x509.DNSName("enc-1.example.com"), x509.DNSName("other.example.com")), key)[1],
                    cert=cp, key=kp)
    assert r.status == 400 and "subjectAltName" in r.text, r.text


# ---------------------------------------------------------------- 4. PoP linking

def _basic():
    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % AUTH).encode()).decode()}


@pytest.mark.parametrize("ver", ["1.2", "1.3"])
def test_the_server_never_resumes_a_session(est_server, ver):
    """tls-unique over a resumed TLS 1.2 session is the triple-handshake
    hole: the server offers no resumption at all (no tickets, no session
    cache), so every connection is a full handshake."""
    import socket

    from helpers_server import Response

    srv = est_server
    ctx = srv.tls_client_context(version=ver)
    sess = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost", session=sess) as t:
                t.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert Response.read(t).status == 200
                assert not t.session_reused
                sess = t.session


def _pyopenssl_12(srv, *, ems=True):
    import socket
    import struct

    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.load_verify_locations(srv.root_pem)
    if not ems:
        ctx.set_options(0x1)  # SSL_OP_NO_EXTENDED_MASTER_SECRET
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.settimeout(None)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    c = SSL.Connection(ctx, s)
    c.set_tlsext_host_name(b"localhost")
    c.set_connect_state()
    c.do_handshake()
    return c, s


def test_renegotiation_is_refused(est_server):
    """A TLS 1.2 client that renegotiates (a new handshake, a new
    tls-unique, on the same connection) gets OpenSSL's no_renegotiation."""
    from OpenSSL import SSL

    c, s = _pyopenssl_12(est_server)
    try:
        assert c.renegotiate()
        with pytest.raises(SSL.Error, match="no renegotiation"):
            c.do_handshake()
            c.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n")
            c.recv(100)
    finally:
        s.close()


def test_tls_unique_without_extended_master_secret_is_no_binding(est_server):
    """Before: a TLS 1.2 connection without the extended master secret
    (RFC 7627) still gave tls-unique, the binding RFC 9266 says not to
    trust there. Now it has none: a PoP-required label refuses the client
    with the reason; with EMS the same request passes."""
    from OpenSSL._util import lib

    from helpers_server import Response

    srv = est_server
    for ems in (False, True):
        c, s = _pyopenssl_12(srv, ems=ems)
        try:
            assert lib.SSL_get_extms_support(c._ssl) == (1 if ems else 0)
            key = ec.generate_private_key(ec.SECP256R1())
            _, der = make_csr("ems-%d" % ems, key, challenge=base64.b64encode(c.get_finished()).decode())
            body = base64.encodebytes(der)
            h = "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n%s\r\n" % (
                srv.path("simpleenroll", "pop"), len(body), "".join("%s: %s\r\n" % kv for kv in _basic().items()))
            c.sendall(h.encode() + body)
            chunks = []
            while True:
                try:
                    d = c.recv(65536)
                except Exception:  # noqa: BLE001 - close_notify / EOF end the answer
                    break
                if not d:
                    break
                chunks.append(d)
        finally:
            s.close()
        r = Response.parse(b"".join(chunks))
        if ems:
            assert r.status == 200, r.text
        else:
            assert r.status == 403 and "extended master secret" in r.text, (r.status, r.text)


def _pop_csr(binding, attr_der):
    from est_lite_cpython.ca import _tlv

    del binding
    return _raw_csr(ec.generate_private_key(ec.SECP256R1()), x509.Name([_cn("pop-odd")]).public_bytes(), attr_der)


def _cp_attr(*values):
    from est_lite_cpython.ca import _tlv

    return _tlv(0x30, bytes.fromhex("06092a864886f70d010907") + _tlv(0x31, b"".join(values)))


def _svc_pop(srv, der, binding):
    try:
        srv.service.simpleenroll("pop", der, _ctx(tls_unique=binding, tls_version="TLSv1.2"))
        return None
    except EstError as e:
        return e


def test_challenge_password_odd_forms(est_server):
    """The binding in other string types (PrintableString, IA5String,
    BMPString of the same text, or an OCTET STRING of its bytes) is still
    the binding: accepted. Two challengePassword attributes, two values
    in one, an empty one or an INTEGER: refused (400 or 403), never a 500,
    never the right value picked from a wrong one."""
    from est_lite_cpython.ca import _tlv

    srv = est_server
    b = os.urandom(12)
    good = base64.b64encode(b)
    for tag, v in ((0x13, good), (0x16, good), (0x04, good)):
        assert _svc_pop(srv, _pop_csr(b, _cp_attr(_tlv(tag, v))), b) is None, tag
    n = srv.ca.store.count_certificates()
    for attrs in (_cp_attr(_tlv(0x0C, b"bad")) + _cp_attr(_tlv(0x0C, good)),
                  _cp_attr(_tlv(0x0C, good)) + _cp_attr(_tlv(0x0C, b"bad")),
                  _cp_attr(_tlv(0x0C, b"bad"), _tlv(0x0C, good)),
                  _cp_attr(),
                  _cp_attr(_tlv(0x02, b"\x01")),
                  _cp_attr(_tlv(0x0C, good + b"\x00"))):
        e = _svc_pop(srv, _pop_csr(b, attrs), b)
        assert isinstance(e, EstError) and e.http_status in (400, 403), (attrs, e)
    assert srv.ca.store.count_certificates() == n


def test_challenge_password_on_a_label_without_required_pop(est_server):
    """pop = "if-present" (the default): a challengePassword that is not
    this connection's binding is refused even though PoP is optional."""
    srv = est_server
    _, der = make_csr("opt-pop", challenge=base64.b64encode(b"\x00" * 12).decode())
    e = None
    try:
        srv.service.simpleenroll(None, der, _ctx(tls_unique=b"\x01" * 12, tls_version="TLSv1.2"))
    except EstError as err:
        e = err
    assert e is not None and e.http_status == 403 and "PoP linking failed" in e.msg


# ---------------------------------------------------------------- 5. serverkeygen

def test_serverkeygen_key_is_not_logged_or_stored(est_server, caplog):
    """At DEBUG, the key the server generated for a client appears in no
    log record and in no file of the data directory (ca.db and its WAL
    included); it goes only to the authenticated connection."""
    import logging

    from helpers_server import parse_multipart

    srv = est_server
    caplog.set_level(logging.DEBUG)
    r = srv.request("POST", srv.path("serverkeygen"), make_csr("skg-1")[1], auth=AUTH)
    assert r.status == 200, r.text
    p8 = parse_multipart(r)["application/pkcs8"]
    key = serialization.load_der_private_key(p8, None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    forms = [p8, scalar, base64.b64encode(p8), base64.b64encode(scalar), scalar.hex().encode(), p8.hex().encode(),
             key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).split(b"\n")[1]]
    logged = "\n".join(rec.getMessage() for rec in caplog.records).encode()
    assert logged  # the request was logged at all
    for f in forms:
        assert f not in logged
    for root, _, files in os.walk(srv.tmp):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                data = fh.read()
            for f in forms:
                assert f not in data, (name, f[:8])
    # without credentials: no key
    r = srv.request("POST", srv.path("serverkeygen"), make_csr("skg-2")[1])
    assert r.status == 401 and b"PRIVATE" not in r.body and "application/pkcs8" not in (r.header("content-type") or "")


def test_ra_renewal_on_another_label_is_refused(est_server_factory):
    """An RA renews the subject's newest certificate on the label that
    issued it only (a device enrolled on ra1 is not renewed on ra2 with
    ra2's profile); on ra1 the same request passes."""
    srv = est_server_factory(extra_toml="""
        [profiles.ra1]
        ra_trust = ["ca"]
        [profiles.ra2]
        ra_trust = ["ca"]
        eku = ["clientAuth", "serverAuth"]
        """)
    key, der = make_csr("ra-dev-1")
    assert srv.request("POST", srv.path("simpleenroll", "ra1"), der, auth=AUTH).status == 200
    k, c = _issue_from_ca(srv, "ra-x", ("clientAuth", "cmcRA"))
    cp, kp = _identity(srv, "ra-x", k, c)
    n = srv.ca.store.count_certificates()
    r = srv.request("POST", srv.path("simplereenroll", "ra2"), make_csr("ra-dev-1", key)[1], cert=cp, key=kp)
    assert r.status == 403 and "issued for label 'ra1'" in r.text, (r.status, r.text)
    assert srv.ca.store.count_certificates() == n
    r = srv.request("POST", srv.path("simplereenroll", "ra1"), make_csr("ra-dev-1", key)[1], cert=cp, key=kp)
    assert r.status == 200, r.text


def test_csr_key_encodings(srv):
    """A P-256 point off the curve: 400. A compressed point: the
    certificate carries the same key, uncompressed, on both paths."""
    from est_lite_cpython.ca import _tlv

    k = ec.generate_private_key(ec.SECP256R1())
    pub = k.public_key()
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    off = spki[:-1] + bytes([spki[-1] ^ 1])
    comp = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    out = []
    for sp in (off, comp):
        info = _tlv(0x30, b"\x02\x01\x00" + x509.Name([_cn("pt-1")]).public_bytes() + sp + _tlv(0xA0, b""))
        sig = k.sign(info, ec.ECDSA(hashes.SHA256()))
        out.append(_enroll(srv, _tlv(0x30, info + bytes.fromhex("300a06082a8648ce3d040302") + _tlv(0x03, b"\x00" + sig))))
    assert isinstance(out[0], EstError) and out[0].http_status == 400, out[0]
    assert isinstance(out[1], x509.Certificate) and out[1].public_key() == pub, out[1]


@pytest.fixture(params=["der", "builder"])
def nosubj(request, est_server_factory):
    s = est_server_factory(extra_toml="""
        [profiles.nosubj]
        subject_required = []
        """)
    if request.param == "builder":
        s.ca._fast = False
    return s


def test_empty_subject_needs_a_critical_san(nosubj):
    """A label that requires no subject field: an empty subject without a
    SAN was issued (a certificate naming nothing); with a SAN it was
    issued with the SAN non-critical. RFC 5280 4.1.2.6 / 4.2.1.6: refused,
    and critical."""
    n = nosubj.ca.store.count_certificates()
    _, der = _csr(x509.Name([]))
    e = _enroll(nosubj, der, "nosubj")
    assert isinstance(e, EstError) and e.http_status == 400 and "empty subject" in e.msg, e
    assert nosubj.ca.store.count_certificates() == n
    _, der = _csr(x509.Name([]), _san(x509.DNSName("anon-1.example.com")))
    c = _enroll(nosubj, der, "nosubj")
    assert isinstance(c, x509.Certificate), c
    assert len(c.subject) == 0
    assert c.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical is True
    _, der = _csr(x509.Name([_cn("named-1")]), _san(x509.DNSName("named-1.example.com")))
    c = _enroll(nosubj, der, "nosubj")
    assert c.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical is False


def test_renewal_on_another_label_with_manual_approval_is_refused_too(est_server):
    """Manual approval on the other label does not make a cross-label
    renewal acceptable: 403 at once, no request for the operator."""
    srv = est_server
    key, c, cp, kp = _enrolled(srv, "to-manual-1")
    n = srv.ca.store.count_certificates()
    r = srv.request("POST", srv.path("simplereenroll", "manual"), make_csr("to-manual-1", key)[1], cert=cp, key=kp)
    assert r.status == 403 and "issued for the default label" in r.text, (r.status, r.text)
    assert srv.ca.store.count_certificates() == n
    assert srv.ca.store.list_requests() == []
