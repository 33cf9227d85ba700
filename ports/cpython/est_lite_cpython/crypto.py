"""est_lite_cpython.crypto: the port's crypto interface on `cryptography`.

Same names and behaviour as est_lite_mp.crypto (see docs/crypto.md):

    P256Key.generate(rng=None) / P256Key.load_der(der) / P256Key(d)
    key.public_key          65 bytes, 0x04 || X || Y
    key.sign(message)       DER ECDSA-SHA256 signature
    key.export_sec1() / key.export_pkcs8()    DER
    sha256(data), random_bytes(n), verify(public_key, message, der_sig),
    load_public_key(point_or_spki)

Key material is parsed by the portable codec est_lite_mp.keys, so both
ports accept and reject exactly the same DER with the same messages; the
arithmetic, signing and randomness are OpenSSL's (constant-time). Signatures
here use OpenSSL's random nonces, not RFC 6979, unless deterministic=True is
passed to sign (cryptography >= 43 with OpenSSL >= 3.2).
"""

import hashlib
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_mp import keys
from est_lite_mp.keys import decode_signature, encode_signature  # noqa: F401 - interface

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CURVE = ec.SECP256R1()


def sha256(data):
    return hashlib.sha256(data).digest()


def random_bytes(n):
    return os.urandom(n)


def load_public_key(point_or_spki):
    """Validated 65-byte uncompressed point from an uncompressed or
    compressed SEC1 point or a DER SubjectPublicKeyInfo."""
    return keys.point_bytes(*keys.public_xy(point_or_spki))


def public_key_object(point_or_spki):
    """cryptography EllipticCurvePublicKey for a point or SPKI."""
    x, y = keys.public_xy(point_or_spki)
    return ec.EllipticCurvePublicNumbers(x, y, _CURVE).public_key()


def verify(public_key, message, der_sig):
    """True if der_sig is a valid ECDSA-SHA256 signature of message by
    public_key (point or SPKI). A malformed signature is False; a malformed
    or off-curve public key raises RemoteProtocolError."""
    pub = public_key_object(public_key)
    try:
        decode_signature(der_sig)  # strict DER, r and s in range
    except RemoteProtocolError:
        return False
    try:
        pub.verify(bytes(der_sig), bytes(message), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _point_of(key):
    nums = key.public_key().public_numbers()
    return keys.point_bytes(nums.x, nums.y)


class P256Key:
    """A P-256 private key in OpenSSL (through `cryptography`). A Signer:
    .public_key and .sign(message). `.key` is the cryptography object, for
    TLS contexts and certificate builders."""

    def __init__(self, d):
        if isinstance(d, ec.EllipticCurvePrivateKey):
            if d.curve.name != _CURVE.name:
                raise LocalProtocolError("key is on %s, not P-256" % d.curve.name)
            self.key = d
        elif isinstance(d, int) and not isinstance(d, bool) and 0 < d < N:
            self.key = ec.derive_private_key(d, _CURVE)
        else:
            raise LocalProtocolError("P-256 private scalar must be an int in [1, n-1]")
        self.public_key = _point_of(self.key)

    def __repr__(self):
        return "<P256Key public %s...>" % self.public_key[1:9].hex()

    @classmethod
    def generate(cls, rng=None, max_tries=8):
        """New key: from OpenSSL's generator by default, or by rejection
        sampling 32-byte strings from rng (a callable n -> bytes)."""
        if rng is None:
            return cls(ec.generate_private_key(_CURVE))
        for _ in range(max_tries):
            b = rng(32)
            if len(b) != 32:
                raise LocalProtocolError("rng returned %d bytes, asked for 32" % len(b))
            d = int.from_bytes(bytes(b), "big")
            if 0 < d < N:
                return cls(d)
        raise LocalProtocolError("rng gave no scalar in [1, n-1] in %d tries: is it broken?" % max_tries)

    @classmethod
    def load_der(cls, der):
        """Key from DER SEC1 ECPrivateKey or PKCS#8 PrivateKeyInfo (v1 or v2).
        The curve must be P-256, the scalar in [1, n-1], and an embedded
        public key must match the private one."""
        d, pubs = keys.parse_private(der)
        key = cls(d)
        keys.check_embedded(pubs, key.public_key)
        return key

    def sign(self, message, extra=b"", *, deterministic=False):
        """DER ECDSA-SHA256 signature of message. The nonce is random (from
        OpenSSL), so `extra` - the MicroPython port's additional data for
        its RFC 6979 nonce, for hedged signatures - is accepted and not
        needed; deterministic=True: RFC 6979 without additional data (with
        `extra` too: LocalProtocolError, OpenSSL has no such mode)."""
        return self._sign(bytes(message), hashes.SHA256(), extra, deterministic)

    def sign_digest(self, digest, extra=b"", *, deterministic=False):
        """DER ECDSA signature of a ready SHA-256 digest (`extra`,
        `deterministic`: as sign)."""
        if len(digest) != 32:
            raise LocalProtocolError("SHA-256 digest must be 32 bytes")
        return self._sign(bytes(digest), Prehashed(hashes.SHA256()), extra, deterministic)

    def _sign(self, data, alg, extra, deterministic):
        if deterministic and extra:
            raise LocalProtocolError("RFC 6979 nonces with additional data (extra=) are not available on CPython; "
                                     "sign without deterministic=True (a random nonce) or without extra")
        return self.key.sign(data, ec.ECDSA(alg, deterministic_signing=deterministic))

    def export_sec1(self):
        """DER SEC1 ECPrivateKey (RFC 5915) with curve and public key."""
        return keys.ec_private_der(self.key.private_numbers().private_value, self.public_key)

    def export_pkcs8(self):
        """DER PKCS#8 PrivateKeyInfo v1."""
        return keys.pkcs8_der(self.key.private_numbers().private_value, self.public_key)
