"""Client authentication for the reference EST server.

`DefaultAuthenticator` is the pluggable authenticator `EstService` and the
HTTPS front end use by default. Any object with these methods can replace it
(a RADIUS or LDAP check implements `verify_password` and sets `digest_ha1 =
None`, so only Basic is offered and a Digest answer is refused):

    verify_password(username, password, label) -> bool
    digest_ha1(username, realm, algorithm, label) -> str (hex) or None
        (None for a user: Digest fails for that user; the attribute None
        or absent: the server offers Basic only)
    verify_client_cert(chain, trust_names, label) -> CertIdentity
        (raises est_lite.errors.SecurityError with a readable reason)

Passwords live in a file (`est-lite ca passwd USER`), one user a line:

    user:realm:pbkdf2-sha256$ITER$SALT$HASH:MD5-HA1:SHA256-HA1

The PBKDF2 hash serves HTTP Basic; the two HA1 values (RFC 7616) serve HTTP
Digest with MD5 and SHA-256 for that realm. HA1 values are password
equivalents for Digest: the file is written 0600.

HTTP Digest (RFC 7616) helpers are here too: `DigestChallenger` issues
stateless HMAC nonces and checks responses.
"""

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import threading
import time

from est_lite.errors import LocalProtocolError, SecurityError

PBKDF2_ITERATIONS = 100_000


class AuthenticationRequired(SecurityError):
    """No (valid) credentials: HTTP 401 with a challenge, CoAP 4.01."""

    http_status = 401
    coap_code = 0x81


class UntrustedCertificate(SecurityError):
    """The client certificate does not chain to a CA trusted for this label
    (other credentials, e.g. a password, may still authenticate)."""


class CertIdentity:
    """A verified client certificate chain."""

    def __init__(self, leaf, chain, trust_name, subject=None):
        self.leaf = leaf  # x509.Certificate
        self.chain = chain  # [leaf, ..., anchor]
        self.trust_name = trust_name  # "ca" for this server's CA, or a [trust.NAME]
        self._subject = subject  # the leaf's RFC 4514 text when already known

    @property
    def subject(self):
        if self._subject is None:
            self._subject = self.leaf.subject.rfc4514_string()
        return self._subject


# ---------------------------------------------------------------- passwords


def _ha1(alg, user, realm, password):
    h = hashlib.md5 if alg == "MD5" else hashlib.sha256
    return h(("%s:%s:%s" % (user, realm, password)).encode("utf-8")).hexdigest()


def _pbkdf2(password, salt, iterations):
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def check_user(user):
    """LocalProtocolError unless `user` can be a password file user name."""
    if not isinstance(user, str) or not user or ":" in user or any(ord(c) < 0x21 or ord(c) == 0x7f for c in user):
        raise LocalProtocolError("user name must be non-empty printable text without ':' or spaces, not %r" % (user,))


def check_realm(realm):
    """LocalProtocolError unless `realm` can be stored in the password file."""
    if not isinstance(realm, str) or not realm or ":" in realm or any(ord(c) < 0x20 or ord(c) == 0x7f for c in realm) \
            or '"' in realm or "\\" in realm:
        raise LocalProtocolError("realm must be non-empty printable text without ':', '\"' or '\\', not %r" % (realm,))


