"""EstService's CSR fast path (service.csr_slices): the subject and key DER
it slices from a CSR, and the RFC 4514 text it writes, must be exactly what
cryptography's objects give (csr.subject.public_bytes(), rfc4514_string(),
public_key().public_bytes()); any CSR outside the common shape must return
None (cryptography's path), never something different. The certificate
issued through the slices must be byte for byte the builder's."""

import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite_cpython import service as svc_mod
from est_lite_cpython.ca import IssueRequest, init_ca

_KEY = ec.generate_private_key(ec.SECP256R1())
_ALG = hashes.SHA256()
_OIDS = [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COUNTRY_NAME,
         NameOID.STATE_OR_PROVINCE_NAME, NameOID.LOCALITY_NAME, NameOID.SERIAL_NUMBER, NameOID.EMAIL_ADDRESS,
         NameOID.DOMAIN_COMPONENT, NameOID.USER_ID, NameOID.STREET_ADDRESS, NameOID.TITLE,
         NameOID.PSEUDONYM, x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")]
_TYPES = [x509.name._ASN1Type.UTF8String, x509.name._ASN1Type.PrintableString, x509.name._ASN1Type.IA5String,
          x509.name._ASN1Type.BMPString, x509.name._ASN1Type.T61String]


def _csr(name, key=_KEY, *, sans=(), challenge=None, attrs=()):
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    if challenge is not None:
        b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge)
    for oid, v in attrs:
        b = b.add_attribute(oid, v)
    return b.sign(key, _ALG).public_bytes(serialization.Encoding.DER)


def _check(der):
    """csr_slices(der) agrees with cryptography wherever it answers."""
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    sl = svc_mod.csr_slices(der)
    if sl is None:
        return None
    subject_der, text, oids, spki, kt, no_attrs = sl
    assert subject_der == csr.subject.public_bytes()
    assert text == csr.subject.rfc4514_string()
    assert oids == {svc_mod._oid(a.oid.dotted_string) for a in csr.subject}
    assert spki == csr.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    assert kt == svc_mod.key_type(csr.public_key())
    assert no_attrs == (len(list(csr.attributes)) == 0)
    if no_attrs:
        with pytest.raises(x509.ExtensionNotFound):
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sl


def test_common_device_csr_is_sliced():
    der = _csr(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
    sl = _check(der)
    assert sl is not None and sl[1] == "CN=dev-1,O=acme" and sl[4] == "ec:P-256" and sl[5] is True


@pytest.mark.parametrize("curve,kt", [(ec.SECP256R1(), "ec:P-256"), (ec.SECP384R1(), "ec:P-384"),
                                      (ec.SECP521R1(), "ec:P-521")])
def test_ec_curves(curve, kt):
    sl = _check(_csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")]), ec.generate_private_key(curve)))
    assert sl[4] == kt


def test_other_shapes_take_cryptographys_path():
    cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])
    # RSA and other curves: no fixed SPKI prefix
    assert _check(_csr(cn, rsa.generate_private_key(public_exponent=65537, key_size=2048))) is None
    assert _check(_csr(cn, ec.generate_private_key(ec.SECP256K1()))) is None
    # text that needs escaping, spaces at the ends, non-ASCII, empty, multi-valued RDN, other string types
    for v in ("a,b", "a+b", " lead", "trail ", "#x", "caf\u00e9", 'q"', "a;b", "a<b", "a\\b"):
        assert _check(_csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, v)]))) is None, v
    multi = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                                                       x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])])
    assert _check(_csr(multi)) is None
    bmp = x509.NameAttribute(NameOID.COMMON_NAME, "b", _type=x509.name._ASN1Type.BMPString)
    assert _check(_csr(x509.Name([bmp]))) is None
    assert _check(_csr(x509.Name([x509.NameAttribute(NameOID.TITLE, "boss")]))) is None  # no short name known here
    # attributes present: sliced, but no_attrs is False (the service then asks cryptography)
    assert _check(_csr(cn, sans=["d.example"]))[5] is False
    assert _check(_csr(cn, challenge=b"pw"))[5] is False


