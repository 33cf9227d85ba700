"""Interop of est_lite.csr / pkcs7 / csrattrs with independent implementations
(pyca/cryptography, and the openssl CLI when it is installed)."""

import base64
import datetime
import ipaddress
import random
import shutil
import subprocess
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7 as cpkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from est_lite import csrattrs, der, pkcs7
from est_lite.csr import CsrBuilder
from est_lite.errors import LocalProtocolError
from est_lite_cpython import codec_server as W

VECTORS = __import__("pathlib").Path(__file__).parent / "vectors"


class EcSigner:
    def __init__(self, key=None):
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.public_key = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def sign(self, message):
        return self.key.sign(bytes(message), ec.ECDSA(hashes.SHA256()))


def test_csr_loads_and_verifies_in_cryptography():
    signer = EcSigner()
    der_csr = (
        CsrBuilder()
        .subject(cn="dev-42", o="Acme Ltd", ou=["Ops", "IoT"], c="DE", serial_number="SN-0042", l="Berlin", st="BE",
                 email="dev@example.com")
        .san(dns=["dev-42.example", "*.dev.example"], ip=["192.0.2.7", "2001:db8::7"], uri=["urn:example:dev:42"],
             email=["ops@example.com"])
        .key_usage(digital_signature=True, key_agreement=True)
        .extended_key_usage("clientAuth", "serverAuth", "cmcRA", "1.3.6.1.4.1.99999.1")
        .challenge_password(b"\x8a\x01\xfe" * 4)
        .attribute("1.3.6.1.4.1.99999.2", der.utf8("extra"))
        .extension("1.3.6.1.4.1.99999.3", der.octet_string(b"opaque"), critical=False)
        .sign(signer)
    )
    csr = x509.load_der_x509_csr(der_csr)
    assert csr.is_signature_valid
    assert csr.signature_hash_algorithm.name == "sha256"
    assert csr.public_bytes(serialization.Encoding.DER) == der_csr
    assert csr.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ) == signer.public_key
    s = csr.subject
    assert s.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-42"
    assert s.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    assert [a.value for a in s.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)] == ["Ops", "IoT"]
    assert s.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-0042"
    assert s.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)[0].value == "dev@example.com"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["dev-42.example", "*.dev.example"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::7"),
    ]
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:example:dev:42"]
    assert san.value.get_values_for_type(x509.RFC822Name) == ["ops@example.com"]
    ku = csr.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_agreement
    assert not ku.value.key_encipherment and not ku.value.encipher_only and not ku.value.decipher_only
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28"),
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
    ]
    other = csr.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.99999.3"))
    assert other.value.value == der.octet_string(b"opaque")
    cp = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier("1.2.840.113549.1.9.7"))
    assert cp.value == base64.b64encode(b"\x8a\x01\xfe" * 4)
    assert der.printable(base64.b64encode(b"\x8a\x01\xfe" * 4).decode()) in der_csr  # PrintableString
    extra = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"))
    assert extra.value == b"extra"


@pytest.mark.parametrize("ku", [
    dict(digital_signature=True),
    dict(key_encipherment=True, data_encipherment=True),
    dict(content_commitment=True, key_cert_sign=True, crl_sign=True),
    dict(key_agreement=True, encipher_only=True),
    dict(key_agreement=True, decipher_only=True),
    dict(key_agreement=True, encipher_only=True, decipher_only=True, digital_signature=True),
])
def test_key_usage_matches_cryptography(ku):
    signer = EcSigner()
    ours = x509.load_der_x509_csr(CsrBuilder().subject(cn="k").key_usage(**ku).sign(signer))
    full = dict.fromkeys(
        ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"], False)
    full.update(ku)
    theirs = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k")]))
        .add_extension(x509.KeyUsage(**full), critical=True)
        .sign(signer.key, hashes.SHA256())
    )
    a = ours.extensions.get_extension_for_class(x509.KeyUsage)
    b = theirs.extensions.get_extension_for_class(x509.KeyUsage)
    assert a.value == b.value
    # byte-identical extension encoding
    assert a.value.public_bytes() == b.value.public_bytes()


def test_same_tbs_bytes_as_cryptography_for_simple_csr():
    signer = EcSigner()
    ours = x509.load_der_x509_csr(
        CsrBuilder().subject(cn="same").san(dns=["a.example"]).sign(signer)
    )
    theirs = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "same")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), critical=False)
        .sign(signer.key, hashes.SHA256())
    )
    assert ours.tbs_certrequest_bytes == theirs.tbs_certrequest_bytes


