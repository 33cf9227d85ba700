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

import binascii

from est_lite import der
from est_lite.errors import LocalProtocolError, RemoteProtocolError

# subject keyword -> (OID, string kind, max length); kinds: u UTF8, p Printable, i IA5
_NAMES = {
    "c": ("2.5.4.6", "p", 2),
    "st": ("2.5.4.8", "u", 128),
    "l": ("2.5.4.7", "u", 128),
    "o": ("2.5.4.10", "u", 64),
    "ou": ("2.5.4.11", "u", 64),
    "cn": ("2.5.4.3", "u", 64),
    "serial_number": ("2.5.4.5", "p", 64),
    "email": ("1.2.840.113549.1.9.1", "i", 255),
}
_ORDER = ("c", "st", "l", "o", "ou", "cn", "serial_number", "email")

_KP = "1.3.6.1.5.5.7.3."
EKU_NAMES = {
    "serverAuth": _KP + "1",
    "clientAuth": _KP + "2",
    "codeSigning": _KP + "3",
    "emailProtection": _KP + "4",
    "timeStamping": _KP + "8",
    "OCSPSigning": _KP + "9",
    "cmcCA": _KP + "27",
    "cmcRA": _KP + "28",
    "cmcArchive": _KP + "29",
}
_KU_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)

_SAN = "2.5.29.17"
_KU = "2.5.29.15"
_EKU = "2.5.29.37"
_CP = "1.2.840.113549.1.9.7"
_EXT_REQ = "1.2.840.113549.1.9.14"
_SPKI_ALG = der.seq(der.oid(der.OID_EC_PUBLIC_KEY), der.oid(der.OID_P256))
_SIG_ALG = der.seq(der.oid(der.OID_ECDSA_SHA256))
# what apply_csrattrs() accepts as a hash/signature requirement
_OK_SIG = ("1.2.840.10045.4.3.2", "2.16.840.1.101.3.4.2.1")


def _err(msg):
    return LocalProtocolError(msg)


def _string(kind, value, what, maxlen):
    if not isinstance(value, str):
        raise _err("%s must be str (or DER bytes), not %s" % (what, type(value).__name__))
    if not value:
        raise _err("%s may not be empty" % what)
    if len(value) > maxlen:
        raise _err("%s longer than %d characters" % (what, maxlen))
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise _err("%s contains a control character" % what)
    if kind == "p":
        return der.printable(value)
    if kind == "i":
        return der.ia5(value)
    return der.utf8(value)


def _one_der(v, what):
    v = bytes(v)
    try:
        ok = der.read_tlv(v, 0, None, len(v))[2] == len(v)
    except RemoteProtocolError:
        ok = False
    if not ok:
        raise _err("%s must be exactly one DER element" % what)
    return v


def _ascii(s, what):
    if not isinstance(s, str) or not s:
        raise _err("%s must be a non-empty str" % what)
    for ch in s:
        if not 0x20 < ord(ch) < 0x7F:
            raise _err("%s %r: only printable ASCII without spaces" % (what, s))
    return s


def _dns(name):
    _ascii(name, "DNS name")
    if len(name) > 253:
        raise _err("DNS name longer than 253 characters")
    labels = name.split(".")
    for i, lab in enumerate(labels):
        if i == 0 and lab == "*" and len(labels) > 1:
            continue
        if not 0 < len(lab) <= 63 or lab[0] == "-" or lab[-1] == "-":
            raise _err("DNS name %r: bad label %r" % (name, lab))
        for ch in lab:
            if not (ch.isalpha() or ch.isdigit() or ch == "-"):
                raise _err("DNS name %r: character %r not allowed" % (name, ch))
    return name.encode()


def _ipv4(s):
    parts = s.split(".")
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        if not p or len(p) > 3 or p.strip("0123456789") or (len(p) > 1 and p[0] == "0"):
            return None
        v = int(p)
        if v > 255:
            return None
        out.append(v)
    return bytes(out)