def test_malformed_bytes_never_raise():
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")]))
    for n in range(len(der)):
        svc_mod.csr_slices(der[:n])  # None or a tuple, never an exception
    for i in range(len(der)):
        for b in (0x00, 0x7F, 0x80, 0x81, 0x82, 0xFF):
            svc_mod.csr_slices(der[:i] + bytes([b]) + der[i + 1:])
    assert svc_mod.csr_slices(b"") is None


# mostly values the fast path takes, some it must refuse
_VALUE = st.one_of(st.text(st.sampled_from("abcXYZ019 '()-./:=?_@"), min_size=1, max_size=12),
                   st.text(st.sampled_from("abcXYZ019 '()-./:=?_@,+#;<>\"\\\u00e9\x00"), min_size=1, max_size=12))
_COMMON = st.tuples(st.sampled_from(_OIDS[:11]), st.sampled_from(_TYPES[:3]), _VALUE)
_ANY = st.tuples(st.sampled_from(_OIDS), st.sampled_from(_TYPES), _VALUE)


@settings(max_examples=300, deadline=None)
@given(rdns=st.lists(st.one_of(_COMMON, _COMMON, _ANY), max_size=5))
def test_slices_match_cryptography(rdns):
    attrs = []
    for oid, typ, v in rdns:
        if oid == NameOID.COUNTRY_NAME:
            v = (v + "xx")[:2]
        if typ in (x509.name._ASN1Type.PrintableString, x509.name._ASN1Type.IA5String) and not v.isascii():
            typ = x509.name._ASN1Type.UTF8String
        try:
            attrs.append(x509.NameAttribute(oid, v, _type=typ))
        except ValueError:  # e.g. a 2-character country name of 3 UTF-8 bytes
            return
    try:
        der = _csr(x509.Name(attrs))
    except ValueError:  # a value cryptography will not encode in that string type
        return
    _check(der)


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    c = init_ca(str(tmp_path_factory.mktemp("sl") / "ca"), intermediate=True)
    yield c
    c.store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cn=st.text(st.sampled_from("abcXYZ019-._@"), min_size=1, max_size=20),
       curve=st.sampled_from([ec.SECP256R1(), ec.SECP384R1()]))
def test_issued_from_slices_equals_builder(ca, monkeypatch, cn, curve):
    """The TBSCertificate from the slices (LocalCA.issue_der with the DER
    hints, no key or Name objects) is the builder's for the same fields."""
    key = ec.generate_private_key(curve)
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key)
    csr = x509.load_der_x509_csr(der)
    sl = _check(der)
    assert sl is not None
    fixed = os.urandom(20)
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: fixed if n == 20 else real(n))
    nb = 1700000000
    serial, got, text = ca._issue_der(None, None, [], ("clientAuth",), nb, nb + 86400, spki_der=sl[3],
                                      subject_der=sl[0], subject_text=sl[1])
    ref = ca._issue_builder(csr.public_key(), csr.subject, [], ("clientAuth",), nb, nb + 86400)
    monkeypatch.undo()
    cert = x509.load_der_x509_certificate(got)
    assert cert.tbs_certificate_bytes == ref.tbs_certificate_bytes
    assert cert.public_bytes(serialization.Encoding.DER) == got
    assert text == ref.subject.rfc4514_string()
    cert.verify_directly_issued_by(ca.issuer)


