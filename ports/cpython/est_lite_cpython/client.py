"""The EST client runtime on CPython: est_lite_mp.client.EstClient (the
same class and API as on a device) with pyOpenSSL transports, OpenSSL
crypto, the monotonic clock and a system random source.

    from est_lite_cpython.client import EstClient
    from est_lite_cpython.credstore import CredStore

    c = EstClient("https://est.example:8443", trust=[ca_pem], user="dev", password="pw")
    r = c.provision(CredStore("/var/lib/est"), cn="gateway-1")
    c.renew_if_needed(CredStore("/var/lib/est"))

Beyond the portable client: PoP linking with the channel binding (TLS 1.2
tls-unique, TLS 1.3 exporter, DTLS tls-unique), HTTP CONNECT proxies
(proxy="http://[user:pw@]host:port"), CRL checks of the server's chain
(crls=[...]), any signature algorithm when verifying the issued
certificate, and trust/cert/key given as DER, PEM or cryptography objects.
See docs/client-runtime.md.
"""

import contextlib
import math
import random
import threading
import time

from est_lite.errors import EstError, LocalProtocolError, TransportError
from est_lite_mp import client as _portable
from est_lite_mp.client import parse_pin, parse_server  # noqa: F401 - parse_pin re-exported
from est_lite_mp.provision import Result  # noqa: F401 - re-exported

from . import dtls as _d

_sysrand = random.SystemRandom()


def _der_list(objs, what="trust"):
    from cryptography.hazmat.primitives import serialization

    try:
        return [c.public_bytes(serialization.Encoding.DER) for c in _d.load_certificates(objs)]
    except (ValueError, TypeError):  # e.g. non-ASCII text given as PEM
        raise LocalProtocolError("%s: not DER/PEM certificates" % what) from None


def _check_identity(cert, key):
    # the client certificate and its key, loaded once here (not first
    # inside a handshake) and checked to belong together
    from cryptography.hazmat.primitives import serialization

    try:
        c = _d.load_certificate(cert)
        k = _d.load_private_key(key)
    except (ValueError, TypeError):
        raise LocalProtocolError("cert/key: not DER/PEM (or cryptography objects)") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        same = k.public_key().public_bytes(serialization.Encoding.DER, spki) == c.public_key().public_bytes(
            serialization.Encoding.DER, spki)
    except (ValueError, TypeError, AttributeError):
        return  # a key object of another kind (hardware): the handshake checks it
    if not same:
        raise LocalProtocolError("the private key does not match the client certificate")


def load_crls(objs):
    """cryptography CRL objects from PEM/DER bytes or objects (one or a list)."""
    from cryptography import x509

    if objs is None:
        return []
    if not isinstance(objs, (list, tuple)):
        objs = [objs]
    out = []
    for o in objs:
        if isinstance(o, x509.CertificateRevocationList):
            out.append(o)
            continue
        data = bytes(o)
        try:
            out.append(x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                       else x509.load_der_x509_crl(data))
        except ValueError as e:
            raise LocalProtocolError("cannot load CRL: %s" % e) from None
    return out


