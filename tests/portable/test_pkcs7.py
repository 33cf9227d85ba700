# micropython-heapsize: 112K
# Portable tests for est_lite.pkcs7 (CPython and MicroPython).
# Vectors: tests/vectors/rfc7030_*.b64 (see tests/vectors/rfc7030_README.md
# for where the bytes come from).
from _util import b64, raises

from est_lite import der, pkcs7
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."


def _vec(name):
    with open(_here + "/../vectors/" + name) as f:
        return b64(f.read())


def _cn(name_der):
    # the CN value of a one-RDN Name, as used by the RFC 7030 examples
    raw = bytes(name_der)
    return raw[raw.find(b"\x55\x04\x03") + 5 :]


def test_rfc7030_a1_cacerts():
    data = _vec("rfc7030_a1_cacerts.b64")
    certs = pkcs7.certificates(data)
    assert len(certs) == 4
    got = []
    for c in certs:
        f = pkcs7.cert_tbs_fields(c)
        got.append((_cn(f["subject"]), _cn(f["issuer"]), f["serial"]))
        assert f["version"] == 3
        assert f["key_alg"] == "1.2.840.113549.1.1.1" and f["key_params"] is None
        assert f["sig_alg"] == "1.2.840.113549.1.1.5"
        assert len(f["signature"]) == 256
        assert f["not_after"][0] == 2014
    # the example's SET OF is not in DER order: accepted, order kept
    assert got == [
        (b"estExampleCA OwO", b"estExampleCA OwO", 11121883874307308188),
        (b"estExampleCA NwO", b"estExampleCA OwO", 1),
        (b"estExampleCA OwN", b"estExampleCA NwN", 2),
        (b"estExampleCA NwN", b"estExampleCA NwN", 16838569520216125969),
    ]
    f = pkcs7.cert_tbs_fields(certs[0])
    assert f["not_before"] == (2013, 5, 9, 3, 53, 31)
    exts = [(o, c, bytes(v)) for o, c, v in pkcs7.cert_extensions(f)]
    assert exts[0] == ("2.5.29.19", True, b"\x30\x03\x01\x01\xff")
    assert [e[0] for e in exts] == ["2.5.29.19", "2.5.29.14", "2.5.29.15"]


def test_rfc7030_a3_simpleenroll_response():
    certs = pkcs7.certificates(_vec("rfc7030_a3_simpleenroll_response.b64"))
    assert len(certs) == 1
    f = pkcs7.cert_tbs_fields(certs[0])
    assert f["serial"] == 21
    assert _cn(f["subject"]) == b"demostep4 1368141352"
    assert _cn(f["issuer"]) == b"estExampleCA NwN"
    assert f["not_before"] == (2013, 5, 9, 23, 15, 53)


def test_views_are_slices_of_the_input():
    data = bytearray(_vec("rfc7030_a3_simpleenroll_response.b64"))
    c = pkcs7.certificates(data)[0]
    assert isinstance(c, memoryview)
    f = pkcs7.cert_tbs_fields(c)
    # tbs || sig_alg || BIT STRING(signature) re-assembles the certificate
    rebuilt = der.seq(f["tbs"], f["sig_alg_der"], der.bit_string(f["signature"]))
    assert rebuilt == bytes(c)
    assert bytes(f["spki"]).startswith(b"\x30\x82\x01\x22")


def _fake_cert(serial, cn, alg_params=None):
    """A structurally valid (unsigned) certificate for parser tests."""
    name = der.seq(der.set_of(der.seq(der.oid("2.5.4.3"), der.utf8(cn))))
    alg = der.seq(der.oid(der.OID_ECDSA_SHA256))
    key_alg = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), alg_params or der.oid(der.OID_P256))
    spki = der.seq(key_alg, der.bit_string(b"\x04" + bytes(range(64))))
    validity = der.seq(der.tlv(der.UTC_TIME, b"250101000000Z"), der.tlv(der.GENERALIZED_TIME, b"20991231235959Z"))
    exts = der.explicit(3, der.seq(der.seq(der.oid("2.5.29.19"), der.boolean(True), der.octet_string(b"\x30\x00"))))
    tbs = der.seq(der.explicit(0, der.integer(2)), der.integer(serial), alg, name, validity, name, spki, exts)
    return der.seq(tbs, alg, der.bit_string(b"\x30\x06\x02\x01\x01\x02\x01\x01"))


def test_build_and_parse_round_trip():
    certs = [_fake_cert(i, "n%d" % i) for i in (3, 1, 2)]
    for sort in (True, False):
        data = W.build_certs_only(certs, sort=sort)
        got = [bytes(c) for c in pkcs7.certificates(data)]
        assert sorted(got) == sorted(certs)
        assert got == (sorted(certs) if sort else certs)
    f = pkcs7.cert_tbs_fields(certs[0])
    assert f["serial"] == 3 and f["version"] == 3
    assert f["not_before"] == (2025, 1, 1, 0, 0, 0)
    assert f["not_after"] == (2099, 12, 31, 23, 59, 59)
    assert f["key_params"] == "1.2.840.10045.3.1.7"
    assert bytes(f["public_key"]) == b"\x04" + bytes(range(64))
    assert f["sig_alg"] == "1.2.840.10045.4.3.2"
    raises(LocalProtocolError, W.build_certs_only, [])
    raises(LocalProtocolError, W.build_certs_only, [b"\x05\x00"])


