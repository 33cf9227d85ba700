"""LocalCA's hand-assembled certificate (ca.LocalCA._issue_der) against the
CertificateBuilder path (_issue_builder): with the same serial and clock
both must produce the same TBSCertificate byte for byte, for every profile
knob (key types, EKU sets, SANs, subjects, validity across 2050, root or
intermediate issuer); the certificate must load in cryptography, verify
under the issuer, pass cryptography's RFC 5280 path validation, and land
in the store with the same row the builder path would write."""

import datetime
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite_cpython import ca as ca_mod
from est_lite_cpython.ca import EKU_BY_NAME, LocalCA, init_ca
from est_lite_cpython.service import EstService
from est_lite_cpython.store import serial_hex

_REAL_URANDOM = os.urandom
_EC = ec.generate_private_key(ec.SECP256R1()).public_key()
_KEYS = {
    "p256": _EC,
    "p384": ec.generate_private_key(ec.SECP384R1()).public_key(),
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    "ed25519": ed25519.Ed25519PrivateKey.generate().public_key(),
}


def _name(*pairs):
    return x509.Name([x509.NameAttribute(oid, v) for oid, v in pairs])


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    root = init_ca(str(d / "root"))
    inter = init_ca(str(d / "inter"), intermediate=True)
    yield {"root": root, "inter": inter}
    root.store.close()
    inter.store.close()


def _pair(ca, monkeypatch, pub, subject, sans=(), eku=("clientAuth",), not_before=None, not_after=None):
    """(hand DER certificate, builder certificate) with the same serial."""
    fixed = os.urandom(20)
    monkeypatch.setattr(os, "urandom", lambda n: fixed if n == 20 else _REAL_URANDOM(n))
    nb = int(ca.clock()) - 60 if not_before is None else not_before
    na = nb + 86400 * 30 if not_after is None else not_after
    serial, der, text = ca._issue_der(pub, subject, list(sans), tuple(eku), nb, na)
    ref = ca._issue_builder(pub, subject, list(sans), tuple(eku), nb, na)
    monkeypatch.undo()
    return serial, der, text, ref


def _check_same(ca, serial, der, text, ref):
    cert = x509.load_der_x509_certificate(der)
    assert cert.public_bytes(serialization.Encoding.DER) == der  # strict DER: re-encodes to the same bytes
    assert cert.tbs_certificate_bytes == ref.tbs_certificate_bytes
    assert cert.serial_number == ref.serial_number == serial
    assert text == ref.subject.rfc4514_string()
    # field by field, in case the TBS comparison above ever gets relaxed
    assert cert.version == ref.version == x509.Version.v3
    assert cert.issuer == ref.issuer == ca.issuer.subject
    assert cert.subject == ref.subject
    assert cert.public_key() == ref.public_key()
    assert cert.not_valid_before_utc == ref.not_valid_before_utc
    assert cert.not_valid_after_utc == ref.not_valid_after_utc
    assert cert.signature_algorithm_oid == ref.signature_algorithm_oid
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert [(e.oid, e.critical, e.value) for e in cert.extensions] == [
        (e.oid, e.critical, e.value) for e in ref.extensions]
    cert.verify_directly_issued_by(ca.issuer)
    return cert


@pytest.mark.parametrize("issuer", ["root", "inter"])
@pytest.mark.parametrize("kind", sorted(_KEYS))
def test_same_tbs_as_builder_for_key_types(cas, monkeypatch, issuer, kind):
    ca = cas[issuer]
    subj = _name((NameOID.ORGANIZATION_NAME, "acme"), (NameOID.COMMON_NAME, "dev-%s" % kind))
    serial, der, text, ref = _pair(ca, monkeypatch, _KEYS[kind], subj)
    cert = _check_same(ca, serial, der, text, ref)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    is_ec = kind.startswith("p")
    assert ku.key_agreement is is_ec and ku.key_encipherment is (not is_ec) and ku.digital_signature


