# Secure-element backend shape (portable).
#
# The Signer interface that est_lite.csr and the transports use is just:
#     signer.public_key        65 bytes, 0x04 || X || Y
#     signer.sign(message)     DER ECDSA-SHA256 signature (the signer hashes)
#
# An ATECC608-class chip (or a MicroPython ECDSA sign callback) keeps the
# private key inside and signs a 32-byte digest, returning raw r || s (64
# bytes) or DER. ElementSigner turns such a `sign_digest(digest)` function
# into a Signer, so the key never enters Python.
#
# SimulatedElement is a SIMULATION for tests, not a secure element: its key
# is an ordinary P256Key kept in a closure, reachable only through
# public_key and sign_digest (like the chip's GenKey and Sign commands). It
# gives no protection at all. est_lite_cpython.secure_element has one that
# keeps its key in a separate process.

import hashlib

from est_lite.errors import RemoteProtocolError
from est_lite_mp import keys


class ElementSigner:
    """Signer over a digest-signing element: sign_digest(32-byte SHA-256
    digest) returns raw r||s (64 bytes, ATECC608 style) when raw is True,
    or a DER Ecdsa-Sig-Value when raw is False."""

    def __init__(self, public_key, sign_digest, raw=True):
        self.public_key = keys.point_bytes(*keys.public_xy(public_key))
        self._sign_digest = sign_digest
        self._raw = raw

    def sign(self, message):
        sig = self._sign_digest(hashlib.sha256(message).digest())
        if self._raw:
            if len(sig) != 64:
                raise RemoteProtocolError("element returned %d bytes, expected raw r||s of 64" % len(sig))
            r = int.from_bytes(bytes(sig[:32]), "big")
            s = int.from_bytes(bytes(sig[32:]), "big")
            return keys.encode_signature(*keys.check_rs(r, s))
        keys.decode_signature(sig)  # raises RemoteProtocolError if malformed
        return bytes(sig)


class SimulatedElement:
    """SIMULATED secure element (for tests only; no protection): exposes
    public_key and sign_digest(digest) -> raw r||s, and sign(message) as a
    Signer."""

    def __init__(self, rng=None):
        from est_lite_mp import p256
        from est_lite_mp.crypto import P256Key

        key = P256Key.generate(rng)

        def sign_digest(digest):
            if len(digest) != 32:
                raise ValueError("element signs 32-byte digests")
            r, s = p256.sign_digest(key._d, digest)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        self.public_key = key.public_key
        self.sign_digest = sign_digest
        self._signer = ElementSigner(self.public_key, sign_digest)

    def sign(self, message):
        return self._signer.sign(message)
