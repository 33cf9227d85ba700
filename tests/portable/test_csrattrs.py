# micropython-heapsize: 104K
# Portable tests for est_lite.csrattrs (CPython and MicroPython).
from _util import b64, raises, unhex

from est_lite import csrattrs, der
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W

# RFC 7030 §4.5.2 / A.2 as originally published: the second attribute's type
# is 1.2.840.113549.1.9.1 (emailAddress) although the text says
# extensionRequest (RFC 7030 errata 4384). Base64 as given in our brief.
RFC7030_ORIGINAL = "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJATEJBgcrBgEBAQEWBggqhkjOPQQDAw=="
# RFC 8951 §3.3 corrected example: type extensionRequest (1.2.840.113549.1.9.14),
# value still the bare macAddress OID (which RFC 9908 §5.2 says is NOT a
# valid extensionRequest value). Hex and base64 as printed in
# draft-richardson-lamps-rfc7030est-clarify (the draft of RFC 8951).
RFC8951_HEX = """30 41 06 09 2a 86 48 86 f7 0d 01 09 07 30 12 06 07 2a 86 48 ce 3d
02 01 31 07 06 05 2b 81 04 00 22 30 16 06 09 2a 86 48 86 f7 0d 01
09 0e 31 09 06 07 2b 06 01 01 01 01 16 06 08 2a 86 48 ce 3d 04 03
03"""
RFC8951_B64 = "MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw=="
# RFC 9908 §5.1-5.5 examples, as transcribed in pyasn1-alt-modules tests/test_rfc9908.py
RFC9908_5_1 = """MGgwZgYJKoZIhvcNAQkOMVkwVzBVBgNVHREBAf8ESzBJoEcG
CCsGAQUFBwgKoDsWOXJmYzg5OTQrZmQ3MzlmYzIzYzM0NDAx
MTIyMzM0NDU1MDAwMDAwMDArQGFjcC5leGFtcGxlLmNvbQ=="""
RFC9908_5_2 = "MDIGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiBgcrBgEBAQEWBggqhkjOPQQDAw=="
RFC9908_5_3 = "MEUGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAjBgkqhkiG9w0BCRQGCgmSJomT8ixkAQUGA1UEBQYIKoZIzj0EAwQ="
RFC9908_5_4 = "MCkGCSqGSIb3DQEJBzARBgkqhkiG9w0BAQExBAICEAAGCSqGSIb3DQEBCw=="
RFC9908_5_5 = "MC4GCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiBgNVBAUGCCqGSM49BAMD"

CP = "1.2.840.113549.1.9.7"
MAC = "1.3.6.1.1.1.1.22"


def test_rfc7030_original_example():
    a = csrattrs.decode(b64(RFC7030_ORIGINAL))
    assert a.oids == [CP, "1.2.840.10045.4.3.3"]
    assert [t for t, _ in a.attributes] == ["1.2.840.10045.2.1", "1.2.840.113549.1.9.1"]
    # decoded faithfully: an emailAddress attribute whose value is the macAddress OID
    assert a.values("1.2.840.113549.1.9.1") == [der.oid(MAC)]
    assert a.extensions == [] and a.unparsed == []
    assert a.wants_challenge_password
    assert a.key_curve == "1.3.132.0.34"
    assert a.hash_alg == "sha384"
    assert a.signature_alg == "1.2.840.10045.4.3.3"
    assert len(a) == 4


def test_rfc8951_corrected_example():
    data = b64(RFC8951_B64)
    assert data == unhex(RFC8951_HEX)
    a = csrattrs.decode(data)
    assert a.oids == [CP, "1.2.840.10045.4.3.3"]
    assert [t for t, _ in a.attributes] == ["1.2.840.10045.2.1", csrattrs.EXTENSION_REQUEST]
    # the extensionRequest value is a bare OID, not Extensions: kept, reported, not fatal
    assert a.values(csrattrs.EXTENSION_REQUEST) == [der.oid(MAC)]
    assert a.extensions == []
    assert len(a.unparsed) == 1 and csrattrs.EXTENSION_REQUEST in a.unparsed[0]
    assert a.has(csrattrs.EXTENSION_REQUEST) and a.has(CP) and not a.has(MAC)
    assert a.key_curve == "1.3.132.0.34" and a.hash_alg == "sha384"


def test_rfc9908_5_1_acp_subject_alt_name():
    a = csrattrs.decode(b64(RFC9908_5_1))
    assert a.oids == []
    assert len(a.extensions) == 1
    oid, crit, val = a.extensions[0]
    assert oid == "2.5.29.17" and crit is True
    assert b"rfc8994+fd739fc23c3440112233445500000000+@acp.example.com" in val
    assert a.extension_oids == ["2.5.29.17"]
    assert not a.wants_challenge_password and a.key_curve is None and a.hash_alg is None


def test_rfc9908_5_2_to_5_5():
    a = csrattrs.decode(b64(RFC9908_5_2))
    assert a.oids == [CP, MAC, "1.2.840.10045.4.3.3"]
    assert a.key_curve == "1.3.132.0.34"
    a = csrattrs.decode(b64(RFC9908_5_3))
    assert a.oids == [CP, "1.2.840.113549.1.9.20", "0.9.2342.19200300.100.1.5", "2.5.4.5", "1.2.840.10045.4.3.4"]
    assert a.key_curve == "1.3.132.0.35" and a.hash_alg == "sha512"
    a = csrattrs.decode(b64(RFC9908_5_4))
    assert a.oids == [CP, "1.2.840.113549.1.1.11"]
    assert a.values("1.2.840.113549.1.1.1") == [der.integer(4096)]
    assert a.key_curve is None and a.hash_alg == "sha256"
    a = csrattrs.decode(b64(RFC9908_5_5))
    assert a.oids == [CP, "2.5.4.5", "1.2.840.10045.4.3.3"]
    assert a.key_curve == "1.3.132.0.34"


