"""EST proxy / Registration Authority (RFC 7030 §2.6 + §3.7, RFC 9148 §5).

Devices talk EST-coaps (or EST over HTTPS) to the proxy; the proxy
authenticates them with its own profiles (trust sets, passwords, PoP,
renewal rules: the same `EstService` policy code as the reference server)
and forwards each accepted request to an upstream EST server over HTTPS,
authenticated there as an RA by a TLS client certificate carrying
id-kp-cmcRA. Upstream answers are mapped back: certificates as they come,
202 + Retry-After as 5.03 + Max-Age (or 202 over HTTPS), errors per the
RFC 9148 §5 table.

    up = Upstream("https://ca.example:8443", ca_file="upstream-root.pem",
                  ra_cert="ra.pem", ra_key="ra.key")
    svc = ProxyService(up, config)                      # an EstService
    EstCoapsServer.from_config(svc, config).start()     # devices over CoAPs
    server_from_service(svc, config).start()            # devices over HTTPS

`ProxyService` is an `EstService` whose CA backend is `UpstreamCA`: the
trust set "ca" means the upstream's CA certificates (fetched from its
/cacerts, cached for `cacerts_ttl` seconds), so devices renew the
certificates the upstream issued through the RA.

Re-enrollment: the proxy checks the renewal itself (the device's current
certificate authenticates the session; subject and SANs kept) and forwards
the CSR as `reenroll_as` = "simplereenroll" (default; upstream servers that
let an RA renew on a device's behalf: est-lite's reference server does for
RAs in the label's `ra_trust`, renewing the device's certificate from its
store) or "simpleenroll" (upstreams that tie simplereenroll to the TLS
client certificate being renewed).

PoP linking: a device's challengePassword is checked against the device's
own session with the proxy (the profile's `pop`, in EstService) before
anything is forwarded; the CSR goes upstream unchanged, where an RA's
requests are not PoP-checked (RFC 7030 §3.5; est-lite: `ra_trust`).
"""

import datetime
import hashlib
import logging
import os
import socket
import sqlite3
import ssl
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from est_lite import http1, numbers
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError, SecurityError

from .service import EstService, OperationNotAllowed, PendingApproval, request_spki
from .store import file_format, mark_format, write_transaction

log = logging.getLogger("est_lite.proxy")

ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")

# RFC 9148 §5: HTTP status from the EST server -> CoAP code for the device
HTTP_TO_COAP = {
    400: 0x80, 401: 0x81, 403: 0x83, 404: 0x84, 405: 0x85, 406: 0x86, 408: 0x88, 413: 0x8D, 415: 0x8F,
    500: 0xA0, 501: 0xA1, 502: 0xA2, 503: 0xA3, 504: 0xA4,
}


def coap_code_for_http(status):
    """The CoAP code a proxy answers for an upstream HTTP error status."""
    c = HTTP_TO_COAP.get(status)
    if c is not None:
        return c
    return 0x80 if 400 <= status < 500 else 0xA2


class UpstreamError(EstError):
    """The upstream EST server answered with an error, or could not be
    reached. `http_status` / `coap_code` say what the device gets."""

    def __init__(self, msg, http_status, coap_code, upstream_status=None):
        super().__init__(msg, coap_code, http_status)
        self.upstream_status = upstream_status


class KeygenResult(tuple):
    """(pkcs8_or_cms_key, pkcs7, cert) with `key_cf`: 284 (PKCS#8) or 280
    (CMS-protected key, RFC 7030 §4.4.2) as the upstream sent it."""

    key_cf = numbers.CF_PKCS8


def _decode_body(resp):
    from .https_server import decode_body

    return decode_body(bytes(resp.body), resp.header("content-transfer-encoding"))


def _load_certs(cert_file):
    """The certificates of a PEM (or DER) file."""
    with open(cert_file, "rb") as f:
        data = f.read()
    return (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [x509.load_der_x509_certificate(data)])


def out_of_date(cert, now, what):
    """"" when cert is within its dates at `now` (seconds), else one line
    saying which end it is past ("WHAT CN=... expired on ...")."""
    na, nb = cert.not_valid_after_utc, cert.not_valid_before_utc
    if now > na.timestamp():
        return "%s %s expired on %s" % (what, cert.subject.rfc4514_string(), _utc_text(na))
    if now < nb.timestamp():
        return "%s %s is not valid before %s (this host's clock is behind it, or it was issued for later)" % (
            what, cert.subject.rfc4514_string(), _utc_text(nb))
    return ""


