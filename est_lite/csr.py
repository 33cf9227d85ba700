# PKCS#10 CertificationRequest builder (RFC 2986), P-256 / ECDSA-SHA256 only.
#
# Immutable, in the style of cryptography's CertificateSigningRequestBuilder:
# each setter validates its arguments, returns a NEW builder and refuses to
# set the same thing twice. Nothing is encoded until sign().
#
#   csr_der = (CsrBuilder().subject(cn="dev-42", o="Acme")
#              .san(dns=["dev-42.example"], ip=["192.0.2.7"])
#              .key_usage(digital_signature=True)
#              .extended_key_usage("clientAuth")
#              .challenge_password(tls_unique)       # RFC 7030 §3.5
#              .sign(signer))
#
# A Signer is any object with
#   public_key   65 bytes, uncompressed P-256 point 0x04||X||Y (or a method returning it)
#   sign(msg)    DER ECDSA-Sig-Value over SHA-256(msg) (the signer hashes)

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError

# subject keywords in the order they are written, and for each: the last arc
# of 2.5.4.x (0: emailAddress 1.2.840.113549.1.9.1), the string kind (p
# PrintableString, u UTF8String, i IA5String) and the X.520 upper bound
_KW = ("c", "st", "l", "o", "ou", "cn", "serial_number", "email")
_SPEC = (
    (6, "p", 2), (8, "u", 128), (7, "u", 128), (10, "u", 64), (11, "u", 64), (3, "u", 64), (5, "p", 64), (0, "i", 255)
)

EKU_NAMES = dict(
    zip(
        "serverAuth clientAuth codeSigning emailProtection timeStamping OCSPSigning cmcCA cmcRA cmcArchive".split(),
        ["1.3.6.1.5.5.7.3." + x for x in "1 2 3 4 8 9 27 28 29".split()],
    )
)
# keyUsage bits 0..8, keyword names
_KU = (
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement key_cert_sign"
    " crl_sign encipher_only decipher_only"
)

_SAN = "2.5.29.17"
_CP = "1.2.840.113549.1.9.7"
_EXT_REQ = "1.2.840.113549.1.9.14"


def _err(msg):
    return LocalProtocolError(msg)


def _spec(k):
    # (oid, kind, maxlen) for a subject keyword or a dotted OID
    i = _KW.index(k) if k in _KW else -1
    for j in range(8):
        a, kind, n = _SPEC[j]
        o = "2.5.4.%d" % a if a else "1.2.840.113549.1.9.1"
        if i == j or i < 0 and k == o:
            return o, kind, n
    der.oid_bytes(k)  # validates the dotted text
    return k, "u", 255


def _string(kind, value, what, maxlen):
    if not isinstance(value, str) or not 0 < len(value) <= maxlen or [c for c in value if c < " " or c == "\x7f"]:
        raise _err("%s: 1..%d characters, no control characters" % (what, maxlen))
    return (der.printable if kind == "p" else der.ia5 if kind == "i" else der.utf8)(value)


def _one_der(v, what):
    v = bytes(v)
    try:
        ok = der.read_tlv(v, 0, None, len(v))[2] == len(v)
    except RemoteProtocolError:
        ok = False
    if not ok:
        raise _err(what + ": not one DER element")
    return v


def _ascii(s, what):
    # non-empty printable ASCII without spaces -> bytes
    if not isinstance(s, str) or not s or [c for c in s if not " " < c < "\x7f"]:
        raise _err("%s %r: not printable ASCII" % (what, s))
    return s.encode()


def _dns(name):
    labels = name.split(".") if isinstance(name, str) else ()
    if labels and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    for lab in labels:
        bad = [c for c in lab if not (c.isalpha() or c.isdigit() or c == "-") or c > "\x7f"]
        if not 0 < len(lab) < 64 or "-" in (lab[0], lab[-1]) or bad:
            labels = ()
    if not labels or len(name) > 253:
        raise _err("bad DNS name %r" % (name,))
    return name.encode()


def _ipv4(s):
    p = s.split(".")
    if len(p) != 4 or [x for x in p if not 0 < len(x) < 4 or x.strip("0123456789") or x[0] == "0" and len(x) > 1]:
        raise ValueError
    return bytes([int(x) for x in p])  # ValueError above 255


def _ipv6(text):
    tail = b""
    if "." in text:  # embedded IPv4 tail (::ffff:192.0.2.1)
        i = text.rfind(":")
        tail = _ipv4(text[i + 1 :])
        text = text[: i + 1]
        if text[-2:] != "::":
            text = text[:-1]
    halves = text.split("::")
    parts = []
    for h in halves:
        g = h.split(":") if h else []
        if len(halves) > 2 or [x for x in g if not 0 < len(x) <= 4 or x.strip("0123456789abcdefABCDEF")]:
            raise ValueError
        parts.append([int(x, 16) for x in g])
    want = 8 - len(tail) // 2
    words = parts[0]
    if len(parts) == 2:
        fill = want - len(words) - len(parts[1])
        words = words + [0] * fill + parts[1] if fill > 0 else ()
    if len(words) != want:
        raise ValueError
    return b"".join([w.to_bytes(2, "big") for w in words]) + tail


