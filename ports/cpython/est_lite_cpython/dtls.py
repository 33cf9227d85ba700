"""Shared DTLS 1.2 machinery on pyOpenSSL (memory BIOs, our own UDP socket).

Used by the asyncio server (`dtls_server.py`), the aiocoap transport
(`coaps_transport.py`) and the blocking client (`dtls_client.py`):

- cipher suites and OpenSSL context setup for both roles,
- certificate / key loading from DER, PEM or `cryptography` objects,
- splitting the BIO output at DTLS record boundaries and packing the records
  into datagrams no larger than the MTU,
- channel bindings (tls-unique and the RFC 5705 exporter),
- server identity checking against the certificate's subjectAltName
  (pyOpenSSL has no public API for it).

Facts this module relies on (measured, see docs/dtls.md):
- The OpenSSL 3.x/4.x inside the `cryptography` wheel puts the CCM_8 suites
  below the default security level, so the suite list ends in `@SECLEVEL=0`;
  the level only matters for what the list allows, and the list allows
  exactly two ECDHE-ECDSA AEAD suites.
- `OP_NO_QUERY_MTU` plus `set_ciphertext_mtu()` is needed with memory BIOs,
  else the handshake fragments into tiny records or fails.
"""

import hashlib
import ipaddress
import struct

from est_lite.errors import LocalProtocolError, SecurityError

# RFC 7925 mandatory suite, and the one MicroPython's Mbed TLS build offers
# (it has no CCM): both ECDHE-ECDSA, both AEAD.
SUITE_CCM8 = "ECDHE-ECDSA-AES128-CCM8"
SUITE_GCM = "ECDHE-ECDSA-AES128-GCM-SHA256"
SERVER_SUITES = (SUITE_CCM8, SUITE_GCM)  # server preference order
CLIENT_SUITES = (SUITE_CCM8, SUITE_GCM)
# ECDHE groups, preferred first: X25519 (what TLS 1.3 peers use; a third of
# P-256's ECDH work in OpenSSL) and P-256, the group RFC 7925 makes mandatory
# (a device that offers only P-256 gets P-256). Certificates and signatures
# stay ECDSA P-256 either way.
GROUPS = b"X25519:P-256"

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

RECORD_HEADER = 13  # type(1) version(2) epoch(2) seq(6) length(2)
CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
DTLS1_2_VERSION = 0xFEFD  # not exported by pyOpenSSL
DTLS_VERSIONS = (0xFEFF, 0xFEFD)  # DTLS 1.0 (in HelloVerifyRequest / early records), 1.2

# SSL_MODE_NO_AUTO_CHAIN (ssl.h): without it OpenSSL builds the certificate
# chain it sends from the verify store, sending CA certificates the caller did
# not ask to send. pyOpenSSL does not export the constant.
_MODE_NO_AUTO_CHAIN = 0x00000008

DEFAULT_MTU = 1200  # RFC 9148 / RFC 7925: stay well below 1280 (IPv6 minimum)
MIN_MTU = 256  # below this a P-256 handshake cannot make progress in OpenSSL


_SSL = None


def _ssl():
    global _SSL
    if _SSL is None:
        try:
            from OpenSSL import SSL
        except ImportError as e:  # pragma: no cover - dependency missing
            raise LocalProtocolError("DTLS needs pyOpenSSL: pip install 'est-lite[cpython]' (%s)" % e)
        _SSL = SSL
    return _SSL


# --- certificates and keys ---------------------------------------------------------------


def load_certificate(obj):
    """A `cryptography` x509.Certificate from DER bytes, PEM bytes/str, a
    cryptography certificate or a pyOpenSSL X509."""
    from cryptography import x509

    if isinstance(obj, x509.Certificate):
        return obj
    if hasattr(obj, "to_cryptography"):
        return obj.to_cryptography()
    if isinstance(obj, str):
        obj = obj.encode("ascii")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError as e:
            raise LocalProtocolError("cannot load certificate: %s" % e)
    raise LocalProtocolError(
        "certificate must be DER/PEM bytes or a cryptography Certificate, not %s" % type(obj).__name__
    )


