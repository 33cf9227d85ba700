# est_lite_mp.crypto: the port's crypto interface, on the pure-Python P-256
# in p256.py, hashlib and os.urandom. The same names exist in
# est_lite_cpython.crypto (backed by `cryptography`); see docs/crypto.md.
#
#   P256Key.generate(rng=None) / P256Key.load_der(der) / P256Key(d)
#   key.public_key          65 bytes, 0x04 || X || Y
#   key.sign(message)       DER ECDSA-SHA256 signature (RFC 6979 nonce)
#   key.export_sec1() / key.export_pkcs8()    DER
#   sha256(data), random_bytes(n), verify(public_key, message, der_sig),
#   load_public_key(point_or_spki)
#
# A key is a Signer (attribute public_key, method sign) for est_lite.csr.
# Malformed or invalid key material raises RemoteProtocolError (like every
# decoder; the DER codec is keys.py); a bad argument or a broken rng raises
# LocalProtocolError.
#
# Not constant-time: see the note at the top of p256.py.

import hashlib
import os

from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_mp import keys, p256
from est_lite_mp.keys import decode_signature, encode_signature  # noqa: F401 - interface
from est_lite_mp.p256 import hmac_sha256  # noqa: F401 - interface


def sha256(data):
    return hashlib.sha256(data).digest()


def random_bytes(n):
    return os.urandom(n)


def load_public_key(point_or_spki):
    """Validated 65-byte uncompressed point from an uncompressed or
    compressed SEC1 point or a DER SubjectPublicKeyInfo."""
    return keys.point_bytes(*keys.public_xy(point_or_spki))


def verify(public_key, message, der_sig):
    """True if der_sig is a valid ECDSA-SHA256 signature of message by
    public_key (point or SPKI). A malformed signature is False; a malformed
    or off-curve public key raises RemoteProtocolError."""
    x, y = keys.public_xy(public_key)
    try:
        r, s = decode_signature(der_sig)
    except RemoteProtocolError:
        return False
    return p256.verify_digest(x, y, sha256(message), r, s)


class P256Key:
    """A P-256 private key held in Python (pure-Python arithmetic). A
    Signer: .public_key and .sign(message)."""

    def __init__(self, d):
        if not isinstance(d, int) or not 0 < d < p256.N:
            raise LocalProtocolError("P-256 private scalar must be an int in [1, n-1]")
        self._d = d
        self.public_key = keys.point_bytes(*p256.public_key(d))

    def __repr__(self):
        return "<P256Key public %s...>" % self.public_key[1:9].hex()

    @classmethod
    def generate(cls, rng=None, max_tries=8):
        """New key by rejection sampling 32-byte strings from rng (a callable
        n -> bytes; default os.urandom) until one is in [1, n-1]."""
        if rng is None:
            rng = os.urandom
        for _ in range(max_tries):
            b = rng(32)
            if len(b) != 32:
                raise LocalProtocolError("rng returned %d bytes, asked for 32" % len(b))
            d = int.from_bytes(bytes(b), "big")
            if 0 < d < p256.N:
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

    def sign(self, message, extra=b""):
        """DER ECDSA-SHA256 signature of message. `extra` is optional
        additional data for the RFC 6979 nonce (section 3.6)."""
        return self.sign_digest(sha256(message), extra)

    def sign_digest(self, digest, extra=b""):
        """DER ECDSA signature of a ready SHA-256 digest."""
        r, s = p256.sign_digest(self._d, digest, extra)
        return encode_signature(r, s)

    def export_sec1(self):
        """DER SEC1 ECPrivateKey (RFC 5915) with curve and public key, as
        OpenSSL writes it (the form MicroPython's tls load_cert_chain takes)."""
        return keys.ec_private_der(self._d, self.public_key)

    def export_pkcs8(self):
        """DER PKCS#8 PrivateKeyInfo v1, as OpenSSL writes it."""
        return keys.pkcs8_der(self._d, self.public_key)
