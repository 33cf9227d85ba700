# est_lite_mp.crypto: the port's crypto interface, on the pure-Python P-256
# in p256.py, hashlib and os.urandom. The same names exist in
# est_lite_cpython.crypto (backed by `cryptography`); see docs/crypto.md.
#
#   P256Key.generate(rng=None) / P256Key.load_der(der) / P256Key(d)
#   key.public_key          65 bytes, 0x04 || X || Y
#   key.sign(message)       DER ECDSA-SHA256 signature (RFC 6979 nonce)
#   key.export_sec1() / key.export_pkcs8()    DER
#   sha256(data), random_bytes(n), verify(public_key, message, der_sig),
#   load_public_key(point_or_spki), encode_signature(r, s),
#   decode_signature(der_sig)
#
# A key is a Signer (attribute public_key, method sign) for est_lite.csr.
# Malformed or invalid key material raises RemoteProtocolError (like every
# decoder); a bad argument type or a broken rng raises LocalProtocolError.
#
# Not constant-time: see the note at the top of p256.py.

import hashlib
import os

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_mp import p256
from est_lite_mp.p256 import hmac_sha256  # noqa: F401 - part of the port's interface

_INT1 = b"\x02\x01\x01"
_INT0 = b"\x02\x01\x00"


def sha256(data):
    return hashlib.sha256(data).digest()


def random_bytes(n):
    return os.urandom(n)


def _err(msg):
    return RemoteProtocolError("P-256 key: " + msg)


def _buf(data, what):
    if isinstance(data, memoryview):
        return data
    if not isinstance(data, (bytes, bytearray)):
        raise LocalProtocolError("%s must be bytes, got %s" % (what, type(data).__name__))
    return memoryview(data)


def _point(x, y):
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _decode_point(buf):
    """(x, y) from an uncompressed (65-byte) or compressed (33-byte) SEC1
    point, validated on the curve."""
    n = len(buf)
    if n == 65 and buf[0] == 4:
        x = int.from_bytes(bytes(buf[1:33]), "big")
        y = int.from_bytes(bytes(buf[33:65]), "big")
        if x >= p256.P or y >= p256.P:
            raise _err("point coordinate not below the field prime p")
        if not p256.on_curve(x, y):
            raise _err("point is not on the P-256 curve")
        return x, y
    if n == 33 and buf[0] in (2, 3):
        x = int.from_bytes(bytes(buf[1:33]), "big")
        y = p256.decompress(x, buf[0] & 1)
        if y is None:
            raise _err("compressed point: x is not on the P-256 curve")
        return x, y
    raise _err("expected a 65-byte uncompressed point (04||X||Y) or a 33-byte compressed one, got %d bytes" % n)


def _check_curve(buf, s, e):
    """buf[s:e] must be exactly the OID of P-256."""
    t, os_, oe = der.read_tlv(buf, s, e)
    if t != der.OID or oe != e:
        raise _err("curve parameters must be a named-curve OID")
    if bytes(buf[os_:oe]) != der.OID_P256:
        raise _err("curve %s is not P-256 (1.2.840.10045.3.1.7)" % der.oid_str(buf[os_:oe]))


def _check_alg(buf, s, e):
    """AlgorithmIdentifier contents: id-ecPublicKey with namedCurve P-256."""
    os_, oe = der.read(buf, s, der.OID, e)
    if bytes(buf[os_:oe]) != der.OID_EC_PUBLIC_KEY:
        raise _err("algorithm %s is not id-ecPublicKey" % der.oid_str(buf[os_:oe]))
    _check_curve(buf, oe, e)


def _bit_point(buf, s, e):
    """BIT STRING contents holding a point -> (x, y)."""
    u, ds, de = der.read_bit_string(buf, s, e)
    if u:
        raise _err("public key BIT STRING has unused bits")
    return _decode_point(buf[ds:de])


def load_public_key(point_or_spki):
    """Validated 65-byte uncompressed point from an uncompressed or
    compressed SEC1 point or a DER SubjectPublicKeyInfo."""
    return _point(*_xy(point_or_spki))


def _xy(data):
    buf = _buf(data, "public key")
    if len(buf) and buf[0] == der.SEQUENCE:
        s, e = der.read(buf, 0, der.SEQUENCE)
        if e != len(buf):
            raise _err("%d bytes after the SubjectPublicKeyInfo" % (len(buf) - e))
        as_, ae = der.read(buf, s, der.SEQUENCE, e)
        _check_alg(buf, as_, ae)
        bs, be = der.read(buf, ae, der.BIT_STRING, e)
        if be != e:
            raise _err("trailing data in SubjectPublicKeyInfo")
        return _bit_point(buf, bs, be)
    return _decode_point(buf)


def encode_signature(r, s):
    """DER Ecdsa-Sig-Value from the two integers."""
    return der.seq(der.integer(r), der.integer(s))


def decode_signature(sig):
    """(r, s) from a DER Ecdsa-Sig-Value; RemoteProtocolError if it is
    malformed or r, s are not in [1, n-1]."""
    buf = _buf(sig, "signature")
    s0, e0 = der.read(buf, 0, der.SEQUENCE)
    if e0 != len(buf):
        raise RemoteProtocolError("ECDSA signature: trailing bytes")
    rs, re = der.read(buf, s0, der.INTEGER, e0)
    ss, se = der.read(buf, re, der.INTEGER, e0)
    if se != e0:
        raise RemoteProtocolError("ECDSA signature: more than two INTEGERs")
    r = der.read_int(buf, rs, re)
    s = der.read_int(buf, ss, se)
    if not (0 < r < p256.N and 0 < s < p256.N):
        raise RemoteProtocolError("ECDSA signature: r or s out of range [1, n-1]")
    return r, s