def load_certificates(objs):
    """A list of certificates from one certificate, a list of them, or PEM text
    holding several."""
    from cryptography import x509

    if objs is None:
        return []
    if isinstance(objs, str):
        objs = objs.encode("ascii")
    if isinstance(objs, (bytes, bytearray, memoryview)):
        data = bytes(objs)
        if data.count(b"-----BEGIN CERTIFICATE") > 1:
            try:
                return x509.load_pem_x509_certificates(data)
            except ValueError as e:
                raise LocalProtocolError("cannot load certificates: %s" % e)
        return [load_certificate(data)]
    if isinstance(objs, x509.Certificate) or hasattr(objs, "to_cryptography"):
        return [load_certificate(objs)]
    return [load_certificate(o) for o in objs]


def load_private_key(obj):
    """A `cryptography` private key from DER/PEM bytes or a key object."""
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "sign") and hasattr(obj, "public_key"):
        return obj
    if isinstance(obj, str):
        obj = obj.encode("ascii")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return serialization.load_pem_private_key(data, password=None)
            return serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise LocalProtocolError("cannot load private key: %s" % e)
    raise LocalProtocolError("private key must be DER/PEM bytes or a cryptography key, not %s" % type(obj).__name__)


def fingerprint(cert):
    """SHA-256 over the certificate's DER."""
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(load_certificate(cert).public_bytes(serialization.Encoding.DER)).digest()


def issued_by(cert, issuer):
    """True if `issuer` (a cryptography certificate) signed `cert`: its
    subject is cert's issuer and its key verifies cert's signature."""
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def anchor_order(cas):
    """`cas` (cryptography certificates), the self-signed ones first, for an
    OpenSSL verify store: OpenSSL takes the first trusted certificate of the
    issuer's name and key, and after a root key update the links NewWithOld
    and OldWithNew (same name, each the other's issuer) taken first made a
    loop until the depth ran out ("certificate chain too long")."""
    return sorted(cas, key=lambda c: not (c.subject == c.issuer and issued_by(c, c)))  # stable


def add_trust_anchors(ctx, cas):
    """Add `cas` as trust anchors to the context's verify store."""
    from OpenSSL import crypto

    cas = load_certificates(cas)
    if not cas:
        raise LocalProtocolError("no trust anchors given")
    store = ctx.get_cert_store()
    for c in anchor_order(cas):
        store.add_cert(crypto.X509.from_cryptography(c))


# --- identity check (RFC 6125 subset) -------------------------------------------------------


def _dns_match(pattern, host):
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        # one wildcard, the whole left-most label only, never for IP literals
        rest = pattern[2:]
        if "*" in rest or "." not in rest:
            return False
        head, sep, tail = host.partition(".")
        return bool(sep) and bool(head) and tail == rest
    if "*" in pattern:
        return False
    return pattern == host