def test_rfc7030_a3_request_challenge_password():
    data = base64.b64decode((VECTORS / "rfc7030_a3_simpleenroll_request.b64").read_text())
    csr = x509.load_der_x509_csr(data)
    cp = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier("1.2.840.113549.1.9.7"))
    assert cp.value == b"+rrCir/7+EYu50T4"
    # our builder writes the same attribute bytes for the same tls-unique
    tls_unique = base64.b64decode("+rrCir/7+EYu50T4")
    info = CsrBuilder().challenge_password(tls_unique).request_info(EcSigner().public_key)
    assert b"\x13\x10+rrCir/7+EYu50T4" in info
    assert b"\x13\x10+rrCir/7+EYu50T4" in data


def test_subject_is_required_unless_san():
    signer = EcSigner()
    csr = x509.load_der_x509_csr(CsrBuilder().san(ip=["::1"]).sign(signer))
    assert len(csr.subject) == 0
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert csr.is_signature_valid


def _self_signed(i, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cert %d" % i)])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1000 + i)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650 * 10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def certs():
    return [_self_signed(i) for i in range(6)]


@pytest.mark.parametrize("n", [1, 2, 6])
def test_pkcs7_agrees_with_cryptography(certs, n):
    bundle = cpkcs7.serialize_certificates(certs[:n], serialization.Encoding.DER)
    ours = [bytes(c) for c in pkcs7.certificates(bundle)]
    theirs = [c.public_bytes(serialization.Encoding.DER) for c in cpkcs7.load_der_pkcs7_certificates(bundle)]
    assert ours == theirs
    assert sorted(ours) == sorted(c.public_bytes(serialization.Encoding.DER) for c in certs[:n])
    for c, cc in zip(pkcs7.certificates(bundle), cpkcs7.load_der_pkcs7_certificates(bundle)):
        f = pkcs7.cert_tbs_fields(c)
        assert f["serial"] == cc.serial_number
        assert bytes(f["tbs"]) == cc.tbs_certificate_bytes
        assert bytes(f["signature"]) == cc.signature
        assert bytes(f["subject"]) == cc.subject.public_bytes()
        assert bytes(f["issuer"]) == cc.issuer.public_bytes()
        nb = cc.not_valid_before_utc
        assert f["not_before"] == (nb.year, nb.month, nb.day, nb.hour, nb.minute, nb.second)
        na = cc.not_valid_after_utc
        assert f["not_after"] == (na.year, na.month, na.day, na.hour, na.minute, na.second)
        assert bytes(f["public_key"]) == cc.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        assert f["key_params"] == "1.2.840.10045.3.1.7"
        exts = list(pkcs7.cert_extensions(f))
        assert [(o, crit) for o, crit, _ in exts] == [(e.oid.dotted_string, e.critical) for e in cc.extensions]
        # a port could verify the signature with these slices
        cc.public_key().verify(bytes(f["signature"]), bytes(f["tbs"]), ec.ECDSA(hashes.SHA256()))


def test_pkcs7_shuffled_and_our_builder(certs):
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    rnd = random.Random(7)
    for _ in range(5):
        order = ders[:]
        rnd.shuffle(order)
        unsorted = W.build_certs_only(order, sort=False)
        assert [bytes(c) for c in pkcs7.certificates(unsorted)] == order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography warns about a non-DER SET OF, then reads it
            theirs = cpkcs7.load_der_pkcs7_certificates(unsorted)
        assert sorted(c.public_bytes(serialization.Encoding.DER) for c in theirs) == sorted(order)
        # sorted output is strict DER: cryptography reads it without a warning
        strict = W.build_certs_only(order)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            theirs = cpkcs7.load_der_pkcs7_certificates(strict)
        assert [c.public_bytes(serialization.Encoding.DER) for c in theirs] == [bytes(c) for c in pkcs7.certificates(strict)]
        assert strict == cpkcs7.serialize_certificates([x509.load_der_x509_certificate(d) for d in order],
                                                       serialization.Encoding.DER)


def test_rfc7030_vectors_agree_with_cryptography():
    for name in ("rfc7030_a1_cacerts.b64", "rfc7030_a3_simpleenroll_response.b64"):
        data = base64.b64decode((VECTORS / name).read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # A.1's SET OF is not DER-sorted
            theirs = [c.public_bytes(serialization.Encoding.DER) for c in cpkcs7.load_der_pkcs7_certificates(data)]
        assert [bytes(c) for c in pkcs7.certificates(data)] == theirs


def test_csrattrs_against_cryptography_built_der():
    # hand-built with cryptography's own DER pieces: an extensionRequest whose
    # value is Extensions as cryptography encodes them for a CSR
    signer = EcSigner()
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("x.example")]), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(signer.key, hashes.SHA256())
    )
    tbs = memoryview(req.tbs_certrequest_bytes)
    # find the extensionRequest attribute inside the CRI with our reader
    s, e = der.read(tbs, 0, der.SEQUENCE)
    ext_value = None
    for t, a, b in der.iter_tlv(tbs, s, e):
        if t == 0xA0:
            for _, c, d in der.iter_tlv(tbs, a, b):
                os_, oe = der.read(tbs, c, der.OID)
                if der.oid_str(tbs[os_:oe]) == csrattrs.EXTENSION_REQUEST:
                    vs, ve = der.read(tbs, oe, der.SET)
                    ext_value = bytes(tbs[vs:ve])
    assert ext_value is not None
    body = der.seq(der.oid(csrattrs.CHALLENGE_PASSWORD), der.seq(der.oid(csrattrs.EXTENSION_REQUEST),
                                                                 der.tlv(der.SET, ext_value)))
    a = csrattrs.decode(body)
    assert a.wants_challenge_password
    want = [(e.oid.dotted_string, e.critical, e.value.public_bytes()) for e in req.extensions]
    assert a.extensions == want
    # our encoder produces the same bytes from the decoded form
    assert W.csrattrs_encode([csrattrs.CHALLENGE_PASSWORD, W.extension_request(a.extensions)]) == body
    # and the builder copies the server-given extensions into a CSR cryptography reads back equal
    csr = x509.load_der_x509_csr(CsrBuilder().challenge_password("pw").apply_csrattrs(a, strict=True).sign(signer))
    assert [(e.oid, e.critical, e.value) for e in csr.extensions] == [(e.oid, e.critical, e.value) for e in req.extensions]


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_csrattrs_against_openssl_asn1parse(tmp_path):
    # openssl's ASN.1 generator builds the RFC 8951 example independently
    conf = tmp_path / "a.cnf"
    conf.write_text(
        "asn1 = SEQUENCE:top\n[top]\n"
        "cp = OID:1.2.840.113549.1.9.7\n"
        "ec = SEQUENCE:ecattr\n"
        "er = SEQUENCE:erattr\n"
        "h = OID:1.2.840.10045.4.3.3\n"
        "[ecattr]\nt = OID:1.2.840.10045.2.1\nv = SET:ecv\n[ecv]\nc = OID:1.3.132.0.34\n"
        "[erattr]\nt = OID:1.2.840.113549.1.9.14\nv = SET:erv\n[erv]\nm = OID:1.3.6.1.1.1.1.22\n"
    )
    out = tmp_path / "a.der"
    subprocess.run([OPENSSL, "asn1parse", "-genconf", str(conf), "-out", str(out), "-noout"], check=True)
    items = [
        csrattrs.CHALLENGE_PASSWORD,
        ("1.2.840.10045.2.1", [der.oid("1.3.132.0.34")]),
        (csrattrs.EXTENSION_REQUEST, [der.oid("1.3.6.1.1.1.1.22")]),
        "1.2.840.10045.4.3.3",
    ]
    assert out.read_bytes() == W.csrattrs_encode(items)
    assert out.read_bytes() == base64.b64decode(
        "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw==")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_csr_verifies_with_openssl(tmp_path):
    signer = EcSigner()
    path = tmp_path / "r.der"
    path.write_bytes(CsrBuilder().subject(cn="ossl").san(dns=["o.example"]).challenge_password("pw").sign(signer))
    r = subprocess.run([OPENSSL, "req", "-inform", "DER", "-in", str(path), "-verify", "-noout", "-text"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "verify OK" in (r.stdout + r.stderr)
    assert "CN" in r.stdout and "o.example" in r.stdout


def test_builder_rejects_other_curves():
    k = ec.generate_private_key(ec.SECP384R1())
    pub = k.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    with pytest.raises(LocalProtocolError, match="P-256"):
        CsrBuilder().subject(cn="x").request_info(pub)