def _signed_data(inner_parts, oid=der.OID_SIGNED_DATA):
    return der.seq(der.oid(oid), der.tlv(0xA0, der.seq(*inner_parts)))


def test_tolerated_variants():
    c = _fake_cert(7, "x")
    base = [der.integer(1), b"\x31\x00", der.seq(der.oid(der.OID_DATA))]
    # crls present, other CertificateChoices, non-empty digestAlgorithms/signerInfos, version 3
    other = der.tlv(0xA1, b"\x30\x00")  # v1AttrCert-like choice: skipped
    parts = [
        der.integer(3),
        der.set_of(der.seq(der.oid("2.16.840.1.101.3.4.2.1"))),
        der.seq(der.oid(der.OID_DATA), der.explicit(0, der.octet_string(b""))),
        der.tlv(0xA0, other, c),
        der.tlv(0xA1, der.seq()),
        der.set_of(der.seq(der.integer(1))),
    ]
    got = pkcs7.certificates(_signed_data(parts))
    assert [bytes(x) for x in got] == [c]
    # trailing NUL padding after the ContentInfo
    data = _signed_data(base + [der.tlv(0xA0, c), b"\x31\x00"]) + b"\x00\x00"
    assert len(pkcs7.certificates(data)) == 1


def test_errors():
    R = RemoteProtocolError
    c = _fake_cert(7, "x")
    base = [der.integer(1), b"\x31\x00", der.seq(der.oid(der.OID_DATA))]
    good = _signed_data(base + [der.tlv(0xA0, c), b"\x31\x00"])
    assert len(pkcs7.certificates(good)) == 1
    e = raises(R, pkcs7.certificates, _signed_data(base + [der.tlv(0xA0, c), b"\x31\x00"], der.OID_DATA))
    assert "not signedData" in str(e)
    e = raises(R, pkcs7.certificates, _signed_data(base + [b"\x31\x00"]))
    assert "no certificates" in str(e)
    raises(R, pkcs7.certificates, good + b"\x01")  # trailing garbage
    raises(R, pkcs7.certificates, good[:-1])  # truncated
    raises(R, pkcs7.certificates, _signed_data(base + [der.tlv(0xA0, c)]))  # no signerInfos
    raises(R, pkcs7.certificates, _signed_data(base + [der.tlv(0xA0, c), b"\x31\x00", b"\x05\x00"]))
    raises(R, pkcs7.certificates, b"\x30\x80" + good[2:])  # BER indefinite length
    raises(R, pkcs7.certificates, b"")
    raises(R, pkcs7.certificates, der.seq(der.oid(der.OID_SIGNED_DATA)))
    many = _signed_data(base + [der.tlv(0xA0, *([c] * 3)), b"\x31\x00"])
    e = raises(LimitError, pkcs7.certificates, many, max_certs=2)
    assert "max_certs" in str(e)
    assert len(pkcs7.certificates(many, max_certs=3)) == 3
    raises(LimitError, pkcs7.certificates, good, max_size=10)


def test_cert_field_errors():
    R = RemoteProtocolError
    c = _fake_cert(7, "x")
    raises(R, pkcs7.cert_tbs_fields, c + b"\x00")
    raises(R, pkcs7.cert_tbs_fields, c[:-1])
    raises(R, pkcs7.cert_tbs_fields, b"\x30\x00")
    for bad_time in (b"2501010000Z", b"250101000000+0100", b"2501010000a0Z", b"251301000000Z"):
        name = der.seq()
        alg = der.seq(der.oid(der.OID_ECDSA_SHA256))
        spki = der.seq(der.seq(der.oid(der.OID_EC_PUBLIC_KEY)), der.bit_string(b"\x04"))
        validity = der.seq(der.tlv(der.UTC_TIME, bad_time), der.tlv(der.UTC_TIME, b"250101000000Z"))
        tbs = der.seq(der.integer(1), alg, name, validity, name, spki)
        cert = der.seq(tbs, alg, der.bit_string(b"\x00"))
        raises(R, pkcs7.cert_tbs_fields, cert)
    # UTCTime years: 50..99 -> 19xx, 00..49 -> 20xx; v1 certificate without extensions
    name = der.seq()
    alg = der.seq(der.oid(der.OID_ECDSA_SHA256))
    spki = der.seq(der.seq(der.oid(der.OID_EC_PUBLIC_KEY)), der.bit_string(b"\x04"))
    validity = der.seq(der.tlv(der.UTC_TIME, b"500101000000Z"), der.tlv(der.UTC_TIME, b"491231235959Z"))
    tbs = der.seq(der.integer(-1), alg, name, validity, name, spki)
    f = pkcs7.cert_tbs_fields(der.seq(tbs, alg, der.bit_string(b"\x00")))
    assert f["not_before"][0] == 1950 and f["not_after"][0] == 2049
    assert f["version"] == 1 and f["serial"] == -1 and f["extensions"] is None
    assert list(pkcs7.cert_extensions(f)) == []
