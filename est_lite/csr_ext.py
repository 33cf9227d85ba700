"""The less used CsrBuilder setters: est_lite.csr.CsrBuilder.san(),
key_usage(), extended_key_usage(), extension(), challenge_password() and
attribute() run the b_* functions here (CsrBuilder.__getattr__ binds them),
and est_lite.csr.EKU_NAMES / parse_ip come from here too. A device that only
sets a subject never loads this code, and decoding CSR attributes
(est_lite.csrattrs) does not load it either."""

from est_lite import csr, der
from est_lite.errors import LocalProtocolError, const


def eku_names():
    """extKeyUsage names -> dotted OIDs (csr.EKU_NAMES)."""
    return dict(
        zip(
            "serverAuth clientAuth codeSigning emailProtection timeStamping OCSPSigning cmcCA cmcRA cmcArchive".split(),
            ["1.3.6.1.5.5.7.3." + x for x in "1 2 3 4 8 9 27 28 29".split()],
        )
    )


# keyUsage bits 0..8, keyword names
_KU = const(
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement key_cert_sign"
    " crl_sign encipher_only decipher_only"
)


def _find_ext(b, oid):
    for e in b._exts:
        if e[0] == oid:
            return e


def _add_ext(b, oid, critical, value, what):
    if _find_ext(b, oid):
        raise LocalProtocolError(what + " may only be set once")
    return b._set("_exts", b._exts + ((oid, bool(critical), value),))


def _ascii(s, what):
    # non-empty printable ASCII without spaces -> bytes
    if not isinstance(s, str) or not s or [c for c in s if not " " < c < "\x7f"]:
        raise LocalProtocolError("%s %r: not printable ASCII" % (what, s))
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
        raise LocalProtocolError("bad DNS name %r" % (name,))
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
        raise LocalProtocolError("bad IP address %r" % (text,))



def b_san(self, dns=(), ip=(), uri=(), email=(), critical=False):
    """subjectAltName from lists of DNS names, IP addresses (IPv4/IPv6
    text or 4/16 bytes), URIs and e-mail addresses. If the subject is
    left empty the extension is marked critical (RFC 5280 §4.2.1.6)."""
    if [x for x in (dns, ip, uri, email) if isinstance(x, (str, bytes))]:
        raise LocalProtocolError("san() takes lists")
    names = [der.tlv(0x81, _ascii(e, "e-mail")) for e in email]
    names += [der.tlv(0x82, _dns(d)) for d in dns]
    for u in uri:
        if b":" not in _ascii(u, "URI"):
            raise LocalProtocolError("URI %r has no scheme" % u)
        names.append(der.tlv(0x86, u.encode()))
    names += [der.tlv(0x87, parse_ip(a)) for a in ip]
    if not names:
        raise LocalProtocolError("san() without names")
    return _add_ext(self, "2.5.29.17", critical, der.seq(*names), "subjectAltName")


def b_key_usage(self, critical=True, **bits):
    """keyUsage; keywords digital_signature, content_commitment,
    key_encipherment, data_encipherment, key_agreement, key_cert_sign,
    crl_sign, encipher_only, decipher_only (True to set)."""
    ku = _KU.split()
    v = 0
    for k in bits:
        if k not in ku:
            raise LocalProtocolError("unknown key usage %r" % k)
        if bits[k]:
            v |= 0x8000 >> ku.index(k)
    if not v or v & 0x0180 and not v & 0x0800:
        raise LocalProtocolError("key_usage: none, or encipher/decipher_only without key_agreement")
    n = 2 if v & 0xFF else 1
    unused = 0
    while not v >> unused & 1:
        unused += 1
    data = v.to_bytes(2, "big")[:n]
    return _add_ext(self, "2.5.29.15", critical, der.bit_string(data, unused - 8 * (2 - n)), "key_usage")


def b_extended_key_usage(self, *usages, critical=False):
    """extKeyUsage from names (clientAuth, serverAuth, codeSigning,
    emailProtection, timeStamping, OCSPSigning, cmcCA, cmcRA, cmcArchive)
    or dotted OIDs."""
    oids = [eku_names().get(u, u) for u in usages]
    if not oids or len(set(oids)) != len(oids):
        raise LocalProtocolError("extended_key_usage: none or repeated")
    return _add_ext(self, "2.5.29.37", critical, der.seq(*[der.oid(o) for o in oids]), "extended_key_usage")


def b_extension(self, oid, value, critical=False):
    """Any other extension: oid (dotted) and its extnValue contents (one
    DER element, e.g. from a CSR attributes response)."""
    der.oid_bytes(oid)
    return _add_ext(self, oid, critical, csr._one_der(value, "extension value"), "extension " + oid)


def b_challenge_password(self, value):
    """challengePassword attribute. RFC 7030 §3.5 PoP linking: pass the
    raw tls-unique (or exporter) bytes and they are base64-encoded for
    you; a str is used as it is (PrintableString when it fits, else
    UTF8String)."""
    if self._cp is not None:
        raise LocalProtocolError("challenge_password may only be set once")
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
        from binascii import b2a_base64

        value = b2a_base64(bytes(value)).strip().decode()
    kind = "p"
    if isinstance(value, str) and [c for c in value if c > "\x7f" or not der.is_printable_char(ord(c))]:
        kind = "u"
    return self._set("_cp", csr._string(kind, value, "challenge password", 255))


def b_attribute(self, oid, values):
    """Any other CSR attribute: oid (dotted) and its values (one DER
    element or a list of them)."""
    der.oid_bytes(oid)
    if oid in ("1.2.840.113549.1.9.7", "1.2.840.113549.1.9.14"):  # csrattrs.CHALLENGE_PASSWORD, EXTENSION_REQUEST
        raise LocalProtocolError("set %s with challenge_password()/extension()" % oid)
    if [a for a in self._attrs if a[0] == oid]:
        raise LocalProtocolError("attribute %s may only be set once" % oid)
    if isinstance(values, (bytes, bytearray, memoryview)):
        values = [values]
    vals = tuple([csr._one_der(v, "attribute value") for v in values])
    if not vals:
        raise LocalProtocolError("attribute %s needs a value" % oid)
    return self._set("_attrs", self._attrs + ((oid, vals),))