def ip_of(name):
    """The IP address a server name spells (brackets allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_ip(name):
    """True if the server name is an IP address (no SNI is sent for one)."""
    return ip_of(name) is not None


def check_server_name(cert, name):
    """Raise SecurityError unless `cert`'s subjectAltName covers `name` (a DNS
    name or an IP address literal). The subject CN is not consulted (RFC 6125
    §6.4.4 allows it only without SAN; we require SAN, as browsers do)."""
    from cryptography import x509

    cert = load_certificate(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise SecurityError("server certificate has no subjectAltName, cannot match %r" % name)
    ip = ip_of(name)
    if ip is not None:
        if ip in san.get_values_for_type(x509.IPAddress):
            return
        raise SecurityError(
            "server certificate does not cover IP address %s (its IP SANs: %s)"
            % (ip, ", ".join(str(i) for i in san.get_values_for_type(x509.IPAddress)) or "none")
        )
    names = san.get_values_for_type(x509.DNSName)
    for pattern in names:
        if _dns_match(pattern, name):
            return
    raise SecurityError(
        "server certificate does not cover host name %r (its DNS SANs: %s)" % (name, ", ".join(names) or "none")
    )


# --- contexts -------------------------------------------------------------------------------


def cipher_string(suites):
    """The OpenSSL cipher string for `suites` (names as in SUITE_*). The list
    is explicit, so `@SECLEVEL=0` (needed for CCM_8 in this OpenSSL) admits
    nothing else."""
    if isinstance(suites, (bytes, str)):
        suites = [suites]
    suites = [s.decode("ascii") if isinstance(s, bytes) else s for s in suites]
    if not suites:
        raise LocalProtocolError("no DTLS cipher suites given")
    for s in suites:
        if ":" in s or "@" in s or "!" in s or "+" in s:
            raise LocalProtocolError("cipher suite %r: give suite names, not an OpenSSL cipher expression" % s)
    return (":".join(suites) + ":@SECLEVEL=0").encode("ascii")


def base_context(server, suites, cert=None, key=None, chain=()):
    """A DTLS 1.2 context for one role with our suites, ECDHE over X25519 or
    P-256 (GROUPS) and ECDSA only,
    no session cache or tickets (every handshake is full, so tls-unique is the
    client's Finished), and only the certificates we name on the wire."""
    SSL = _ssl()
    from cryptography.hazmat.primitives.asymmetric import ec

    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD if server else SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    # a server picks in its own order (SERVER_SUITES: CCM_8, RFC 9148's mandatory suite, 8 bytes
    # shorter per record than GCM), not the client's
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION
                    | (SSL.OP_CIPHER_SERVER_PREFERENCE if server else 0))
    ctx.set_mode(_MODE_NO_AUTO_CHAIN)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    try:
        ctx.set_cipher_list(cipher_string(suites))
    except SSL.Error as e:
        raise LocalProtocolError("OpenSSL rejected cipher suites %r: %s" % (suites, e))
    if not _set_groups(ctx, GROUPS):
        ctx.set_tmp_ecdh(ec.SECP256R1())  # a binding without the groups call: P-256 alone
    if cert is not None:
        if key is None:
            raise LocalProtocolError("a certificate needs its private key")
        ctx.use_certificate(load_certificate(cert))
        try:
            ctx.use_privatekey(load_private_key(key))
            ctx.check_privatekey()
        except SSL.Error:
            raise LocalProtocolError("the private key does not match the certificate")
        for c in load_certificates(chain):
            ctx.add_extra_chain_cert(c)
    elif key is not None:
        raise LocalProtocolError("a private key was given without its certificate")
    return ctx


def _set_groups(ctx, groups):
    """SSL_CTX_set1_curves_list (= set1_groups_list) through the binding;
    False if it is not exported."""
    lib = _lib()
    fn = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if fn is None:  # pragma: no cover - older binding
        return False
    if fn(ctx._context, groups) != 1:
        raise LocalProtocolError("OpenSSL rejected the ECDHE groups %r" % groups)
    return True


def group_name(conn):
    """The negotiated ECDHE group ("x25519", "prime256v1", ...), or None."""
    lib = _lib()
    fn = getattr(lib, "SSL_get0_group_name", None)
    if fn is None:  # pragma: no cover
        return None
    from OpenSSL._util import ffi

    p = fn(conn._ssl)
    return ffi.string(p).decode() if p != ffi.NULL else None


def new_connection(ctx, mtu):
    """A Connection on memory BIOs with the ciphertext MTU set."""
    SSL = _ssl()
    if mtu < MIN_MTU:
        raise LocalProtocolError("mtu %d is below the minimum of %d" % (mtu, MIN_MTU))
    conn = SSL.Connection(ctx, None)
    conn.set_ciphertext_mtu(mtu)
    return conn


# --- records and datagrams ------------------------------------------------------------------


def split_records(data):
    """Split concatenated DTLS records (as the memory BIO hands them back) at
    the 13-byte record headers. Returns a list of bytes; a truncated tail is
    returned as one last piece (never silently dropped)."""
    out = []
    mv = memoryview(data)
    off = 0
    n = len(mv)
    while off < n:
        if n - off < RECORD_HEADER:
            out.append(bytes(mv[off:]))
            break
        length = struct.unpack_from("!H", mv, off + 11)[0]
        end = off + RECORD_HEADER + length
        if end > n:
            out.append(bytes(mv[off:]))
            break
        out.append(bytes(mv[off:end]))
        off = end
    return out


def pack_datagrams(records, mtu):
    """Pack whole records into datagrams of at most `mtu` bytes (a record larger
    than the MTU goes alone: OpenSSL already sized its records to the MTU)."""
    out = []
    cur = []
    size = 0
    for r in records:
        if cur and size + len(r) > mtu:
            out.append(b"".join(cur))
            cur = []
            size = 0
        cur.append(r)
        size += len(r)
    if cur:
        out.append(b"".join(cur))
    return out