def test_empty():
    for data in (b"", b"\x30\x00", memoryview(b"\x30\x00")):
        a = csrattrs.decode(data)
        assert len(a) == 0 and a.oids == [] and a.template is None
        assert not a.wants_challenge_password and a.key_curve is None and a.hash_alg is None
    assert W.csrattrs_encode([]) == b"\x30\x00"


def test_encode_round_trip_and_rfc_bytes():
    items = [CP, ("1.2.840.10045.2.1", [der.oid("1.3.132.0.34")]), ("1.2.840.113549.1.9.14", [der.oid(MAC)])]
    items.append("1.2.840.10045.4.3.3")
    assert W.csrattrs_encode(items) == b64(RFC8951_B64)
    ext = [("2.5.29.17", False, der.seq(der.tlv(0x82, b"a.example"))), ("2.5.29.15", True, der.bit_string(b"\x80", 7))]
    data = W.csrattrs_encode([CP, W.extension_request(ext), "1.2.840.10045.4.3.2"])
    a = csrattrs.decode(data)
    assert a.extensions == ext
    assert a.hash_alg == "sha256" and a.wants_challenge_password
    # an extension without value makes it an RFC 9908 extension template
    t = W.extension_request([("2.5.29.37", False, None)])
    assert t[0] == csrattrs.EXTENSION_REQ_TEMPLATE
    a = csrattrs.decode(W.csrattrs_encode([t]))
    assert a.extensions == [("2.5.29.37", False, None)]


def test_template_round_trip():
    # the RFC 9908 §4 template example (built from its dump: CN to fill in,
    # OU myDept and myGroup, P-256 key, SAN with www.myServer.com and an
    # empty iPAddress, critical keyUsage, extKeyUsage to fill in)
    san = der.seq(der.tlv(0x82, b"www.myServer.com"), der.tlv(0x87, b""))
    ku = der.bit_string(b"\x88", 3)
    subject = [("2.5.4.3", None), ("2.5.4.11", der.utf8("myDept")), ("2.5.4.11", der.utf8("myGroup"))]
    exts = [("2.5.29.17", False, san), ("2.5.29.15", True, ku), ("2.5.29.37", False, None)]
    item = W.csrattrs_template(subject=subject, key_alg="1.2.840.10045.2.1", key_params="1.2.840.10045.3.1.7", extensions=exts)
    assert item[0] == "1.2.840.113549.1.9.16.2.61"
    a = csrattrs.decode(W.csrattrs_encode([CP, item]))
    t = a.template
    assert t is not None
    assert t["subject"] == subject
    assert t["key_alg"] == "1.2.840.10045.2.1" and t["key_params"] == "1.2.840.10045.3.1.7"
    assert a.key_curve == "1.2.840.10045.3.1.7"
    assert a.extensions == exts
    assert [x[0] for x in t["attributes"]] == [csrattrs.EXTENSION_REQ_TEMPLATE]
    assert a.wants_challenge_password
    # template with only the attributes field
    a = csrattrs.decode(W.csrattrs_encode([W.csrattrs_template(attributes=[(CP, [der.printable("x")])])]))
    assert a.template["subject"] == [] and a.template["key_alg"] is None
    assert a.wants_challenge_password and not a.oids


def test_malformed_template_is_reported_not_fatal():
    bad = (csrattrs.CSR_TEMPLATE, [der.seq(der.integer(1), der.tlv(0xA1))])
    a = csrattrs.decode(W.csrattrs_encode([bad, CP]))
    assert a.template is None and a.oids == [CP]
    assert "version" in a.unparsed[0]


def test_decode_errors():
    R = RemoteProtocolError
    raises(R, csrattrs.decode, b"\x31\x00")  # not a SEQUENCE
    raises(R, csrattrs.decode, b"\x30\x00\x00")  # trailing byte
    raises(R, csrattrs.decode, b"\x30\x02\x05\x00")  # NULL entry
    raises(R, csrattrs.decode, b"\x30\x04\x30\x02\x06\x00")  # empty OID
    raises(R, csrattrs.decode, der.seq(der.seq(der.oid(CP))))  # attribute without values
    raises(R, csrattrs.decode, der.seq(der.seq(der.oid(CP), b"\x31\x00")))  # empty value set
    raises(R, csrattrs.decode, der.seq(der.seq(der.oid(CP), der.set_of(W.der_null()), W.der_null())))
    raises(R, csrattrs.decode, b"\x30\x80\x00\x00")  # BER indefinite length
    raises(R, csrattrs.decode, b64(RFC8951_B64)[:-1])  # truncated
    e = raises(LimitError, csrattrs.decode, W.csrattrs_encode([CP] * 5), max_items=4)
    assert "max_items" in str(e)
    raises(LimitError, csrattrs.decode, b"\x30\x00", max_size=1)
    many = W.extension_request([("1.2.%d" % i, False, b"\x05\x00") for i in range(5)])
    raises(LimitError, csrattrs.decode, W.csrattrs_encode([many]), max_items=4)


def test_encode_errors():
    L = LocalProtocolError
    raises(L, W.csrattrs_encode, ["not.an.oid"])
    raises(L, W.csrattrs_encode, [(CP, [])])
    raises(L, W.csrattrs_encode, [(CP, [b"\x05\x00\x05\x00"])])  # two elements as one value
    raises(L, W.extension_request, [])
