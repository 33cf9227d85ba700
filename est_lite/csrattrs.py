# CSR Attributes (RFC 7030 §4.5.2, ASN.1 clarified by RFC 8951 §3.3 and RFC 9908).
#
#   CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
#   AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
#   Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE(1..MAX) OF ANY }
#
# RFC 9908 adds a template: an Attribute of type id-aa-certificationRequestInfoTemplate
# whose value is a CertificationRequestInfo with optional parts, and
# extension templates (Extension with an OPTIONAL extnValue).
#
# decode() never raises anything but RemoteProtocolError/LimitError on peer
# bytes. Values that do not have the shape RFC 9908 requires (the RFC 7030
# and RFC 8951 examples put a bare OID inside extensionRequest) are kept as
# plain attribute values and listed in CsrAttrs.unparsed instead of failing
# the whole response: a client MUST ignore what it does not understand.

from est_lite import der
from est_lite.errors import LimitError, LocalProtocolError, RemoteProtocolError, const

_SEQ = const(0x30)  # = _SEQ etc.: folded by mpy-cross, no attribute lookups
_SET = const(0x31)
_OID = const(0x06)

CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
P256 = "1.2.840.10045.3.1.7"
# RFC 9908 §7 (IANA, SMI Security for S/MIME Attributes)
CSR_TEMPLATE = "1.2.840.113549.1.9.16.2.61"  # id-aa-certificationRequestInfoTemplate
EXTENSION_REQ_TEMPLATE = "1.2.840.113549.1.9.16.2.62"  # id-aa-extensionReqTemplate

# signature or hash algorithm OIDs, by hash: ecdsa-with-SHAx, shaxWithRSAEncryption, SHA-x
_HASHES = const((
    ("sha256", "1.2.840.10045.4.3.2", "1.2.840.113549.1.1.11", "2.16.840.1.101.3.4.2.1"),
    ("sha384", "1.2.840.10045.4.3.3", "1.2.840.113549.1.1.12", "2.16.840.1.101.3.4.2.2"),
    ("sha512", "1.2.840.10045.4.3.4", "1.2.840.113549.1.1.13", "2.16.840.1.101.3.4.2.3"),
))
_CURVES = const(("1.2.840.10045.3.1.7", "1.3.132.0.34", "1.3.132.0.35"))  # P256 first


class CsrAttrs:
    """Decoded CSR attributes.

    oids        bare OIDs, dotted text, in order
    attributes  list of (type_oid, [value_der, ...]) in order (values as bytes)
    extensions  list of (extn_oid, critical, value_or_None) requested through
                extensionRequest / extension templates (None: client fills in)
    template    None, or dict with 'subject' [(type_oid, value_der_or_None)],
                'key_alg', 'key_params' (OID text or None) and 'attributes'
    unparsed    short descriptions of values we kept but could not interpret
    """

    template = None

    def __init__(self):
        self.oids = []
        self.attributes = []
        self.extensions = []
        self.unparsed = []

    def __len__(self):
        return len(self.oids) + len(self.attributes)

    def has(self, oid):
        """True if oid is requested, bare or as an attribute type."""
        return oid in self.oids or oid in [t for t, _ in self.attributes]

    def values(self, oid):
        """Values (DER bytes) of the first attribute of that type, or []."""
        for t, v in self.attributes:
            if t == oid:
                return v
        return []

    @property
    def wants_challenge_password(self):
        t = self.template
        return self.has(CHALLENGE_PASSWORD) or t is not None and CHALLENGE_PASSWORD in [a for a, _ in t["attributes"]]

    @property
    def key_curve(self):
        """Requested EC curve OID (e.g. '1.2.840.10045.3.1.7') or None."""
        t = self.template
        if t is not None and t["key_alg"] == EC_PUBLIC_KEY and t["key_params"]:
            return t["key_params"]
        for v in self.values(EC_PUBLIC_KEY):
            c = _oid_value(v)
            if c:
                return c
        for o in self.oids:
            if o in _CURVES:
                return o

    @property
    def signature_alg(self):
        """First bare OID that names a signature or hash algorithm, or None."""
        return (self._sig() or (None,))[0]

    @property
    def hash_alg(self):
        """'sha256', 'sha384', 'sha512' or None."""
        return (self._sig() or (0, None))[1]

    def _sig(self):
        for o in self.oids:
            for h in _HASHES:
                if o in h[1:]:
                    return o, h[0]

    @property
    def extension_oids(self):
        return [e[0] for e in self.extensions]