@pytest.mark.parametrize("eku", [(), ("clientAuth",), ("clientAuth", "serverAuth"), tuple(EKU_BY_NAME)])
@pytest.mark.parametrize("sans", [
    (),
    (x509.DNSName("dev.example.com"),),
    (x509.DNSName("a.example.com"), x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
     x509.IPAddress(ipaddress.ip_address("2001:db8::1")), x509.UniformResourceIdentifier("urn:dev:mac:0011"),
     x509.RFC822Name("ops@example.com")),
])
def test_same_tbs_as_builder_for_profiles(cas, monkeypatch, eku, sans):
    ca = cas["root"]
    subj = _name((NameOID.COMMON_NAME, "dev"), (NameOID.SERIAL_NUMBER, "SN-1"))
    serial, der, text, ref = _pair(ca, monkeypatch, _EC, subj, sans, eku)
    cert = _check_same(ca, serial, der, text, ref)
    if eku:
        got = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert got == [EKU_BY_NAME[e] for e in eku]
    else:
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    if sans:
        assert list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == list(sans)


def test_empty_subject_and_generalized_time(cas, monkeypatch):
    """Empty subject (SAN-only certificates) and a notAfter in 2050 or later
    (GeneralizedTime instead of UTCTime, RFC 5280 4.1.2.5)."""
    ca = cas["root"]
    na = int(datetime.datetime(2051, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc).timestamp())
    serial, der, text, ref = _pair(ca, monkeypatch, _EC, x509.Name([]), (x509.DNSName("x.example"),),
                                   not_after=na)
    assert b"\x18\x0f20510304050607Z" in der  # GeneralizedTime
    cert = _check_same(ca, serial, der, text, ref)
    assert cert.not_valid_after_utc.year == 2051
    na = int(datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp())
    serial, der, text, ref = _pair(ca, monkeypatch, _EC, x509.Name([]), (x509.DNSName("x.example"),),
                                   not_after=na)
    assert b"\x17\x0d491231235959Z" in der  # UTCTime
    _check_same(ca, serial, der, text, ref)


# at most 3 UTF-8 bytes a character, 21 characters: within the 64-byte upper bound of CN and O
_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
                min_size=1, max_size=21)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cn=_TEXT, org=st.none() | _TEXT, dns=st.lists(st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){0,3}",
                                                                    fullmatch=True), max_size=4),
       serial=st.integers(min_value=1, max_value=(1 << 159) - 1), days=st.integers(min_value=1, max_value=36500))
def test_same_tbs_as_builder_property(cas, monkeypatch, cn, org, dns, serial, days):
    ca = cas["inter"]
    pairs = [(NameOID.COMMON_NAME, cn)] + ([(NameOID.ORGANIZATION_NAME, org)] if org else [])
    # serials of every length (short ones test the INTEGER encoding); both
    # paths draw int.from_bytes(os.urandom(20)) >> 1
    raw = (serial << 1).to_bytes(20, "big")
    monkeypatch.setattr(os, "urandom", lambda n: raw if n == 20 else _REAL_URANDOM(n))
    nb = 1700000000
    a = ca._issue_der(_EC, _name(*pairs), [x509.DNSName(d) for d in dns], ("clientAuth",), nb, nb + days * 86400)
    b = ca._issue_builder(_EC, _name(*pairs), [x509.DNSName(d) for d in dns], ("clientAuth",), nb, nb + days * 86400)
    monkeypatch.undo()
    assert a[0] == serial
    _check_same(ca, *a, b)


