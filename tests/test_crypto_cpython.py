"""est_lite_cpython.crypto (on `cryptography`) and the CPython simulated
secure element; the same interface as est_lite_mp.crypto."""

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError, TransportError
from est_lite_cpython import crypto as cp
from est_lite_cpython.secure_element import SimulatedSecureElement
from est_lite_mp import crypto as mp

N = cp.N
X = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
SAMPLE_SIG = der.seq(
    der.integer(0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716),
    der.integer(0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
)
ENC = serialization.Encoding.DER
NOENC = serialization.NoEncryption()


def _sec1(dbytes, pub=None, params=True):
    parts = [b"\x02\x01\x01", der.octet_string(dbytes)]
    if params:
        parts.append(der.explicit(0, der.oid(der.OID_P256)))
    if pub is not None:
        parts.append(der.tlv(0xA1, der.bit_string(pub)))
    return der.seq(*parts)


def test_same_interface_names_in_both_ports():
    for name in ("P256Key", "sha256", "random_bytes", "verify", "load_public_key", "encode_signature", "decode_signature"):
        assert hasattr(cp, name) and hasattr(mp, name), name
    for name in ("generate", "load_der", "sign", "sign_digest", "export_sec1", "export_pkcs8"):
        assert hasattr(cp.P256Key, name) and hasattr(mp.P256Key, name), name


def test_exports_equal_cryptography_and_micropython_port():
    for _ in range(5):
        key = cp.P256Key.generate()
        assert key.export_sec1() == key.key.private_bytes(ENC, serialization.PrivateFormat.TraditionalOpenSSL, NOENC)
        assert key.export_pkcs8() == key.key.private_bytes(ENC, serialization.PrivateFormat.PKCS8, NOENC)
        m = mp.P256Key.load_der(key.export_pkcs8())
        assert m.public_key == key.public_key
        assert m.export_sec1() == key.export_sec1()
        back = cp.P256Key.load_der(m.export_sec1())
        assert back.public_key == key.public_key


def test_rfc6979_deterministic_signature():
    k = cp.P256Key(X)
    assert k.sign(b"sample", deterministic=True) == SAMPLE_SIG
    assert k.sign_digest(cp.sha256(b"sample"), deterministic=True) == SAMPLE_SIG
    assert mp.P256Key(X).sign(b"sample") == SAMPLE_SIG


def test_sign_takes_the_portable_extra_argument():
    """key.sign(m, extra) is the same call on both ports (docs/crypto.md):
    on CPython the nonce is random, so two signatures with the same extra
    differ and both verify (it is not read as deterministic=True, as the
    old second parameter did); RFC 6979 with extra is refused, not ignored."""
    k = cp.P256Key(X)
    a, b = k.sign(b"sample", b"extra-1"), k.sign(b"sample", b"extra-1")
    assert a != b and a != SAMPLE_SIG
    assert cp.verify(k.public_key, b"sample", a) and cp.verify(k.public_key, b"sample", b)
    assert cp.verify(k.public_key, b"sample", k.sign_digest(cp.sha256(b"sample"), extra=b"x"))
    assert mp.verify(k.public_key, b"sample", mp.P256Key(X).sign(b"sample", extra=b"x"))
    for call in (lambda: k.sign(b"sample", b"x", deterministic=True),
                 lambda: k.sign_digest(cp.sha256(b"sample"), b"x", deterministic=True)):
        try:
            call()
        except cp.LocalProtocolError as e:
            assert "additional data" in str(e)
        else:
            raise AssertionError("RFC 6979 with extra data was not refused")


def test_sign_verify_across_ports():
    k = cp.P256Key.generate()
    sig = k.sign(b"tbs")
    assert cp.verify(k.public_key, b"tbs", sig)
    assert mp.verify(k.public_key, b"tbs", sig)
    assert not cp.verify(k.public_key, b"tbs2", sig)
    m = mp.P256Key.generate()
    assert cp.verify(m.public_key, b"x", m.sign(b"x"))
    assert cp.verify(der.seq(der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256)), der.bit_string(m.public_key)), b"x", m.sign(b"x"))
    raises_sig = sig[:-1]
    assert not cp.verify(k.public_key, b"tbs", raises_sig)
    # BER long-form length is not DER: rejected by both ports, although OpenSSL may accept it
    ber = b"\x30\x81" + sig[1:]
    assert not cp.verify(k.public_key, b"tbs", ber)
    assert not mp.verify(k.public_key, b"tbs", ber)
    with pytest.raises(LocalProtocolError):
        k.sign_digest(b"short")


@pytest.mark.parametrize(
    "blob,words",
    [
        (_sec1(bytes(32)), "zero"),
        (_sec1(N.to_bytes(32, "big")), "group order"),
        (_sec1((5).to_bytes(32, "big"), mp.P256Key(6).public_key), "does not match"),
        (_sec1((5).to_bytes(32, "big"), b"\x04" + bytes(64)), "not on the curve"),
        (_sec1(b"\x01" + bytes(32)), "33 bytes"),
        (b"\x30\x03\x02\x01\x01", "truncated"),
        (b"", "truncated"),
    ],
)
def test_invalid_keys_same_error_in_both_ports(blob, words):
    with pytest.raises(RemoteProtocolError) as e1:
        cp.P256Key.load_der(blob)
    with pytest.raises(RemoteProtocolError) as e2:
        mp.P256Key.load_der(blob)
    assert str(e1.value) == str(e2.value)
    assert words in str(e1.value)


def test_constructor_and_generate():
    with pytest.raises(LocalProtocolError):
        cp.P256Key(0)
    with pytest.raises(LocalProtocolError):
        cp.P256Key(N)
    with pytest.raises(LocalProtocolError):
        cp.P256Key(True)
    with pytest.raises(LocalProtocolError):
        cp.P256Key(ec.generate_private_key(ec.SECP384R1()))
    seq = iter([bytes(32), (5).to_bytes(32, "big")])
    assert cp.P256Key.generate(lambda n: next(seq)).public_key == mp.P256Key(5).public_key
    with pytest.raises(LocalProtocolError):
        cp.P256Key.generate(lambda n: b"\xff" * n)
    k = cp.P256Key(ec.generate_private_key(ec.SECP256R1()))
    assert len(k.public_key) == 65 and "P256Key" in repr(k)


def test_public_key_object():
    k = cp.P256Key.generate()
    pub = cp.public_key_object(k.public_key)
    pub.verify(k.sign(b"m"), b"m", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(RemoteProtocolError):
        cp.load_public_key(b"\x04" + bytes(64))


def test_simulated_secure_element_process():
    se = SimulatedSecureElement()
    try:
        assert len(se.public_key) == 65
        raw = se.sign_digest(cp.sha256(b"m"))
        assert len(raw) == 64
        assert cp.verify(se.public_key, b"m", se.sign(b"m"))
        assert mp.verify(se.public_key, b"m", se.sign(b"m"))
        with pytest.raises(LocalProtocolError):
            se.sign_digest(b"short")
        # the private key lives only in the child process
        assert not [v for v in vars(se).values() if isinstance(v, (int, ec.EllipticCurvePrivateKey)) and v is not True]
    finally:
        se.close()
    with pytest.raises(TransportError):
        se.sign(b"m")
    se.close()  # idempotent