def _bio_pending_fn():
    """Bytes waiting in the memory BIO OpenSSL writes to (BIO_get_mem_data,
    the one pending-length call the binding exports), or None if this
    pyOpenSSL does not expose it (then drain_bio reads until WantReadError)."""
    try:
        from OpenSSL._util import ffi, lib

        fn = lib.BIO_get_mem_data
        null = ffi.NULL
    except (ImportError, AttributeError):  # pragma: no cover - other pyOpenSSL
        return None
    return lambda conn: fn(conn._from_ssl, null)


_bio_pending = None


def drain_bio(conn, mtu, bufsize=65536):
    """Everything OpenSSL wants to send, as a list of datagrams <= mtu.

    The memory BIO holds whole records only, so output that fits one MTU is
    one datagram as it is (no splitting and packing); an empty BIO is asked
    for its length rather than read until WantReadError."""
    global _bio_pending
    if _bio_pending is None:
        _bio_pending = _bio_pending_fn() or (lambda conn: 1)
    try:
        if not _bio_pending(conn):
            return []
    except AttributeError:  # pragma: no cover - a Connection without memory BIOs
        pass
    SSL = _ssl()
    parts = []
    while True:
        try:
            chunk = conn.bio_read(bufsize)
        except SSL.WantReadError:
            break
        if not chunk:
            break
        parts.append(chunk)
        if len(chunk) < bufsize:
            break  # the memory BIO hands out everything it holds at once
    if not parts:
        return []
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) <= mtu:
        return [data]
    return pack_datagrams(split_records(data), mtu)


class RawOps:
    """The per-datagram Connection calls of the DTLS server without
    pyOpenSSL's Python wrappers and without an exception for the common
    "nothing more to read" outcome: SSL_do_handshake, SSL_read, SSL_write
    and the memory BIOs through the binding pyOpenSSL itself calls, with
    pyOpenSSL's own error translation (`Connection._raise_ssl_error`) for
    every other outcome, so errors are the same exceptions as before. One
    instance per thread (it owns a read buffer). `raw_ops()` returns None
    when this pyOpenSSL lacks the attributes it relies on."""

    def __init__(self, ffi, lib, bufsize=65536):
        self._ffi = ffi
        self._lib = lib
        self._want_read = lib.SSL_ERROR_WANT_READ
        self._null = ffi.NULL
        self._bufsize = bufsize
        self._buf = ffi.new("char[]", bufsize)

    def handshake(self, conn):
        """True when the handshake is complete, False while it waits for
        the peer; raises what Connection.do_handshake raises otherwise."""
        ssl = conn._ssl
        r = self._lib.SSL_do_handshake(ssl)
        if r == 1:
            return True
        if self._lib.SSL_get_error(ssl, r) == self._want_read and self._quiet(conn):
            return False
        conn._raise_ssl_error(ssl, r)
        return False  # not reached: pyOpenSSL raised

    def read(self, conn):
        """One decrypted record's bytes, or None when OpenSSL needs more
        input; raises what Connection.recv raises otherwise (ZeroReturnError
        for close_notify, ...)."""
        ssl = conn._ssl
        r = self._lib.SSL_read(ssl, self._buf, self._bufsize)
        if r > 0:
            return self._ffi.buffer(self._buf, r)[:]
        if self._lib.SSL_get_error(ssl, r) == self._want_read and self._quiet(conn):
            return None
        conn._raise_ssl_error(ssl, r)
        return None  # not reached: pyOpenSSL raised

    @staticmethod
    def _quiet(conn):
        """No exception from a Python callback waits to be re-raised (what
        Connection._raise_ssl_error checks before anything else)."""
        ctx = conn._context
        h = ctx._verify_helper
        if h is not None and h._problems:
            return False
        h = ctx._alpn_select_helper
        if h is not None and h._problems:
            return False
        h = ctx._ocsp_helper
        return h is None or not h._problems

    def write(self, conn, data):
        """Encrypt one datagram's worth (Connection.send)."""
        ssl = conn._ssl
        r = self._lib.SSL_write(ssl, data, len(data))
        if r <= 0:
            conn._raise_ssl_error(ssl, r)
        return r

    def bio_write(self, conn, data):
        """Hand one received datagram to OpenSSL (Connection.bio_write)."""
        if self._lib.BIO_write(conn._into_ssl, data, len(data)) != len(data):
            conn.bio_write(data)  # pyOpenSSL's error handling

    def pending(self, conn):
        """Everything OpenSSL has written to the outgoing memory BIO, as
        bytes (b"" when nothing)."""
        bio = conn._from_ssl
        n = self._lib.BIO_get_mem_data(bio, self._null)
        if n <= 0:
            return b""
        buf = self._buf if n <= self._bufsize else self._ffi.new("char[]", n)
        r = self._lib.BIO_read(bio, buf, n)
        return self._ffi.buffer(buf, r)[:] if r > 0 else b""

    def drain(self, conn, mtu):
        """drain_bio in one BIO_read."""
        data = self.pending(conn)
        if not data:
            return []
        if len(data) <= mtu:
            return [data]
        return pack_datagrams(split_records(data), mtu)