def test_issue_raw_uses_fast_path_and_stores_the_same_row(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    assert ca._fast
    calls = []
    orig = ca._issue_builder
    ca._issue_builder = lambda *a: calls.append(a) or orig(*a)
    subj = _name((NameOID.COMMON_NAME, "row"))
    fast = ca.issue_raw(_EC, subj, days=10, label="lab", requester="user:alice")
    assert calls == []  # the DER path issued it
    slow = ca.issue_raw(_EC, subj, days=10, label="lab", requester="user:alice", fast=False)
    assert len(calls) == 1
    rows = {}
    for c in (fast, slow):
        r = ca.store._db().execute("SELECT label, subject, not_before, not_after, requester, request_id, der "
                                   "FROM certs WHERE serial=?", (serial_hex(c.serial_number),)).fetchone()
        assert bytes(r[6]) == c.public_bytes(serialization.Encoding.DER)
        assert r[2] == int(c.not_valid_before_utc.timestamp()) and r[3] == int(c.not_valid_after_utc.timestamp())
        rows[c is fast] = r[:6]
    assert rows[True] == rows[False] == ("lab", "CN=row", rows[True][2], rows[True][3], "user:alice", None)
    ca.store.close()


def test_path_validation_and_pkcs7(tmp_path):
    """The issued certificate passes cryptography's RFC 5280 client
    verifier (root -> intermediate -> leaf) and the service's certs-only
    PKCS#7 is the bytes cryptography's serializer makes."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    from est_lite_cpython import service as svc_mod

    ca = init_ca(str(tmp_path / "ca"), intermediate=True)
    leaf = ca.issue_raw(_EC, _name((NameOID.COMMON_NAME, "v")), sans=[x509.DNSName("v.example")], days=5)
    store = verification.Store([ca.root])
    verifier = verification.PolicyBuilder().store(store).time(
        datetime.datetime.now(datetime.timezone.utc)).build_client_verifier()
    verified = verifier.verify(leaf, [ca.issuer])
    assert verified.chain[-1] == ca.root
    ders = [leaf.public_bytes(serialization.Encoding.DER)]
    assert svc_mod._pkcs7_der(ders) == pkcs7.serialize_certificates([leaf], serialization.Encoding.DER)
    assert pkcs7.load_der_pkcs7_certificates(svc_mod._pkcs7_der(ders)) == [leaf]
    chain = [leaf, ca.issuer, ca.root]
    for order in (chain, chain[::-1], chain[1:]):
        assert svc_mod._pkcs7_der([c.public_bytes(serialization.Encoding.DER) for c in order]) == \
            pkcs7.serialize_certificates(order, serialization.Encoding.DER)
    assert isinstance(EstService, type)
    ca.store.close()


def test_rsa_ca_key_uses_builder(tmp_path):
    """A CA whose key is not EC (an operator's own data directory) issues
    through the builder: the hand path only signs ecdsa-with-SHA256."""
    ca = init_ca(str(tmp_path / "ca"))
    ca.store.close()
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name((NameOID.COMMON_NAME, "rsa root"))
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=100))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(k, hashes.SHA256()))
    with open(tmp_path / "ca" / ca_mod.ROOT_CERT, "wb") as f:
        f.write(root.public_bytes(serialization.Encoding.PEM))
    with open(tmp_path / "ca" / ca_mod.ROOT_KEY, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    rca = LocalCA(str(tmp_path / "ca"))
    assert not rca._fast
    c = rca.issue_raw(_EC, _name((NameOID.COMMON_NAME, "d")), days=3)
    c.verify_directly_issued_by(root)
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    rca.store.close()


def test_cached_pieces_stay_right_when_alternating(cas, monkeypatch):
    """The per-CA caches of the hand path (extension headers per key class
    and EKU set, the Validity of the last second) give the builder's bytes
    when requests alternate between key classes, EKU sets and validities."""
    ca = cas["inter"]
    nb = int(ca.clock()) - 60
    seq = [("p256", ("clientAuth",), 30), ("rsa", ("clientAuth",), 30), ("p256", (), 30),
           ("ed25519", ("serverAuth", "clientAuth"), 31), ("p256", ("clientAuth",), 30), ("p384", (), 31),
           ("p256", ("clientAuth",), 30)]
    for kind, eku, days in seq:
        subj = _name((NameOID.COMMON_NAME, "alt-%s" % kind))
        serial, der, text, ref = _pair(ca, monkeypatch, _KEYS[kind], subj, (), eku, nb, nb + days * 86400)
        _check_same(ca, serial, der, text, ref)
