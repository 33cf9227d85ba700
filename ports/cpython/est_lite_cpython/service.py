"""The EST policy, independent of the transport.

`EstService` answers the EST operations for any front end (HTTPS here,
EST-coaps and the proxy/RA elsewhere). A front end calls one method per
operation with the label, the request body as DER and an `AuthContext`
describing the connection, and turns the result or the raised
`est_lite.errors` exception into its own wire form using the exception's
`http_status` / `coap_code` hints:

    svc = EstService(ca, config)                  # built-in authenticator, csrattrs
    svc.cacerts(label, ctx) -> bytes              # certs-only PKCS#7 (DER)
    svc.csrattrs(label, ctx) -> bytes             # CsrAttrs DER, b"" = none (204 / 2.05 empty)
    svc.simpleenroll(label, csr_der, ctx) -> bytes         # certs-only PKCS#7 (DER)
    svc.simplereenroll(label, csr_der, ctx) -> bytes
    svc.serverkeygen(label, csr_der, ctx) -> (pkcs8_der, pkcs7_der, cert)
    svc.fullcmc(...)                              # raises NotImplementedOp (501 / 5.01)

Exceptions (all `est_lite.errors.EstError`):
    PendingApproval (202 + Retry-After / 5.03 + Max-Age: .retry_after seconds)
    AuthenticationRequired (401 / 4.01), SecurityError (403 / 4.03),
    RemoteProtocolError (400 / 4.00), LimitError (413 / 4.13),
    UnknownLabel (404 / 4.04), NotImplementedOp (501 / 5.01),
    OperationNotAllowed (403 / 4.03; profile disables it)

Every 4xx carries a message meant for the person reading the client log.

Registration Authorities (RFC 7030 §3.7): a TLS client certificate with
id-kp-cmcRA that chains to one of the profile's `ra_trust` sets makes the
client an RA (`RaIdentity`): it requests for devices, simplereenroll renews
the newest certificate this CA issued to the CSR's subject (refused if it
is revoked or expired; an older one never stands in), and its requests are not PoP-checked (the RA checks each device's
binding on the device's link, RFC 7030 §3.5). See docs/server.md.
"""

import base64
import hashlib
import hmac
import ipaddress
import threading
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AttributeOID, NameOID

from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError, SecurityError

from .auth import AuthenticationRequired, DefaultAuthenticator, UntrustedCertificate
from .ca import IssueRequest, _header, ec_spki_key_type, ec_spki_point
from .store import APPROVED, ISSUED, PENDING, REJECTED  # noqa: F401


# ---------------------------------------------------------------- errors


class PendingApproval(EstError):
    """The request waits for manual approval: retry after `retry_after` s."""

    http_status = 202
    coap_code = 0xA3  # 5.03 Service Unavailable + Max-Age (RFC 9148 §5)

    def __init__(self, msg, retry_after=60, request_id=None):
        super().__init__(msg)
        self.retry_after = retry_after
        self.request_id = request_id


class UnknownLabel(RemoteProtocolError):
    http_status = 404
    coap_code = 0x84


class NotImplementedOp(EstError):
    http_status = 501
    coap_code = 0xA1


class OperationNotAllowed(SecurityError):
    pass


class RequestRejected(SecurityError):
    pass


# ---------------------------------------------------------------- context


class AuthContext:
    """What a front end knows about the client of one request."""

    def __init__(self, transport="https", *, peer_chain=None, tls_unique=None, tls_exporter=None, tls_version=None,
                 http_user=None, http_scheme=None, http_auth_error=None, remote=None):
        self.transport = transport  # "https" or "coaps" (or "proxy")
        self.peer_chain = peer_chain  # [x509.Certificate] leaf first, key possession proven by (D)TLS; or None
        self.tls_unique = tls_unique  # bytes (TLS 1.2 / DTLS 1.2) or None
        # bytes, RFC 9266 tls-exporter (TLS 1.3) or None; a front end may pass
        # a function returning it, called once on first use (most requests
        # never need the binding)
        self._tls_exporter = tls_exporter
        self.tls_version = tls_version  # e.g. "TLSv1.3"
        self.http_user = http_user  # user name the front end verified (Basic/Digest)
        self.http_scheme = http_scheme  # "basic" / "digest"
        self.http_auth_error = http_auth_error  # AuthenticationRequired when credentials were wrong
        self.remote = remote  # (host, port)

    @property
    def tls_exporter(self):
        v = self._tls_exporter
        if callable(v):
            v = self._tls_exporter = v()
        return v

    @tls_exporter.setter
    def tls_exporter(self, v):
        self._tls_exporter = v

    def channel_binding(self):
        """(name, bytes) of the binding a PoP-linked CSR must carry, or None."""
        if self.tls_exporter is not None and (self.tls_version or "").endswith("1.3"):
            return "tls-exporter", self.tls_exporter
        if self.tls_unique is not None:
            return "tls-unique", self.tls_unique
        if self.tls_exporter is not None:
            return "tls-exporter", self.tls_exporter
        return None


ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")


class RaIdentity:
    """A client authenticated as a Registration Authority (RFC 7030 §3.7):
    its TLS certificate carries id-kp-cmcRA and chains to one of the
    profile's `ra_trust` sets. It requests on behalf of devices."""

    def __init__(self, cert_id):
        self.cert_id = cert_id  # auth.CertIdentity of the RA's own certificate
        self.leaf = cert_id.leaf
        self.chain = cert_id.chain
        self.trust_name = cert_id.trust_name
        self.subject = cert_id.subject


def has_ra_eku(cert):
    """True if the certificate's extendedKeyUsage lists id-kp-cmcRA."""
    try:
        return ID_KP_CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError, TypeError):
        return False


# ---------------------------------------------------------------- csrattrs DER


def _der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag, body):
    return bytes([tag]) + _der_len(len(body)) + body