class EstClient(_portable.EstClient):
    """See est_lite_mp.client.EstClient; extra keywords: proxy (HTTPS only),
    crls, tls_version ("1.2"/"1.3"), chain (intermediates sent after our
    certificate), mtu (DTLS)."""

    max_body = 16384
    # bounds of one wait before a retry: a server answering 202 with
    # "Retry-After: 0" (or a negative value) must not make the client loop
    # at full speed. No upper bound by default: RFC 7030 §4.2.3 says the
    # client MUST wait at least the Retry-After, and the deadline bounds
    # every wait already (without one there is no retry; a wait past it is
    # not started: "not done yet: the server asks to retry in N s"). A
    # number here caps one wait (a link failure's backoff as well): a
    # server asking for longer is then asked again early.
    retry_min_s = 1.0
    retry_max_s = None
    # callable(seconds, seconds_left_or_None), called before each retry
    # wait (e.g. to show progress: est-lite -v); None: quiet. self.said is
    # then the server's text with its 202 / 5.03 ("waiting for approval"),
    # None when the wait follows a link failure
    on_wait = None
    # renew_if_needed() follows a root CA key update (est_lite_mp.rollover;
    # the MicroPython class reads it with getattr, default True)
    follow_rollover = True

    def __init__(self, server, trust=None, pin=None, cert=None, key=None, user=None, password=None, label=None,
                 server_name=None, timeout=30, deadline=120, *, proxy=None, crls=None, tls_version=None, chain=(),
                 mtu=1200):
        parse_server(server)  # refuses what it cannot use before the other checks
        for name, v in (("timeout", timeout), ("deadline", deadline)):
            if v is None and name == "deadline":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1e6) or math.isnan(v):
                raise LocalProtocolError("%s must be a number of seconds between 0 and 1e6, got %r" % (name, v))
        for name, v in (("user", user), ("password", password)):
            if isinstance(v, str) and [c for c in v if c < " " or c == "\x7f"]:
                raise LocalProtocolError("%s has control characters (line breaks, NUL, ...)" % name)
            if v is not None and not isinstance(v, str):
                raise LocalProtocolError("%s must be a str, got %s" % (name, type(v).__name__))
        if trust is not None:
            trust = _der_list(trust)
        if cert is not None and key is not None:
            _check_identity(cert, key)
        if chain:
            _der_list(chain, "chain")
        if tls_version not in (None, "1.2", "1.3"):
            raise LocalProtocolError("tls_version must be '1.2' or '1.3', got %r" % (tls_version,))
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 256 <= mtu <= 65507:
            raise LocalProtocolError("mtu must be an int between 256 and 65507, got %r" % (mtu,))
        self._guard = threading.Lock()
        self._owner = None  # thread id of the call in progress (see _user)
        super().__init__(server, trust, pin, cert, key, user, password, label, server_name, timeout, deadline)
        _check_host(self.host, "server host")
        _check_host(self.server_name, "server_name")
        if self.label is not None:
            from est_lite.paths import check_label

            check_label(self.label)  # here, not when the first request is built (after connecting)
        if proxy and self.scheme != "https":
            raise LocalProtocolError("an HTTP CONNECT proxy carries HTTPS only (CoAPs is UDP)")
        if proxy is not None:
            from .transport_https import parse_proxy

            if not isinstance(proxy, str) or [c for c in proxy if c <= " " or c == "\x7f"]:
                raise LocalProtocolError("proxy must be an http://[user:pw@]host:port string, got %r" % (proxy,))
            parse_proxy(proxy)
        self.proxy = proxy
        self.crls = load_crls(crls)
        self.tls_version = tls_version
        self.chain = chain
        self.mtu = mtu

    # --- one thread at a time ---
    # A client is one session, one deadline and (while renewing) the
    # credentials of one device: calls from a second thread while one is
    # running are refused with a LocalProtocolError instead of sharing the
    # connection (which gave raw tracebacks and false SecurityErrors).
    # Make one EstClient per thread; calls from one thread may nest.

    @contextlib.contextmanager
    def _user(self):
        me = threading.get_ident()
        with self._guard:
            owner = self._owner
            if owner is not None and owner != me:
                raise LocalProtocolError("this EstClient is in use by another thread (one session and one deadline "
                                         "per client): make one EstClient per thread")
            self._owner = me
        try:
            yield
        finally:
            if owner is None:
                self._owner = None

    def cacerts(self):
        with self._user():
            boot = self.trust is None and self.scheme == "coaps"
            certs = super().cacerts()
            if boot and self._t is not None:
                try:  # RFC 9148 §9.1: the pinned session goes on only if its server verifies under the new anchors
                    self._t.check_trust(certs)
                except EstError:
                    self.close()
                    self.trust, self.bootstrapped = None, False
                    raise
            return certs

    def csrattrs(self):
        with self._user():
            return super().csrattrs()

    def enroll(self, csr, public_key=None):
        with self._user():
            return super().enroll(csr, public_key)

    def reenroll(self, csr, public_key=None):
        with self._user():
            return super().reenroll(csr, public_key)

    def serverkeygen(self, csr):
        with self._user():
            return super().serverkeygen(csr)

    def close(self):
        with self._user():
            return super().close()

    def provision(self, store, *a, **kw):
        with self._user():
            # a store that cannot be written is said before the server is
            # contacted: afterwards the certificate would be issued and lost
            # with its key (the portable save fails only after the enroll)
            _check_store(store)
            return super().provision(store, *a, **kw)

    def _with_deadline(self, deadline, fn, *args):
        # provision() / renew_if_needed(deadline=...): the constructor's rule. A NaN or infinite one
        # bounded nothing: every wait a server asked for (no cap, retry_max_s None) was slept in full
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                     or not 0 < deadline <= 1e6):
            raise LocalProtocolError("deadline must be a number of seconds between 0 and 1e6, got %r" % (deadline,))
        return super()._with_deadline(deadline, fn, *args)

    def renew_if_needed(self, store, *a, **kw):
        with self._user():
            _check_store(store)
            r = super().renew_if_needed(store, *a, **kw)
        if r is not None and r.note:
            # what the /cacerts answer changed (a root CA key update), or why it changed nothing
            import logging

            logging.getLogger("est_lite.client").log(
                logging.INFO if r.note.startswith("CA root key update") and "not trusted" not in r.note
                else logging.WARNING, "%s: %s",
                getattr(store, "path", store), r.note)
        return r

    def csrattrs_event(self):
        """Like csrattrs(), but the whole CsrAttrs event: .attrs (None when
        the server has none), .der, and .diagnostic, the server's text with a
        204/404/4.04 (e.g. "unknown EST label 'strickt'": RFC 7030 reads a
        404 as "no attributes", so a mistyped label is visible only there)."""
        with self._user():
            self._bootstrap()
            return self._run(1)

    def _mono(self):
        return time.monotonic()

    def _rand(self):
        return _sysrand.random()

    def _sleep(self, s):
        # a retry wait (Retry-After / Max-Age with jitter, or the backoff
        # after a link failure), at least retry_min_s, at most retry_max_s
        # if set, and within the time left before the deadline
        s = max(s, self.retry_min_s)
        if self.retry_max_s is not None:
            s = min(s, self.retry_max_s)
        left = self._left()
        if left is not None and s >= left:
            time.sleep(max(0.0, left))
            raise TransportError("the deadline passed while waiting %.0f s to try again (the server keeps asking to "
                                 "retry later, or is unreachable)" % s)
        if self.on_wait is not None:
            self.on_wait(s, left)
        time.sleep(s)

    def _crypto(self):
        from . import crypto

        return crypto

    def _session(self):
        t = self._t
        if t is not None and self.scheme == "https" and t.peer_closed():
            _portable.EstClient.close(self)  # closed by the server while idle: the request goes on a new one
        return super()._session()

    def _open_coaps(self, trust, pin, timeout):
        from .transport_coaps import CoapsTransport

        return CoapsTransport(self.host, self.port, trust=trust, pin=pin, server_name=self.server_name,
                              cert=self.cert, key=self.key, chain=self.chain, timeout=timeout, crls=self.crls,
                              mtu=self.mtu, left=self._left)

    def _open_https(self, trust, pin, timeout):
        from .transport_https import TlsTransport

        return TlsTransport(self.host, self.port, trust=trust, pin=pin, server_name=self.server_name,
                            cert=self.cert, key=self.key, chain=self.chain, proxy=self.proxy, timeout=timeout,
                            crls=self.crls, tls_version=self.tls_version, pending_ok=self._anon, left=self._left)

    def _verify_hook(self):
        return verify_issued_by


def _check_store(store):
    f = getattr(store, "check_writable", None)  # est_lite_cpython.credstore.CredStore; other stores: as they are
    if f is not None:
        f()


def _check_host(name, what):
    # a name the TLS/DTLS layers can put in SNI and compare with the
    # certificate (idna raised UnicodeError, a NUL TypeError, from inside connect())
    if not isinstance(name, str) or not name or [c for c in name if c <= " " or c == "\x7f"]:
        raise LocalProtocolError("%s %r is not a host name or IP address" % (what, name))
    if _d.is_ip(name):
        return
    try:
        ok = len(name.rstrip(".").encode("idna")) <= 253
    except UnicodeError:
        ok = False
    if not ok:
        raise LocalProtocolError("%s %r is not a valid host name (labels of 1..63 characters)" % (what, name))


def verify_issued_by(issuer_der, cert_der):
    """True if issuer's key signed cert (any algorithm cryptography knows)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        x509.load_der_x509_certificate(bytes(cert_der)).verify_directly_issued_by(
            x509.load_der_x509_certificate(bytes(issuer_der)))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