def _oid_value(v):
    """Dotted text if the DER value v is an OBJECT IDENTIFIER, else None."""
    try:
        s, e = der.read(v, 0, _OID)
        if e == len(v):
            return der.oid_str(memoryview(v)[s:e])
    except RemoteProtocolError:
        pass


def _bad(what):
    return RemoteProtocolError("csrattrs: bad " + what)


def _elems(mv, s, e, tag, out, max_items):
    # (tag, start, content_start, end) of each element of mv[s:e]; each must
    # have the given tag (0: any) and len(out) stays <= max_items
    r = []
    while s < e:
        t, a, b = der.read_tlv(mv, s, e)
        if tag and t != tag:
            raise _bad("element tag 0x%02x" % t)
        if len(out) + len(r) >= max_items:
            raise LimitError("csrattrs: more than max_items=%d" % max_items)
        r.append((t, s, a, b))
        s = b
    return r


def _read_oid(mv, off, end):
    s, e = der.read(mv, off, _OID, end)
    return der.oid_str(mv[s:e]), e


def _attribute(mv, s, e, max_items):
    """Attribute contents -> (type_oid, [value bytes])."""
    t, off = _read_oid(mv, s, e)
    vs, ve = der.read(mv, off, _SET, e)
    vals = [bytes(mv[x:b]) for _, x, _, b in _elems(mv, vs, ve, 0, (), max_items)]
    if ve != e or not vals:
        raise _bad("attribute " + t)
    return t, vals


def _extensions(v, out, max_items):
    """Parse Extensions / ExtensionTemplates (a SEQUENCE OF) into out."""
    mv = memoryview(v)
    s, e = der.read(mv, 0, _SEQ)
    if e != len(mv):
        raise _bad("extensions")
    for _, _, a, b in _elems(mv, s, e, _SEQ, out, max_items):
        oid, off = _read_oid(mv, a, b)
        crit = False
        val = None
        if off < b and mv[off] == 1:  # BOOLEAN critical
            cs, off = der.read(mv, off, 1, b)
            if off - cs != 1 or mv[cs] not in (0, 0xFF):
                raise _bad("BOOLEAN")
            crit = mv[cs] == 0xFF
        if off < b:
            cs, off = der.read(mv, off, 4, b)  # OCTET STRING extnValue
            val = bytes(mv[cs:off])
        if off != b:
            raise _bad("extension " + oid)
        out.append((oid, crit, val))


def _template(v, out, max_items):  # fills out (a CsrAttrs)
    mv = memoryview(v)
    s, e = der.read(mv, 0, _SEQ)
    vs, off = der.read(mv, s, 2, e)  # INTEGER version
    if der.read_int(mv, vs, off) != 0:
        raise _bad("template version")
    subj = []
    tpl = {"subject": subj, "key_alg": None, "key_params": None, "attributes": []}
    if off < e and mv[off] == _SEQ:  # subject NameTemplate
        ns, off = der.read(mv, off, _SEQ, e)
        for _, _, a, b in _elems(mv, ns, off, _SET, (), max_items):
            for _, _, c, d in _elems(mv, a, b, _SEQ, subj, max_items):
                ty, p = _read_oid(mv, c, d)
                if p < d and der.read_tlv(mv, p, d)[2] != d:
                    raise _bad("subject template")
                subj.append((ty, bytes(mv[p:d]) if p < d else None))
    if off < e and mv[off] == 0xA0:  # [0] SubjectPublicKeyInfoTemplate
        ks, off = der.read(mv, off, 0xA0, e)
        als, ale = der.read(mv, ks, _SEQ, off)
        tpl["key_alg"], p = _read_oid(mv, als, ale)
        tpl["key_params"] = _oid_value(bytes(mv[p:ale]))
    as_, ae = der.read(mv, off, 0xA1, e)  # [1] attributes
    if ae != e:
        raise _bad("template")
    for _, _, a, b in _elems(mv, as_, ae, _SEQ, (), max_items):
        ty, vals = _attribute(mv, a, b, max_items)
        if ty in (EXTENSION_REQUEST, EXTENSION_REQ_TEMPLATE):
            _extensions(vals[0], out.extensions, max_items)
        tpl["attributes"].append((ty, vals))
    out.template = tpl


