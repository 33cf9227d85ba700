# micropython-heapsize: 128K
# Portable tests for est_lite_mp.crypto, est_lite_mp.keys and
# est_lite_mp.secure_element (CPython and the MicroPython unix port).
from _util import raises, unhex

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_cpython import codec_server as W
from est_lite_mp import crypto, keys, p256
from est_lite_mp.secure_element import ElementSigner, SimulatedElement

R = RemoteProtocolError
N = p256.N
P = p256.P

# d = 5 as OpenSSL (cryptography) writes it
SEC1_5 = unhex(
    "307702010104200000000000000000000000000000000000000000000000000000000000000005a00a06082a8648ce3d030107a144"
    "0342000451590b7a515140d2d784c85608668fdfef8c82fd1f5be52421554a0dc3d033ede0c17da8904a727d8ae1bf36bf8a79260d"
    "012f00d4d80888d1d0bb44fda16da4"
)
PKCS8_5 = unhex(
    "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02010104200000000000000000000000000000000000"
    "000000000000000000000000000005a1440342000451590b7a515140d2d784c85608668fdfef8c82fd1f5be52421554a0dc3d033ed"
    "e0c17da8904a727d8ae1bf36bf8a79260d012f00d4d80888d1d0bb44fda16da4"
)
SPKI_5 = unhex(
    "3059301306072a8648ce3d020106082a8648ce3d0301070342000451590b7a515140d2d784c85608668fdfef8c82fd1f5be52421"
    "554a0dc3d033ede0c17da8904a727d8ae1bf36bf8a79260d012f00d4d80888d1d0bb44fda16da4"
)
PUB_5 = SPKI_5[-65:]
# RFC 6979 A.2.5
X = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721


def _sec1(dbytes, pub=None, params=True, version=b"\x02\x01\x01"):
    parts = [version, der.octet_string(dbytes)]
    if params:
        parts.append(der.explicit(0, der.oid(der.OID_P256)))
    if pub is not None:
        parts.append(der.tlv(0xA1, der.bit_string(pub)))
    return der.seq(*parts)


def _counter_rng(values):
    it = iter(values)

    def rng(n):
        return next(it)

    return rng


def test_export_matches_openssl_bytes():
    k = crypto.P256Key(5)
    assert k.public_key == PUB_5
    assert k.export_sec1() == SEC1_5
    assert k.export_pkcs8() == PKCS8_5
    assert keys.spki(k.public_key) == SPKI_5


def test_load_der_both_formats():
    for blob in (SEC1_5, PKCS8_5, bytearray(SEC1_5), memoryview(PKCS8_5)):
        k = crypto.P256Key.load_der(blob)
        assert k.public_key == PUB_5
        assert k.export_sec1() == SEC1_5
    # SEC1 without curve parameters and without public key: curve implied
    k = crypto.P256Key.load_der(_sec1(bytes(31) + b"\x05", params=False))
    assert k.public_key == PUB_5
    # short private key octet string (leading zeros dropped by old encoders)
    k = crypto.P256Key.load_der(_sec1(b"\x05"))
    assert k.public_key == PUB_5


def test_load_der_pkcs8_v2_public_key():
    inner = _sec1(bytes(31) + b"\x05", params=False)
    alg = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256))
    v2 = der.seq(b"\x02\x01\x01", alg, der.octet_string(inner), der.tlv(0x81, b"\x00" + PUB_5))
    assert crypto.P256Key.load_der(v2).public_key == PUB_5
    other = crypto.P256Key(6).public_key
    bad = der.seq(b"\x02\x01\x01", alg, der.octet_string(inner), der.tlv(0x81, b"\x00" + other))
    e = raises(R, crypto.P256Key.load_der, bad)
    assert "does not match" in str(e)


def test_load_der_rejects_bad_scalars():
    e = raises(R, crypto.P256Key.load_der, _sec1(bytes(32)))
    assert "zero" in str(e)
    e = raises(R, crypto.P256Key.load_der, _sec1(N.to_bytes(32, "big")))
    assert "group order" in str(e)
    raises(R, crypto.P256Key.load_der, _sec1(((1 << 256) - 1).to_bytes(32, "big")))
    e = raises(R, crypto.P256Key.load_der, _sec1(b"\x01" + bytes(32)))
    assert "33 bytes" in str(e)
    raises(R, crypto.P256Key.load_der, _sec1(b""))