def test_issue_request_builds_objects_on_demand(ca):
    """A backend reading req.public_key / req.subject (the proxy's upstream
    CA, a custom backend) gets the cryptography objects from the DER hints."""
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lazy")]))
    csr = x509.load_der_x509_csr(der)
    sl = svc_mod.csr_slices(der)
    req = IssueRequest(None, None, csr=csr, spki_der=sl[3], subject_der=sl[0], subject_text=sl[1])
    assert req.public_key == csr.public_key()
    assert req.subject == csr.subject
    # builder path of LocalCA (fast=False) from such a request
    c = ca.issue_raw(None, None, fast=False, _req=req, spki_der=sl[3], subject_der=sl[0], subject_text=sl[1])
    assert c.subject == csr.subject and c.public_key() == csr.public_key()
    # issue / issue_der from the hints: same certificate fields
    d = x509.load_der_x509_certificate(ca.issue_der(req))
    c2 = ca.issue(req)
    for c in (d, c2):
        assert c.subject == csr.subject and c.public_key() == csr.public_key()
        assert ca.store.get_certificate(c.serial_number) == c.public_bytes(serialization.Encoding.DER)
    # setting the fields drops the hints
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    req.public_key = other
    req.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "set")])
    assert req.spki_der is None and req.subject_der is None and req.subject_text is None
    c3 = ca.issue(req)
    assert c3.public_key() == other and c3.subject.rfc4514_string() == "CN=set"


def test_overridden_issue_is_honoured(tmp_path):
    """EstService asks LocalCA.issue_der for the DER; a LocalCA subclass (or
    instance) that replaces issue() must still be the one that issues."""
    from est_lite_cpython.ca import LocalCA

    seen = []

    class Logging(LocalCA):
        def issue(self, req):
            seen.append(req.subject.rfc4514_string())
            return super().issue(req)

    init_ca(str(tmp_path / "ca")).store.close()
    ca = Logging(str(tmp_path / "ca"))
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sub")]))
    sl = svc_mod.csr_slices(der)
    req = IssueRequest(None, None, csr=x509.load_der_x509_csr(der), spki_der=sl[3], subject_der=sl[0],
                       subject_text=sl[1])
    got = x509.load_der_x509_certificate(ca.issue_der(req))
    assert seen == ["CN=sub"] and got.subject.rfc4514_string() == "CN=sub"
    plain = LocalCA(str(tmp_path / "ca"))
    plain.issue = lambda r: seen.append("instance") or LocalCA.issue(plain, r)
    plain.issue_der(req)
    assert seen[-1] == "instance"
    plain.store.close()
    ca.store.close()


def _profile(**kw):
    from est_lite_cpython.config import Profile

    return Profile("", **kw)


def test_signature_parts_match_cryptography():
    keys = [_KEY, ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(public_exponent=65537,
                                                                                     key_size=2048)]
    for key in keys:
        for kw in ({}, {"sans": ["a.example"]}, {"challenge": b"pw"}):
            der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sig")]), key, **kw)
            csr = x509.load_der_x509_csr(der)
            info, alg, sig = svc_mod.csr_signature_parts(der)
            assert info == csr.tbs_certrequest_bytes and sig == csr.signature
            assert alg == svc_mod._tlv(0x30, svc_mod._oid(csr.signature_algorithm_oid.dotted_string)) or \
                not isinstance(key, ec.EllipticCurvePrivateKey)
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sig")]))
    assert svc_mod.csr_signature_parts(der + b"\x00") is None  # not exactly one element
    for n in range(len(der)):
        svc_mod.csr_signature_parts(der[:n])  # never raises


