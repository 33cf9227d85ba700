# Certs-only CMS SignedData (RFC 5652 §5, RFC 7030 §4.1.3 "certs-only") and
# the few X.509 fields a client needs without a crypto library.
#
#   ContentInfo ::= SEQUENCE { contentType OID (signedData), content [0] EXPLICIT SignedData }
#   SignedData ::= SEQUENCE { version INTEGER, digestAlgorithms SET, encapContentInfo
#       SEQUENCE { OID, [0] EXPLICIT OCTET STRING OPTIONAL },
#       certificates [0] IMPLICIT SET OF CertificateChoices OPTIONAL,
#       crls [1] IMPLICIT ... OPTIONAL, signerInfos SET }
#
# Tolerated, because real servers send them: certificates in any order (the
# SET OF is not checked for DER ordering), any SignedData version, non-empty
# digestAlgorithms/signerInfos (ignored: nothing is verified here), a crls
# field (ignored), CertificateChoices other than Certificate (skipped),
# trailing zero bytes after the ContentInfo. Not tolerated: BER indefinite
# lengths (read_tlv rejects them with a message saying so).

from est_lite import der
from est_lite.errors import LimitError, RemoteProtocolError, const

_SEQ = const(0x30)  # = _SEQ etc.: folded by mpy-cross, no attribute lookups
_SET = const(0x31)
_INT = const(0x02)
_OID = const(0x06)
_BITS = const(0x03)


def _bad(what):
    return RemoteProtocolError(what)


def _content_info(mv, n, m):
    """-> (signedData_start, signedData_end) after checking the wrapper."""
    s, e = der.read(mv, 0, _SEQ, n, m)
    for i in range(e, n):
        if mv[i]:
            raise _bad("PKCS#7: trailing bytes")
    os_, off = der.read(mv, s, _OID, e)
    if mv[os_:off] != b"\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02":  # 1.2.840.113549.1.7.2
        raise _bad("PKCS#7: content type is not signedData")
    xs, xe = der.read(mv, off, 0xA0, e, m)
    if xe != e:
        raise _bad("PKCS#7: trailing bytes")
    ss, se = der.read(mv, xs, _SEQ, xe, m)
    if se != xe:
        raise _bad("PKCS#7: trailing bytes")
    return ss, se


def certificates(data, max_certs=8, max_size=0x10000):
    """Certificates (DER, as memoryview slices of data) of a certs-only
    SignedData, in the order they appear. Raises RemoteProtocolError if the
    structure is malformed or holds no certificate."""
    n = len(data)
    if n > max_size:
        raise LimitError("PKCS#7: %d bytes exceeds max_size=%d" % (n, max_size))
    mv = data if isinstance(data, memoryview) else memoryview(data)
    s, e = _content_info(mv, n, max_size)
    vs, off = der.read(mv, s, _INT, e)
    der.read_int(mv, vs, off)  # version: any value, but a valid INTEGER
    _, off = der.read(mv, off, _SET, e, max_size)  # digestAlgorithms
    es, off = der.read(mv, off, _SEQ, e, max_size)  # encapContentInfo
    der.read(mv, es, _OID, off)
    certs = []
    if off < e and mv[off] == 0xA0:
        p, off = der.read(mv, off, 0xA0, e, max_size)
        while p < off:
            t, _, b = der.read_tlv(mv, p, off, max_size)
            if t == _SEQ:  # skip other CertificateChoices
                if len(certs) >= max_certs:
                    raise LimitError("PKCS#7: more than max_certs=%d certificates" % max_certs)
                certs.append(mv[p:b])
            p = b
    if off < e and mv[off] == 0xA1:  # crls: ignored
        _, off = der.read(mv, off, 0xA1, e, max_size)
    _, off = der.read(mv, off, _SET, e, max_size)  # signerInfos
    if off != e:
        raise _bad("PKCS#7: trailing bytes")
    if not certs:
        raise RemoteProtocolError("PKCS#7: no certificates in certs-only response")
    return certs


# ---------------------------------------------------------------- X.509 view


def _time(mv, off, end):
    # UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ (RFC 5280 forms)
    t, s, e = der.read_tlv(mv, off, end)
    k = e - s - 11 if t in (0x17, 0x18) and e - s == 2 * t - 33 else 0  # UTCTime: 13 bytes, 2-digit year
    d = bytes(mv[s : e - 1])
    if k and mv[e - 1] == 0x5A and d.isdigit():  # 'Z'
        v = [int(d[:k])] + [int(d[i : i + 2]) for i in range(k, k + 10, 2)]
        if k == 2:
            v[0] += 1900 if v[0] >= 50 else 2000
        if 1 <= v[1] <= 12 and 1 <= v[2] <= 31 and v[3] < 24 and v[4] < 60 and v[5] < 61:
            return tuple(v), e
    raise _bad("X.509: bad time")


