"""Hypothesis properties for the P-256 code: decoders of keys, points and
signatures either succeed or raise RemoteProtocolError (never IndexError,
ValueError, ...); pure-Python arithmetic and verification agree with
`cryptography`."""

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite.errors import RemoteProtocolError
from est_lite_cpython import crypto as cp
from est_lite_mp import crypto as mp
from est_lite_mp import keys, p256

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_K = mp.P256Key(0x1234567890ABCDEF)
SEEDS = [_K.export_sec1(), _K.export_pkcs8(), keys.spki(_K.public_key), _K.public_key, _K.sign(b"m")]


@st.composite
def mutated(draw):
    """A valid DER seed with a few bytes flipped, cut or inserted."""
    b = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 2))
        i = draw(st.integers(0, len(b)))
        if op == 0 and i < len(b):
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del b[i:]
        else:
            b[i:i] = bytes([draw(st.integers(0, 255))])
    return bytes(b)


blobs = st.one_of(st.binary(max_size=200), mutated())


def _only_remote_errors(fn, data):
    try:
        fn(data)
    except RemoteProtocolError:
        pass


@SETTINGS
@given(blobs)
def test_load_der_never_other_errors(data):
    _only_remote_errors(mp.P256Key.load_der, data)
    _only_remote_errors(cp.P256Key.load_der, data)


@SETTINGS
@given(blobs)
def test_load_public_key_and_signature_decoders(data):
    _only_remote_errors(mp.load_public_key, data)
    _only_remote_errors(mp.decode_signature, data)
    assert mp.verify(_K.public_key, b"m", data) in (True, False)


@SETTINGS
@given(st.integers(1, p256.N - 1))
def test_scalar_multiplication_matches_cryptography(d):
    want = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    assert p256.public_key(d) == (want.x, want.y)


_CK = ec.generate_private_key(ec.SECP256R1())
_CPOINT = cp.P256Key(_CK).public_key


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 70 * 8), st.booleans())
def test_verify_agrees_with_cryptography(msg, bit, tamper):
    sig = bytearray(_CK.sign(msg, ec.ECDSA(hashes.SHA256())))
    if tamper and bit < len(sig) * 8:
        sig[bit // 8] ^= 1 << (bit % 8)
    sig = bytes(sig)
    try:
        _CK.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))
        ok = True
    except InvalidSignature:
        ok = False
    got = mp.verify(_CPOINT, msg, sig)
    if got != ok:
        # only allowed difference: OpenSSL accepting a non-DER (BER) encoding we reject
        assert ok and not got
        try:
            mp.decode_signature(sig)
        except RemoteProtocolError:
            return
        raise AssertionError("verify disagrees on a strict-DER signature")
