# micropython-heapsize: 128K
# Portable tests for est_lite.csr (CPython and MicroPython). The signer is a
# deterministic fake (fixed key, fixed signature): these tests check
# structure; tests/test_asn1_interop.py checks real signatures.
from _util import b64, raises, unhex

from est_lite import csrattrs, der
from est_lite.csr import CsrBuilder, parse_ip
from est_lite.errors import LocalProtocolError
from est_lite_cpython import codec_server as W

PUB = b"\x04" + bytes(range(1, 65))
SIG = unhex("3006020101020102")


class FakeSigner:
    public_key = PUB

    def __init__(self):
        self.signed = []

    def sign(self, message):
        self.signed.append(bytes(message))
        return SIG


def _parse(csr):
    """-> (info_der, subject_der, spki_der, {attr_oid: [value_der]}, sig_alg_der, sig)"""
    mv = memoryview(csr)
    s, e = der.read(mv, 0, der.SEQUENCE)
    assert e == len(csr)
    is_, ie = der.read(mv, s, der.SEQUENCE)
    info = bytes(mv[s:ie])
    vs, off = der.read(mv, is_, der.INTEGER)
    assert der.read_int(mv, vs, off) == 0
    subj_start = off
    _, off = der.read(mv, off, der.SEQUENCE)
    subject = bytes(mv[subj_start:off])
    sp = off
    _, off = der.read(mv, off, der.SEQUENCE)
    spki = bytes(mv[sp:off])
    as_, ae = der.read(mv, off, 0xA0)
    assert ae == ie
    attrs = {}
    for _, a, b in der.iter_tlv(mv, as_, ae):
        os_, oe = der.read(mv, a, der.OID)
        ss, se = der.read(mv, oe, der.SET)
        vals = []
        p = ss
        while p < se:
            _, _, q = der.read_tlv(mv, p, se)
            vals.append(bytes(mv[p:q]))
            p = q
        attrs[der.oid_str(mv[os_:oe])] = vals
    al = ie
    _, off = der.read(mv, ie, der.SEQUENCE)
    sig_alg = bytes(mv[al:off])
    bs, be = der.read(mv, off, der.BIT_STRING)
    assert be == e
    return info, subject, spki, attrs, sig_alg, bytes(mv[bs + 1 : be])


def _extensions(attrs):
    ext = attrs["1.2.840.113549.1.9.14"][0]
    mv = memoryview(ext)
    s, e = der.read(mv, 0, der.SEQUENCE)
    out = {}
    for _, a, b in der.iter_tlv(mv, s, e):
        os_, oe = der.read(mv, a, der.OID)
        crit = mv[oe] == der.BOOLEAN
        t, vs, ve = der.read_tlv(mv, oe + 3 if crit else oe, b)
        out[der.oid_str(mv[os_:oe])] = (crit, bytes(mv[vs:ve]))
    return out


def test_minimal_csr_structure():
    signer = FakeSigner()
    csr = CsrBuilder().subject(cn="dev-1").sign(signer)
    info, subject, spki, attrs, sig_alg, sig = _parse(csr)
    assert signer.signed == [info]
    assert subject == der.seq(der.set_of(der.seq(der.oid("2.5.4.3"), der.utf8("dev-1"))))
    assert spki == unhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + PUB
    assert attrs == {}
    assert sig_alg == unhex("300a06082a8648ce3d040302")
    assert sig == SIG
    # same input, same bytes
    assert CsrBuilder().subject(cn="dev-1").sign(FakeSigner()) == csr


