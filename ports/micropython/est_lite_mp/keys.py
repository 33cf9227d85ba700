# DER codec for P-256 keys, points and ECDSA signatures, on est_lite.der.
# Portable (no crypto backend, only the curve equation from p256.py): the
# MicroPython port and the CPython port both parse with it, so the two
# accept and reject exactly the same key material with the same messages.
#
# Malformed or invalid input raises RemoteProtocolError ("P-256 key: ...");
# a wrong argument type raises LocalProtocolError.

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError
from est_lite_mp import p256

_INT1 = b"\x02\x01\x01"
_INT0 = b"\x02\x01\x00"


def _err(msg):
    return RemoteProtocolError("P-256 key: " + msg)


def buf(data, what):
    """memoryview over bytes-like input, or LocalProtocolError."""
    if isinstance(data, memoryview):
        return data
    if not isinstance(data, (bytes, bytearray)):
        raise LocalProtocolError("%s must be bytes, got %s" % (what, type(data).__name__))
    return memoryview(data)


def point_bytes(x, y):
    """65-byte uncompressed SEC1 point 0x04 || X || Y."""
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def decode_point(b):
    """(x, y) from an uncompressed (65-byte) or compressed (33-byte) SEC1
    point, validated on the curve."""
    n = len(b)
    if n == 65 and b[0] == 4:
        x = int.from_bytes(bytes(b[1:33]), "big")
        y = int.from_bytes(bytes(b[33:65]), "big")
        if x >= p256.P or y >= p256.P:
            raise _err("point coordinate not below the field prime p")
        if not p256.on_curve(x, y):
            raise _err("point is not on the P-256 curve")
        return x, y
    if n == 33 and b[0] in (2, 3):
        x = int.from_bytes(bytes(b[1:33]), "big")
        y = p256.decompress(x, b[0] & 1)
        if y is None:
            raise _err("compressed point: x is not on the P-256 curve")
        return x, y
    raise _err("expected a 65-byte uncompressed point (04||X||Y) or a 33-byte compressed one, got %d bytes" % n)


def _check_curve(b, s, e):
    """b[s:e] must be exactly the OID of P-256."""
    t, os_, oe = der.read_tlv(b, s, e)
    if t != der.OID or oe != e:
        raise _err("curve parameters must be a named-curve OID")
    if bytes(b[os_:oe]) != der.OID_P256:
        raise _err("curve %s is not P-256 (1.2.840.10045.3.1.7)" % der.oid_str(b[os_:oe]))


def _check_alg(b, s, e):
    """AlgorithmIdentifier contents: id-ecPublicKey with namedCurve P-256."""
    os_, oe = der.read(b, s, der.OID, e)
    if bytes(b[os_:oe]) != der.OID_EC_PUBLIC_KEY:
        raise _err("algorithm %s is not id-ecPublicKey" % der.oid_str(b[os_:oe]))
    _check_curve(b, oe, e)


def _bit_point(b, s, e):
    """BIT STRING contents holding a point -> (x, y)."""
    u, ds, de = der.read_bit_string(b, s, e)
    if u:
        raise _err("public key BIT STRING has unused bits")
    return decode_point(b[ds:de])


def public_xy(data):
    """(x, y) from a SEC1 point (uncompressed or compressed) or a DER
    SubjectPublicKeyInfo, validated on the curve."""
    b = buf(data, "public key")
    if len(b) and b[0] == der.SEQUENCE:
        s, e = der.read(b, 0, der.SEQUENCE)
        if e != len(b):
            raise _err("%d bytes after the SubjectPublicKeyInfo" % (len(b) - e))
        as_, ae = der.read(b, s, der.SEQUENCE, e)
        _check_alg(b, as_, ae)
        bs, be = der.read(b, ae, der.BIT_STRING, e)
        if be != e:
            raise _err("trailing data in SubjectPublicKeyInfo")
        return _bit_point(b, bs, be)
    return decode_point(b)


def _alg():
    return der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256))


def spki(point):
    """DER SubjectPublicKeyInfo for a 65-byte point."""
    return der.seq(_alg(), der.bit_string(point))


def encode_signature(r, s):
    """DER Ecdsa-Sig-Value from the two integers."""
    return der.seq(der.integer(r), der.integer(s))


def decode_signature(sig):
    """(r, s) from a DER Ecdsa-Sig-Value; RemoteProtocolError if it is
    malformed or r, s are not in [1, n-1]."""
    b = buf(sig, "signature")
    s0, e0 = der.read(b, 0, der.SEQUENCE)
    if e0 != len(b):
        raise RemoteProtocolError("ECDSA signature: trailing bytes")
    rs, re = der.read(b, s0, der.INTEGER, e0)
    ss, se = der.read(b, re, der.INTEGER, e0)
    if se != e0:
        raise RemoteProtocolError("ECDSA signature: more than two INTEGERs")
    r = der.read_int(b, rs, re)
    s = der.read_int(b, ss, se)
    if not (0 < r < p256.N and 0 < s < p256.N):
        raise RemoteProtocolError("ECDSA signature: r or s out of range [1, n-1]")
    return r, s