def cert_tbs_fields(cert, max_length=0x10000):
    """Parse the parts of a DER certificate a port needs to check a chain
    with its own crypto. Returns a dict:
      tbs, sig_alg_der, signature: memoryview slices (tbs is the whole
          TBSCertificate TLV, signature the BIT STRING bytes after the
          unused-bits byte)
      sig_alg: OID text;  version: 1..3;  serial: int
      issuer, subject, spki: memoryview slices of the whole TLVs
      not_before, not_after: (year, month, day, hour, minute, second)
      key_alg, key_params: OID text (key_params None if not an OID)
      public_key: memoryview of the subjectPublicKey bits (for EC: 0x04||X||Y)
      extensions: memoryview of the Extensions SEQUENCE contents, or None"""
    mv = cert if isinstance(cert, memoryview) else memoryview(cert)
    n = len(mv)
    cs, ce = der.read(mv, 0, _SEQ, n, max_length)
    if ce != n:
        raise _bad("X.509: trailing bytes")
    ts, te = der.read(mv, cs, _SEQ, ce, max_length)
    as_, ae = der.read(mv, te, _SEQ, ce)
    os_, oe = der.read(mv, as_, _OID, ae)
    sig_alg = der.oid_str(mv[os_:oe])
    bs, be = der.read(mv, ae, _BITS, ce, max_length)
    if be != ce:
        raise _bad("X.509: trailing bytes")
    u, bs, be = der.read_bit_string(mv, bs, be)
    if u:
        raise _bad("X.509: bad signature")
    off = ts
    ver = 1
    if off < te and mv[off] == 0xA0:
        vs, off = der.read(mv, off, 0xA0, te)
        a, b = der.read(mv, vs, _INT, off)
        ver = der.read_int(mv, a, b) + 1
        if not 1 <= ver <= 3 or b != off:
            raise _bad("X.509: bad version")
    a, off = der.read(mv, off, _INT, te)
    serial = der.read_int(mv, a, off)
    _, off = der.read(mv, off, _SEQ, te)  # signature AlgorithmIdentifier
    i0 = off
    _, off = der.read(mv, off, _SEQ, te)
    i1 = off  # issuer: mv[i0:i1]
    vs, ve = der.read(mv, off, _SEQ, te)
    nb, p = _time(mv, vs, ve)
    na, p = _time(mv, p, ve)
    if p != ve:
        raise _bad("X.509: bad time")
    _, s1 = der.read(mv, ve, _SEQ, te)  # subject: mv[ve:s1]
    ks, off = der.read(mv, s1, _SEQ, te)  # spki: mv[s1:off]
    als, ale = der.read(mv, ks, _SEQ, off)
    a, b = der.read(mv, als, _OID, ale)
    key_alg = der.oid_str(mv[a:b])
    key_params = None
    if b < ale and mv[b] == _OID:
        c, d = der.read(mv, b, _OID, ale)
        key_params = der.oid_str(mv[c:d])
    ps, pe = der.read(mv, ale, _BITS, off)
    u, ps, pe = der.read_bit_string(mv, ps, pe)
    k0 = off
    ext = None
    while off < te:  # issuerUniqueID [1], subjectUniqueID [2], extensions [3]
        t, a, b = der.read_tlv(mv, off, te)
        if t == 0xA3:
            xs, xe = der.read(mv, a, _SEQ, b)
            if xe != b:
                raise _bad("X.509: bad extensions")
            ext = mv[xs:xe]
        elif t not in (0x81, 0x82, 0xA1, 0xA2):
            raise _bad("X.509: bad TBSCertificate")
        off = b
    # one dict display: made at its final size (no regrowing on the way)
    return {
        "tbs": mv[cs:te],
        "sig_alg_der": mv[te:ae],
        "sig_alg": sig_alg,
        "signature": mv[bs:be],
        "version": ver,
        "serial": serial,
        "issuer": mv[i0:i1],
        "not_before": nb,
        "not_after": na,
        "subject": mv[ve:s1],
        "spki": mv[s1:k0],
        "key_alg": key_alg,
        "key_params": key_params,
        "public_key": mv[ps:pe],
        "extensions": ext,
    }


def cert_extensions(fields):
    """Yield (oid_text, critical, value_memoryview) for each extension of a
    cert_tbs_fields() result."""
    mv = fields["extensions"]
    if mv is None:
        return
    for t, a, b in der.iter_tlv(mv, 0, len(mv)):
        if t != _SEQ:
            raise _bad("X.509: bad extensions")
        os_, oe = der.read(mv, a, _OID, b)
        off = oe
        crit = False
        if off < b and mv[off] == 1:
            c, off = der.read(mv, off, 1, b)  # BOOLEAN
            crit = off - c == 1 and mv[c] == 0xFF
        vs, ve = der.read(mv, off, 4, b)  # OCTET STRING
        if ve != b:
            raise _bad("X.509: bad extensions")
        yield der.oid_str(mv[os_:oe]), crit, mv[vs:ve]