def verify(public_key, message, der_sig):
    """True if der_sig is a valid ECDSA-SHA256 signature of message by
    public_key (point or SPKI). A malformed signature is False; a malformed
    or off-curve public key raises RemoteProtocolError."""
    x, y = _xy(public_key)
    try:
        r, s = decode_signature(der_sig)
    except RemoteProtocolError:
        return False
    return p256.verify_digest(x, y, sha256(message), r, s)


def _parse_ec_private(buf, s, e):
    """ECPrivateKey (RFC 5915) contents -> (d, embedded (x, y) or None)."""
    vs, ve = der.read(buf, s, der.INTEGER, e)
    if der.read_int(buf, vs, ve) != 1:
        raise _err("ECPrivateKey version must be 1")
    ks, ke = der.read(buf, ve, der.OCTET_STRING, e)
    if not 0 < ke - ks <= 32:
        raise _err("private key octet string of %d bytes (expected 32)" % (ke - ks))
    d = int.from_bytes(bytes(buf[ks:ke]), "big")
    pub = None
    off = ke
    if off < e and buf[off] == 0xA0:
        cs, ce = der.read(buf, off, 0xA0, e)
        _check_curve(buf, cs, ce)
        off = ce
    if off < e and buf[off] == 0xA1:
        cs, ce = der.read(buf, off, 0xA1, e)
        bs, be = der.read(buf, cs, der.BIT_STRING, ce)
        if be != ce:
            raise _err("trailing data in ECPrivateKey publicKey")
        pub = _bit_point(buf, bs, be)
        off = ce
    if off != e:
        raise _err("unexpected element in ECPrivateKey at offset %d" % off)
    if not d:
        raise _err("private scalar is zero (must be in [1, n-1])")
    if d >= p256.N:
        raise _err("private scalar is not below the group order n")
    return d, pub


class P256Key:
    """A P-256 private key held in Python (pure-Python arithmetic). A
    Signer: .public_key and .sign(message)."""

    def __init__(self, d):
        if not isinstance(d, int) or not 0 < d < p256.N:
            raise LocalProtocolError("P-256 private scalar must be an int in [1, n-1]")
        self._d = d
        self.public_key = _point(*p256.public_key(d))

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
    def load_der(cls, data):
        """Key from DER SEC1 ECPrivateKey or PKCS#8 PrivateKeyInfo (v1 or v2).
        The curve must be P-256, the scalar in [1, n-1], and an embedded
        public key must match the private one."""
        buf = _buf(data, "private key")
        s, e = der.read(buf, 0, der.SEQUENCE)
        if e != len(buf):
            raise _err("%d bytes after the key" % (len(buf) - e))
        vs, ve = der.read(buf, s, der.INTEGER, e)
        t, s2, e2 = der.read_tlv(buf, ve, e)
        pubs = []
        if t == der.OCTET_STRING:  # SEC1
            d, pub = _parse_ec_private(buf, s, e)
        elif t == der.SEQUENCE:  # PKCS#8
            if der.read_int(buf, vs, ve) not in (0, 1):
                raise _err("PKCS#8 version must be 0 or 1")
            _check_alg(buf, s2, e2)
            ks, ke = der.read(buf, e2, der.OCTET_STRING, e)
            ins, ine = der.read(buf, ks, der.SEQUENCE, ke)
            if ine != ke:
                raise _err("trailing data in PKCS#8 privateKey")
            d, pub = _parse_ec_private(buf, ins, ine)
            off = ke
            if off < e and buf[off] == 0xA0:  # attributes: ignored
                off = der.read(buf, off, 0xA0, e)[1]
            if off < e and buf[off] == 0x81:  # v2 publicKey [1] IMPLICIT BIT STRING
                bs, be = der.read(buf, off, 0x81, e)
                pubs.append(_bit_point(buf, bs, be))
                off = be
            if off != e:
                raise _err("unexpected element in PKCS#8 at offset %d" % off)
        else:
            raise _err("neither SEC1 ECPrivateKey nor PKCS#8 PrivateKeyInfo")
        if pub is not None:
            pubs.append(pub)
        key = cls(d)
        for q in pubs:
            if _point(*q) != key.public_key:
                raise _err("embedded public key does not match the private key")
        return key

    def sign(self, message, extra=b""):
        """DER ECDSA-SHA256 signature of message. `extra` is optional
        additional data for the RFC 6979 nonce (section 3.6)."""
        return self.sign_digest(sha256(message), extra)

    def sign_digest(self, digest, extra=b""):
        """DER ECDSA signature of a ready SHA-256 digest."""
        r, s = p256.sign_digest(self._d, digest, extra)
        return encode_signature(r, s)

    def _ec_private(self, params):
        parts = [_INT1, der.octet_string(self._d.to_bytes(32, "big"))]
        if params:
            parts.append(der.explicit(0, der.oid(der.OID_P256)))
        parts.append(der.tlv(0xA1, der.bit_string(self.public_key)))
        return der.seq(*parts)

    def export_sec1(self):
        """DER SEC1 ECPrivateKey (RFC 5915) with curve and public key, as
        OpenSSL writes it."""
        return self._ec_private(True)

    def export_pkcs8(self):
        """DER PKCS#8 PrivateKeyInfo (RFC 5208/5958 v1)."""
        alg = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256))
        return der.seq(_INT0, alg, der.octet_string(self._ec_private(False)))