def raw_ops():
    """A RawOps for the calling thread, or None (see RawOps)."""
    try:
        from OpenSSL import SSL
        from OpenSSL._util import ffi, lib

        for name in ("SSL_do_handshake", "SSL_read", "SSL_write", "SSL_get_error", "BIO_read", "BIO_write",
                     "BIO_get_mem_data", "SSL_ERROR_WANT_READ"):
            getattr(lib, name)
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: True)
        conn = SSL.Connection(ctx, None)
        for name in ("_ssl", "_into_ssl", "_from_ssl", "_context", "_raise_ssl_error"):
            getattr(conn, name)
        for name in ("_verify_helper", "_alpn_select_helper", "_ocsp_helper"):
            getattr(ctx, name)
        ctx._verify_helper._problems
    except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
        return None
    return RawOps(ffi, lib)


# --- channel bindings -----------------------------------------------------------------------


_LIB = []  # [OpenSSL._util.lib] once imported, [None] if unavailable


def _lib():
    if not _LIB:
        try:
            from OpenSSL._util import lib
        except ImportError:  # pragma: no cover - pyOpenSSL without its binding module
            lib = None
        _LIB.append(lib)
    return _LIB[0]


def _session_reused(conn):
    try:
        return bool(_lib().SSL_session_reused(conn._ssl))
    except AttributeError:  # pragma: no cover - older pyOpenSSL
        return False


def extended_master_secret(conn):
    """True if RFC 7627 extended master secret was negotiated (None if this
    pyOpenSSL cannot tell)."""
    try:
        return bool(_lib().SSL_get_extms_support(conn._ssl) == 1)
    except AttributeError:  # pragma: no cover
        return None


def tls_unique(conn, server):
    """RFC 5929 tls-unique: the first Finished message of the latest handshake.
    On a full handshake the client sends its Finished first; on an abbreviated
    one (session resumption, which our contexts disable) the server does."""
    client_first = not _session_reused(conn)
    if client_first == bool(server):
        return conn.get_peer_finished()
    return conn.get_finished()


def exporter(conn, label=EXPORTER_LABEL, length=EXPORTER_LENGTH):
    """RFC 5705 keying material exporter with the RFC 9266 label, no context.
    For (D)TLS 1.2 this is only a safe channel binding with the extended master
    secret (RFC 7627), which both OpenSSL and Mbed TLS negotiate by default."""
    return conn.export_keying_material(label, length)


def peer_chain(conn):
    """The certificates the peer sent, leaf first, as cryptography objects."""
    chain = conn.get_peer_cert_chain(as_cryptography=True)
    if chain:
        return list(chain)
    leaf = conn.get_peer_certificate(as_cryptography=True)
    return [leaf] if leaf is not None else []


def verified_chain(conn):
    """The chain OpenSSL verified, leaf first and trust anchor last."""
    chain = conn.get_verified_chain(as_cryptography=True)
    return list(chain) if chain else []


# --- error texts ----------------------------------------------------------------------------


def verify_error_string(errno):
    """OpenSSL's text for an X509 verification error number."""
    try:
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(errno)).decode()
    except (ImportError, AttributeError):  # pragma: no cover
        return "verify error %d" % errno


def subject_text(x509):
    """A readable subject of a pyOpenSSL X509 (for messages)."""
    try:
        return x509.to_cryptography().subject.rfc4514_string()
    except (AttributeError, ValueError):  # pragma: no cover
        return "?"


def ssl_error_text(e):
    """The reason strings of a pyOpenSSL SSL.Error, joined."""
    try:
        return "; ".join(str(x[2]) for x in e.args[0]) or str(e)
    except (IndexError, TypeError):
        return str(e) or type(e).__name__