def test_embedded_mismatch_and_off_curve():
    six = crypto.P256Key(6).public_key
    e = raises(R, crypto.P256Key.load_der, _sec1((5).to_bytes(32, "big"), six))
    assert "does not match" in str(e)
    off = PUB_5[:-1] + bytes((PUB_5[-1] ^ 1,))
    e = raises(R, crypto.P256Key.load_der, _sec1((5).to_bytes(32, "big"), off))
    assert "not on the curve" in str(e)
    e = raises(R, crypto.P256Key.load_der, _sec1((5).to_bytes(32, "big"), PUB_5[:64]))
    assert "65 bytes" in str(e) and "got 64" in str(e)


def test_load_der_rejects_structure():
    raises(R, crypto.P256Key.load_der, b"")
    raises(R, crypto.P256Key.load_der, b"\x30")
    raises(R, crypto.P256Key.load_der, SEC1_5[:-1])
    e = raises(R, crypto.P256Key.load_der, SEC1_5 + b"\x00")
    assert "unexpected data at offset 121" in str(e)
    e = raises(R, crypto.P256Key.load_der, _sec1((5).to_bytes(32, "big"), version=b"\x02\x01\x02"))
    assert "version" in str(e)
    # P-384 curve parameters
    p384 = der.seq(b"\x02\x01\x01", der.octet_string((5).to_bytes(32, "big")), der.explicit(0, der.oid(der.OID_P384)))
    e = raises(R, crypto.P256Key.load_der, p384)
    assert "curve 1.3.132.0.34 is not 1.2.840.10045.3.1.7" in str(e)
    # PKCS#8 with an RSA algorithm identifier
    rsa = der.seq(der.oid("1.2.840.113549.1.1.1"), W.der_null())
    e = raises(R, crypto.P256Key.load_der, der.seq(b"\x02\x01\x00", rsa, der.octet_string(SEC1_5)))
    assert "algorithm 1.2.840.113549.1.1.1 is not 1.2.840.10045.2.1" in str(e)
    e = raises(R, crypto.P256Key.load_der, der.seq(b"\x02\x01\x00", W.der_null()))
    assert "neither" in str(e)
    raises(LocalProtocolError, crypto.P256Key.load_der, "not bytes")
    raises(LocalProtocolError, crypto.P256Key.load_der, None)


def test_key_constructor_and_generate():
    raises(LocalProtocolError, crypto.P256Key, 0)
    raises(LocalProtocolError, crypto.P256Key, N)
    raises(LocalProtocolError, crypto.P256Key, "5")
    # rejection sampling: zero and n are skipped, the third draw is used
    rng = _counter_rng([bytes(32), N.to_bytes(32, "big"), (5).to_bytes(32, "big")])
    assert crypto.P256Key.generate(rng).public_key == PUB_5
    e = raises(LocalProtocolError, crypto.P256Key.generate, lambda n: b"\xff" * n)
    assert "broken" in str(e)
    raises(LocalProtocolError, crypto.P256Key.generate, lambda n: b"\x01" * (n - 1))
    a = crypto.P256Key.generate()
    b = crypto.P256Key.generate()
    assert a.public_key != b.public_key and len(a.public_key) == 65
    assert "P256Key" in repr(a) and str(a._d) not in repr(a)


def test_sign_rfc6979_vector_and_verify():
    k = crypto.P256Key(X)
    sig = k.sign(b"sample")
    r, s = crypto.decode_signature(sig)
    assert r == 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    assert s == 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8
    assert crypto.verify(k.public_key, b"sample", sig)
    assert crypto.verify(keys.spki(k.public_key), b"sample", sig)
    assert not crypto.verify(k.public_key, b"sample!", sig)
    assert not crypto.verify(k.public_key, b"sample", sig[:-1])
    assert not crypto.verify(k.public_key, b"sample", b"")
    assert not crypto.verify(PUB_5, b"sample", sig)
    assert k.sign_digest(crypto.sha256(b"sample")) == sig


