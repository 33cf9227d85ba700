"""Server configuration from TOML: listener, TLS, trust sets and one profile
per EST label. See examples/server.toml for every key with its default.

    [server]              listen address, port, TLS versions, limits, realm
    [ca]                  data_dir, store durability
    [trust.NAME]          CA certificates trusted for client certificates
                          (e.g. a vendor's IDevID CAs); "ca" is built in and
                          means this server's own CA (operational certs)
                          or RA certificates (ra_trust, RFC 7030 §3.7)
    [profiles.default]    profile of /.well-known/est/ (no label)
    [profiles.LABEL]      profile of /.well-known/est/LABEL/

Unknown keys are errors (a typo must not silently weaken a policy).
"""

import os

from est_lite import numbers
from est_lite.errors import LocalProtocolError

KEY_TYPES = ("ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "rsa:3072", "rsa:4096", "ed25519", "ed448")
SUBJECT_FIELDS = ("CN", "O", "OU", "C", "ST", "L", "serialNumber", "emailAddress", "DC", "UID")
SAN_TYPES = ("dns", "ip", "uri", "email")
AUTH_METHODS = ("basic", "digest", "cert")
POP_MODES = ("if-present", "required")
SAN_MODES = ("forbid", "allow", "require")


class ConfigError(LocalProtocolError):
    pass


def _take(d, key, default, kind, where):
    v = d.pop(key, default)
    if kind is not None and v is not None and not isinstance(v, kind):
        raise ConfigError("%s.%s must be %s, not %r" % (where, key, getattr(kind, "__name__", kind), v))
    return v


def _list_of(v, allowed, where, key):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ConfigError("%s.%s must be a list" % (where, key))
    for x in v:
        if allowed is not None and x not in allowed:
            raise ConfigError("%s.%s: %r is not one of %s" % (where, key, x, ", ".join(allowed)))
    return tuple(v)


class Profile:
    """The policy of one label. Attributes mirror the TOML keys."""

    def __init__(self, label="", **kw):
        where = "profiles.%s" % (label or "default")
        self.label = label or ""
        self.validity_days = _take(kw, "validity_days", 365, int, where)
        if not 1 <= self.validity_days <= 36500:
            raise ConfigError("%s.validity_days must be 1..36500" % where)
        self.key_types = _list_of(_take(kw, "key_types", ["ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096"], None, where), KEY_TYPES, where, "key_types")
        self.subject_required = _list_of(_take(kw, "subject_required", ["CN"], None, where), SUBJECT_FIELDS, where, "subject_required")
        self.san = _take(kw, "san", "allow", str, where)
        if self.san not in SAN_MODES:
            raise ConfigError("%s.san must be one of %s" % (where, ", ".join(SAN_MODES)))
        self.san_types = _list_of(_take(kw, "san_types", list(SAN_TYPES), None, where), SAN_TYPES, where, "san_types")
        self.san_dns_suffixes = _list_of(_take(kw, "san_dns_suffixes", [], None, where), None, where, "san_dns_suffixes")
        self.eku = _list_of(_take(kw, "eku", ["clientAuth"], None, where), None, where, "eku")
        from .ca import EKU_BY_NAME

        for e in self.eku:
            if e not in EKU_BY_NAME:
                raise ConfigError("%s.eku: unknown %r (known: %s)" % (where, e, ", ".join(EKU_BY_NAME)))
        self.auth = _list_of(_take(kw, "auth", ["basic", "digest", "cert"], None, where), AUTH_METHODS, where, "auth")
        self.client_cert_trust = _list_of(_take(kw, "client_cert_trust", ["ca"], None, where), None, where, "client_cert_trust")
        self.reenroll_trust = _list_of(_take(kw, "reenroll_trust", ["ca"], None, where), None, where, "reenroll_trust")
        # Registration Authorities (RFC 7030 §3.7): a TLS client certificate
        # with id-kp-cmcRA chaining to one of these sets requests for devices
        # (simplereenroll: the device's certificate is found in the store);
        # their requests skip the PoP check -- the RA checked the device's
        # channel binding on the device's own link (RFC 7030 §3.5)
        self.ra_trust = _list_of(_take(kw, "ra_trust", [], None, where), None, where, "ra_trust")
        self.csrattrs_auth = _take(kw, "csrattrs_auth", False, bool, where)
        self.pop = _take(kw, "pop", "if-present", str, where)
        if self.pop not in POP_MODES:
            raise ConfigError("%s.pop must be one of %s" % (where, ", ".join(POP_MODES)))
        # who need not link the CSR to the TLS channel even when pop="required":
        # a MicroPython device (mbedTLS exposes neither tls-unique nor exporter)
        self.pop_exempt_transports = _list_of(_take(kw, "pop_exempt_transports", [], None, where), ("https", "coaps"), where, "pop_exempt_transports")
        self.pop_exempt_trust = _list_of(_take(kw, "pop_exempt_trust", [], None, where), None, where, "pop_exempt_trust")
        self.manual_approval = _take(kw, "manual_approval", False, bool, where)
        self.retry_after = _take(kw, "retry_after", 60, int, where)
        self.serverkeygen = _take(kw, "serverkeygen", True, bool, where)
        self.reenroll = _take(kw, "reenroll", True, bool, where)
        self.max_csr_bytes = _take(kw, "max_csr_bytes", 8192, int, where)
        default_attrs = ["challengePassword"] if self.pop == "required" else []
        default_attrs += ["ecPublicKey:P-256", "ecdsa-with-SHA256"] if "ec:P-256" in self.key_types else []
        self.csrattrs = _list_of(_take(kw, "csrattrs", default_attrs, None, where), None, where, "csrattrs")
        from .service import csrattrs_der

        try:
            csrattrs_der(self.csrattrs)
        except LocalProtocolError as e:
            raise ConfigError("%s.csrattrs: %s" % (where, e)) from None
        if kw:
            raise ConfigError("%s: unknown key(s) %s" % (where, ", ".join(sorted(kw))))
        if not self.auth:
            raise ConfigError("%s.auth: at least one method is needed (never issue to unauthenticated clients)" % where)


class TrustSet:
    """Named set of CA certificates trusted to authenticate client certificates."""

    def __init__(self, name, certs=(), crls=()):
        self.name = name
        self.certs = list(certs)  # x509.Certificate anchors (and intermediates)
        self.crls = list(crls)  # x509.CertificateRevocationList


def _load_certs(path):
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _load_crl(path):
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


# sections of a server config that another command reads: a proxy config
# is a server config plus [proxy] (est_lite_cpython.proxy), and the `ca`
# commands read its [ca] data_dir, realm and password file (skip=("proxy",))
OTHER_SECTIONS = {"proxy": "est-lite proxy"}


class ServerConfig:
    def __init__(self, data=None, *, base_dir=".", data_dir=None, skip=()):
        data = dict(data or {})
        srv = dict(data.pop("server", {}) or {})
        ca = dict(data.pop("ca", {}) or {})
        trust = dict(data.pop("trust", {}) or {})
        profiles = dict(data.pop("profiles", {}) or {})
        coaps = data.pop("coaps", None)
        unknown = sorted(k for k in data if k not in OTHER_SECTIONS)
        if unknown:
            raise ConfigError("unknown section(s) %s" % ", ".join(unknown))
        for k in sorted(data):
            if k not in skip:
                raise ConfigError("[%s] is the section of %s: run that command with this file (the ca commands "
                                  "read it too)" % (k, OTHER_SECTIONS[k]))

        def rel(p):
            return p if p is None or os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

        w = "server"
        self.listen = _take(srv, "listen", "127.0.0.1", str, w)
        self.port = _take(srv, "port", 8443, int, w)
        self.tls_cert = rel(_take(srv, "tls_cert", None, str, w))
        self.tls_key = rel(_take(srv, "tls_key", None, str, w))
        self.tls_min_version = _take(srv, "tls_min_version", "1.2", str, w)
        self.tls_max_version = _take(srv, "tls_max_version", "1.3", str, w)
        for k in ("tls_min_version", "tls_max_version"):
            if getattr(self, k) not in ("1.2", "1.3"):
                raise ConfigError("server.%s must be \"1.2\" or \"1.3\"" % k)
        self.realm = _take(srv, "realm", "est-lite", str, w)
        self.password_file = rel(_take(srv, "password_file", None, str, w))
        self.workers = _take(srv, "workers", 32, int, w)
        # None: "loop" with the built-in CA and authenticator, "threads" otherwise
        self.io = _take(srv, "io", None, str, w)
        if self.io not in (None, "loop", "threads"):
            raise ConfigError('server.io must be "loop" or "threads"')
        self.max_connections = _take(srv, "max_connections", 1024, int, w)
        self.max_connections_per_host = _take(srv, "max_connections_per_host", 64, int, w)
        if self.max_connections_per_host < 1:
            raise ConfigError("server.max_connections_per_host must be >= 1")
        self.processes = _take(srv, "processes", 1, int, w)  # more: SO_REUSEPORT, one event loop each
        if self.workers < 1 or self.max_connections < 1 or self.processes < 1:
            raise ConfigError("server.workers, server.max_connections and server.processes must be >= 1")
        self.max_header_bytes = _take(srv, "max_header_bytes", 16384, int, w)
        self.max_body_bytes = _take(srv, "max_body_bytes", 65536, int, w)
        self.io_timeout_s = _take(srv, "io_timeout_s", 10.0, (int, float), w)
        self.request_timeout_s = _take(srv, "request_timeout_s", 30.0, (int, float), w)
        if self.io_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ConfigError("server.io_timeout_s and server.request_timeout_s must be > 0")
        self.max_requests_per_connection = _take(srv, "max_requests_per_connection", 100, int, w)
        self.digest_nonce_lifetime_s = _take(srv, "digest_nonce_lifetime_s", 300, int, w)
        # default ra_trust of every profile that sets none (see Profile)
        self.ra_trust = _list_of(_take(srv, "ra_trust", [], None, w), None, w, "ra_trust")
        if srv:
            raise ConfigError("server: unknown key(s) %s" % ", ".join(sorted(srv)))

        self._coaps(coaps)

        self.data_dir = rel(data_dir or _take(ca, "data_dir", None, str, "ca")) or os.path.abspath("est-data")
        ca.pop("data_dir", None)
        self.synchronous = _take(ca, "synchronous", "NORMAL", str, "ca")
        if ca:
            raise ConfigError("ca: unknown key(s) %s" % ", ".join(sorted(ca)))
        if self.password_file is None:
            self.password_file = os.path.join(self.data_dir, "passwords")

        self.trust = {}
        for name, t in trust.items():
            t = dict(t or {})
            if name == "ca":
                raise ConfigError("trust.ca is reserved for this server's own CA")
            certs = []
            for p in _list_of(_take(t, "certs", [], None, "trust." + name), None, "trust." + name, "certs"):
                try:
                    certs.extend(_load_certs(rel(p)))
                except (OSError, ValueError) as e:
                    raise ConfigError("trust.%s: cannot load %s: %s" % (name, p, e)) from None
            crls = []
            for p in _list_of(_take(t, "crls", [], None, "trust." + name), None, "trust." + name, "crls"):
                try:
                    crls.append(_load_crl(rel(p)))
                except (OSError, ValueError) as e:
                    raise ConfigError("trust.%s: cannot load CRL %s: %s" % (name, p, e)) from None
            if t:
                raise ConfigError("trust.%s: unknown key(s) %s" % (name, ", ".join(sorted(t))))
            if not certs:
                raise ConfigError("trust.%s: no certificates" % name)
            self.trust[name] = TrustSet(name, certs, crls)

        self.profiles = {}
        if not profiles:
            profiles = {"default": {}}
        for label, p in profiles.items():
            key = "" if label == "default" else label
            if key:
                try:
                    numbers.check_label(key)
                except LocalProtocolError as e:
                    raise ConfigError("profiles.%s: %s" % (label, e)) from None
            p = dict(p or {})
            p.setdefault("ra_trust", list(self.ra_trust))
            prof = Profile(key, **p)
            for name in prof.client_cert_trust + prof.reenroll_trust + prof.pop_exempt_trust + prof.ra_trust:
                if name != "ca" and name not in self.trust:
                    raise ConfigError("profiles.%s: trust set %r is not defined ([trust.%s])" % (label, name, name))
            self.profiles[key] = prof

    def _coaps(self, coaps):
        """[coaps]: the EST-coaps (RFC 9148) listener of `est-lite serve`,
        on by default when the section exists (see coaps_server.py)."""
        w = "coaps"
        c = dict(coaps or {})
        self.coaps_enabled = _take(c, "enabled", coaps is not None, bool, w)
        self.coaps_listen = _take(c, "listen", None, str, w)  # default: server.listen
        self.coaps_port = _take(c, "port", 5684, int, w)
        self.coaps_mtu = _take(c, "mtu", 1200, int, w)
        self.coaps_max_sessions = _take(c, "max_sessions", 256, int, w)
        self.coaps_max_handshakes_per_host = _take(c, "max_handshakes_per_host", 16, int, w)
        if self.coaps_max_sessions < 1 or self.coaps_max_handshakes_per_host < 1:
            raise ConfigError("coaps.max_sessions and coaps.max_handshakes_per_host must be >= 1")
        self.coaps_idle_timeout_s = _take(c, "idle_timeout_s", 120.0, (int, float), w)
        self.coaps_evict_idle_s = _take(c, "evict_idle_s", 10.0, (int, float), w)
        self.coaps_handshake_timeout_s = _take(c, "handshake_timeout_s", 30.0, (int, float), w)
        self.coaps_workers = _take(c, "workers", None, int, w)  # None: 0 for the built-in CA (on the loop), 4 otherwise
        self.coaps_processes = _take(c, "processes", 1, int, w)
        if self.coaps_processes < 1 or (self.coaps_workers is not None and self.coaps_workers < 0):
            raise ConfigError("coaps.processes must be >= 1 and coaps.workers >= 0")
        self.coaps_max_body_bytes = _take(c, "max_body_bytes", 16384, int, w)
        self.coaps_send_chain = _take(c, "send_chain", "intermediates", str, w)
        if self.coaps_send_chain not in ("intermediates", "none", "all"):
            raise ConfigError("coaps.send_chain must be \"intermediates\", \"none\" or \"all\"")
        if not 256 <= self.coaps_mtu <= 65507:
            raise ConfigError("coaps.mtu must be 256..65507")
        if c:
            raise ConfigError("coaps: unknown key(s) %s" % ", ".join(sorted(c)))

    def profile(self, label):
        """The profile for a label ('' or None = default), or None if unknown."""
        return self.profiles.get(label or "")


def read_toml(path):
    """The parsed TOML file; ConfigError (one line) if it cannot be read or parsed."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("cannot read config %s: %s" % (path, e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config %s: %s" % (path, e)) from None


def load_config(path=None, *, data_dir=None, skip=()):
    """ServerConfig from a TOML file (relative paths resolve against the
    file's directory). Without a file: defaults, with data_dir/server.toml
    used if it exists. skip: sections of OTHER_SECTIONS to ignore (another
    command's); any other section is an error."""
    if path is None and data_dir is not None:
        cand = os.path.join(data_dir, "server.toml")
        if os.path.exists(cand):
            path = cand
    if path is None:
        return ServerConfig({}, base_dir=os.getcwd(), data_dir=os.path.abspath(data_dir) if data_dir else None)
    data = read_toml(path)
    return ServerConfig(data, base_dir=os.path.dirname(os.path.abspath(path)),
                        data_dir=os.path.abspath(data_dir) if data_dir else None, skip=skip)
