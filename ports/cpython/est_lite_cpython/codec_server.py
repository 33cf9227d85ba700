# Encoders that only a server, a proxy or a test needs, moved out of the
# portable client core (est_lite/) so that a device does not carry them.
# Plain Python in the core's style: it also runs under MicroPython (the
# portable tests use it there to build their inputs).
#
#   cbor_encode(obj)                        was est_lite.cbor.encode
#   encode_multipart(parts)                 was est_lite.cbor.encode_multipart
#   build_certs_only(certs, sort=True)      was est_lite.pkcs7.build_certs_only
#   csrattrs_encode(items)                  was est_lite.csrattrs.encode
#   extension_request(extensions)           was est_lite.csrattrs.extension_request
#   csrattrs_template(subject=, ...)        was est_lite.csrattrs.template
#   build_multipart(parts, boundary)        was est_lite.http1.build_multipart
#   der_check(buf, ...), der_null(),        were est_lite.der.check, der.null,
#   der_implicit(n, content, constructed)   der.implicit
#
# The decoders stay in the core (cbor.decode, pkcs7.certificates,
# csrattrs.decode, http1.parse_multipart).
from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError

# ---------------------------------------------------------------- CBOR (RFC 8949 subset, RFC 8710)

_BYTES = (bytes, bytearray, memoryview)
_SUBSET = "outside the CBOR subset (uint, bytes, array, null)"


def _head(out, mt, n):
    if n < 24:
        out.append(bytes((mt | n,)))
        return
    k = 1  # argument bytes: 1, 2, 4 or 8 for additional information 24..27
    ai = mt | 24
    while n >> (k << 3):
        k <<= 1
        ai += 1
    if k > 8:
        raise LocalProtocolError("integer %d is above 2**64-1" % n)
    out.append(bytes((ai,)) + n.to_bytes(k, "big"))


def _enc(o, out):
    if o is None:
        out.append(b"\xf6")
    elif type(o) is int and o >= 0:
        _head(out, 0, o)
    elif isinstance(o, _BYTES):
        _head(out, 0x40, len(o))
        out.append(bytes(o) if type(o) is memoryview else o)
    elif isinstance(o, (list, tuple)):
        _head(out, 0x80, len(o))
        for x in o:
            _enc(x, out)
    else:
        raise LocalProtocolError("%r is %s" % (o, _SUBSET))


def cbor_encode(obj):
    """CBOR bytes for obj: int >= 0, bytes-like, list/tuple of those, None
    (the subset est_lite.cbor.decode reads)."""
    out = []
    _enc(obj, out)
    return b"".join(out)


def encode_multipart(parts):
    """application/multipart-core (RFC 8710) for [(content_format, bytes or None), ...]."""
    items = []
    for cf, p in parts:
        if type(cf) is not int or not 0 <= cf < 65536 or not (p is None or isinstance(p, _BYTES)):
            raise LocalProtocolError(
                "multipart part (%r, %r) needs a content-format 0..65535 and bytes or None" % (cf, type(p))
            )
        items += (cf, p)
    return cbor_encode(items)


# ---------------------------------------------------------------- PKCS#7 certs-only


def _one_der(v, what, tag=None):
    try:
        t, _, e = der.read_tlv(v, 0, None, len(v))
        ok = e == len(v) and tag in (None, t)
    except RemoteProtocolError:
        ok = False
    if not ok:
        raise LocalProtocolError(what)


def build_certs_only(certs, sort=True):
    """Certs-only SignedData (DER) holding the given DER certificates. DER
    orders the SET OF certificates (sort=True); sort=False keeps the given
    order, as many servers do (readers must not rely on either)."""
    if not certs:
        raise LocalProtocolError("build_certs_only needs at least one certificate")
    for c in certs:
        _one_der(c, "each certificate must be one DER SEQUENCE", der.SEQUENCE)
    sd = der.seq(
        b"\x02\x01\x01",  # version 1
        b"\x31\x00",  # digestAlgorithms: empty
        der.seq(der.oid(der.OID_DATA)),
        der.tlv(0xA0, *(sorted(bytes(c) for c in certs) if sort else certs)),
        b"\x31\x00",  # signerInfos: empty
    )
    return der.seq(der.oid(der.OID_SIGNED_DATA), der.tlv(0xA0, sd))


# ---------------------------------------------------------------- CSR attributes (RFC 7030 §4.5.2, RFC 9908)

_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
_CSR_TEMPLATE = "1.2.840.113549.1.9.16.2.61"
_EXTENSION_REQ_TEMPLATE = "1.2.840.113549.1.9.16.2.62"