def test_signature_codec():
    assert crypto.encode_signature(1, 0x80) == unhex("3007020101020200 80")
    assert crypto.decode_signature(unhex("3007020101020200 80")) == (1, 0x80)
    raises(R, crypto.decode_signature, unhex("3006020101020180"))  # negative s
    raises(R, crypto.decode_signature, unhex("300702010102020005"))  # non-minimal
    raises(R, crypto.decode_signature, unhex("3006020101020101 00"))  # trailing
    raises(R, crypto.decode_signature, unhex("3009020101020101020101"))  # three ints
    raises(R, crypto.decode_signature, unhex("3006020100020101"))  # r = 0
    raises(R, crypto.decode_signature, der.seq(der.integer(N), der.integer(1)))
    assert keys.check_rs(1, N - 1) == (1, N - 1)
    raises(R, keys.check_rs, 0, 1)
    raises(R, keys.check_rs, 1, N)


def test_load_public_key():
    assert crypto.load_public_key(PUB_5) == PUB_5
    assert crypto.load_public_key(SPKI_5) == PUB_5
    comp = bytes((2 + (PUB_5[64] & 1),)) + PUB_5[1:33]
    assert crypto.load_public_key(comp) == PUB_5
    wrong_parity = bytes((3 - (PUB_5[64] & 1),)) + PUB_5[1:33]
    assert crypto.load_public_key(wrong_parity) != PUB_5
    e = raises(R, crypto.load_public_key, PUB_5[:-1] + bytes((PUB_5[-1] ^ 1,)))
    assert "not on the curve" in str(e)
    for bad in (b"", b"\x00", PUB_5[:64], PUB_5 + b"\x00", b"\x05" + PUB_5[1:], comp[:32]):
        raises(R, crypto.load_public_key, bad)
    big = b"\x04" + P.to_bytes(32, "big") + PUB_5[33:]
    e = raises(R, crypto.load_public_key, big)  # x >= p
    assert "not on the curve" in str(e)
    # compressed x with no curve point
    x = 0
    while p256.decompress(x, 0) is not None:
        x += 1
    e = raises(R, crypto.load_public_key, b"\x02" + x.to_bytes(32, "big"))
    assert "compressed" in str(e)
    # SPKI with P-384 parameters, trailing bytes
    alg = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P384))
    raises(R, crypto.load_public_key, der.seq(alg, der.bit_string(PUB_5)))
    raises(R, crypto.load_public_key, SPKI_5 + b"\x00")
    raises(R, crypto.load_public_key, SPKI_5[:-1])
    raises(R, crypto.load_public_key, der.seq(der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256)), der.bit_string(PUB_5, 1)))
    raises(LocalProtocolError, crypto.load_public_key, 12)
    raises(R, crypto.verify, PUB_5[:64], b"m", b"")


def test_sha256_and_random():
    assert crypto.sha256(b"abc") == unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    a = crypto.random_bytes(16)
    assert len(a) == 16 and a != crypto.random_bytes(16)


def test_simulated_element_signer():
    se = SimulatedElement()
    assert sorted(n for n in dir(se) if not n.startswith("__")) == ["_signer", "public_key", "sign", "sign_digest"]
    sig = se.sign(b"tbs")
    assert crypto.verify(se.public_key, b"tbs", sig)
    raw = se.sign_digest(crypto.sha256(b"tbs"))
    assert len(raw) == 64


def test_element_signer_adapts_raw_and_der():
    key = crypto.P256Key(X)

    def raw_chip(digest):
        r, s = p256.sign_digest(X, digest)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    a = ElementSigner(key.public_key, raw_chip)
    b = ElementSigner(keys.spki(key.public_key), key.sign_digest, raw=False)
    assert a.public_key == b.public_key == key.public_key
    assert a.sign(b"sample") == b.sign(b"sample") == key.sign(b"sample")
    for bad in (b"\x00" * 10, bytes(64), b"\x30" + bytes(63)):
        raises(R, ElementSigner(key.public_key, lambda d: bad).sign, b"m")
        raises(R, ElementSigner(key.public_key, lambda d: bad, raw=False).sign, b"m")
    # a raw r||s whose first byte happens to be 0x30 is still raw
    r30 = (0x30 << 248) | 12345
    raw30 = r30.to_bytes(32, "big") + (777).to_bytes(32, "big")
    assert ElementSigner(key.public_key, lambda d: raw30).sign(b"m") == crypto.encode_signature(r30, 777)
    raises(R, ElementSigner, PUB_5[:-1] + b"\x00", raw_chip)