def decode(data, max_items=32, max_size=4096):
    """CsrAttrs DER (bytes/memoryview) -> CsrAttrs. An empty body is an empty
    CsrAttrs (same as 204/404)."""
    n = len(data)
    if n > max_size:
        raise LimitError("csrattrs: %d bytes > max_size=%d" % (n, max_size))
    res = CsrAttrs()
    if n == 0:
        return res
    mv = memoryview(data)
    s, e = der.read(mv, 0, _SEQ)
    if e != n:
        raise _bad("trailing data")
    for t, _, a, b in _elems(mv, s, e, 0, (), max_items):
        if t == _OID:
            res.oids.append(der.oid_str(mv[a:b]))
        elif t == _SEQ:
            ty, vals = _attribute(mv, a, b, max_items)
            res.attributes.append((ty, vals))
            if ty in (EXTENSION_REQUEST, EXTENSION_REQ_TEMPLATE, CSR_TEMPLATE):
                try:
                    if ty == CSR_TEMPLATE:
                        _template(vals[0], res, max_items)
                    else:
                        _extensions(vals[0], res.extensions, max_items)
                except LimitError:
                    raise
                except RemoteProtocolError as ex:
                    res.unparsed.append("%s: %s" % (ty, ex))
        else:
            raise _bad("entry tag 0x%02x (not OID or Attribute)" % t)
    return res


# ---------------------------------------------------------------- following them


def apply(builder, attrs, strict=False):
    """est_lite.csr.CsrBuilder.apply_csrattrs (see there): a new builder
    following attrs, with .unmet and .ignored. attrs None (a CsrAttrs
    event's when the server has none): nothing to follow."""
    if attrs is None:
        return builder
    from est_lite.csr_ext import _add_ext, _find_ext

    b = builder
    unmet = list(builder.unmet)
    ignored = list(builder.ignored)
    t = attrs.template or {}
    if attrs.wants_challenge_password and b._cp is None:
        unmet.append("challengePassword (challenge_password())")
    for what, got, ok in (
        ("key curve", attrs.key_curve, (P256,)),
        ("key algorithm", t.get("key_alg"), (EC_PUBLIC_KEY,)),
        ("signature algorithm", attrs.signature_alg, ("1.2.840.10045.4.3.2", "2.16.840.1.101.3.4.2.1")),
    ):
        if got is not None and got not in ok:
            unmet.append("%s %s (only P-256 / ecdsa-with-SHA256 supported)" % (what, got))
    for oid, crit, val in attrs.extensions:
        have = _find_ext(b, oid)
        if have is None and val is not None:
            b = _add_ext(b, oid, crit, val, oid)
        elif have is None or val is not None and have[2] != val:
            why = "to be filled in by the client" if have is None else "server value differs"
            unmet.append("extension %s: %s" % (oid, why))
    subj = t.get("subject")
    if subj:
        if b._subject is None and None not in [v for _, v in subj]:
            b = b._set("_subject", tuple(subj))
        else:
            mine = [o for o, _ in b._subject or ()]
            unmet += ["subject attribute " + o for o, _ in subj if o not in mine]
    mine = [o for o, _ in b._subject or ()] + [e[0] for e in b._exts]
    known = [CHALLENGE_PASSWORD] + list(_CURVES)
    for h in _HASHES:
        known += h[1:]
    skip = (CHALLENGE_PASSWORD, EXTENSION_REQUEST, EXTENSION_REQ_TEMPLATE, CSR_TEMPLATE, EC_PUBLIC_KEY)
    ignored += ["OID " + o for o in attrs.oids if o not in known and o not in mine]
    ignored += ["attribute " + o for o, _ in attrs.attributes if o not in skip]
    ignored += ["malformed " + u for u in attrs.unparsed]
    if strict and unmet:
        raise LocalProtocolError("cannot satisfy CSR attributes: " + "; ".join(unmet))
    b = b._set("unmet", tuple(unmet))
    b.ignored = tuple(ignored)
    return b
