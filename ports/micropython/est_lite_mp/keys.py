# DER codec for P-256 keys, points and ECDSA signatures, on est_lite.der.
# Portable (no crypto backend, only the curve equation from p256.py): the
# MicroPython port and the CPython port both parse with it, so the two
# accept and reject exactly the same key material with the same messages.
#
# Malformed or invalid input raises RemoteProtocolError ("P-256: ...");
# a wrong argument type raises LocalProtocolError.

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError, const
from est_lite_mp import p256

_INT1 = const(b"\x02\x01\x01")
_INT0 = const(b"\x02\x01\x00")


def _err(msg):
    return RemoteProtocolError("P-256: " + msg)


def buf(data, what):
    """memoryview over bytes-like input, or LocalProtocolError."""
    if isinstance(data, memoryview):
        return data
    if isinstance(data, (bytes, bytearray)):
        return memoryview(data)
    raise LocalProtocolError("%s must be bytes, not %s" % (what, type(data).__name__))


def _end(off, e):
    if off != e:
        raise _err("unexpected data at offset %d" % off)


def _seq(b):
    """Contents of the SEQUENCE that must fill all of b."""
    s, e = der.read(b, 0, der.SEQUENCE)
    _end(e, len(b))
    return s, e


def point_bytes(x, y):
    """65-byte uncompressed SEC1 point 0x04 || X || Y."""
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def decode_point(b):
    """(x, y) from an uncompressed (65-byte) or compressed (33-byte) SEC1
    point, validated on the curve (coordinates below p included)."""
    n = len(b)
    t = b[0] if n else 0
    x = int.from_bytes(bytes(b[1:33]), "big")
    if n == 65 and t == 4:
        y = int.from_bytes(bytes(b[33:]), "big")
        if p256.on_curve(x, y):
            return x, y
        raise _err("point is not on the curve")
    if n == 33 and t in (2, 3):
        y = p256.decompress(x, t & 1)
        if y is not None:
            return x, y
        raise _err("compressed point is not on the curve")
    raise _err("point must be 65 bytes 04||X||Y (or 33 compressed), got %d" % n)


def _oid(b, s, e, want, what):
    """The element at s must be the OID `want`; returns its end."""
    os_, oe = der.read(b, s, der.OID, e)
    if bytes(b[os_:oe]) != want:
        raise _err("%s %s is not %s" % (what, der.oid_str(b[os_:oe]), der.oid_str(want)))
    return oe


def _check_alg(b, s, e):
    """AlgorithmIdentifier contents: id-ecPublicKey with namedCurve P-256."""
    _end(_oid(b, _oid(b, s, e, der.OID_EC_PUBLIC_KEY, "algorithm"), e, der.OID_P256, "curve"), e)


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
        s, e = _seq(b)
        as_, ae = der.read(b, s, der.SEQUENCE, e)
        _check_alg(b, as_, ae)
        bs, be = der.read(b, ae, der.BIT_STRING, e)
        _end(be, e)
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
    s, e = _seq(b)
    rs, re = der.read(b, s, der.INTEGER, e)
    ss, se = der.read(b, re, der.INTEGER, e)
    _end(se, e)
    return check_rs(der.read_int(b, rs, re), der.read_int(b, ss, se))


def check_rs(r, s):
    if 0 < r < p256.N and 0 < s < p256.N:
        return r, s
    raise _err("signature r or s out of range [1, n-1]")


def _ec_private(b, s, e):
    """ECPrivateKey (RFC 5915) contents -> (d, embedded (x, y) or None)."""
    vs, ve = der.read(b, s, der.INTEGER, e)
    if der.read_int(b, vs, ve) != 1:
        raise _err("ECPrivateKey version must be 1")
    ks, ke = der.read(b, ve, der.OCTET_STRING, e)
    if not 0 < ke - ks <= 32:
        raise _err("private key of %d bytes (expected 32)" % (ke - ks))
    d = int.from_bytes(bytes(b[ks:ke]), "big")
    pub = None
    off = ke
    if off < e and b[off] == 0xA0:
        cs, ce = der.read(b, off, 0xA0, e)
        _end(_oid(b, cs, ce, der.OID_P256, "curve"), ce)
        off = ce
    if off < e and b[off] == 0xA1:
        cs, ce = der.read(b, off, 0xA1, e)
        bs, be = der.read(b, cs, der.BIT_STRING, ce)
        _end(be, ce)
        pub = _bit_point(b, bs, be)
        off = ce
    _end(off, e)
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
    s, e = _seq(b)
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
        _end(ine, ke)
        d, pub = _ec_private(b, ins, ine)
        off = ke
        if off < e and b[off] == 0xA0:  # attributes: ignored
            off = der.read(b, off, 0xA0, e)[1]
        if off < e and b[off] == 0x81:  # v2 publicKey [1] IMPLICIT BIT STRING
            bs, be = der.read(b, off, 0x81, e)
            pubs.append(_bit_point(b, bs, be))
            off = be
        _end(off, e)
    else:
        raise _err("key is neither SEC1 ECPrivateKey nor PKCS#8")
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