def _oid(dotted):
    try:
        arcs = [int(x) for x in dotted.split(".")]
    except ValueError:
        raise LocalProtocolError("%r is not a dotted OID" % dotted) from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise LocalProtocolError("%r is not a valid OID" % dotted)
    out = bytearray()
    for i, a in enumerate([arcs[0] * 40 + arcs[1]] + arcs[2:]):
        del i
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(v):
    return _tlv(0x02, v.to_bytes((v.bit_length() + 8) // 8, "big"))


_NAMED_OIDS = {
    "challengePassword": "1.2.840.113549.1.9.7",
    "ecdsa-with-SHA256": "1.2.840.10045.4.3.2",
    "ecdsa-with-SHA384": "1.2.840.10045.4.3.3",
    "ecdsa-with-SHA512": "1.2.840.10045.4.3.4",
    "sha256WithRSAEncryption": "1.2.840.113549.1.1.11",
    "id-Ed25519": "1.3.101.112",
    "macAddress": "1.3.6.1.1.1.1.22",
}
_CURVE_OIDS = {"P-256": "1.2.840.10045.3.1.7", "P-384": "1.3.132.0.34", "P-521": "1.3.132.0.35"}
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_RSA = "1.2.840.113549.1.1.1"
_EXT_REQ = "1.2.840.113549.1.9.14"


def csrattrs_der(items):
    """CsrAttrs (RFC 7030 §4.5.2, RFC 8951) DER from config strings:

    "challengePassword", "ecdsa-with-SHA256", any dotted OID   -> OID
    "ecPublicKey:P-256"          -> Attribute{id-ecPublicKey, {secp256r1}}
    "rsaEncryption:2048"         -> Attribute{rsaEncryption, {2048}}
    "extensionRequest:OID,OID"   -> Attribute{extensionRequest, {OID, OID}}
    Empty list -> b"" (no attributes: 204 / empty 2.05)."""
    parts = []
    for it in items:
        if not isinstance(it, str):
            raise LocalProtocolError("csrattrs entries are strings, not %r" % (it,))
        name, _, arg = it.partition(":")
        if name == "ecPublicKey":
            if arg not in _CURVE_OIDS:
                raise LocalProtocolError("ecPublicKey needs a curve P-256, P-384 or P-521, not %r" % arg)
            parts.append(_tlv(0x30, _oid(_EC_PUBLIC_KEY) + _tlv(0x31, _oid(_CURVE_OIDS[arg]))))
        elif name == "rsaEncryption":
            if not arg.isdigit():
                raise LocalProtocolError("rsaEncryption needs a key size, e.g. rsaEncryption:2048")
            parts.append(_tlv(0x30, _oid(_RSA) + _tlv(0x31, _int(int(arg)))))
        elif name == "extensionRequest":
            oids = [_NAMED_OIDS.get(o.strip(), o.strip()) for o in arg.split(",") if o.strip()]
            if not oids:
                raise LocalProtocolError("extensionRequest needs at least one OID")
            parts.append(_tlv(0x30, _oid(_EXT_REQ) + _tlv(0x31, b"".join(_oid(o) for o in oids))))
        elif arg:
            raise LocalProtocolError("unknown csrattrs entry %r" % it)
        else:
            parts.append(_oid(_NAMED_OIDS.get(name, name)))
    if not parts:
        return b""
    return _tlv(0x30, b"".join(parts))


class ProfileCsrAttrs:
    """Default csrattrs provider: the `csrattrs` list of the label's profile.
    A provider is any object with get(label, profile, ctx) -> DER bytes."""

    def __init__(self):
        self._cache = {}

    def get(self, label, profile, ctx):
        key = (label, profile.csrattrs)
        der = self._cache.get(key)
        if der is None:
            der = self._cache[key] = csrattrs_der(profile.csrattrs)
        return der


# ---------------------------------------------------------------- helpers

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SUBJECT_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
}
_SAN_KIND = {x509.DNSName: "dns", x509.IPAddress: "ip", x509.UniformResourceIdentifier: "uri", x509.RFC822Name: "email"}

# -- what the CA copies from a CSR into a certificate: the subject and the
# SANs only (every extension comes from the profile), and only in the forms
# below, so that what a relying party reads is what was checked

# RFC 5280 Appendix A upper bounds (characters) of the subject attributes
# the CA copies; any other attribute type: _SUBJECT_MAX_OTHER
_SUBJECT_MAX = {NameOID.COMMON_NAME: 64, NameOID.ORGANIZATION_NAME: 64, NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
                NameOID.COUNTRY_NAME: 2, NameOID.STATE_OR_PROVINCE_NAME: 128, NameOID.LOCALITY_NAME: 128,
                NameOID.SERIAL_NUMBER: 64, NameOID.EMAIL_ADDRESS: 255, NameOID.DOMAIN_COMPONENT: 63,
                NameOID.USER_ID: 256}
_SUBJECT_MAX_OTHER = 128
# attributes that name the subject: at most one of each (two CNs are two
# identities, and relying parties disagree on which one they read)
_SUBJECT_SINGLE = (NameOID.COMMON_NAME, NameOID.SERIAL_NUMBER, NameOID.COUNTRY_NAME)
# RFC 5280 4.1.2.4/4.1.2.6: new certificates use UTF8String or PrintableString
# (IA5String for emailAddress and domainComponent, accepted everywhere as the
# fast path does)
_SUBJECT_STRING_TYPES = (x509.name._ASN1Type.UTF8String, x509.name._ASN1Type.PrintableString,
                         x509.name._ASN1Type.IA5String)
# Unicode categories refused in names: controls (NUL, ESC, C1), format
# characters (bidi overrides, zero-width), surrogates, private use, line
# and paragraph separators
_BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_URI_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def _bad_text(v):
    """The first character of v a name must not contain, as U+XXXX, or None."""
    import unicodedata

    for c in v:
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return "U+%04X" % ord(c)
    return None


def check_subject_name(subj):
    """RemoteProtocolError unless every attribute of the x509.Name `subj`
    is one a certificate may carry as it is: one attribute per RDN, CN /
    serialNumber / C at most once, UTF8String / PrintableString / IA5String,
    no control or format characters, RFC 5280's length bounds."""
    seen = set()
    for rdn in subj.rdns:
        if len(rdn) != 1:
            raise RemoteProtocolError("CSR subject has a multi-valued RDN (%s): one attribute per RDN"
                                      % rdn.rfc4514_string()[:200])
        a = next(iter(rdn))
        name = a.rfc4514_attribute_name
        v = a.value
        if not isinstance(v, str):
            raise RemoteProtocolError("CSR subject attribute %s is not text" % name)
        if a.oid in _SUBJECT_SINGLE:
            if a.oid in seen:
                raise RemoteProtocolError("CSR subject has %s more than once (%s): a certificate names one subject"
                                          % (name, subj.rfc4514_string()[:200]))
            seen.add(a.oid)
        if a._type not in _SUBJECT_STRING_TYPES:
            raise RemoteProtocolError("CSR subject attribute %s is a %s: use UTF8String or PrintableString "
                                      "(RFC 5280 4.1.2.6)" % (name, a._type.name))
        n = _SUBJECT_MAX.get(a.oid, _SUBJECT_MAX_OTHER)
        if not v or len(v) > n:
            raise RemoteProtocolError("CSR subject attribute %s has %d characters (allowed: 1..%d)" % (name, len(v), n))
        bad = _bad_text(v)
        if bad is not None:
            raise RemoteProtocolError("CSR subject attribute %s contains the control or format character %s"
                                      % (name, bad))


def _dns_name_ok(v):
    """A DNS name in the preferred name syntax (RFC 5280 4.2.1.6, RFC 1034
    3.5): letters, digits and '-' in dot-separated labels of 1..63, at most
    253 characters, no wildcard, no trailing dot."""
    if not 0 < len(v) <= 253:
        return False
    for lab in v.split("."):
        if not 0 < len(lab) <= 63 or lab[0] == "-" or lab[-1] == "-" or not _LDH.issuperset(lab):
            return False
    return True


def check_san(g, prof):
    """RemoteProtocolError unless the GeneralName g is allowed by the
    profile prof (san_types, san_dns_suffixes) and well-formed for its type."""
    kind = _SAN_KIND.get(type(g))
    if kind is None or kind not in prof.san_types:
        raise RemoteProtocolError("subjectAltName of type %s is not allowed (allowed: %s)" % (
            kind or type(g).__name__, ", ".join(prof.san_types)))
    v = g.value
    if kind == "dns":
        if "*" in v:
            raise RemoteProtocolError("wildcard DNS name %r is not issued: a certificate names its own hosts" % v[:253])
        if not _dns_name_ok(v):
            raise RemoteProtocolError("DNS name %r is not a host name (letters, digits and '-' in dot-separated "
                                      "labels)" % v[:253])
        if prof.san_dns_suffixes:
            lv = v.lower()
            if not any(lv == s.lstrip(".").lower() or lv.endswith("." + s.lstrip(".").lower())
                       for s in prof.san_dns_suffixes):
                raise RemoteProtocolError("DNS name %s is outside the allowed domains (%s)" % (
                    v, ", ".join(prof.san_dns_suffixes)))
    elif kind == "ip":
        if not isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise RemoteProtocolError("subjectAltName IP address %s is a network, not an address" % (v,))
    elif kind == "email":
        local, at, domain = v.rpartition("@")
        if not at or not local or len(v) > 254 or not _dns_name_ok(domain) or _bad_text(local) is not None \
                or " " in local or not local.isascii():
            raise RemoteProtocolError("email address %r is not local@domain" % v[:254])
    else:  # uri
        scheme, colon, rest = v.partition(":")
        if not colon or not scheme or not scheme[0].isalpha() or not _URI_SCHEME_CHARS.issuperset(scheme) \
                or not v.isascii() or len(v) > 1024 or any(c <= " " or c == "\x7f" for c in v):
            raise RemoteProtocolError("URI %r is not an absolute URI without spaces or controls" % v[:200])


def key_type(pub):
    """'ec:P-256', 'rsa:2048', 'ed25519' ... for a public key."""
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "ec:" + _CURVES.get(pub.curve.name, pub.curve.name)
    if isinstance(pub, rsa.RSAPublicKey):
        return "rsa:%d" % pub.key_size
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(pub, ed448.Ed448PublicKey):
        return "ed448"
    return type(pub).__name__


def trim_der(der, *, max_len=65536):
    """Drop bytes after the first DER element (tolerated trailing bytes) and
    check the outer element is a complete SEQUENCE."""
    mv = memoryview(der)
    if len(mv) < 2 or mv[0] != 0x30:
        raise RemoteProtocolError("request body is not DER (expected a SEQUENCE)")
    n = mv[1]
    off = 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or len(mv) < 2 + k:
            raise RemoteProtocolError("request body is not DER (bad length)")
        n = int.from_bytes(mv[2:2 + k], "big")
        off = 2 + k
    if n > max_len:
        raise LimitError("request body of %d bytes exceeds the limit of %d" % (n, max_len))
    if len(mv) < off + n:
        raise RemoteProtocolError("request body is truncated: DER says %d bytes, %d present" % (off + n, len(mv)))
    if len(mv) == off + n and isinstance(der, bytes):
        return der  # exactly one element: no copy
    return bytes(mv[:off + n])


def _pkcs7(certs):
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


# ContentInfo{signedData} around SignedData{version 1, digestAlgorithms {},
# encapContentInfo {id-data}, certificates [0] ..., signerInfos {}}
_P7_OID = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
_P7_HEAD = b"\x02\x01\x01\x31\x00\x30\x0b\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"


def _pkcs7_der(cert_ders):
    """Certs-only PKCS#7 (RFC 7030 4.1.3 / 4.2.3) from certificate DER,
    assembled by hand: the bytes `pkcs7.serialize_certificates` makes (the
    SET OF in DER order), without loading the certificates."""
    ders = list(cert_ders)
    if len(ders) > 1:  # X.690 11.6: SET OF components in ascending order, shorter ones padded with 0s
        n = max(len(d) for d in ders)
        ders.sort(key=lambda d: bytes(d) + b"\x00" * (n - len(d)))
    n = sum(len(d) for d in ders)
    h_certs = _header(0xA0, n)  # certificates [0] IMPLICIT
    n += len(_P7_HEAD) + len(h_certs) + 2  # + signerInfos SET {}
    h_signed = _header(0x30, n)
    n += len(h_signed)
    h_content = _header(0xA0, n)  # content [0] EXPLICIT
    n += len(_P7_OID) + len(h_content)
    return b"".join([_header(0x30, n), _P7_OID, h_content, h_signed, _P7_HEAD, h_certs] + ders + [b"\x31\x00"])


# ---------------------------------------------------------------- CSR DER slices
#
# The common device CSR (single-valued RDNs of plain text, a named-curve EC
# key, no attributes) is read here once from its DER: the subject and key
# DER go into the certificate as they are, and cryptography's objects for
# the subject, the key and the attributes are never built. Any other shape
# takes cryptography's path. The DER has been loaded by cryptography (and
# its signature verified) before: these slices never see bytes it rejected.

# attribute type (OID DER) -> name in the RFC 4514 text cryptography writes
# (its short names, else the dotted OID)
_RFC4514_NAMES = {_oid(o.dotted_string): n for o, n in (
    (NameOID.COMMON_NAME, "CN"), (NameOID.LOCALITY_NAME, "L"), (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
    (NameOID.ORGANIZATION_NAME, "O"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"), (NameOID.COUNTRY_NAME, "C"),
    (NameOID.STREET_ADDRESS, "STREET"), (NameOID.DOMAIN_COMPONENT, "DC"), (NameOID.USER_ID, "UID"),
    (NameOID.SERIAL_NUMBER, NameOID.SERIAL_NUMBER.dotted_string),
    (NameOID.EMAIL_ADDRESS, NameOID.EMAIL_ADDRESS.dotted_string))}
# the fast path's value bounds (bytes of ASCII text): within _SUBJECT_MAX
_SLICE_MAX = {_oid(o.dotted_string): n for o, n in _SUBJECT_MAX.items()}
# value bytes that need no RFC 4514 escaping and are valid in each string type
_SAFE_PRINTABLE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()-./:=?"
_SAFE_TEXT = {0x13: _SAFE_PRINTABLE, 0x0C: _SAFE_PRINTABLE + b"_@", 0x16: _SAFE_PRINTABLE + b"_@"}


def _tl(d, i):
    """(content start, content end) of the DER element whose length octets
    begin at d[i]; IndexError for a length form not used below 64 KB."""
    n = d[i]
    if n < 0x80:
        return i + 1, i + 1 + n
    if n == 0x81:
        return i + 2, i + 2 + d[i + 1]
    if n == 0x82:
        return i + 3, i + 3 + (d[i + 1] << 8 | d[i + 2])
    raise IndexError


def csr_slices(der):
    """(subject DER, subject RFC 4514 text, set of subject attribute OID DERs,
    SubjectPublicKeyInfo DER, key type, no attributes) of a CSR in the
    common shape described above, or None. der: bytes of a CSR that
    cryptography loaded."""
    try:
        if der[0] != 0x30:
            return None
        i = _tl(der, 1)[0]
        if der[i] != 0x30:
            return None
        i, cri_end = _tl(der, i + 1)
        if der[i:i + 3] != b"\x02\x01\x00" or der[i + 3] != 0x30:  # version 0, subject Name
            return None
        i += 3
        j, subj_end = _tl(der, i + 1)
        subject = der[i:subj_end]
        if der[subj_end] != 0x30:
            return None
        spki_end = _tl(der, subj_end + 1)[1]
        spki = der[subj_end:spki_end]
        kt = ec_spki_key_type(spki)
        if kt is None:
            return None
        if der[spki_end] != 0xA0:
            return None
        no_attrs = der[spki_end + 1] == 0 and spki_end + 2 == cri_end
        oids = set()
        text = []
        while j < subj_end:
            # RDN SET { AttributeTypeAndValue SEQUENCE { OID, string } }, every
            # length in the short form (RDNs under 128 bytes), one attribute per RDN
            rdn_end = j + 2 + der[j + 1]
            if der[j] != 0x31 or der[j + 1] > 0x7F or der[j + 2] != 0x30 or j + 4 + der[j + 3] != rdn_end \
                    or der[j + 4] != 0x06:
                return None
            oid_end = j + 6 + der[j + 5]
            oid = der[j + 4:oid_end]
            name = _RFC4514_NAMES.get(oid)
            safe = _SAFE_TEXT.get(der[oid_end])
            value = der[oid_end + 2:rdn_end]
            if name is None or safe is None or oid_end + 2 + der[oid_end + 1] != rdn_end or not value \
                    or value[0] == 0x20 or value[-1] == 0x20 or value.translate(None, safe) \
                    or oid in oids or len(value) > _SLICE_MAX.get(oid, 64):
                return None  # (an attribute type twice, or a long value: check_subject_name decides)
            oids.add(oid)
            text.append(name + "=" + value.decode("ascii"))
            j = rdn_end
        if j != subj_end:
            return None
    except IndexError:
        return None
    text.reverse()
    return subject, ",".join(text), oids, spki, kt, no_attrs


def csr_signature_parts(der):
    """(CertificationRequestInfo DER, signatureAlgorithm DER, signature) of
    a CSR (bytes that cryptography loaded: strict DER, so the info's bytes
    are the ones it would re-encode and verify), or None."""
    try:
        if der[0] != 0x30:
            return None
        i, end = _tl(der, 1)
        if end != len(der) or der[i] != 0x30:
            return None
        info_end = _tl(der, i + 1)[1]
        if der[info_end] != 0x30:
            return None
        alg_end = _tl(der, info_end + 1)[1]
        if der[alg_end] != 0x03:
            return None
        s0, s1 = _tl(der, alg_end + 1)
        if s1 != end or der[s0] != 0:  # BIT STRING with no unused bits
            return None
        return der[i:info_end], der[info_end:alg_end], der[s0 + 1:s1]
    except IndexError:
        return None


# signatureAlgorithm DER -> the verify argument, for the CSRs of EC keys
_ECDSA_BY_ALG = {_tlv(0x30, _oid(_NAMED_OIDS[n])): ec.ECDSA(h) for n, h in (
    ("ecdsa-with-SHA256", hashes.SHA256()), ("ecdsa-with-SHA384", hashes.SHA384()),
    ("ecdsa-with-SHA512", hashes.SHA512()))}
_EC_CURVE = {"ec:P-256": ec.SECP256R1(), "ec:P-384": ec.SECP384R1(), "ec:P-521": ec.SECP521R1()}


_CSR_BAD_SIGNATURE = "CSR signature does not verify: the request was not signed by the key it carries"
_REQUIRED_OIDS = {k: _oid(v.dotted_string) for k, v in _SUBJECT_OIDS.items()}  # subject field name -> OID DER

# CSR attributes by which a serverkeygen client asks for its private key
# encrypted (RFC 7030 §4.4.1.1 symmetric, §4.4.1.2 asymmetric); this server
# returns the key as application/pkcs8 protected by TLS only
_KEY_ENCRYPTION_ATTRS = {"1.2.840.113549.1.9.16.2.37": "DecryptKeyIdentifier",
                         "1.2.840.113549.1.9.16.2.54": "AsymmetricDecryptKeyIdentifier"}


def _refuse_key_encryption(csr):
    """A serverkeygen CSR asking for an encrypted key is refused (501):
    sending the key unencrypted would ignore what the client asked for."""
    for a in csr.attributes:
        name = _KEY_ENCRYPTION_ATTRS.get(a.oid.dotted_string)
        if name is not None:
            raise NotImplementedOp("serverkeygen: the CSR asks for the private key encrypted (%s, RFC 7030 "
                                   "§4.4.1); this server returns keys protected by TLS only (application/pkcs8) "
                                   "and does not send one unencrypted against that request: leave the attribute "
                                   "out" % name)


# ---------------------------------------------------------------- service


def request_spki(csr):
    """The DER SubjectPublicKeyInfo by which manual approval (with the
    label, operation and subject) and the proxy's owner binding know a
    request: re-encoded when this server can read the key, else as sent (a
    serverkeygen CSR's key is ignored, RFC 7030 §4.4.1, so it may be one it
    cannot read; the other operations have checked theirs). Never the whole
    request info: its attributes may be new in each attempt (a
    challengePassword linked to each TLS connection)."""
    try:
        return csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        from est_lite import der

        tbs = csr.tbs_certrequest_bytes  # SEQUENCE { version, subject, subjectPKInfo, [0] attributes }
        s, e = der.read(tbs, 0, 0x30)
        s = der.read_tlv(tbs, s, e)[2]  # after the version
        s = der.read_tlv(tbs, s, e)[2]  # after the subject
        return tbs[s : der.read_tlv(tbs, s, e)[2]]


class EstService:
    """EST policy over a CA backend. `ca` is the built-in LocalCA or any
    backend with ca_certs(label), issue(IssueRequest), is_revoked(cert);
    `store` holds approval requests (default: ca.store)."""

    def __init__(self, ca, config, authenticator=None, csrattrs_provider=None, *, store=None):
        self.ca = ca
        self.config = config
        if authenticator is None:
            from .auth import PasswordFile

            pw = PasswordFile(config.password_file) if getattr(config, "password_file", None) else None
            authenticator = DefaultAuthenticator(ca, config, pw)
        self.authenticator = authenticator
        self.csrattrs_provider = csrattrs_provider or ProfileCsrAttrs()
        self.store = store if store is not None else getattr(ca, "store", None)
        self._cacerts = {}
        self._cacerts_until = None  # the backend's ca_certs_until: the cache holds until then
        self._lock = threading.Lock()

    # -- operations --
    def profile(self, label):
        prof = self.config.profile(label)
        if prof is None:
            raise UnknownLabel("unknown EST label %r" % label)
        return prof

    def cacerts(self, label, ctx):
        self.profile(label)
        der = self._cacerts.get(label or "")
        if der is None or (self._cacerts_until is not None
                           and getattr(self.ca, "clock", time.time)() > self._cacerts_until):
            if der is not None:  # the backend's answer changed by itself (a rolled-over CA's old root expired)
                self._cacerts.clear()
            der = _pkcs7(self.ca.ca_certs(label or None))
            self._cacerts[label or ""] = der
            self._cacerts_until = getattr(self.ca, "ca_certs_until", None)
        return der

    def csrattrs(self, label, ctx):
        prof = self.profile(label)
        if prof.csrattrs_auth:
            self.authenticate("csrattrs", prof, ctx)
        return self.csrattrs_provider.get(label or "", prof, ctx)

    def simpleenroll(self, label, csr_der, ctx):
        return _pkcs7_der([self._enroll("simpleenroll", label, csr_der, ctx, as_der=True)])

    def simplereenroll(self, label, csr_der, ctx):
        return _pkcs7_der([self._enroll("simplereenroll", label, csr_der, ctx, as_der=True)])

    def serverkeygen(self, label, csr_der, ctx):
        """Returns (pkcs8_der, pkcs7_der, certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._enroll("serverkeygen", label, csr_der, ctx, server_key=key)
        p8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return p8, _pkcs7_der([cert.public_bytes(serialization.Encoding.DER)]), cert

    def fullcmc(self, label, body, ctx):
        self.profile(label)
        raise NotImplementedOp("fullcmc is not implemented by this server; use simpleenroll")

    # -- authentication --
    def check_auth(self, op, label, ctx):
        """Raise like the operation would if the client is not authenticated."""
        self.authenticate(op, self.profile(label), ctx)

    def authenticate(self, op, prof, ctx):
        """Returns (requester text, CertIdentity or None); raises when the
        client is not authenticated for op under profile prof."""
        ra = self._ra_identity(prof, ctx)
        if ra is not None:
            return "ra:%s serial=%x" % (ra.subject, ra.leaf.serial_number), ra
        cert_id = None
        cert_err = None
        reenroll = op == "simplereenroll"
        if ctx.peer_chain and ("cert" in prof.auth or reenroll):
            trust = prof.reenroll_trust if reenroll else prof.client_cert_trust
            try:
                cert_id = self.authenticator.verify_client_cert(ctx.peer_chain, trust, prof.label)
            except UntrustedCertificate as e:
                cert_err = e
            # revoked / expired / not yet valid: SecurityError propagates (403)
        if ctx.http_auth_error is not None:
            raise ctx.http_auth_error
        if reenroll:
            if cert_id is None:
                if cert_err is not None:
                    raise cert_err
                raise SecurityError("simplereenroll needs the TLS client certificate that is being renewed")
            return "cert:%s serial=%x" % (cert_id.subject, cert_id.leaf.serial_number), cert_id
        if cert_id is not None:
            who = "cert:%s serial=%x" % (cert_id.subject, cert_id.leaf.serial_number)
            if ctx.http_user is not None:
                who += " user:%s" % ctx.http_user
            return who, cert_id
        if ctx.http_user is not None:
            if ctx.http_scheme not in prof.auth:
                raise AuthenticationRequired("HTTP %s authentication is not accepted for this label (accepted: %s)" % (
                    ctx.http_scheme, ", ".join(prof.auth)))
            return "user:%s" % ctx.http_user, None
        if cert_err is not None:
            raise cert_err
        raise AuthenticationRequired("authentication required (accepted: %s)" % ", ".join(
            {"basic": "HTTP Basic", "digest": "HTTP Digest", "cert": "TLS client certificate"}[m] for m in prof.auth))

    def _ra_identity(self, prof, ctx):
        """RaIdentity when the TLS client certificate carries id-kp-cmcRA
        and chains to one of prof.ra_trust, else None (the client is then
        authenticated like any other). A revoked or expired RA certificate
        raises SecurityError."""
        if not prof.ra_trust or not ctx.peer_chain or not has_ra_eku(ctx.peer_chain[0]):
            return None
        try:
            cert_id = self.authenticator.verify_client_cert(ctx.peer_chain, prof.ra_trust, prof.label)
        except UntrustedCertificate:
            return None
        if ctx.http_auth_error is not None:
            raise ctx.http_auth_error
        return RaIdentity(cert_id)

    def _current_certificate(self, prof, csr):
        """For an RA's simplereenroll: the newest certificate this CA issued
        to the CSR's subject, which must be neither revoked nor expired.
        An older certificate never stands in for a revoked newest one: the
        RA cannot tell us which certificate the device presented, and
        falling back would let a device whose current certificate was
        revoked renew through an RA that does not see our CRL."""
        store = getattr(self.ca, "store", None)
        if store is None:
            raise OperationNotAllowed("simplereenroll by an RA needs the CA's certificate store (this CA backend "
                                      "has none); the RA can use simpleenroll")
        subject = csr.subject
        find = getattr(store, "find_certificates_by_subject", None)
        if find is not None:
            ders = find(subject.rfc4514_string())
        else:  # the store's table, newest first
            cur = store._db().execute("SELECT der FROM certs WHERE subject=? ORDER BY issued_at DESC, rowid DESC",
                                      (subject.rfc4514_string(),))
            ders = [bytes(r[0]) for r in cur]
        now = store.clock()
        for der in ders:
            c = x509.load_der_x509_certificate(der)
            if c.subject != subject or not self.ca.issued_by_me(c):
                continue
            if self.ca.is_revoked(c):
                raise SecurityError("simplereenroll by an RA: the current certificate of %s (serial %X, the newest "
                                    "this CA issued to it) is revoked; the device must enroll again"
                                    % (subject.rfc4514_string(), c.serial_number))
            if c.not_valid_after_utc.timestamp() <= now:
                raise SecurityError("simplereenroll by an RA: the current certificate of %s (serial %X, the newest "
                                    "this CA issued to it) expired on %s; the device must enroll again"
                                    % (subject.rfc4514_string(), c.serial_number,
                                       c.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")))
            issued_for = store.certificate_label(c.serial_number) if hasattr(store, "certificate_label") else None
            if issued_for is not None and issued_for != prof.label:  # as for a device's own renewal
                raise SecurityError("simplereenroll by an RA: the current certificate of %s (serial %X) was issued "
                                    "for %s; renew it there" % (subject.rfc4514_string(), c.serial_number,
                                                               "label %r" % issued_for if issued_for
                                                               else "the default label"))
            return c
        raise SecurityError("simplereenroll by an RA: this CA has issued no certificate to %s, so there is "
                            "nothing to renew (use simpleenroll)" % subject.rfc4514_string())

    # -- enrollment --
    def _enroll(self, op, label, csr_der, ctx, server_key=None, as_der=False):
        """The issued certificate (its DER with as_der=True)."""
        prof = self.profile(label)
        if op == "serverkeygen" and not prof.serverkeygen:
            raise OperationNotAllowed("serverkeygen is disabled for this label")
        if op == "simplereenroll" and not prof.reenroll:
            raise OperationNotAllowed("simplereenroll is disabled for this label")
        requester, cert_id = self.authenticate(op, prof, ctx)
        try:
            csr, csr_pub, sl = self._load_csr_slices(prof, csr_der, keygen=server_key is not None)
            # sl: the CSR's DER slices (csr_slices), or None (then csr_pub is set)
            no_attrs = sl is not None and sl[5]
            self._check_pop(prof, csr, ctx, cert_id, no_attributes=no_attrs)
            if server_key is not None and not no_attrs:
                _refuse_key_encryption(csr)
            if no_attrs and sl[2] and prof.san != "require" and \
                    all(_REQUIRED_OIDS[f] in sl[2] for f in prof.subject_required):
                sans = []  # no extensionRequest, so no SAN; the required fields are there
                subject = None  # the CA takes sl's DER and text
            else:  # checks (and raises) with cryptography's objects
                subject = csr.subject
                sans = self._check_subject(prof, csr, subject)
            renewing = None
            if op == "simplereenroll":
                # an RA renews a device's certificate found in the store; a
                # device renews the certificate it authenticated with
                if isinstance(cert_id, RaIdentity):
                    renewing = self._current_certificate(prof, csr)
                    self._check_renewal(csr, sans, renewing)
                else:
                    renewing = cert_id.leaf
                    self._check_renewal(csr, sans, renewing)
                    self._check_renewal_label(prof, cert_id)
            pub = server_key.public_key() if server_key is not None else csr_pub
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as e:
            # cryptography parses lazily: any malformed part of the CSR
            raise RemoteProtocolError("CSR cannot be parsed: %s" % e) from None
        request_id = None
        if prof.manual_approval:
            done, request_id = self._approval(prof, op, csr, csr_der, requester)
            if done is not None:
                return done.public_bytes(serialization.Encoding.DER) if as_der else done
        req = IssueRequest(pub, subject, sans=sans, label=prof.label, profile=prof, csr=csr, requester=requester,
                           request_id=request_id, op=op, renewing=renewing,
                           spki_der=sl[3] if sl is not None and server_key is None else None,
                           subject_der=sl[0] if sl is not None else None,
                           subject_text=sl[1] if sl is not None else None)
        if as_der:
            issue_der = getattr(self.ca, "issue_der", None)
            if issue_der is not None:
                return issue_der(req)
            return self.ca.issue(req).public_bytes(serialization.Encoding.DER)
        return self.ca.issue(req)

    def _load_csr(self, prof, der, keygen=False):
        return self._load_csr_slices(prof, der, keygen)[0]

    def _load_csr_key(self, prof, der):
        """(CSR, its public key): parsed, signature verified, key type allowed."""
        csr, pub, _ = self._load_csr_slices(prof, der)
        return csr, (csr.public_key() if pub is None else pub)

    def _load_csr_slices(self, prof, der, keygen=False):
        """(CSR, public key, None) or (CSR, None, csr_slices(der)): parsed,
        signature verified, key type allowed. The slices come when the CSR
        has the common shape; the public key object is then not built.
        keygen: a serverkeygen CSR, whose public key and signature the
        server MUST ignore (RFC 7030 §4.4.1, RFC 9148 §4.8): (CSR, None,
        slices or None), neither checked."""
        if len(der) > prof.max_csr_bytes:
            raise LimitError("CSR of %d bytes exceeds the limit of %d bytes" % (len(der), prof.max_csr_bytes))
        der = trim_der(der, max_len=prof.max_csr_bytes)
        try:
            csr = x509.load_der_x509_csr(der)
        except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as e:
            raise RemoteProtocolError("request body is not a valid PKCS#10 CSR: %s" % e) from None
        sl = csr_slices(der)
        if keygen:
            return csr, None, sl
        if sl is not None and sl[4] in prof.key_types:
            # the signature checked from the DER slices: the key from its
            # point, no second copy of the request info (is_signature_valid
            # re-encodes it), the verify argument made once
            sp = csr_signature_parts(der)
            alg = _ECDSA_BY_ALG.get(sp[1]) if sp is not None else None
            if alg is not None:
                try:
                    pub = ec.EllipticCurvePublicKey.from_encoded_point(_EC_CURVE[sl[4]], ec_spki_point(sl[3]))
                    pub.verify(sp[2], sp[0], alg)
                except InvalidSignature:
                    raise RemoteProtocolError(_CSR_BAD_SIGNATURE) from None
                except (ValueError, TypeError, UnsupportedAlgorithm):
                    pass  # is_signature_valid below says why, in its words
                else:
                    return csr, None, sl
        try:
            ok = csr.is_signature_valid
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise RemoteProtocolError("CSR signature cannot be checked: %s" % e) from None
        if not ok:
            raise RemoteProtocolError(_CSR_BAD_SIGNATURE)
        if sl is not None and sl[4] in prof.key_types:
            return csr, None, sl
        try:
            pub = csr.public_key()
            kt = key_type(pub)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise RemoteProtocolError("CSR public key is not usable: %s" % e) from None
        if kt not in prof.key_types:
            raise RemoteProtocolError("key type %s is not allowed for this label (allowed: %s)" % (kt, ", ".join(prof.key_types)))
        return csr, pub, None

    def _check_subject(self, prof, csr, subject=None):
        """Validate subject fields and SANs; return the SANs to certify."""
        subj = csr.subject if subject is None else subject
        try:
            check_subject_name(subj)
        except (ValueError, TypeError) as e:  # cryptography decodes a value lazily
            raise RemoteProtocolError("CSR subject cannot be parsed: %s" % e) from None
        missing = [f for f in prof.subject_required if not subj.get_attributes_for_oid(_SUBJECT_OIDS[f])]
        if missing:
            raise RemoteProtocolError("CSR subject lacks required field(s) %s (subject is %r)" % (
                ", ".join(missing), subj.rfc4514_string()))
        try:
            exts = csr.extensions
            san_ext = exts.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = list(san_ext)
        except x509.ExtensionNotFound:
            sans = []
        except (ValueError, TypeError, x509.DuplicateExtension) as e:  # DuplicateExtension: e.g. two SANs
            raise RemoteProtocolError("CSR extension request cannot be parsed: %s" % e) from None
        if not sans and not list(subj):
            raise RemoteProtocolError("CSR has an empty subject and no subjectAltName: a certificate must name "
                                      "its subject in one of them (RFC 5280 4.1.2.6)")
        if prof.san == "forbid" and sans:
            raise RemoteProtocolError("subjectAltName is not allowed for this label")
        if prof.san == "require" and not sans:
            raise RemoteProtocolError("subjectAltName is required for this label")
        for g in sans:
            check_san(g, prof)
        return sans

    def _check_renewal_label(self, prof, cert_id):
        """A certificate this CA issued renews on the label that issued it:
        another label may give other extensions, validity or approval, and
        its enrollment credentials were never shown (SecurityError). Client
        certificates of other trust sets, and those this CA's store does
        not know, are not restricted."""
        store = getattr(self.ca, "store", None)
        find = getattr(store, "certificate_label", None)
        if cert_id.trust_name != "ca" or find is None:
            return
        issued_for = find(cert_id.leaf.serial_number)
        if issued_for is not None and issued_for != prof.label:
            raise SecurityError("certificate serial %X was issued for %s; renew it there (/.well-known/est/%s"
                                "simplereenroll)" % (cert_id.leaf.serial_number,
                                                     "label %r" % issued_for if issued_for else "the default label",
                                                     issued_for + "/" if issued_for else ""))

    def _check_renewal(self, csr, sans, old):
        if csr.subject != old.subject:
            raise RemoteProtocolError("simplereenroll must keep the subject of the certificate being renewed "
                                      "(CSR has %r, certificate has %r)" % (csr.subject.rfc4514_string(), old.subject.rfc4514_string()))
        try:
            old_sans = list(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            old_sans = []
        if sorted(map(repr, old_sans)) != sorted(map(repr, sans)):
            raise RemoteProtocolError("simplereenroll must keep the subjectAltName of the certificate being renewed")

    def _check_pop(self, prof, csr, ctx, cert_id, no_attributes=False):
        """no_attributes=True: the caller read from the DER that the CSR has
        no attributes (so no challengePassword)."""
        if isinstance(cert_id, RaIdentity):
            # RFC 7030 §3.5: the RA checked the device's challengePassword on
            # the device's own link; this connection's binding is the RA's
            # (configuring ra_trust is what trusts the RA to do so)
            return
        if no_attributes:
            cp = None
        else:
            try:
                attr = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
                cp = attr.value
            except x509.AttributeNotFound:
                cp = None
            except (ValueError, TypeError) as e:
                raise RemoteProtocolError("CSR attributes cannot be parsed: %s" % e) from None
        exempt = ctx.transport in prof.pop_exempt_transports or (
            cert_id is not None and cert_id.trust_name in prof.pop_exempt_trust)
        if cp is None:
            if prof.pop == "required" and not exempt:
                binding = ctx.channel_binding()
                if binding is None:
                    raise SecurityError("this label requires PoP linking, but this connection offers no channel "
                                        "binding (TLS 1.2 has one only with the extended master secret; a client "
                                        "that cannot link must be exempted in the profile)")
                raise SecurityError("this label requires PoP linking: put base64(%s) of this TLS connection in the "
                                    "CSR's challengePassword" % binding[0])
            return
        binding = ctx.channel_binding()
        if binding is None:
            if prof.pop == "required" and not exempt:
                raise SecurityError("CSR carries challengePassword but this connection has no channel binding to check "
                                    "it against (TLS 1.2 has one only with the extended master secret)")
            return
        if isinstance(cp, bytes):
            cp = cp.decode("latin-1")
        want = base64.b64encode(binding[1]).decode()
        if not hmac.compare_digest(cp.strip().encode("latin-1", "replace"), want.encode()):
            raise SecurityError("PoP linking failed: challengePassword is not base64(%s) of this TLS connection" % binding[0])

    def _approval(self, prof, op, csr, csr_der, requester):
        """Manual approval. Returns (certificate or None, request_id) to
        issue now, or raises PendingApproval / RequestRejected."""
        if self.store is None:
            raise LocalProtocolError("manual approval needs a store (the CA backend has none)")
        spki = request_spki(csr)
        kind = {"serverkeygen": "skg", "simplereenroll": "reenroll"}.get(op, "enroll")
        fp = hashlib.sha256(b"\0".join([prof.label.encode(), kind.encode(), spki,
                                        csr.subject.public_bytes()])).hexdigest()
        r = self.store.find_request(fp)
        if r is not None and r["status"] in (APPROVED, ISSUED) and not (r["status"] == ISSUED and kind == "skg") \
                and r["requester"] and r["requester"] != requester:
            # the same CSR from another identity: a CSR is no secret (and a
            # replayed one proves nothing), so what was approved for its
            # submitter, above all a server-generated private key, goes to
            # that submitter only (the same credentials as when it was sent)
            raise SecurityError("enrollment request %d was submitted by another client; it can be collected only "
                                "with the credentials it was sent with" % r["id"])
        if r is not None and r["status"] == ISSUED and kind != "skg" and r["serial"]:
            der = self.store.get_certificate(r["serial"])
            if der is not None:
                old = x509.load_der_x509_certificate(der)
                if old.not_valid_after_utc.timestamp() > self.store.clock() and not self.store.is_revoked(r["serial"]):
                    return old, r["id"]  # the same request asked again: the same certificate
            r = None  # expired or revoked since: a new request
        if r is None or (r["status"] == ISSUED and kind == "skg"):
            rid = self.store.add_request(fp, label=prof.label, op=op, subject=csr.subject.rfc4514_string(),
                                         csr_der=csr_der, requester=requester)
            raise PendingApproval("enrollment request %d is waiting for approval; retry in %d s" % (rid, prof.retry_after),
                                  prof.retry_after, rid)
        if r["status"] == PENDING:
            raise PendingApproval("enrollment request %d is still waiting for approval; retry in %d s" % (r["id"], prof.retry_after),
                                  prof.retry_after, r["id"])
        if r["status"] == REJECTED:
            raise RequestRejected("enrollment request %d was rejected%s" % (r["id"], ": %s" % r["reason"] if r["reason"] else ""))
        if r["status"] == APPROVED:
            return None, r["id"]
        raise LocalProtocolError("request %d has unknown status %r" % (r["id"], r["status"]))
