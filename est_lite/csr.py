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
from est_lite.errors import LocalProtocolError, RemoteProtocolError, const

# subject keywords in the order they are written, and for each: the last arc
# of 2.5.4.x (0: emailAddress 1.2.840.113549.1.9.1), the string kind (p
# PrintableString, u UTF8String, i IA5String) and the X.520 upper bound
# (const: folded into the code by mpy-cross, no module name interned)
_KW = const(("c", "st", "l", "o", "ou", "cn", "serial_number", "email"))
_SPEC = const(
    ((6, "p", 2), (8, "u", 128), (7, "u", 128), (10, "u", 64), (11, "u", 64), (3, "u", 64), (5, "p", 64), (0, "i", 255))
)
# (OIDs and names are written as long literals, not module names: literals
# longer than 10 characters are constants of the code, not interned names)


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
    if not isinstance(value, str) or not 0 < len(value) <= maxlen or [c for c in value.encode() if c < 32 or c == 127]:
        raise LocalProtocolError("%s: 1..%d characters, no control characters" % (what, maxlen))
    return (der.printable if kind == "p" else der.ia5 if kind == "i" else der.utf8)(value)


def _one_der(v, what):
    v = bytes(v)
    try:
        ok = der.read_tlv(v, 0, None, len(v))[2] == len(v)
    except RemoteProtocolError:
        ok = False
    if not ok:
        raise LocalProtocolError(what + ": not one DER element")
    return v


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

    def __getattr__(self, name):
        # san(), key_usage(), extended_key_usage(), extension(),
        # challenge_password() and attribute() (documented in
        # est_lite.csr_ext): their code is loaded on first use, so a device
        # that sets only a subject does not hold it in RAM
        if name in "san key_usage extended_key_usage extension challenge_password attribute".split():
            from est_lite import csr_ext

            f = getattr(csr_ext, "b_" + name)
            return lambda *a, **k: f(self, *a, **k)
        raise AttributeError(name)

    # ------------------------------------------------------------ setters

    def subject(self, pairs=None, **names):
        """Subject DN from keywords cn, o, ou, c, serial_number, l, st, email
        (each a str or a list of str) and/or a list of (oid_or_keyword,
        value) pairs; a bytes value is taken as a ready DER AttributeValue.
        Keywords are written in the order C, ST, L, O, OU, CN, serialNumber,
        email, after the pairs."""
        if self._subject is not None:
            raise LocalProtocolError("subject may only be set once")
        items = list(pairs or ())
        for k in names:
            if k not in _KW:
                raise LocalProtocolError("unknown subject keyword %r (use %s)" % (k, ", ".join(_KW)))
        for k in _KW:
            v = names.get(k)
            for x in v if isinstance(v, (list, tuple)) else () if v is None else (v,):
                items.append((k, x))
        if not items:
            raise LocalProtocolError("empty subject")
        out = []
        for k, v in items:
            oid, kind, n = _spec(k)
            if isinstance(v, (bytes, bytearray, memoryview)):
                v = _one_der(v, "subject value " + oid)
            else:
                if n == 2 and not (isinstance(v, str) and len(v) == 2 and v.isalpha()):
                    raise LocalProtocolError("country %r: 2 letters" % (v,))
                v = _string(kind, v, "subject " + k, n)
            out.append((oid, v))
        return self._set("_subject", tuple(out))

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
            raise LocalProtocolError("public key: not a 65-byte 0x04||X||Y point (only P-256)")
        # 0x31: SET (of one AttributeTypeAndValue, so no sorting)
        rdns = [der.tlv(0x31, der.seq(der.oid(o), v)) for o, v in self._subject or ()]
        exts = [
            der.seq(der.oid(o), der.boolean(1) if c or o == "2.5.29.17" and not rdns else b"", der.octet_string(v))
            for o, c, v in self._exts
        ]
        attrs = [der.seq(der.oid(o), der.set_of(*v)) for o, v in self._attrs]
        if self._cp is not None:
            attrs.append(der.seq(der.oid("1.2.840.113549.1.9.7"), der.tlv(0x31, self._cp)))
        if exts:
            attrs.append(der.seq(der.oid("1.2.840.113549.1.9.14"), der.tlv(0x31, der.seq(*exts))))
        attrs.sort()
        # AlgorithmIdentifier { id-ecPublicKey, secp256r1 }
        alg = b"\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"
        spki = der.seq(alg, der.bit_string(pk))
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
            raise LocalProtocolError("signer: not a DER ECDSA signature")
        # AlgorithmIdentifier { ecdsa-with-SHA256 }
        return der.seq(info, b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02", der.bit_string(sig))

    def sign(self, signer):
        """Build, sign with signer (see module comment) and return DER."""
        pk = signer.public_key
        info = self.request_info(pk() if callable(pk) else pk)
        return self.assemble(info, signer.sign(info))


def __getattr__(name):
    # EKU_NAMES and parse_ip live in est_lite.csr_ext with the setters that use them
    if name in "EKU_NAMES parse_ip".split():
        from est_lite import csr_ext

        return csr_ext.eku_names() if name.isupper() else csr_ext.parse_ip
    raise AttributeError(name)