def parse_ip(text):
    """IPv4 dotted quad or IPv6 text -> 4 or 16 bytes; LocalProtocolError if
    malformed."""
    if isinstance(text, (bytes, bytearray)) and len(text) in (4, 16):
        return bytes(text)
    if not isinstance(text, str):
        raise _err("IP address must be text or 4/16 bytes")
    if ":" not in text:
        r = _ipv4(text)
        if r is None:
            raise _err("bad IPv4 address %r" % text)
        return r
    head = text
    tail = b""
    if "." in text:  # embedded IPv4 tail (::ffff:192.0.2.1)
        i = text.rfind(":")
        tail = _ipv4(text[i + 1 :])
        if tail is None:
            raise _err("bad IPv6 address %r" % text)
        head = text[: i + 1]
        if not head.endswith("::"):
            head = head[:-1]
    want = 8 - len(tail) // 2
    halves = head.split("::")
    if len(halves) > 2:
        raise _err("bad IPv6 address %r ('::' twice)" % text)
    groups = []
    for h in halves:
        g = h.split(":") if h else []
        for x in g:
            if not 0 < len(x) <= 4 or x.strip("0123456789abcdefABCDEF"):
                raise _err("bad IPv6 address %r" % text)
        groups.append([int(x, 16) for x in g])
    if len(halves) == 2:
        fill = want - len(groups[0]) - len(groups[1])
        if fill < 1:
            raise _err("bad IPv6 address %r" % text)
        words = groups[0] + [0] * fill + groups[1]
    else:
        words = groups[0]
    if len(words) != want:
        raise _err("bad IPv6 address %r" % text)
    out = bytearray()
    for w in words:
        out.append(w >> 8)
        out.append(w & 0xFF)
    return bytes(out) + tail


def _oid_text(o, what="OID"):
    der.oid_bytes(o)  # validates, raises LocalProtocolError
    return o


def _ext_der(oid, critical, value):
    parts = [der.oid(oid)]
    if critical:
        parts.append(der.boolean(True))
    parts.append(der.octet_string(value))
    return der.seq(*parts)