def _ra_check(cert_file):
    certs = _load_certs(cert_file)
    try:
        ekus = certs[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        ekus = []
    if ID_KP_CMC_RA not in ekus:
        raise LocalProtocolError("RA certificate %s has no id-kp-cmcRA (1.3.6.1.5.5.7.3.28) extended key usage: "
                                 "an upstream EST server cannot tell it is an RA" % cert_file)
    return certs[0]


class Upstream:
    """HTTPS client of the upstream EST server, authenticated as an RA.

    url: "https://host:port" (an optional path prefix replaces
    /.well-known/est); ca_file: PEM of the CA(s) that issued the upstream's
    TLS certificate (None: the system store); ra_cert / ra_key: PEM files of
    the RA identity (id-kp-cmcRA required unless require_ra_eku=False);
    server_name: name to verify in the upstream certificate (default: the
    URL's host); auth: optional (user, password) for HTTP Basic in addition;
    label_map: {local label: upstream label}; timeout: seconds per request;
    max_body: bytes of an answer."""

    def __init__(self, url, *, ca_file=None, ra_cert=None, ra_key=None, server_name=None, auth=None,
                 label_map=None, timeout=30.0, max_body=65536, require_ra_eku=True):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "https" or not u.hostname:
            raise LocalProtocolError("upstream must be an https:// URL, not %r" % url)
        self.url = url
        self.host = u.hostname
        self.port = u.port or 443
        self.prefix = (u.path.rstrip("/") or "/.well-known/est") + "/"
        self.host_header = u.netloc
        self.server_name = server_name or u.hostname
        self.auth = auth
        self.label_map = dict(label_map or {})
        self.timeout = timeout
        self.max_body = max_body
        self.ra_cert = _ra_check(ra_cert) if (ra_cert and require_ra_eku) else None
        # the RA certificate (leaf) whatever its EKU: an upstream refusal is
        # told apart from the device's own when the RA's is out of date
        self.ra_leaf = self.ra_cert if self.ra_cert is not None else (_load_certs(ra_cert)[0] if ra_cert else None)
        self.ra_cert_file = ra_cert
        self.wall_clock = time.time
        ctx = ssl.create_default_context(cafile=ca_file)
        if ra_cert:
            ctx.load_cert_chain(ra_cert, ra_key)
        self._ctx = ctx
        # requests forwarded, failed, and the seconds they took (connection,
        # TLS, the upstream's work): the "upstream" part of a device's wait
        self.stats = {"requests": 0, "errors": 0, "seconds": 0.0, "max_s": 0.0}
        self._stats_lock = threading.Lock()

    def _count(self, key, seconds=None):
        with self._stats_lock:
            if key:
                self.stats[key] += 1
            if seconds is not None:
                self.stats["seconds"] += seconds
                self.stats["max_s"] = max(self.stats["max_s"], seconds)

    def exchange(self, op, label, der=b""):
        """One request on a new TLS connection; returns the http1.Response.
        Raises UpstreamError when the upstream cannot be reached or answers
        garbage."""
        t = time.monotonic()
        try:
            return self._exchange(op, label, der)
        finally:
            self._count(None, time.monotonic() - t)

    def path(self, op, label):
        label = self.label_map.get(label or "", label) or None
        numbers.check_label(label)
        return self.prefix + (label + "/" if label else "") + numbers.HTTP_NAMES[op]

    def _exchange(self, op, label, der):
        path = self.path(op, label)
        method = "GET" if numbers.OP_METHODS[op] == numbers.GET else "POST"
        headers = ()
        authz = http1.basic_auth(*self.auth) if self.auth else None
        if method == "GET":
            req = http1.build_request("GET", path, self.host_header, authorization=authz, keep_alive=False,
                                      headers=headers)
        else:
            req = http1.build_request("POST", path, self.host_header, content_type=numbers.MT_PKCS10,
                                      body=http1.b64_encode_lines(der), authorization=authz, keep_alive=False,
                                      headers=headers)
        self._count("requests")
        p = http1.ResponseParser(max_header=16384, max_body=self.max_body, method=method)
        # timeout is for the whole exchange: a socket timeout alone bounds
        # each read, and an upstream sending its answer a few bytes at a
        # time held the device's request (and a worker thread) for good
        end = time.monotonic() + self.timeout

        def left():
            r = end - time.monotonic()
            if r <= 0:
                raise socket.timeout("timed out")
            return r

        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(left())
                with self._ctx.wrap_socket(s, server_hostname=self.server_name) as t:
                    t.settimeout(left())
                    t.sendall(req)
                    while True:
                        ev = p.next_event()
                        if ev is not http1.NEED_DATA:
                            return ev
                        t.settimeout(left())
                        try:
                            data = t.recv(65536)
                        except ssl.SSLEOFError:
                            data = b""
                        p.receive_data(data)
        except socket.timeout:
            self._count("errors")
            raise UpstreamError("the upstream EST server %s did not answer within %.0f s" % (self.url, self.timeout),
                                504, 0xA4) from None
        except (ssl.SSLError, OSError) as e:
            self._count("errors")
            if isinstance(e, ssl.SSLError):
                self._ra_refused("the TLS handshake failed: %s" % e)
            raise UpstreamError("cannot reach the upstream EST server %s: %s" % (self.url, e), 502, 0xA2) from None
        except EstError as e:
            self._count("errors")
            raise UpstreamError("the upstream EST server %s answered garbage: %s" % (self.url, e), 502, 0xA2) from None

    def check(self, resp, what):
        """Raise for an answer that is not a success (202 -> PendingApproval)."""
        st = resp.status
        if st == 202 or (st == 503 and resp.header("retry-after")):
            ra = resp.retry_after
            ra = 60 if ra is None else ra
            text = _text(resp) or "the upstream EST server asks to retry later"
            raise PendingApproval("%s: %s" % (what, text), ra)
        if 200 <= st < 300:
            return
        text = _text(resp)
        msg = "upstream EST server answered %d to %s%s" % (st, what, (": " + text) if text else "")
        if st in (401, 403):
            self._ra_refused(msg)
        http_status = 502 if st in (401, 407) else (st if 400 <= st < 600 else 502)
        raise UpstreamError(msg, http_status, coap_code_for_http(st), st)

    def ra_problem(self, now=None):
        """"" or why the RA certificate cannot authenticate (out of its
        dates by wall_clock)."""
        if self.ra_leaf is None:
            return ""
        return out_of_date(self.ra_leaf, self.wall_clock() if now is None else now, "the proxy's RA certificate")

    def _ra_refused(self, what):
        """After the upstream refused the RA (401/403, or the TLS handshake
        failed): when the RA certificate is out of its dates, the device
        is not the one refused: 503 / 5.03 saying so (the device's
        diagnostic names no file of the proxy; the log does)."""
        why = self.ra_problem()
        if why:
            log.warning("%s (%s): renew it (docs/proxy.md, Lifetimes) and restart the proxy; %s",
                        why, self.ra_cert_file, what)
            raise UpstreamError("the RA cannot reach its CA: %s; the proxy's operator must renew it" % why,
                                503, 0xA3, None)

    # -- operations --
    def cacerts(self, label):
        """(pkcs7 DER, [certificates])."""
        r = self.exchange(numbers.OP_CACERTS, label)
        self.check(r, "cacerts")
        der = _decode_body(r)
        return der, _p7_certs(der)

    def csrattrs(self, label):
        r = self.exchange(numbers.OP_CSRATTRS, label)
        if r.status in (204, 404):
            return b""
        self.check(r, "csrattrs")
        return _decode_body(r) if r.body.strip() else b""

    def enroll(self, op, label, csr_der):
        """(pkcs7 DER, [certificates]) for simpleenroll / simplereenroll."""
        r = self.exchange(op, label, csr_der)
        self.check(r, numbers.HTTP_NAMES[op])
        der = _decode_body(r)
        return der, _p7_certs(der)

    def serverkeygen(self, label, csr_der):
        """(key DER, key content format 284/280, pkcs7 DER)."""
        r = self.exchange(numbers.OP_SERVERKEYGEN, label, csr_der)
        self.check(r, "serverkeygen")
        if r.content_type != "multipart/mixed" or "boundary" not in r.params:
            raise UpstreamError("upstream serverkeygen answer is not multipart/mixed", 502, 0xA2)
        try:
            parts = http1.parse_multipart(bytes(r.body), r.params["boundary"])
        except EstError as e:
            raise UpstreamError("upstream serverkeygen answer: %s" % e, 502, 0xA2) from None
        from .https_server import decode_body

        key = kcf = p7 = None
        for part in parts:
            ct = part.content_type
            body = decode_body(bytes(part.body), part.header("content-transfer-encoding"))
            if ct == numbers.MT_PKCS8:
                key, kcf = body, numbers.CF_PKCS8
            elif ct == numbers.MT_PKCS7 and part.params.get("smime-type", "").lower() == "server-generated-key":
                key, kcf = body, numbers.CF_PKCS7_SERVER_KEYGEN
            elif ct == numbers.MT_PKCS7:
                p7 = body
        if key is None or p7 is None:
            raise UpstreamError("upstream serverkeygen answer lacks the key or the certificate part", 502, 0xA2)
        return key, kcf, p7


def _text(resp, limit=160):
    if resp.content_type not in ("text/plain", ""):
        return ""
    t = bytes(resp.body[:limit]).decode("utf-8", "replace").strip()
    return " ".join(t.split())


def _p7_certs(der):
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as e:
        raise UpstreamError("upstream answer is not a certs-only PKCS#7: %s" % e, 502, 0xA2) from None


def _crl_signed_by(crl, ca):
    try:
        return crl.is_signature_valid(ca.public_key())
    except (ValueError, TypeError):
        return False


def _utc_text(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _leaf_for(certs, public_key):
    want = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for c in certs:
        if c.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo) == want:
            return c
    raise UpstreamError("the upstream answer holds no certificate for the requested key", 502, 0xA2)


# upstream 4xx answers that say nothing final about the request (the RA's
# authentication, a timeout, rate limiting): its approval binding stays
_NOT_FINAL_4XX = (401, 407, 408, 429)

_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_owners(
    key BLOB PRIMARY KEY,
    requester TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_owners_requester ON pending_owners(requester);
CREATE INDEX IF NOT EXISTS pending_owners_created ON pending_owners(created);
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# the state file's format, in its PRAGMA user_version (as ca.db's, store.py):
# 0 = a file of est-lite before formats were numbered (the tables of
# version 1), marked 1 when opened; a higher one is refused, left unchanged
STATE_FORMAT_VERSION = 1
_STATE_MIGRATIONS = {}


def _open_state(path, busy_timeout_s=30.0):
    """The SQLite connection of the proxy's state (the Store's conventions,
    store.py: autocommit with explicit BEGIN IMMEDIATE writes, WAL,
    synchronous=NORMAL: durable against a crash of the process). path None:
    in memory. A file is created 0600 (its directory 0700 if missing); one
    that is no SQLite database raises LocalProtocolError naming it."""
    if path is None:
        name = ":memory:"
    else:
        name = str(path)
        d = os.path.dirname(os.path.abspath(name))
        if os.path.exists(name):  # a newer est-lite's file: refused before anything writes to it
            try:
                file_format(name, "proxy state file", STATE_FORMAT_VERSION)
            except sqlite3.Error:
                pass  # not a database: said below, with the way out
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            if not os.path.exists(name):  # 0600 from the start, not after sqlite made it with the umask
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise LocalProtocolError("proxy state file %s cannot be created: %s" % (name, e)) from None
    try:
        db = sqlite3.connect(name, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_STATE_SCHEMA)
        mark_format(db, "proxy state file", name, STATE_FORMAT_VERSION, _STATE_MIGRATIONS)
        cols = [r[1] for r in db.execute("PRAGMA table_info(pending_owners)")]
        if cols != ["key", "requester", "created"]:
            raise sqlite3.DatabaseError("its pending_owners table has the columns %s, not key, requester, created"
                                        % ", ".join(cols))
        # the number of rows, kept in the same transactions as the rows (a
        # COUNT(*) reads the whole index: 5 ms at 100,000); counted again here
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('pending_total', (SELECT COUNT(*) FROM pending_owners))")
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise LocalProtocolError("proxy state file %s cannot be used: %s (restore it from a backup, or remove it: "
                                 "requests waiting for the upstream's approval are then no longer bound to the "
                                 "devices that sent them)" % (name, e)) from None
    return db


class UpstreamCA:
    """CA backend of the proxy's EstService: ca_certs from the upstream's
    /cacerts (cached), issue() forwards the CSR. issued_by_me / is_revoked
    serve the "ca" trust set (devices the upstream certified).

    Requests waiting for the upstream's manual approval are bound to the
    device that sent them (`owned_call`) in a SQLite file, `state_path`
    (kept across restarts; None: an in-memory database, forgotten when the
    object goes: for library users and tests that do not need it to
    survive). At most `max_pending_per_requester` open requests per device
    and `max_pending_owners` in all: a further new request is refused (503 /
    5.03) before it goes upstream; nothing is ever evicted to make room.
    Entries older than `pending_owner_ttl` seconds (by `wall_clock`) are
    removed: after that the upstream's operator is the only check.

    `crl_files`: the upstream CA's CRLs (is_revoked); one past its
    nextUpdate (by `wall_clock`) makes crl_current raise UpstreamError (503 /
    5.03) with `crl_stale` = "refuse" (default), or is used anyway with
    "use"; a WARNING names the file once per version of the file."""

    def __init__(self, upstream, *, cacerts_ttl=300.0, reenroll_as="simplereenroll", clock=time.monotonic,
                 crl_files=(), max_pending_owners=100000, upstream_error_hold=5.0, state_path=None,
                 max_pending_per_requester=16, pending_owner_ttl=30 * 86400.0, crl_stale="refuse",
                 wall_clock=time.time):
        if reenroll_as not in ("simplereenroll", "simpleenroll"):
            raise LocalProtocolError("reenroll_as must be simplereenroll or simpleenroll")
        if crl_stale not in ("refuse", "use"):
            raise LocalProtocolError("crl_stale must be refuse or use, not %r" % (crl_stale,))
        self.upstream = upstream
        self.cacerts_ttl = cacerts_ttl
        self.reenroll_as = reenroll_as
        self.clock = clock
        self.wall_clock = wall_clock  # time.time: CRL nextUpdate, age of the approval bindings
        self.store = None  # no local approvals: the upstream decides
        self._cache = {}  # label -> (time, pkcs7 der, [certs])
        self._lock = threading.Lock()
        self._refreshing = set()
        # csrattrs answers (label -> (time, der)), cached like /cacerts: the
        # upstream answers the RA, the same for every device. A failed
        # cacerts/csrattrs fetch is remembered for upstream_error_hold
        # seconds ((kind, label) -> (time, UpstreamError)): requests that need
        # no authentication must not each cost an upstream connection
        self._attrs = {}
        self.upstream_error_hold = upstream_error_hold
        self._failed = {}
        self._fetch_locks = {}  # (kind, label) -> Lock: one upstream fetch at a time
        # the upstream's CRLs (its "ca" trust set: devices it certified), as
        # files the operator keeps current; re-read when one changes (a stat
        # per file per check: about 2 us)
        self.crl_files = list(crl_files or ())
        self.crl_stale = crl_stale
        self._crl_state = {}  # path -> ((mtime_ns, size), CRL)
        self._stale_warned = {}  # path -> (mtime_ns, size) of the version a staleness WARNING was logged for
        # requests waiting for the upstream's manual approval, by what the
        # upstream recognises them by (upstream path, subject, key): the
        # device that submitted one (the upstream sees only the RA). One
        # connection, used under self._lock
        self.max_pending_owners = max_pending_owners
        self.max_pending_per_requester = max_pending_per_requester
        self.pending_owner_ttl = pending_owner_ttl
        self.state_path = state_path
        self._db = _open_state(state_path)

    def fetch(self, label=None):
        try:
            der, certs = self.upstream.cacerts(label)
            if not certs:
                raise UpstreamError("upstream /cacerts holds no certificate", 502, 0xA2)
        except UpstreamError as e:
            with self._lock:
                self._failed[("crts", label or "")] = (self.clock(), e)
            raise
        with self._lock:
            self._cache[label or ""] = (self.clock(), der, certs)
            self._failed.pop(("crts", label or ""), None)
        return der, certs

    def _held_failure(self, kind, key):
        """Raise (a copy of) the upstream failure of this fetch if it is
        younger than upstream_error_hold; the caller holds self._lock."""
        f = self._failed.get((kind, key))
        if f is not None and self.clock() - f[0] < self.upstream_error_hold:
            e = f[1]
            raise UpstreamError(e.msg, e.http_status, e.coap_code, e.upstream_status)

    def _fetch_lock(self, kind, key):
        with self._lock:
            return self._fetch_locks.setdefault((kind, key), threading.Lock())

    def cached(self, label=None):
        """(pkcs7 der, certs): from the cache; a stale entry is refreshed in
        the background (only the very first fetch blocks, one at a time; a
        failure is answered again for upstream_error_hold seconds)."""
        key = label or ""
        with self._lock:
            ent = self._cache.get(key)
            stale = ent is not None and self.clock() - ent[0] > self.cacerts_ttl and key not in self._refreshing
            if stale:
                self._refreshing.add(key)
            if ent is None:
                self._held_failure("crts", key)
        if ent is None:
            with self._fetch_lock("crts", key):
                with self._lock:
                    ent = self._cache.get(key)
                    if ent is None:
                        self._held_failure("crts", key)
                if ent is None:
                    return self.fetch(label)
        if stale:
            threading.Thread(target=self._refresh, args=(label,), daemon=True).start()
        return ent[1], ent[2]

    def _refresh(self, label):
        try:
            self.fetch(label)
        except EstError as e:
            log.warning("refreshing upstream cacerts failed (keeping the old ones): %s", e)
        finally:
            with self._lock:
                self._refreshing.discard(label or "")

    def csrattrs(self, label=None):
        """The upstream's csrattrs DER for label (b"" for none), cached for
        cacerts_ttl seconds; one fetch at a time; a failure is answered
        again for upstream_error_hold seconds."""
        key = label or ""

        def hit():
            with self._lock:
                ent = self._attrs.get(key)
                if ent is not None and self.clock() - ent[0] <= self.cacerts_ttl:
                    return ent[1]
                self._held_failure("att", key)
            return None

        v = hit()
        if v is not None:
            return v
        with self._fetch_lock("att", key):
            v = hit()
            if v is not None:
                return v
            try:
                v = self.upstream.csrattrs(label)
            except UpstreamError as e:
                with self._lock:
                    self._failed[("att", key)] = (self.clock(), e)
                raise
            with self._lock:
                self._attrs[key] = (self.clock(), v)
                self._failed.pop(("att", key), None)
            return v

    # -- backend interface --
    def ca_certs(self, label=None):
        return list(self.cached(label)[1])

    @property
    def issuer(self):
        """The upstream's issuing CA: the certificate of /cacerts that issued
        none of the others (or the only one)."""
        certs = self.ca_certs(None)
        leafish = [c for c in certs if not any(o.issuer == c.subject and o is not c for o in certs)]
        return leafish[0] if leafish else certs[0]

    def issue(self, req):
        op = numbers.OP_SIMPLEENROLL
        if req.op == "simplereenroll" and self.reenroll_as == "simplereenroll":
            op = numbers.OP_SIMPLEREENROLL
        csr_der = req.csr.public_bytes(serialization.Encoding.DER)
        _, certs = self.owned_call(op, req.label, req.csr, req.requester,
                                   lambda: self.upstream.enroll(op, req.label, csr_der))
        return _leaf_for(certs, req.public_key)

    # -- who may collect what the upstream approved --
    def _request_key(self, op, label, csr):
        spki = request_spki(csr)  # as the upstream's manual approval (est-lite serve) knows it
        path = self.upstream.path(op, label or None).encode()
        return hashlib.sha256(b"\0".join([path, spki, csr.subject.public_bytes()])).digest()

    def owned_call(self, op, label, csr, requester, call):
        """call() (one upstream request for csr), unless the upstream holds
        this request (same upstream path, subject and key: what an upstream
        with manual approval recognises it by; a CSR re-signed or replayed
        by someone else is the same request there) as pending for another
        client of this proxy: the upstream sees only the RA, so without this
        any device that replays the CSR would collect the certificate (with
        serverkeygen: a private key for the other device's subject) once it
        is approved. SecurityError (403 / 4.03) then.

        A request not bound yet is bound to `requester` (a text stable
        across restarts: ProxyService.authenticate) in the state database
        before it is forwarded, so the upstream never holds a request the
        proxy could not bind; beyond max_pending_per_requester open
        requests of this requester, or max_pending_owners in all, it is
        refused instead (LimitError, 503 / 5.03), nothing forwarded. The
        binding goes when the upstream gives its final answer (a
        certificate, or a 4xx refusal); it stays while the request is
        pending (202) and when the answer is uncertain (no answer, 5xx,
        garbage, a 401 / 407 / 408 / 429 that is about the RA's credentials or
        the moment, not the request: the upstream may hold it)."""
        key = self._request_key(op, label, csr)
        now = self.wall_clock()
        with self._lock:
            self._state_write(lambda db: self._bind(db, key, requester, now))
        try:
            res = call()
        except UpstreamError as e:
            st = e.upstream_status
            if st is not None and 400 <= st < 500 and st not in _NOT_FINAL_4XX:
                self._unbind(key, requester)  # refused upstream: it holds no such request
            raise
        self._unbind(key, requester)
        return res

    def _bind(self, db, key, requester, now):
        """In a write transaction: the owner of key (after removing entries
        older than pending_owner_ttl); binds key to requester when it has
        none and the bounds allow. Returns the owner it had (or None)."""
        gone = db.execute("DELETE FROM pending_owners WHERE created < ?", (now - self.pending_owner_ttl,)).rowcount
        if gone > 0:
            db.execute("UPDATE meta SET value = value - ? WHERE key = 'pending_total'", (gone,))
        row = db.execute("SELECT requester FROM pending_owners WHERE key=?", (key,)).fetchone()
        if row is not None:
            if row[0] != requester:
                raise SecurityError("this request is waiting for the upstream's approval for another client of "
                                    "the proxy; only that client can collect it")
            return row[0]
        mine = db.execute("SELECT COUNT(*) FROM pending_owners WHERE requester=?", (requester,)).fetchone()[0]
        if mine >= self.max_pending_per_requester:
            raise LimitError("too many requests of this client are waiting for the upstream's approval (%d); "
                             "collect or wait for them first" % self.max_pending_per_requester, 0xA3, 503)
        total = db.execute("SELECT value FROM meta WHERE key = 'pending_total'").fetchone()[0]
        if total >= self.max_pending_owners:
            raise LimitError("too many requests of this proxy's clients are waiting for the upstream's approval "
                             "(%d); try again later" % self.max_pending_owners, 0xA3, 503)
        db.execute("INSERT INTO pending_owners VALUES (?,?,?)", (key, requester, now))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'pending_total'")
        return None

    def _unbind(self, key, requester):
        def unbind(db):
            if db.execute("DELETE FROM pending_owners WHERE key=? AND requester=?", (key, requester)).rowcount > 0:
                db.execute("UPDATE meta SET value = value - 1 WHERE key = 'pending_total'")

        with self._lock:
            self._state_write(unbind)

    def _state_write(self, fn):
        """fn(db) in one BEGIN IMMEDIATE transaction; the caller holds
        self._lock. A failing database is a 500 naming the file."""
        try:
            return write_transaction(self._db, fn)
        except sqlite3.Error as e:
            raise EstError("proxy state file %s: %s" % (self.state_path or ":memory:", e)) from None

    def pending_owners(self):
        """[(key hex, requester, created)] of the open bindings (oldest first)."""
        with self._lock:
            rows = self._db.execute("SELECT key, requester, created FROM pending_owners ORDER BY created").fetchall()
        return [(bytes(k).hex(), r, c) for k, r, c in rows]

    def close(self):
        """Close the state database."""
        with self._lock:
            self._db.close()

    # -- revocation (trust set "ca") --
    def load_crls(self, strict=True):
        """(Re-)read the CRL files that changed; each must be signed by one
        of the upstream's CA certificates. strict: raise LocalProtocolError
        for a missing or bad file (at start); otherwise log it and keep the
        previous version of that file. A file past its nextUpdate is logged
        (WARNING, once per version of the file)."""
        return [crl for _, crl in self._load_crls(strict)]

    def _load_crls(self, strict):
        """[(path, CRL)]."""
        if not self.crl_files:
            return []
        out = []
        for path in self.crl_files:
            old = self._crl_state.get(path)
            try:
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_size)
                if old is not None and old[0] == stamp:
                    out.append((path, old[1]))
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
                if not any(ca.subject == crl.issuer and _crl_signed_by(crl, ca) for ca in self.ca_certs(None)):
                    raise ValueError("not signed by any of the upstream's CA certificates (issuer %s)"
                                     % crl.issuer.rfc4514_string())
            except (OSError, ValueError) as e:
                msg = "upstream CRL %s cannot be used: %s" % (path, e)
                if strict:
                    raise LocalProtocolError(msg) from None
                log.warning("%s (keeping the previous one)", msg)
                if old is not None:
                    out.append((path, old[1]))
                continue
            self._crl_state[path] = (stamp, crl)
            out.append((path, crl))
        for path, crl in out:
            self._stale(path, crl)
        return out

    def _stale(self, path, crl):
        """The nextUpdate (aware datetime) of crl when it is past (by
        wall_clock), else None (also for a CRL without nextUpdate: never
        stale). Logs a WARNING the first time a version of the file is seen
        stale."""
        nu = crl.next_update_utc
        if nu is None or nu.timestamp() >= self.wall_clock():
            return None
        stamp = self._crl_state.get(path, (None,))[0]
        with self._lock:
            first = self._stale_warned.get(path) != stamp
            self._stale_warned[path] = stamp
        if first:
            log.warning("upstream CRL %s is out of date (nextUpdate %s): revocations of the upstream newer than "
                        "the file are not seen; %s - update the file", path, _utc_text(nu),
                        "devices of its CA are refused (upstream_crl_stale = \"refuse\")"
                        if self.crl_stale == "refuse" else "still used (upstream_crl_stale = \"use\")")
        return nu

    def is_revoked(self, cert):
        """True when one of the upstream CRL files (`crl_files`) lists cert
        (also a file past its nextUpdate: what it lists stays revoked). The
        staleness check is crl_current(cert): the handshake's revocation hook
        asks is_revoked too, and a device refused there would never learn
        why."""
        for _, crl in self._load_crls(False):
            if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                return True
        return False

    def crl_current(self, cert):
        """With crl_stale = "refuse": raise UpstreamError (503 / 5.03) when a
        CRL file covering cert's issuer is past its nextUpdate (by
        wall_clock; a CRL without nextUpdate never is): a revocation newer
        than the file would not be seen. With "use": nothing (the WARNING is
        logged once per version of the file either way). ProxyService asks
        it for every certificate of a device's verified chain."""
        for path, crl in self._load_crls(False):
            if crl.issuer != cert.issuer:
                continue
            nu = self._stale(path, crl)
            if nu is not None and self.crl_stale == "refuse":
                raise UpstreamError("the upstream CRL %s is out of date (nextUpdate %s); revocation cannot be "
                                    "checked - update the file" % (os.path.basename(path), _utc_text(nu)), 503, 0xA3)

    def issued_by_me(self, cert):
        from cryptography.exceptions import InvalidSignature

        for ca in self.ca_certs(None):
            if cert.issuer == ca.subject:
                try:
                    cert.verify_directly_issued_by(ca)
                    return True
                except (ValueError, TypeError, InvalidSignature):
                    continue
        return False


class ProxyService(EstService):
    """EstService that forwards to an upstream EST server as an RA (see the
    module docstring). `csrattrs_from`: "upstream" (forward) or "local" (the
    profiles' csrattrs)."""

    def __init__(self, upstream, config, authenticator=None, *, cacerts_ttl=300.0, reenroll_as="simplereenroll",
                 csrattrs_from="upstream", crl_files=(), **ca_options):
        # ca_options: UpstreamCA's state_path, max_pending_per_requester,
        # max_pending_owners, pending_owner_ttl, crl_stale, wall_clock, ...
        ca = upstream if isinstance(upstream, UpstreamCA) else UpstreamCA(
            upstream, cacerts_ttl=cacerts_ttl, reenroll_as=reenroll_as, crl_files=crl_files, **ca_options)
        super().__init__(ca, config, authenticator, store=None)
        self.upstream = ca.upstream
        if csrattrs_from not in ("upstream", "local"):
            raise LocalProtocolError("csrattrs_from must be upstream or local")
        self.csrattrs_from = csrattrs_from

    def authenticate(self, op, prof, ctx):
        """EstService.authenticate, refusing (503 / 5.03) a device whose
        chain is covered by an upstream CRL file past its nextUpdate
        (UpstreamCA.crl_current), with the requester text the approval
        bindings are stored under (UpstreamCA.owned_call): stable across
        restarts and unique per identity. A certificate is named by its
        subject and the SHA-256 of its DER (the subject and serial number
        alone could repeat under another trusted CA; an HTTP user that also
        sent a certificate is named by the certificate); a password user by
        its name (one password file, whichever of Basic / Digest it used)."""
        requester, cert_id = super().authenticate(op, prof, ctx)
        if cert_id is not None:
            for c in cert_id.chain[:-1]:  # (what is_revoked was asked for: revoked ones are refused already)
                self.ca.crl_current(c)
            fp = hashlib.sha256(cert_id.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
            requester = "%s:%s sha256=%s" % (requester.split(":", 1)[0], cert_id.subject, fp)
        return requester, cert_id

    def prefetch(self):
        """Fetch the upstream CA certificates now (call before serving: the
        DTLS handshake asks for them), and read the upstream CRL files."""
        self.ca.fetch(None)
        self.ca.load_crls(strict=True)
        for label in self.config.profiles:
            if label:
                try:
                    self.ca.fetch(label)
                except EstError as e:  # fetched again when a device asks
                    log.warning("upstream cacerts for label %s: %s", label, e)

    def cacerts(self, label, ctx):
        self.profile(label)
        return self.ca.cached(label or None)[0]  # the upstream's PKCS#7, as it sent it

    def csrattrs(self, label, ctx):
        if self.csrattrs_from == "local":
            return super().csrattrs(label, ctx)
        prof = self.profile(label)
        if prof.csrattrs_auth:
            self.authenticate("csrattrs", prof, ctx)
        return self.ca.csrattrs(label or None)

    def serverkeygen(self, label, csr_der, ctx):
        prof = self.profile(label)
        if not prof.serverkeygen:
            raise OperationNotAllowed("serverkeygen is disabled for this label")
        requester, cert_id = self.authenticate("serverkeygen", prof, ctx)
        try:
            csr = self._load_csr(prof, csr_der, keygen=True)  # its key and signature: ignored
            self._check_pop(prof, csr, ctx, cert_id)
            self._check_subject(prof, csr)
            self.ca._request_key(numbers.OP_SERVERKEYGEN, label, csr)  # the CSR's key and subject encode
        except (ValueError, TypeError) as e:
            raise RemoteProtocolError("CSR cannot be parsed: %s" % e) from None
        der = csr.public_bytes(serialization.Encoding.DER)
        key, kcf, p7 = self.ca.owned_call(numbers.OP_SERVERKEYGEN, label, csr, requester,
                                          lambda: self.upstream.serverkeygen(label or None, der))
        certs = _p7_certs(p7)
        subjects = {c.issuer for c in certs}
        leaf = next((c for c in certs if c.subject not in subjects), certs[0]) if certs else None
        if leaf is None:
            raise UpstreamError("upstream serverkeygen answer holds no certificate", 502, 0xA2)
        res = KeygenResult((key, p7, leaf))
        res.key_cf = kcf
        return res


# ---------------------------------------------------------------- configuration


class ProxyConfig:
    """The [proxy] section of a proxy config file (the other sections are a
    ServerConfig: [server] listener and TLS certificate, [coaps], [trust.*],
    [profiles.*] for authenticating devices)."""

    def __init__(self, data, *, base_dir="."):
        import os

        from .config import ConfigError, _take

        d = dict(data or {})
        w = "proxy"

        def rel(p):
            return p if p is None or os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))

        self.upstream = _take(d, "upstream", None, str, w)
        if not self.upstream:
            raise ConfigError("proxy.upstream is required (https://host:port of the upstream EST server)")
        self.upstream_ca = rel(_take(d, "upstream_ca", None, str, w))
        self.ra_cert = rel(_take(d, "ra_cert", None, str, w))
        self.ra_key = rel(_take(d, "ra_key", None, str, w))
        if not self.ra_cert or not self.ra_key:
            raise ConfigError("proxy.ra_cert and proxy.ra_key are required (the RA's TLS client identity)")
        self.upstream_server_name = _take(d, "upstream_server_name", None, str, w)
        auth = _take(d, "upstream_auth", None, str, w)
        self.upstream_auth = tuple(auth.split(":", 1)) if auth else None
        if auth and len(self.upstream_auth) != 2:
            raise ConfigError("proxy.upstream_auth must be user:password")
        self.timeout_s = _take(d, "timeout_s", 30.0, (int, float), w)
        self.cacerts_ttl_s = _take(d, "cacerts_ttl_s", 300.0, (int, float), w)
        self.reenroll_as = _take(d, "reenroll_as", "simplereenroll", str, w)
        if self.reenroll_as not in ("simplereenroll", "simpleenroll"):
            raise ConfigError("proxy.reenroll_as must be \"simplereenroll\" or \"simpleenroll\"")
        self.csrattrs_from = _take(d, "csrattrs_from", "upstream", str, w)
        if self.csrattrs_from not in ("upstream", "local"):
            raise ConfigError("proxy.csrattrs_from must be \"upstream\" or \"local\"")
        self.labels = dict(_take(d, "labels", {}, dict, w))
        for k, v in self.labels.items():  # a mapped label goes into the upstream's URL path
            try:
                if not isinstance(v, str):
                    raise LocalProtocolError("not a string")
                numbers.check_label(k)
                numbers.check_label(v)
            except LocalProtocolError as e:
                raise ConfigError("proxy.labels: %r = %r is not a label mapping (%s)" % (k, v, e.msg)) from None
        self.require_ra_eku = _take(d, "require_ra_eku", True, bool, w)
        crl = _take(d, "upstream_crl", [], (str, list), w)
        crl = [crl] if isinstance(crl, str) else crl
        if not all(isinstance(p, str) and p for p in crl):
            raise ConfigError("proxy.upstream_crl must be a file name or a list of file names")
        self.upstream_crl = [rel(p) for p in crl]
        self.upstream_crl_stale = _take(d, "upstream_crl_stale", "refuse", str, w)
        if self.upstream_crl_stale not in ("refuse", "use"):
            raise ConfigError("proxy.upstream_crl_stale must be \"refuse\" (a device of the upstream's CA is "
                              "refused while its CRL file is past nextUpdate) or \"use\", not %r"
                              % self.upstream_crl_stale)
        # approval bindings (UpstreamCA.owned_call); None: <data_dir>/proxy-state.sqlite (proxy_from_config)
        state = _take(d, "state", None, str, w)
        if state is not None and not state.strip():
            raise ConfigError("proxy.state must be a file name (the proxy's SQLite state)")
        self.state = rel(state)

        def count(key, default):
            v = _take(d, key, default, int, w)
            if isinstance(v, bool) or v < 1:
                raise ConfigError("proxy.%s must be a whole number >= 1, not %r" % (key, v))
            return v

        self.max_pending_per_requester = count("max_pending_per_requester", 16)
        self.max_pending_owners = count("max_pending_owners", 100000)
        ttl = _take(d, "pending_owner_ttl_s", 30 * 86400, (int, float), w)
        if isinstance(ttl, bool) or not ttl > 0 or ttl != ttl or ttl == float("inf"):
            raise ConfigError("proxy.pending_owner_ttl_s must be a number of seconds > 0 (default 2592000: 30 "
                              "days), not %r" % (ttl,))
        self.pending_owner_ttl_s = float(ttl)
        if d:
            raise ConfigError("proxy: unknown key(s) %s" % ", ".join(sorted(d)))

    def upstream_client(self):
        return Upstream(self.upstream, ca_file=self.upstream_ca, ra_cert=self.ra_cert, ra_key=self.ra_key,
                        server_name=self.upstream_server_name, auth=self.upstream_auth, label_map=self.labels,
                        timeout=self.timeout_s, require_ra_eku=self.require_ra_eku)


def load_proxy_config(path):
    """(ServerConfig, ProxyConfig) from one TOML file."""
    import os
    from .config import ConfigError, ServerConfig, read_toml

    data = read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    pdata = data.pop("proxy", None)
    if pdata is None:
        raise ConfigError("%s has no [proxy] section" % path)
    return ServerConfig(data, base_dir=base), ProxyConfig(pdata, base_dir=base)


def proxy_from_config(config, pconfig, *, authenticator=None):
    """The ProxyService for a (ServerConfig, ProxyConfig)."""
    state = pconfig.state or os.path.join(config.data_dir, "proxy-state.sqlite")
    return ProxyService(pconfig.upstream_client(), config, authenticator, cacerts_ttl=pconfig.cacerts_ttl_s,
                        reenroll_as=pconfig.reenroll_as, csrattrs_from=pconfig.csrattrs_from,
                        crl_files=pconfig.upstream_crl, crl_stale=pconfig.upstream_crl_stale, state_path=state,
                        max_pending_per_requester=pconfig.max_pending_per_requester,
                        max_pending_owners=pconfig.max_pending_owners,
                        pending_owner_ttl=pconfig.pending_owner_ttl_s)