def raw_signature(sig):
    """(r, s) from a raw 64-byte r || s (secure elements emit this)."""
    if len(sig) != 64:
        raise RemoteProtocolError("raw ECDSA signature must be 64 bytes, got %d" % len(sig))
    r = int.from_bytes(bytes(sig[:32]), "big")
    s = int.from_bytes(bytes(sig[32:]), "big")
    if not (0 < r < p256.N and 0 < s < p256.N):
        raise RemoteProtocolError("ECDSA signature: r or s out of range [1, n-1]")
    return r, s


def _ec_private(b, s, e):
    """ECPrivateKey (RFC 5915) contents -> (d, embedded (x, y) or None)."""
    vs, ve = der.read(b, s, der.INTEGER, e)
    if der.read_int(b, vs, ve) != 1:
        raise _err("ECPrivateKey version must be 1")
    ks, ke = der.read(b, ve, der.OCTET_STRING, e)
    if not 0 < ke - ks <= 32:
        raise _err("private key octet string of %d bytes (expected 32)" % (ke - ks))
    d = int.from_bytes(bytes(b[ks:ke]), "big")
    pub = None
    off = ke
    if off < e and b[off] == 0xA0:
        cs, ce = der.read(b, off, 0xA0, e)
        _check_curve(b, cs, ce)
        off = ce
    if off < e and b[off] == 0xA1:
        cs, ce = der.read(b, off, 0xA1, e)
        bs, be = der.read(b, cs, der.BIT_STRING, ce)
        if be != ce:
            raise _err("trailing data in ECPrivateKey publicKey")
        pub = _bit_point(b, bs, be)
        off = ce
    if off != e:
        raise _err("unexpected element in ECPrivateKey at offset %d" % off)
    if not d:
        raise _err("private scalar is zero (must be in [1, n-1])")
    if d >= p256.N:
        raise _err("private scalar is not below the group order n")
    return d, pub


def parse_private(data):
    """DER SEC1 ECPrivateKey or PKCS#8 PrivateKeyInfo (v1 or v2) ->
    (d, list of embedded public points as (x, y)). The curve must be P-256
    and d in [1, n-1]; the caller checks the embedded points against d*G."""
    b = buf(data, "private key")
    s, e = der.read(b, 0, der.SEQUENCE)
    if e != len(b):
        raise _err("%d bytes after the key" % (len(b) - e))
    vs, ve = der.read(b, s, der.INTEGER, e)
    t, s2, e2 = der.read_tlv(b, ve, e)
    pubs = []
    if t == der.OCTET_STRING:  # SEC1
        d, pub = _ec_private(b, s, e)
    elif t == der.SEQUENCE:  # PKCS#8
        if der.read_int(b, vs, ve) not in (0, 1):
            raise _err("PKCS#8 version must be 0 or 1")
        _check_alg(b, s2, e2)
        ks, ke = der.read(b, e2, der.OCTET_STRING, e)
        ins, ine = der.read(b, ks, der.SEQUENCE, ke)
        if ine != ke:
            raise _err("trailing data in PKCS#8 privateKey")
        d, pub = _ec_private(b, ins, ine)
        off = ke
        if off < e and b[off] == 0xA0:  # attributes: ignored
            off = der.read(b, off, 0xA0, e)[1]
        if off < e and b[off] == 0x81:  # v2 publicKey [1] IMPLICIT BIT STRING
            bs, be = der.read(b, off, 0x81, e)
            pubs.append(_bit_point(b, bs, be))
            off = be
        if off != e:
            raise _err("unexpected element in PKCS#8 at offset %d" % off)
    else:
        raise _err("neither SEC1 ECPrivateKey nor PKCS#8 PrivateKeyInfo")
    if pub is not None:
        pubs.append(pub)
    return d, pubs


def check_embedded(pubs, point):
    """Every embedded public key must equal the computed 65-byte point."""
    for q in pubs:
        if point_bytes(q[0], q[1]) != point:
            raise _err("embedded public key does not match the private key")


def ec_private_der(d, point, params=True):
    """DER SEC1 ECPrivateKey; with the curve OID when params (as OpenSSL
    writes it), without inside PKCS#8."""
    parts = [_INT1, der.octet_string(d.to_bytes(32, "big"))]
    if params:
        parts.append(der.explicit(0, der.oid(der.OID_P256)))
    parts.append(der.tlv(0xA1, der.bit_string(point)))
    return der.seq(*parts)


def pkcs8_der(d, point):
    """DER PKCS#8 PrivateKeyInfo v1 (RFC 5208), as OpenSSL writes it."""
    return der.seq(_INT0, _alg(), der.octet_string(ec_private_der(d, point, False)))