def _resign_free_tamper(der, old, new):
    assert der.count(old) == 1 and len(old) == len(new)
    return der.replace(old, new)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_fast_signature_check_rejects_what_cryptography_rejects(curve):
    """The signature check from the slices (EC keys, ecdsa-with-SHA*)
    accepts a good CSR and rejects a changed subject, a changed signature
    and a point off the curve with the messages the service always gave."""
    from est_lite.errors import RemoteProtocolError

    svc = svc_mod.EstService.__new__(svc_mod.EstService)  # only the CSR checks are used
    prof = _profile(key_types=["ec:P-256", "ec:P-384", "ec:P-521"])
    key = ec.generate_private_key(curve)
    der = _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]), key)
    csr, pub, sl = svc._load_csr_slices(prof, der)
    assert pub is None and sl is not None
    bad = [_resign_free_tamper(der, b"dev-1", b"dev-2")]
    info, alg, sig = svc_mod.csr_signature_parts(der)
    # the last byte of s changed: still DER, a wrong signature
    bad.append(der[:-1] + bytes([der[-1] ^ 1]))
    for b in bad:
        assert not x509.load_der_x509_csr(b).is_signature_valid
        with pytest.raises(RemoteProtocolError, match="CSR signature does not verify: the request was not signed"):
            svc._load_csr_slices(prof, b)
    # a point that is not on the curve: cryptography's own words, as before
    spki = sl[3]
    off = _resign_free_tamper(der, spki, spki[:-1] + bytes([spki[-1] ^ 1]))
    with pytest.raises(ValueError) as ref:
        x509.load_der_x509_csr(off).is_signature_valid
    with pytest.raises(RemoteProtocolError) as got:
        svc._load_csr_slices(prof, off)
    assert got.value.msg == "CSR signature cannot be checked: %s" % ref.value


def test_other_signature_algorithms_use_is_signature_valid():
    """ecdsa-with-SHA224 (not in the fast table) and RSA still verify, via
    cryptography's is_signature_valid."""
    svc = svc_mod.EstService.__new__(svc_mod.EstService)
    prof = _profile(key_types=["ec:P-256", "rsa:2048"])
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    der224 = b.sign(_KEY, hashes.SHA224()).public_bytes(serialization.Encoding.DER)
    assert svc_mod.csr_signature_parts(der224)[1] not in svc_mod._ECDSA_BY_ALG
    csr, pub, sl = svc._load_csr_slices(prof, der224)
    assert sl is not None
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr, pub, sl = svc._load_csr_slices(prof, b.sign(r, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    assert sl is None and pub is not None


def test_mutated_csrs_give_est_errors_only(tmp_path):
    """Every one-byte change of a sliceable CSR, through simpleenroll: an
    EstError (400 with its message) or, where the change is outside what is
    signed and still DER, a certificate for exactly the signed request;
    never another exception."""
    from est_lite.errors import EstError

    from est_lite_cpython.config import ServerConfig

    init_ca(str(tmp_path / "ca")).store.close()
    from est_lite_cpython.ca import LocalCA

    ca = LocalCA(str(tmp_path / "ca"))
    cfg = ServerConfig({"profiles": {"default": {"key_types": ["ec:P-256"], "auth": ["basic"]}}},
                       base_dir=str(tmp_path), data_dir=str(tmp_path / "ca"))
    svc = svc_mod.EstService(ca, cfg, authenticator=object())
    der = _csr(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
    ctx = svc_mod.AuthContext("https", http_user="alice", http_scheme="basic")
    from cryptography.hazmat.primitives.serialization import pkcs7

    good = pkcs7.load_der_pkcs7_certificates(svc.simpleenroll(None, der, ctx))[0]
    want = x509.load_der_x509_csr(der)
    assert good.subject == want.subject and good.public_key() == want.public_key()
    issued = errors = 0
    for i in range(len(der)):
        for b in (der[i] ^ 0x01, der[i] ^ 0x80, 0x00, 0xFF):
            if b == der[i]:
                continue
            bad = der[:i] + bytes([b]) + der[i + 1:]
            try:
                p7 = svc.simpleenroll(None, bad, ctx)
            except EstError as e:
                assert e.http_status == 400 and e.msg, (i, b)
                errors += 1
                continue
            cert = pkcs7.load_der_pkcs7_certificates(p7)[0]  # a change cryptography does not see as one
            csr = x509.load_der_x509_csr(bad)
            assert csr.is_signature_valid
            assert cert.subject == csr.subject and cert.public_key() == csr.public_key()
            issued += 1
    assert errors > 3 * len(der)
    ca.store.close()