def test_full_csr():
    b = (
        CsrBuilder()
        .subject(cn="dev-42", o="Acme", ou=["a", "b"], c="DE", serial_number="SN 1", l="Town", st="State", email="x@y.z")
        .san(dns=["dev-42.example", "*.w.example"], ip=["192.0.2.7", "2001:db8::1"], uri=["urn:dev:42"], email=["m@y.z"])
        .key_usage(digital_signature=True, key_encipherment=True)
        .extended_key_usage("clientAuth", "cmcRA", "1.2.3.4")
        .challenge_password(b"\x00\x01\x02\xff")
        .attribute("1.2.3.5", W.der_null())
        .extension("1.2.3.6", der.octet_string(b"x"), critical=True)
    )
    _, subject, _, attrs, _, _ = _parse(b.sign(FakeSigner()))
    # subject RDN order: C, ST, L, O, OU, OU, CN, serialNumber, email
    types = []
    mv = memoryview(subject)
    s, e = der.read(mv, 0, der.SEQUENCE)
    for _, a, _b in der.iter_tlv(mv, s, e):
        ss, _ = der.read(mv, a, der.SEQUENCE)
        os_, oe = der.read(mv, ss, der.OID)
        types.append((der.oid_str(mv[os_:oe]), mv[oe]))
    assert types == [
        ("2.5.4.6", der.PRINTABLE_STRING),
        ("2.5.4.8", der.UTF8_STRING),
        ("2.5.4.7", der.UTF8_STRING),
        ("2.5.4.10", der.UTF8_STRING),
        ("2.5.4.11", der.UTF8_STRING),
        ("2.5.4.11", der.UTF8_STRING),
        ("2.5.4.3", der.UTF8_STRING),
        ("2.5.4.5", der.PRINTABLE_STRING),
        ("1.2.840.113549.1.9.1", der.IA5_STRING),
    ]
    # tls-unique bytes are base64-encoded into a PrintableString (RFC 7030 §3.5)
    assert attrs["1.2.840.113549.1.9.7"] == [der.printable("AAEC/w==")]
    assert attrs["1.2.3.5"] == [b"\x05\x00"]
    exts = _extensions(attrs)
    assert sorted(exts) == ["1.2.3.6", "2.5.29.15", "2.5.29.17", "2.5.29.37"]
    assert exts["2.5.29.15"] == (True, b"\x03\x02\x05\xa0")
    assert exts["1.2.3.6"] == (True, b"\x04\x01x")
    eku = der.seq(der.oid("1.3.6.1.5.5.7.3.2"), der.oid("1.3.6.1.5.5.7.3.28"), der.oid("1.2.3.4"))
    assert exts["2.5.29.37"] == (False, eku)
    san = der.seq(
        der.tlv(0x81, b"m@y.z"),
        der.tlv(0x82, b"dev-42.example"),
        der.tlv(0x82, b"*.w.example"),
        der.tlv(0x86, b"urn:dev:42"),
        der.tlv(0x87, unhex("c0000207")),
        der.tlv(0x87, unhex("20010db8000000000000000000000001")),
    )
    assert exts["2.5.29.17"] == (False, san)


def test_attributes_are_der_sorted():
    b = CsrBuilder().challenge_password("pw").attribute("2.5.4.99", W.der_null()).san(dns=["a.b"])
    _, _, _, attrs, _, _ = _parse(b.sign(FakeSigner()))
    info = b.request_info(PUB)
    mv = memoryview(info)
    s, e = der.read(mv, 0, der.SEQUENCE)
    off = e
    for t, a, b2 in der.iter_tlv(mv, s, e):
        if t == 0xA0:
            elems = []
            p = a
            while p < b2:
                _, _, q = der.read_tlv(mv, p, b2)
                elems.append(bytes(mv[p:q]))
                p = q
            assert elems == sorted(elems) and len(elems) == 3
            off = a
    assert off != e


def test_san_only_subject_empty_makes_san_critical():
    _, subject, _, attrs, _, _ = _parse(CsrBuilder().san(dns=["a.example"]).sign(FakeSigner()))
    assert subject == b"\x30\x00"
    assert _extensions(attrs)["2.5.29.17"][0] is True


def test_key_usage_encodings():
    def ku(**kw):
        info = CsrBuilder().key_usage(**kw).request_info(PUB)
        _, _, _, attrs, _, _ = _parse(CsrBuilder.assemble(info, SIG))
        return _extensions(attrs)["2.5.29.15"][1]

    assert ku(digital_signature=True) == b"\x03\x02\x07\x80"
    assert ku(key_cert_sign=True, crl_sign=True) == b"\x03\x02\x01\x06"
    assert ku(key_agreement=True, decipher_only=True) == b"\x03\x03\x07\x08\x80"
    assert ku(key_agreement=True, encipher_only=True) == b"\x03\x02\x00\x09"
    assert ku(digital_signature=True, critical=False) == b"\x03\x02\x07\x80"


def test_challenge_password_kinds():
    def cp(v):
        _, _, _, attrs, _, _ = _parse(CsrBuilder().challenge_password(v).sign(FakeSigner()))
        return attrs["1.2.840.113549.1.9.7"][0]

    assert cp("+rrCir/7+EYu50T4") == b"\x13\x10+rrCir/7+EYu50T4"  # RFC 7030 A.3 value
    assert cp("p@ss") == der.utf8("p@ss")  # '@' is not PrintableString
    assert cp("\u00e9t\u00e9") == der.utf8("\u00e9t\u00e9")
    assert cp(b"\xff" * 12) == der.printable("////////////////")