def parse_ip(text):
    """IPv4 dotted quad or IPv6 text -> 4 or 16 bytes (4/16 bytes pass
    through); LocalProtocolError if malformed."""
    if isinstance(text, (bytes, bytearray)) and len(text) in (4, 16):
        return bytes(text)
    try:
        return (_ipv6 if ":" in text else _ipv4)(text)
    except (TypeError, ValueError):
        raise _err("bad IP address %r" % (text,))


class CsrBuilder:
    """Immutable PKCS#10 builder; see the module comment."""

    def __init__(self, _subject=None, _cp=None, _exts=(), _attrs=(), unmet=(), ignored=()):
        self._subject = _subject  # None or tuple of (oid_text, value_der)
        self._cp = _cp  # challengePassword value DER
        self._exts = _exts  # tuple of (oid_text, critical, value_der)
        self._attrs = _attrs  # tuple of (oid_text, tuple of value_der)
        self.unmet = unmet  # from apply_csrattrs: requirements not satisfied
        self.ignored = ignored  # from apply_csrattrs: entries not understood

    def _set(self, name, v):
        b = CsrBuilder(self._subject, self._cp, self._exts, self._attrs, self.unmet, self.ignored)
        setattr(b, name, v)
        return b

    def _find_ext(self, oid):
        for e in self._exts:
            if e[0] == oid:
                return e

    def _add_ext(self, oid, critical, value, what):
        if self._find_ext(oid):
            raise _err(what + " may only be set once")
        return self._set("_exts", self._exts + ((oid, bool(critical), value),))

    # ------------------------------------------------------------ setters

    def subject(self, pairs=None, **names):
        """Subject DN from keywords cn, o, ou, c, serial_number, l, st, email
        (each a str or a list of str) and/or a list of (oid_or_keyword,
        value) pairs; a bytes value is taken as a ready DER AttributeValue.
        Keywords are written in the order C, ST, L, O, OU, CN, serialNumber,
        email, after the pairs."""
        if self._subject is not None:
            raise _err("subject may only be set once")
        items = list(pairs or ())
        for k in names:
            if k not in _KW:
                raise _err("unknown subject keyword %r (use %s)" % (k, ", ".join(_KW)))
        for k in _KW:
            v = names.get(k)
            for x in v if isinstance(v, (list, tuple)) else () if v is None else (v,):
                items.append((k, x))
        if not items:
            raise _err("empty subject")
        out = []
        for k, v in items:
            oid, kind, n = _spec(k)
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = _one_der(v, "subject value " + oid)
            else:
                if n == 2 and not (isinstance(v, str) and len(v) == 2 and v.isalpha()):
                    raise _err("country %r: 2 letters" % (v,))
                v = _string(kind, v, "subject " + k, n)
            out.append((oid, v))
        return self._set("_subject", tuple(out))

    def san(self, dns=(), ip=(), uri=(), email=(), critical=False):
        """subjectAltName from lists of DNS names, IP addresses (IPv4/IPv6
        text or 4/16 bytes), URIs and e-mail addresses. If the subject is
        left empty the extension is marked critical (RFC 5280 §4.2.1.6)."""
        if [x for x in (dns, ip, uri, email) if isinstance(x, (str, bytes))]:
            raise _err("san() takes lists")
        names = [der.tlv(0x81, _ascii(e, "e-mail")) for e in email]
        names += [der.tlv(0x82, _dns(d)) for d in dns]
        for u in uri:
            if b":" not in _ascii(u, "URI"):
                raise _err("URI %r has no scheme" % u)
            names.append(der.tlv(0x86, u.encode()))
        names += [der.tlv(0x87, parse_ip(a)) for a in ip]
        if not names:
            raise _err("san() without names")
        return self._add_ext(_SAN, critical, der.seq(*names), "subjectAltName")

    def key_usage(self, critical=True, **bits):
        """keyUsage; keywords digital_signature, content_commitment,
        key_encipherment, data_encipherment, key_agreement, key_cert_sign,
        crl_sign, encipher_only, decipher_only (True to set)."""
        ku = _KU.split()
        v = 0
        for k in bits:
            if k not in ku:
                raise _err("unknown key usage %r" % k)
            if bits[k]:
                v |= 0x8000 >> ku.index(k)
        if not v or v & 0x0180 and not v & 0x0800:
            raise _err("key_usage: none, or encipher/decipher_only without key_agreement")
        n = 2 if v & 0xFF else 1
        unused = 0
        while not v >> unused & 1:
            unused += 1
        data = v.to_bytes(2, "big")[:n]
        return self._add_ext("2.5.29.15", critical, der.bit_string(data, unused - 8 * (2 - n)), "key_usage")

    def extended_key_usage(self, *usages, critical=False):
        """extKeyUsage from names (clientAuth, serverAuth, codeSigning,
        emailProtection, timeStamping, OCSPSigning, cmcCA, cmcRA, cmcArchive)
        or dotted OIDs."""
        oids = [EKU_NAMES.get(u, u) for u in usages]
        if not oids or len(set(oids)) != len(oids):
            raise _err("extended_key_usage: none or repeated")
        return self._add_ext("2.5.29.37", critical, der.seq(*[der.oid(o) for o in oids]), "extended_key_usage")

    def extension(self, oid, value, critical=False):
        """Any other extension: oid (dotted) and its extnValue contents (one
        DER element, e.g. from a CSR attributes response)."""
        der.oid_bytes(oid)
        return self._add_ext(oid, critical, _one_der(value, "extension value"), "extension " + oid)

    def challenge_password(self, value):
        """challengePassword attribute. RFC 7030 §3.5 PoP linking: pass the
        raw tls-unique (or exporter) bytes and they are base64-encoded for
        you; a str is used as it is (PrintableString when it fits, else
        UTF8String)."""
        if self._cp is not None:
            raise _err("challenge_password may only be set once")
        if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
            from binascii import b2a_base64

            value = b2a_base64(bytes(value)).strip().decode()
        kind = "p"
        if isinstance(value, str) and [c for c in value if c > "\x7f" or not der.is_printable_char(ord(c))]:
            kind = "u"
        return self._set("_cp", _string(kind, value, "challenge password", 255))

    def attribute(self, oid, values):
        """Any other CSR attribute: oid (dotted) and its values (one DER
        element or a list of them)."""
        der.oid_bytes(oid)
        if oid in (_CP, _EXT_REQ):
            raise _err("set %s with challenge_password()/extension()" % oid)
        if [a for a in self._attrs if a[0] == oid]:
            raise _err("attribute %s may only be set once" % oid)
        if isinstance(values, (bytes, bytearray, memoryview)):
            values = [values]
        vals = tuple([_one_der(v, "attribute value") for v in values])
        if not vals:
            raise _err("attribute %s needs a value" % oid)
        return self._set("_attrs", self._attrs + ((oid, vals),))

    # ------------------------------------------------------------ csrattrs

    def apply_csrattrs(self, attrs, strict=False):
        """Follow a decoded CsrAttrs (est_lite.csrattrs): adds the
        extensions the server gave values for and, if no subject is set, a
        template subject whose values are all given. Returns a new builder
        whose .unmet lists requirements it could not satisfy (e.g. another
        curve, a challengePassword not yet set, a template extension the
        caller must fill in) and .ignored lists entries not understood (RFC
        7030: a client ignores those). strict=True raises LocalProtocolError
        if anything is unmet. (The code is in est_lite.csrattrs: loaded only
        when used.)"""
        from est_lite import csrattrs

        return csrattrs.apply(self, attrs, strict)

    # ------------------------------------------------------------ output

    def request_info(self, public_key):
        """DER CertificationRequestInfo for a 65-byte P-256 public key: the
        bytes to sign (for signers that are not a simple object)."""
        pk = bytes(public_key)
        if len(pk) != 65 or pk[0] != 4:
            raise _err("public key: not a 65-byte 0x04||X||Y point (only P-256)")
        # 0x31: SET (of one AttributeTypeAndValue, so no sorting)
        rdns = [der.tlv(0x31, der.seq(der.oid(o), v)) for o, v in self._subject or ()]
        exts = [
            der.seq(der.oid(o), der.boolean(1) if c or o == _SAN and not rdns else b"", der.octet_string(v))
            for o, c, v in self._exts
        ]
        attrs = [der.seq(der.oid(o), der.set_of(*v)) for o, v in self._attrs]
        if self._cp is not None:
            attrs.append(der.seq(der.oid(_CP), der.tlv(0x31, self._cp)))
        if exts:
            attrs.append(der.seq(der.oid(_EXT_REQ), der.tlv(0x31, der.seq(*exts))))
        attrs.sort()
        spki = der.seq(der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256)), der.bit_string(pk))
        return der.seq(b"\x02\x01\x00", der.seq(*rdns), spki, der.tlv(0xA0, *attrs))

    @staticmethod
    def assemble(info, signature):
        """CertificationRequest DER from request_info() bytes and a DER
        ECDSA-SHA256 signature over them."""
        sig = bytes(signature)
        try:
            s, e = der.read(sig, 0, 0x30)  # SEQUENCE { INTEGER r, INTEGER s }
            for _ in (1, 2):
                a, s = der.read(sig, s, 2, e)
                der.read_int(sig, a, s)
            ok = e == len(sig) == s
        except RemoteProtocolError:
            ok = False
        if not ok:
            raise _err("signer: not a DER ECDSA signature")
        return der.seq(info, der.seq(der.oid(der.OID_ECDSA_SHA256)), der.bit_string(sig))

    def sign(self, signer):
        """Build, sign with signer (see module comment) and return DER."""
        pk = signer.public_key
        info = self.request_info(pk() if callable(pk) else pk)
        return self.assemble(info, signer.sign(info))