class PasswordFile:
    """Users for HTTP Basic and Digest, kept in a text file."""

    def __init__(self, path, *, iterations=PBKDF2_ITERATIONS, cache_size=4096):
        self.path = path
        self.iterations = iterations
        self._users = {}
        self._mtime = None
        self._lock = threading.Lock()
        # successful Basic checks, keyed by a fast hash, so a device fleet does
        # not pay PBKDF2 on every enrollment (cleared when the file changes)
        self._ok = {}
        self._cache_size = cache_size
        self._secret = os.urandom(32)
        self._load()

    def _load(self):
        try:
            st = os.stat(self.path)
        except OSError:
            self._users, self._mtime = {}, None
            return
        if self._mtime == st.st_mtime_ns:
            return
        users = {}
        with open(self.path, "r", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split(":")
                if len(parts) != 5:
                    raise LocalProtocolError("%s line %d: expected user:realm:pbkdf2:md5ha1:sha256ha1" % (self.path, n))
                users[parts[0]] = parts[1:]
        self._users, self._mtime = users, st.st_mtime_ns
        self._ok = {}

    def reload(self):
        with self._lock:
            self._load()

    def users(self):
        self.reload()
        return sorted(self._users)

    def set_password(self, user, password, realm="est-lite"):
        check_user(user)
        check_realm(realm)
        salt = os.urandom(16)
        dk = _pbkdf2(password, salt, self.iterations)
        spec = "pbkdf2-sha256$%d$%s$%s" % (
            self.iterations,
            base64.b64encode(salt).decode(),
            base64.b64encode(dk).decode(),
        )
        with self._lock:
            self._mtime = None
            self._load()
            self._users[user] = [realm, spec, _ha1("MD5", user, realm, password), _ha1("SHA-256", user, realm, password)]
            self._write()

    def remove(self, user):
        with self._lock:
            self._mtime = None
            self._load()
            if user not in self._users:
                raise LocalProtocolError("no user %r in %s" % (user, self.path))
            del self._users[user]
            self._write()

    def _write(self):
        from .ca import write_private

        lines = ["# est-lite users: user:realm:pbkdf2-sha256$iter$salt$hash:md5-ha1:sha256-ha1\n"]
        for u in sorted(self._users):
            lines.append("%s:%s\n" % (u, ":".join(self._users[u])))
        tmp = self.path + ".tmp"
        write_private(tmp, "".join(lines).encode("utf-8"))
        os.replace(tmp, self.path)
        self._mtime = None
        self._load()

    def check(self, user, password):
        with self._lock:
            self._load()
            rec = self._users.get(user)
            if rec is None:
                # the same PBKDF2 as a wrong password: an unknown user answers
                # no faster than a known one (no timing oracle for user names)
                _pbkdf2(password, self._secret[:16], self.iterations)
                return False
            # keyed BLAKE2b (CPython's own code): no second OpenSSL library
            # touched per request (hmac.digest goes through the system
            # libcrypto, cache-cold on every enrollment: ~30 us)
            key = hashlib.blake2b(("%s\0%s" % (user, password)).encode("utf-8"), key=self._secret).digest()
            if key in self._ok:
                return True
        try:
            _, iters, salt, want = rec[1].split("$")
            got = _pbkdf2(password, base64.b64decode(salt), int(iters))
            ok = hmac.compare_digest(got, base64.b64decode(want))
        except (ValueError, binascii.Error):
            return False
        if ok:
            with self._lock:
                if len(self._ok) >= self._cache_size:
                    self._ok.clear()
                self._ok[key] = True
        return ok

    def ha1(self, user, realm, algorithm):
        with self._lock:
            self._load()
            rec = self._users.get(user)
        if rec is None or rec[0] != realm:
            return None
        return rec[2] if algorithm == "MD5" else rec[3]


# ---------------------------------------------------------------- Digest (RFC 7616)

_PARAM = re.compile(r'\s*([A-Za-z0-9_*-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*(?:,|$)')


def parse_auth_params(text, *, max_params=20):
    """'a="b", c=d' -> {'a': 'b', 'c': 'd'} (names lowercased). Raises
    SecurityError on malformed input."""
    out = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if not m or m.end() == pos:
            raise AuthenticationRequired("malformed Authorization header parameters")
        name = m.group(1).lower()
        val = m.group(3) if m.group(3) is not None else m.group(2)
        if m.group(3) is not None:
            val = re.sub(r"\\(.)", r"\1", val)
        out[name] = val
        pos = m.end()
        if len(out) > max_params:
            raise AuthenticationRequired("too many Authorization header parameters")
    return out


class DigestChallenger:
    """Issues and checks RFC 7616 challenges with stateless HMAC nonces."""

    ALGORITHMS = ("SHA-256", "MD5")

    def __init__(self, realm, *, lifetime_s=300, clock=time.time, max_tracked=10000):
        self.realm = realm
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._key = os.urandom(32)
        self._opaque = base64.b64encode(os.urandom(12)).decode()
        self._nc = {}  # nonce -> highest nc seen (replay protection)
        self._lock = threading.Lock()
        self._max_tracked = max_tracked

    def new_nonce(self):
        ts = struct.pack(">Q", int(self.clock() * 1000))
        mac = hmac.new(self._key, ts, hashlib.sha256).digest()[:16]
        return base64.b64encode(ts + mac).decode()

    def challenges(self, stale=False):
        """WWW-Authenticate values, strongest first."""
        nonce = self.new_nonce()
        out = []
        for alg in self.ALGORITHMS:
            out.append(
                'Digest realm="%s", qop="auth", algorithm=%s, nonce="%s", opaque="%s"%s'
                % (self.realm, alg, nonce, self._opaque, ", stale=true" if stale else "")
            )
        return out

    def _nonce_age_ok(self, nonce):
        """True (fresh), False (expired: stale) or None (forged)."""
        try:
            raw = base64.b64decode(nonce, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 24:
            return None
        ts, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, hmac.new(self._key, ts, hashlib.sha256).digest()[:16]):
            return None
        age = self.clock() - struct.unpack(">Q", ts)[0] / 1000.0
        return -5 <= age <= self.lifetime_s

    def verify(self, params, method, uri, ha1_lookup):
        """Check a parsed Digest Authorization. ha1_lookup(user, realm, alg)
        returns the HA1 hex or None. Returns the user name; raises
        AuthenticationRequired (with .stale) on failure."""
        for k in ("username", "realm", "nonce", "uri", "response"):
            if k not in params:
                raise AuthenticationRequired("Digest Authorization lacks %s" % k)
        alg = params.get("algorithm", "MD5")
        if alg.upper() in ("SHA-256", "MD5"):
            alg = alg.upper()
        else:
            raise AuthenticationRequired("Digest algorithm %s is not supported (use SHA-256 or MD5)" % alg)
        if params["realm"] != self.realm:
            raise AuthenticationRequired("Digest realm %r is not %r" % (params["realm"], self.realm))
        if params["uri"] != uri:
            raise AuthenticationRequired("Digest uri does not match the request target")
        if params.get("opaque") is not None and params["opaque"] != self._opaque:
            raise AuthenticationRequired("Digest opaque value is not ours")
        fresh = self._nonce_age_ok(params["nonce"])
        if fresh is None:
            raise AuthenticationRequired("Digest nonce was not issued by this server")
        user = params["username"]
        ha1 = ha1_lookup(user, self.realm, alg)
        h = (lambda s: hashlib.md5(s.encode("utf-8")).hexdigest()) if alg == "MD5" else (
            lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())
        ha2 = h("%s:%s" % (method, uri))
        qop = params.get("qop")
        if qop is None:
            raise AuthenticationRequired("Digest without qop=auth is not accepted (RFC 7616)")
        if qop != "auth":
            raise AuthenticationRequired("Digest qop %r is not supported (use auth)" % qop)
        nc, cnonce = params.get("nc"), params.get("cnonce")
        if not nc or cnonce is None:
            raise AuthenticationRequired("Digest qop=auth needs nc and cnonce")
        if ha1 is None:
            raise AuthenticationRequired("wrong user name or password")
        want = h("%s:%s:%s:%s:%s:%s" % (ha1, params["nonce"], nc, cnonce, qop, ha2))
        if not hmac.compare_digest(want.encode(), params["response"].lower().encode()):
            raise AuthenticationRequired("wrong user name or password")
        if not fresh:
            e = AuthenticationRequired("Digest nonce expired, retry with the new one")
            e.stale = True
            raise e
        try:
            ncv = int(nc, 16)
        except ValueError:
            raise AuthenticationRequired("Digest nc is not hexadecimal") from None
        with self._lock:
            if ncv <= self._nc.get(params["nonce"], 0):
                raise AuthenticationRequired("Digest nc replayed")
            if len(self._nc) >= self._max_tracked:
                self._nc.clear()
            self._nc[params["nonce"]] = ncv
        return user


def digest_response(params, user, password, method, uri, *, cnonce=None, nc=1):
    """Client side of RFC 7616 (for tests and tools): the Authorization value
    answering one challenge `params` (parsed)."""
    alg = params.get("algorithm", "MD5").upper()
    h = (lambda s: hashlib.md5(s.encode()).hexdigest()) if alg == "MD5" else (
        lambda s: hashlib.sha256(s.encode()).hexdigest())
    cnonce = cnonce or binascii.hexlify(os.urandom(8)).decode()
    ha1 = h("%s:%s:%s" % (user, params["realm"], password))
    ha2 = h("%s:%s" % (method, uri))
    ncs = "%08x" % nc
    resp = h("%s:%s:%s:%s:%s:%s" % (ha1, params["nonce"], ncs, cnonce, "auth", ha2))
    v = 'Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=%s, qop=auth, nc=%s, cnonce="%s", response="%s"' % (
        user, params["realm"], params["nonce"], uri, alg, ncs, cnonce, resp)
    if "opaque" in params:
        v += ', opaque="%s"' % params["opaque"]
    return v


# ---------------------------------------------------------------- client certificates


class VerifiedChain(list):
    """The certificates a (D)TLS peer sent (leaf first), plus `path`: the
    chain OpenSSL already verified in the handshake (leaf ... trust anchor),
    or None. verify_client_cert then checks no signature twice when that
    path ends in an anchor of the trust set being checked; validity periods
    and revocation are checked as for any chain."""

    __slots__ = ("path",)

    def __init__(self, certs=(), path=None):
        super().__init__(certs)
        self.path = list(path) if path else None


def _client_use(cert):
    """"" if the certificate may authenticate a TLS client (RFC 5280
    4.2.1.12 / 4.2.1.3: no extendedKeyUsage, or one with clientAuth or
    anyExtendedKeyUsage; no keyUsage, or one with digitalSignature), else
    the reason. E.g. a TLS server certificate (serverAuth only) of the same
    CA is not a device's identity."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        exts = cert.extensions
        try:
            eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        try:
            ku = exts.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
    except (ValueError, TypeError, x509.DuplicateExtension) as e:
        return "its extensions cannot be parsed (%s)" % e
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku \
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        return "its extendedKeyUsage (%s) lacks clientAuth" % ", ".join(
            getattr(o, "_name", None) or o.dotted_string for o in eku)
    if ku is not None and not ku.digital_signature:
        return "its keyUsage lacks digitalSignature"
    return ""


class DefaultAuthenticator:
    """Passwords from a PasswordFile; client certificates against this
    server's CA ("ca", revocation from its store) and the [trust.NAME] sets of
    the config (revocation from their CRL files)."""

    def __init__(self, ca, config=None, passwords=None, *, clock=time.time, max_chain=5, max_cached_signatures=4096):
        self.ca = ca
        self.config = config
        self.passwords = passwords
        self.clock = clock
        self.max_chain = max_chain
        # (certificate DER, issuer DER) pairs whose signature verified: a
        # device that connects again (cacerts, csrattrs, then simpleenroll;
        # renewals) costs no second ECDSA verification. A signature over
        # fixed bytes under a fixed key never changes; validity periods and
        # revocation are still checked on every request.
        self.max_cached_signatures = max_cached_signatures
        self._sig_ok = {}
        # a certificate's subject as RFC 4514 text (the requester text of
        # every request it authenticates): 55 k instructions to build from
        # the certificate, 10 k to find here; bounded like _sig_ok
        self._subject_text = {}
        # leaf -> "" (usable for TLS client authentication) or why not (_client_use)
        self._not_client = {}

    # -- passwords --
    def verify_password(self, username, password, label):
        if self.passwords is None:
            return False
        return self.passwords.check(username, password)

    def digest_ha1(self, username, realm, algorithm, label):
        if self.passwords is None:
            return None
        return self.passwords.ha1(username, realm, algorithm)

    # -- certificates --
    def _anchors(self, name):
        if name == "ca":
            return self.ca.ca_certs(None), [], self.ca
        t = self.config.trust.get(name) if self.config is not None else None
        if t is None:
            return [], [], None
        return t.certs, t.crls, None

    def verify_client_cert(self, chain, trust_names, label=None):
        """Validate chain (leaf first, as sent by the peer, possession of the
        leaf key already proven by TLS) up to an anchor of one of the named
        trust sets; check validity periods and revocation."""
        if not chain:
            raise AuthenticationRequired("no client certificate")
        leaf = chain[0]
        why = self._not_client.get(leaf)
        if why is None:
            why = _client_use(leaf)
            if len(self._not_client) >= self.max_cached_signatures:
                self._not_client.clear()
            self._not_client[leaf] = why
        if why:
            raise UntrustedCertificate("client certificate %s is not for TLS client authentication: %s"
                                       % (leaf.subject.rfc4514_string(), why))
        now = self.clock()
        extra = list(chain[1:])
        last_err = None
        for name in trust_names:
            anchors, crls, own = self._anchors(name)
            if not anchors:
                continue
            pre = getattr(chain, "path", None)
            try:
                if pre and len(pre) <= self.max_chain + 1 and pre[0] == leaf and pre[-1] in anchors:
                    path = [leaf] + pre[1:]  # every signature on it already verified by OpenSSL in the handshake
                else:
                    path = self._build(leaf, extra, anchors)
            except SecurityError as e:
                last_err = e
                continue
            if path is None:
                continue
            for c in path:
                nb = c.not_valid_before_utc.timestamp()
                na = c.not_valid_after_utc.timestamp()
                if now > na or now < nb:  # the text only for the error (55 k instructions per name)
                    what = "client certificate" if c is leaf else "CA certificate %s" % c.subject.rfc4514_string()
                    if now > na:
                        raise SecurityError("%s %s expired on %s" % (what, c.subject.rfc4514_string(),
                                                                     c.not_valid_after_utc.isoformat()))
                    raise SecurityError("%s %s is not valid before %s" % (what, c.subject.rfc4514_string(),
                                                                          c.not_valid_before_utc.isoformat()))
            for i in range(len(path) - 1):
                c, issuer = path[i], path[i + 1]
                if own is not None and own.issued_by_me(c) and own.is_revoked(c):
                    raise SecurityError("client certificate serial %x has been revoked" % c.serial_number)
                for crl in crls:
                    if crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key()):
                        r = crl.get_revoked_certificate_by_serial_number(c.serial_number)
                        if r is not None:
                            raise SecurityError("client certificate serial %x is revoked by %s's CRL" % (
                                c.serial_number, issuer.subject.rfc4514_string()))
            texts = self._subject_text
            text = texts.get(leaf)
            if text is None:
                if len(texts) >= self.max_cached_signatures:
                    texts.clear()
                text = texts[leaf] = leaf.subject.rfc4514_string()
            return CertIdentity(leaf, path, name, text)
        if last_err is not None:
            raise last_err
        raise UntrustedCertificate("client certificate %s is not issued by a CA trusted for this label (%s)" % (
            leaf.subject.rfc4514_string(), ", ".join(trust_names) or "none"))

    def _build(self, leaf, extra, anchors):
        from cryptography.exceptions import InvalidSignature
        from cryptography.x509 import BasicConstraints, ExtensionNotFound

        cache = self._sig_ok

        def signed_by(c, issuer, known):
            """`known`: cache.get(c), the issuers c verified against before
            (certificates compare and hash by their whole content: the same
            bytes verify_directly_issued_by checks). A hit costs a hash and
            a comparison, not the two Name objects of the check below and
            no re-encoding of both certificates (~100 k instructions)."""
            if known is not None:
                for k in known:
                    if k == issuer:
                        return True
            if c.issuer != issuer.subject:
                return False
            try:
                c.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError):
                return False
            if len(cache) >= self.max_cached_signatures:
                cache.clear()
                known = None
            cache[c] = (known or ()) + (issuer,)
            return True

        def is_ca(c):
            try:
                return c.extensions.get_extension_for_class(BasicConstraints).value.ca
            except ExtensionNotFound:
                return False

        path = [leaf]
        cur = leaf
        for _ in range(self.max_chain):
            known = cache.get(cur)
            for a in anchors:
                if signed_by(cur, a, known):
                    if a is not cur:
                        path.append(a)
                    return path
            nxt = None
            for c in extra:
                if c is not cur and c not in path and is_ca(c) and signed_by(cur, c, known):
                    nxt = c
                    break
            if nxt is None:
                return None
            path.append(nxt)
            cur = nxt
        raise SecurityError("client certificate chain longer than %d" % self.max_chain)