class CsrBuilder:
    """Immutable PKCS#10 builder; see the module comment."""

    def __init__(self, _subject=None, _cp=None, _exts=(), _attrs=(), unmet=(), ignored=()):
        self._subject = _subject  # None or tuple of (oid_text, value_der)
        self._cp = _cp  # challengePassword value DER
        self._exts = _exts  # tuple of (oid_text, critical, value_der)
        self._attrs = _attrs  # tuple of (oid_text, tuple of value_der)
        self.unmet = unmet  # from apply_csrattrs: requirements not satisfied
        self.ignored = ignored  # from apply_csrattrs: entries not understood

    def _replace(self, **kw):
        d = {
            "_subject": self._subject,
            "_cp": self._cp,
            "_exts": self._exts,
            "_attrs": self._attrs,
            "unmet": self.unmet,
            "ignored": self.ignored,
        }
        d.update(kw)
        return CsrBuilder(**d)

    def _find_ext(self, oid):
        for e in self._exts:
            if e[0] == oid:
                return e
        return None

    def _add_ext(self, oid, critical, value, what):
        if self._find_ext(oid) is not None:
            raise _err("%s may only be set once" % what)
        return self._replace(_exts=self._exts + ((oid, bool(critical), value),))

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
            if k not in _NAMES:
                raise _err("unknown subject keyword %r (use %s)" % (k, ", ".join(_ORDER)))
        for k in _ORDER:
            v = names.get(k)
            if v is None:
                continue
            for x in v if isinstance(v, (list, tuple)) else (v,):
                items.append((k, x))
        if not items:
            raise _err("subject needs at least one attribute")
        out = []
        for k, v in items:
            spec = _NAMES.get(k)
            oid = spec[0] if spec else _oid_text(k)
            if spec is None:
                for s in _NAMES.values():
                    if s[0] == oid:
                        spec = s
            kind, maxlen = (spec[1], spec[2]) if spec else ("u", 255)
            if isinstance(v, (bytes, bytearray, memoryview)):
                val = _one_der(v, "subject value for %s" % oid)
            else:
                if maxlen == 2 and (not isinstance(v, str) or len(v) != 2 or not v.isalpha()):
                    raise _err("country must be 2 letters, got %r" % (v,))
                val = _string(kind, v, "subject %s" % (k if spec else oid), maxlen)
            out.append((oid, val))
        return self._replace(_subject=tuple(out))

    def san(self, dns=(), ip=(), uri=(), email=(), critical=False):
        """subjectAltName from lists of DNS names, IP addresses (IPv4/IPv6
        text or 4/16 bytes), URIs and e-mail addresses. If the subject is
        left empty the extension is marked critical (RFC 5280 §4.2.1.6)."""
        for x in (dns, ip, uri, email):
            if isinstance(x, (str, bytes)):
                raise _err("san() takes lists, e.g. dns=['a.example']")
        names = [der.tlv(0x81, _ascii(e, "e-mail").encode()) for e in email]
        names += [der.tlv(0x82, _dns(d)) for d in dns]
        for u in uri:
            if ":" not in _ascii(u, "URI"):
                raise _err("URI %r has no scheme" % u)
            names.append(der.tlv(0x86, u.encode()))
        names += [der.tlv(0x87, parse_ip(a)) for a in ip]
        if not names:
            raise _err("san() needs at least one name")
        return self._add_ext(_SAN, critical, der.seq(*names), "subjectAltName")

    def key_usage(self, critical=True, **bits):
        """keyUsage; keywords digital_signature, content_commitment,
        key_encipherment, data_encipherment, key_agreement, key_cert_sign,
        crl_sign, encipher_only, decipher_only (True to set)."""
        v = 0
        for k in bits:
            if k not in _KU_BITS:
                raise _err("unknown key usage %r" % k)
            if bits[k]:
                v |= 0x8000 >> _KU_BITS.index(k)
        if not v:
            raise _err("key_usage needs at least one usage")
        if v & 0x0180 and not v & 0x0800:
            raise _err("encipher_only/decipher_only need key_agreement")
        n = 2 if v & 0xFF else 1
        unused = 0
        while not v & (1 << unused):
            unused += 1
        data = bytes((v >> 8, v & 0xFF))[:n]
        return self._add_ext(_KU, critical, der.bit_string(data, unused - 8 * (2 - n)), "key_usage")

    def extended_key_usage(self, *usages, critical=False):
        """extKeyUsage from names (clientAuth, serverAuth, codeSigning,
        emailProtection, timeStamping, OCSPSigning, cmcCA, cmcRA, cmcArchive)
        or dotted OIDs."""
        if not usages:
            raise _err("extended_key_usage needs at least one usage")
        oids = []
        for u in usages:
            o = EKU_NAMES.get(u) or _oid_text(u)
            if o in oids:
                raise _err("extended key usage %s given twice" % u)
            oids.append(o)
        return self._add_ext(_EKU, critical, der.seq(*[der.oid(o) for o in oids]), "extended_key_usage")

    def extension(self, oid, value, critical=False):
        """Any other extension: oid (dotted) and its extnValue contents (one
        DER element, e.g. from a CSR attributes response)."""
        _oid_text(oid)
        return self._add_ext(oid, critical, _one_der(value, "extension %s value" % oid), "extension %s" % oid)

    def challenge_password(self, value):
        """challengePassword attribute. RFC 7030 §3.5 PoP linking: pass the
        raw tls-unique (or exporter) bytes and they are base64-encoded for
        you; a str is used as it is (PrintableString when it fits, else
        UTF8String)."""
        if self._cp is not None:
            raise _err("challenge_password may only be set once")
        if isinstance(value, (bytes, bytearray, memoryview)):
            if not len(value):
                raise _err("challenge_password bytes may not be empty")
            value = binascii.b2a_base64(bytes(value)).strip().decode()
        kind = "p"
        if isinstance(value, str):
            for ch in value:
                if ord(ch) > 0x7F or not der.is_printable_char(ord(ch)):
                    kind = "u"
        return self._replace(_cp=_string(kind, value, "challenge password", 255))

    def attribute(self, oid, values):
        """Any other CSR attribute: oid (dotted) and its values (one DER
        element or a list of them)."""
        _oid_text(oid)
        if oid in (_CP, _EXT_REQ):
            raise _err("use challenge_password()/extension setters for %s" % oid)
        for a in self._attrs:
            if a[0] == oid:
                raise _err("attribute %s may only be set once" % oid)
        if isinstance(values, (bytes, bytearray, memoryview)):
            values = [values]
        vals = tuple(_one_der(v, "attribute %s value" % oid) for v in values)
        if not vals:
            raise _err("attribute %s needs at least one value" % oid)
        return self._replace(_attrs=self._attrs + ((oid, vals),))

    # ------------------------------------------------------------ csrattrs

    def apply_csrattrs(self, attrs, strict=False):
        """Follow a decoded CsrAttrs (est_lite.csrattrs): adds the
        extensions the server gave values for and, if no subject is set, a
        template subject whose values are all given. Returns a new builder
        whose .unmet lists requirements it could not satisfy (e.g. another
        curve, a challengePassword not yet set, a template extension the
        caller must fill in) and .ignored lists entries not understood (RFC
        7030: a client ignores those). strict=True raises LocalProtocolError
        if anything is unmet."""
        from est_lite import csrattrs as ca

        b = self
        unmet = list(self.unmet)
        ignored = list(self.ignored)
        if attrs.wants_challenge_password and b._cp is None:
            unmet.append("challengePassword (call challenge_password() with the channel binding)")
        curve = attrs.key_curve
        if curve is not None and curve != ca.P256:
            unmet.append("key curve %s (only P-256 is supported)" % curve)
        t = attrs.template
        if t is not None and t["key_alg"] not in (None, ca.EC_PUBLIC_KEY):
            unmet.append("key algorithm %s (only EC P-256 is supported)" % t["key_alg"])
        sig = attrs.signature_alg
        if sig is not None and sig not in _OK_SIG:
            unmet.append("signature algorithm %s (only ecdsa-with-SHA256)" % sig)
        for oid, crit, val in attrs.extensions:
            have = b._find_ext(oid)
            if val is None:
                if have is None:
                    unmet.append("extension %s: value to be filled in by the client" % oid)
            elif have is None:
                b = b._add_ext(oid, crit, val, oid)
            elif have[2] != val:
                unmet.append("extension %s: server value differs from the one set" % oid)
        if t is not None and t["subject"]:
            if b._subject is None and all(v is not None for _, v in t["subject"]):
                b = b._replace(_subject=tuple(t["subject"]))
            else:
                mine = [o for o, _ in (b._subject or ())]
                for oid, val in t["subject"]:
                    if oid not in mine:
                        unmet.append("subject attribute %s%s" % (oid, "" if val is None else " (value given)"))
        known = (ca.CHALLENGE_PASSWORD,) + tuple(ca._HASHES) + ca._CURVES
        mine = [o for o, _ in (b._subject or ())] + [e[0] for e in b._exts]
        for oid in attrs.oids:
            if oid not in known and oid not in mine:
                ignored.append("OID %s" % oid)
        skip = (ca.CHALLENGE_PASSWORD, ca.EXTENSION_REQUEST, ca.EXTENSION_REQ_TEMPLATE, ca.CSR_TEMPLATE, ca.EC_PUBLIC_KEY)
        for oid, _ in attrs.attributes:
            if oid not in skip:
                ignored.append("attribute %s" % oid)
        for u in attrs.unparsed:
            ignored.append("malformed %s" % u)
        if strict and unmet:
            raise _err("cannot satisfy CSR attributes: " + "; ".join(unmet))
        return b._replace(unmet=tuple(unmet), ignored=tuple(ignored))

    # ------------------------------------------------------------ output

    def request_info(self, public_key):
        """DER CertificationRequestInfo for a 65-byte P-256 public key: the
        bytes to sign (for signers that are not a simple object)."""
        pk = bytes(public_key)
        if len(pk) != 65 or pk[0] != 4:
            raise _err("public key must be a 65-byte uncompressed P-256 point 0x04||X||Y (only P-256 is supported)")
        rdns = [der.tlv(der.SET, der.seq(der.oid(o), v)) for o, v in (self._subject or ())]
        exts = []
        for oid, crit, val in self._exts:
            if oid == _SAN and not rdns:
                crit = True
            exts.append(_ext_der(oid, crit, val))
        attrs = []
        if self._cp is not None:
            attrs.append(der.seq(der.oid(_CP), der.tlv(der.SET, self._cp)))
        if exts:
            attrs.append(der.seq(der.oid(_EXT_REQ), der.tlv(der.SET, der.seq(*exts))))
        for oid, vals in self._attrs:
            attrs.append(der.seq(der.oid(oid), der.set_of(*vals)))
        attrs.sort()
        return der.seq(
            b"\x02\x01\x00",
            der.seq(*rdns),
            der.seq(_SPKI_ALG, der.bit_string(pk)),
            der.tlv(0xA0, *attrs),
        )

    @staticmethod
    def assemble(info, signature):
        """CertificationRequest DER from request_info() bytes and a DER
        ECDSA-SHA256 signature over them."""
        sig = bytes(signature)
        try:
            s, e = der.read(sig, 0, der.SEQUENCE)
            _, a, b = der.read_tlv(sig, s, e)
            der.read_int(sig, a, b)
            _, a, c = der.read_tlv(sig, b, e)
            der.read_int(sig, a, c)
            ok = e == len(sig) and c == e
        except Exception:  # noqa: BLE001 - the signer is a caller object
            ok = False
        if not ok:
            raise _err("signer must return a DER ECDSA signature SEQUENCE { r INTEGER, s INTEGER }")
        return der.seq(info, _SIG_ALG, der.bit_string(sig))

    def sign(self, signer):
        """Build, sign with signer (see module comment) and return DER."""
        pk = signer.public_key
        if callable(pk):
            pk = pk()
        info = self.request_info(pk)
        return self.assemble(info, signer.sign(info))