def test_set_once_and_immutability():
    a = CsrBuilder()
    b = a.subject(cn="x")
    assert a is not b and a._subject is None
    for name, call in (
        ("subject", lambda x: x.subject(cn="y")),
        ("subjectAltName", lambda x: x.san(dns=["a.b"])),
        ("key_usage", lambda x: x.key_usage(crl_sign=True)),
        ("extended_key_usage", lambda x: x.extended_key_usage("serverAuth")),
        ("challenge_password", lambda x: x.challenge_password("pw")),
        ("attribute 1.2.3", lambda x: x.attribute("1.2.3", W.der_null())),
        ("extension 1.2.4", lambda x: x.extension("1.2.4", W.der_null())),
    ):
        once = call(a)
        e = raises(LocalProtocolError, call, once)
        assert "may only be set once" in str(e), (name, str(e))
        assert name in str(e), (name, str(e))
    # the same extension through san() and extension() is also refused
    e = raises(LocalProtocolError, b.san(dns=["a.b"]).extension, "2.5.29.17", W.der_null())
    assert "may only be set once" in str(e)


def test_argument_validation():
    L = LocalProtocolError
    B = CsrBuilder()
    raises(L, B.subject)
    raises(L, B.subject, cn="")
    raises(L, B.subject, cn="x" * 65)
    raises(L, B.subject, cn="a\nb")
    raises(L, B.subject, c="DEU")
    raises(L, B.subject, c="D1")
    raises(L, B.subject, serial_number="a_b")  # '_' not in PrintableString
    raises(L, B.subject, email="\u00e9@x")
    raises(L, B.subject, foo="x")
    raises(L, B.subject, cn=5)
    raises(L, B.subject, [("1.2.3", b"\x05\x00\x05\x00")])
    raises(L, B.subject, [("nope", "x")])
    assert B.subject([("2.5.4.3", "x"), ("1.2.3.4", W.der_null())])._subject[1] == ("1.2.3.4", b"\x05\x00")
    raises(L, B.san)
    raises(L, B.san, dns="a.example")  # a str, not a list
    for bad in ("", "a..b", "-a.b", "a-.b", "a b", "a_b.c", "x" * 64 + ".b", "\u00e9.b", "a.*"):
        raises(L, B.san, dns=[bad])
    raises(L, B.san, ip=["1.2.3"])
    raises(L, B.san, uri=["no-scheme"])
    raises(L, B.san, uri=["a b:c"])
    raises(L, B.key_usage)
    raises(L, B.key_usage, digital_signature=False)
    raises(L, B.key_usage, sign=True)
    raises(L, B.key_usage, encipher_only=True)
    raises(L, B.extended_key_usage)
    raises(L, B.extended_key_usage, "clientAuth", "1.3.6.1.5.5.7.3.2")
    raises(L, B.extended_key_usage, "bogusAuth")
    raises(L, B.challenge_password, "")
    raises(L, B.challenge_password, b"")
    raises(L, B.challenge_password, "x" * 256)
    raises(L, B.attribute, "1.2.840.113549.1.9.7", W.der_null())
    raises(L, B.attribute, "1.2.840.113549.1.9.14", W.der_null())
    raises(L, B.attribute, "1.2.3", [])
    raises(L, B.attribute, "1.2.3", b"\x05")
    raises(L, B.extension, "1.2.3", b"")


def test_signer_and_key_validation():
    L = LocalProtocolError
    b = CsrBuilder().subject(cn="x")

    class S(FakeSigner):
        pass

    for bad in (PUB[:-1], b"\x02" + PUB[1:], PUB + b"\x00"):
        s = S()
        s.public_key = bad
        e = raises(L, b.sign, s)
        assert "P-256" in str(e)
    for bad_sig in (b"", b"\x30\x00", b"\x30\x03\x02\x01\x01", SIG + b"\x00", b"\x04\x02ab"):
        s = S()
        s.sign = lambda m, bad_sig=bad_sig: bad_sig
        raises(L, b.sign, s)

    class M:
        def public_key(self):
            return PUB

        def sign(self, m):
            return SIG

    assert _parse(b.sign(M()))[5] == SIG