def _ext(oid, critical, value):
    parts = [der.oid(oid)]
    if critical:
        parts.append(der.boolean(True))
    if value is not None:
        parts.append(der.octet_string(value))
    return der.seq(*parts)


def extension_request(extensions):
    """Item for csrattrs_encode(): an extensionRequest attribute from
    [(oid, critical, value_der_or_None)]. If any value is None the
    RFC 9908 extensionReqTemplate type is used."""
    if not extensions:
        raise LocalProtocolError("extension_request needs at least one extension")
    tmpl = False
    exts = []
    for oid, crit, val in extensions:
        tmpl = tmpl or val is None
        exts.append(_ext(oid, crit, val))
    return (_EXTENSION_REQ_TEMPLATE if tmpl else _EXTENSION_REQUEST, [der.seq(*exts)])


def csrattrs_template(subject=(), key_alg=None, key_params=None, extensions=(), attributes=()):
    """Item for csrattrs_encode(): an RFC 9908 CertificationRequestInfoTemplate.
    subject: [(type_oid, value_der_or_None)] one RDN each; extensions as for
    extension_request; attributes: extra [(type_oid, [value_der])]."""
    parts = [der.integer(0)]
    if subject:
        rdns = []
        for ty, val in subject:
            rdns.append(der.set_of(der.seq(der.oid(ty), val or b"")))
        parts.append(der.seq(*rdns))
    if key_alg:
        alg = der.seq(der.oid(key_alg), der.oid(key_params) if key_params else b"")
        parts.append(der.tlv(0xA0, alg))
    attrs = []
    if extensions:
        attrs.append(_attr(*extension_request(extensions)))
    for ty, vals in attributes:
        attrs.append(_attr(ty, vals))
    parts.append(der.tlv(0xA1, *sorted(attrs)))
    return (_CSR_TEMPLATE, [der.seq(*parts)])


def _attr(ty, vals):
    if not vals:
        raise LocalProtocolError("attribute %s needs at least one value" % ty)
    for v in vals:
        _one_der(v, "attribute %s: each value must be one DER element" % ty)
    return der.seq(der.oid(ty), der.set_of(*vals))


def csrattrs_encode(items):
    """CsrAttrs DER from items, in order: each a dotted OID (str) or a
    (type_oid, [value_der, ...]) attribute (see extension_request and
    csrattrs_template for the structured ones)."""
    parts = []
    for it in items:
        if isinstance(it, str):
            parts.append(der.oid(it))
        else:
            parts.append(_attr(it[0], it[1]))
    return der.seq(*parts)


# ---------------------------------------------------------------- multipart/mixed (RFC 7030 §4.4.2)


def build_multipart(parts, boundary):
    """multipart/mixed body of parts [(content_type, der)], each base64 in
    64-column lines with Content-Transfer-Encoding: base64."""
    from est_lite.http1 import b64_encode_lines

    d = boundary.encode() if isinstance(boundary, str) else bytes(boundary)
    if not 0 < len(d) <= 70 or b"\r" in d or b"\n" in d:
        raise LocalProtocolError("bad boundary %r" % d)
    out = []
    for ct, body in parts:
        if [c for c in ct if c < " " or c == "\x7f"]:
            raise LocalProtocolError("content type %r: control character" % ct)
        out.append(b"--%s\r\nContent-Type: %s\r\nContent-Transfer-Encoding: base64\r\n\r\n" % (d, ct.encode()))
        out.append(b64_encode_lines(body))
    out.append(b"--%s--\r\n" % d)
    return b"".join(out)


# ---------------------------------------------------------------- DER helpers


def der_check(buf, start=0, end=None, max_depth=der.MAX_DEPTH, max_length=der.MAX_LENGTH):
    """Validate that buf[start:end] is a sequence of well-formed DER TLVs,
    descending into constructed ones (without recursion) up to max_depth
    levels. Returns the number of top-level elements. (was est_lite.der.check)"""
    from est_lite.errors import LimitError

    if end is None:
        end = len(buf)
    stack = [end]
    off = start
    count = 0
    while True:
        while off == stack[-1]:
            stack.pop()
            if not stack:
                return count
        t, s, e = der.read_tlv(buf, off, stack[-1], max_length)
        if len(stack) == 1:
            count += 1
        if t & der.CONSTRUCTED and s < e:
            if len(stack) > max_depth:
                raise LimitError("DER: nesting > max_depth=%d" % max_depth)
            stack.append(e)
            off = s
        else:
            off = e


def der_null():
    """DER NULL (was est_lite.der.null)."""
    return b"\x05\x00"


def der_implicit(n, content, constructed=False):
    """[n] IMPLICIT: context tag around raw contents (was est_lite.der.implicit)."""
    return der.tlv((0xA0 if constructed else 0x80) | n, content)