def test_parse_ip():
    cases = [
        ("192.0.2.1", "c0000201"),
        ("::", "00" * 16),
        ("::1", "00" * 15 + "01"),
        ("2001:db8::1", "20010db8" + "00" * 11 + "01"),
        ("1::", "0001" + "00" * 14),
        ("1:2:3:4:5:6:7:8", "00010002000300040005000600070008"),
        ("::ffff:192.0.2.1", "00" * 10 + "ffffc0000201"),
        ("::192.0.2.1", "00" * 12 + "c0000201"),
        ("1:2:3:4:5:6:1.2.3.4", "00010002000300040005000601020304"),
        ("FE80::A:b", "fe80" + "00" * 10 + "000a000b"),
    ]
    for text, h in cases:
        assert parse_ip(text) == unhex(h), text
    assert parse_ip(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    for bad in ("1.2.3", "256.1.1.1", "01.2.3.4", "1.2.3.4.5", "1:2:3:4:5:6:7:8:9", "1::2::3", ":1", "1:", "12345::",
                "::g", "1:2:3:4:5:6:7::8", "::1.2.3", "", "a", 5, b"\x01"):
        raises(LocalProtocolError, parse_ip, bad)


def test_apply_csrattrs():
    # RFC 7030 original example: P-384 and SHA-384 are not possible, cp not set yet
    a = csrattrs.decode(b64("MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJATEJBgcrBgEBAQEWBggqhkjOPQQDAw=="))
    b = CsrBuilder().subject(cn="x").apply_csrattrs(a)
    assert len(b.unmet) == 3
    assert "challengePassword" in b.unmet[0] and "1.3.132.0.34" in b.unmet[1] and "1.2.840.10045.4.3.3" in b.unmet[2]
    assert b.ignored == ("attribute 1.2.840.113549.1.9.1",)
    e = raises(LocalProtocolError, CsrBuilder().apply_csrattrs, a, strict=True)
    assert "P-256" in str(e)
    # a satisfiable request: P-256, SHA-256, challengePassword, server-given SAN,
    # an extension to fill in, an unknown OID
    san = der.seq(der.tlv(0x82, b"dev.example"))
    items = [
        "1.2.840.113549.1.9.7",
        ("1.2.840.10045.2.1", [der.oid("1.2.840.10045.3.1.7")]),
        W.extension_request([("2.5.29.17", True, san), ("2.5.29.37", False, None)]),
        "1.2.840.10045.4.3.2",
        "1.3.6.1.1.1.1.22",
    ]
    a = csrattrs.decode(W.csrattrs_encode(items))
    b = CsrBuilder().challenge_password("pw").apply_csrattrs(a)
    assert b.unmet == ("extension 2.5.29.37: to be filled in by the client",)
    assert b.ignored == ("OID 1.3.6.1.1.1.1.22",)
    b2 = CsrBuilder().challenge_password("pw").extended_key_usage("clientAuth").apply_csrattrs(a, strict=True)
    assert b2.unmet == ()
    _, _, _, attrs, _, _ = _parse(b2.sign(FakeSigner()))
    assert _extensions(attrs)["2.5.29.17"] == (True, san)
    # SAN already set with a different value
    b3 = CsrBuilder().san(dns=["other.example"]).apply_csrattrs(a)
    assert "2.5.29.17" in b3.unmet[1]
    # template: subject with all values is adopted; with a blank one it is unmet
    tpl = W.csrattrs_template(
        subject=[("2.5.4.3", der.utf8("given")), ("2.5.4.11", der.utf8("unit"))],
        key_alg="1.2.840.10045.2.1",
        key_params="1.2.840.10045.3.1.7",
    )
    b4 = CsrBuilder().apply_csrattrs(csrattrs.decode(W.csrattrs_encode([tpl])), strict=True)
    _, subject, _, _, _, _ = _parse(b4.sign(FakeSigner()))
    assert b"given" in subject and b"unit" in subject
    tpl = W.csrattrs_template(subject=[("2.5.4.3", None), ("2.5.4.5", None)], key_alg="1.2.840.113549.1.1.1")
    b5 = CsrBuilder().subject(cn="me").apply_csrattrs(csrattrs.decode(W.csrattrs_encode([tpl])))
    assert len(b5.unmet) == 2
    assert "1.2.840.113549.1.1.1" in b5.unmet[0] and "2.5.4.5" in b5.unmet[1]
    # nothing requested: nothing unmet
    b6 = CsrBuilder().apply_csrattrs(csrattrs.decode(b""))
    assert b6.unmet == () and b6.ignored == ()
