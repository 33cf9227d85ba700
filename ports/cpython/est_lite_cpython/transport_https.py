"""TLS over TCP for the EST client on CPython (pyOpenSSL, blocking socket).

    t = TlsTransport("est.example", 8443, trust=[ca_der], cert=c, key=k)
    t.connect()                   # TCP (optionally through an HTTP CONNECT proxy) + handshake
    t.write(request); data = t.read(4096)
    t.binding                     # tls-unique (TLS 1.2) or the RFC 9266 exporter (TLS 1.3)
    t.close()

`timeout` bounds each handshake, read and write; `left`, a callable
returning the seconds left before the caller's deadline (None: none),
bounds them too, so a server that trickles bytes cannot hold a read loop
past the deadline (each read would otherwise restart the timeout).

The server is checked inside the handshake, before our certificate is sent:
its chain must end in `trust` and its certificate must cover `server_name`
(DNS or IP subjectAltName). Pinned bootstrap (RFC 7030 §4.1.1): `pin`, the
SHA-256 of one certificate of the chain the server presents, replaces both
checks (every certificate below the pinned one must be signed by the next:
dtls_client.check_pin); a mismatch aborts the handshake. `crls`: CRLs
(cryptography objects) checked by OpenSSL for every certificate of the server's chain.

pyOpenSSL rather than `ssl`: it gives tls-unique on TLS 1.2 and the
exporter on TLS 1.3 (stdlib ssl has no exporter), used for PoP linking.
"""

import base64
import hashlib
import socket
import struct
import threading

from est_lite.errors import LocalProtocolError, SecurityError, TransportError

from . import dtls as _d
from .dtls_client import check_pin, untrusted_hint

TLS_VERSIONS = ("1.2", "1.3")


def parse_proxy(url):
    """(host, port, basic_credentials_or_None) from http://[user:pw@]host:port."""
    if "://" in url:
        scheme, url = url.split("://", 1)
        if scheme.lower() != "http":
            raise LocalProtocolError("proxy must be an http:// URL (HTTP CONNECT), got %r" % scheme)
    url = url.split("/", 1)[0]
    cred = None
    if "@" in url:
        cred, url = url.rsplit("@", 1)
    host, port = split_host_port(url, 3128)
    return host, port, cred


def split_host_port(hostport, default):
    """('host', port) from 'host', 'host:port', '[v6]' or '[v6]:port'."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise LocalProtocolError("bad address %r" % hostport)
        host, rest = hostport[1:end], hostport[end + 1:]
        if rest and not rest.startswith(":"):
            raise LocalProtocolError("bad address %r" % hostport)
        port = rest[1:]
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""
    if not host:
        raise LocalProtocolError("no host in %r" % hostport)
    try:
        port = int(port) if port else default
    except ValueError:
        raise LocalProtocolError("bad port in %r" % hostport) from None
    if not 0 < port < 65536:
        raise LocalProtocolError("bad port in %r" % hostport)
    return host, port


class TlsTransport:
    def __init__(self, host, port, *, trust=None, pin=None, server_name=None, cert=None, key=None, chain=(),
                 proxy=None, timeout=30.0, crls=None, tls_version=None, pending_ok=False, left=None):
        if trust is None and pin is None:
            raise LocalProtocolError("give trust anchors to verify the server, or a pin for the bootstrap")
        if tls_version not in (None,) + TLS_VERSIONS:
            raise LocalProtocolError("tls_version must be '1.2' or '1.3'")
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.trust = _d.load_certificates(trust) if trust is not None else None
        self.pin = pin
        self.proxy = proxy
        self.timeout = timeout
        self.left = left
        self.cert, self.key, self.chain = cert, key, chain
        self.crls = list(crls or ())
        self.tls_version = tls_version
        # pin not in the presented chain: with pending_ok (no client
        # certificate configured) finish the handshake and leave the check
        # to the caller (EstClient: pinned CA in the /cacerts answer, server
        # chain verified against it) -- nothing secret is sent before that
        self.pending_ok = pending_ok and cert is None
        self.pending = False
        self.conn = None
        self.sock = None
        self.binding = None
        self.version = None
        self.peer_chain = []  # cryptography certificates, leaf first
        self._pin_ok = None
        self._error = None

    # -- setup --

    def _context(self):
        from OpenSSL import SSL, crypto

        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self.tls_version:
            v = SSL.TLS1_2_VERSION if self.tls_version == "1.2" else SSL.TLS1_3_VERSION
            ctx.set_min_proto_version(v)
            ctx.set_max_proto_version(v)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every handshake full: tls-unique is ours
        if self.cert is not None:
            if self.key is None:
                raise LocalProtocolError("a client certificate needs its private key")
            ctx.use_certificate(_d.load_certificate(self.cert))
            try:
                ctx.use_privatekey(_d.load_private_key(self.key))
                ctx.check_privatekey()
            except SSL.Error:
                raise LocalProtocolError("the private key does not match the client certificate") from None
            for c in _d.load_certificates(self.chain):
                ctx.add_extra_chain_cert(c)
        if self.pin is None:
            store = ctx.get_cert_store()
            for c in _d.anchor_order(self.trust):  # roots first (a root key update's links)
                store.add_cert(crypto.X509.from_cryptography(c))
            if self.crls:
                for crl in self.crls:
                    store.add_crl(crl)
                store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        return ctx

    def _verify(self, conn, x509, errno, depth, ok):
        # Runs inside the handshake, before our certificate goes out; a False
        # return aborts it. Must not raise.
        try:
            cert = x509.to_cryptography()
            if self.pin is not None:
                # the pin decides, on the presented chain, at depth 0 (which
                # OpenSSL visits last); deeper calls only report that the
                # chain does not end in a trust anchor (there is none here)
                if depth:
                    return True
                if self._pin_ok is None:
                    chain = _d.peer_chain(conn)
                    why = check_pin(self.pin, chain)
                    if why is not None and self.pending_ok and self.pin not in [_d.fingerprint(c) for c in chain]:
                        self.pending = True  # nothing secret goes out; EstClient checks the answer
                        why = None
                    self._pin_ok = why is None
                    if why is not None:
                        self._error = why
                return self._pin_ok
            if not ok:
                if self._error is None:
                    self._error = "server certificate at depth %d: %s (%s)%s" % (
                        depth, _d.verify_error_string(errno), cert.subject.rfc4514_string(), untrusted_hint(errno))
                return False
            if depth == 0:
                _d.check_server_name(cert, self.server_name)
            return True
        except SecurityError as e:
            self._error = str(e)
        except Exception as e:  # noqa: BLE001 - an exception must not unwind through OpenSSL
            self._error = "server certificate check failed: %s" % e
        return False

    def _tcp(self):
        target = (self.host, self.port)
        if self.proxy:
            target = parse_proxy(self.proxy)[:2]
        try:
            s = socket.create_connection(target, timeout=self.timeout)
        except OSError as e:
            what = "proxy %s:%d" % target if self.proxy else "%s:%d" % target
            raise TransportError("cannot connect to %s: %s" % (what, e.strerror or e)) from None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.proxy:
            try:
                self._connect_through_proxy(s)
            except BaseException:
                s.close()
                raise
        # pyOpenSSL wants a blocking socket: kernel timeouts bound each read/write
        s.settimeout(None)
        _set_timeout(s, self.timeout)
        return s

    def _bound(self, what):
        # before each read/write: the kernel timeout is the smaller of
        # `timeout` and the time left before the caller's deadline
        left = self.left() if self.left is not None else None
        if left is None:
            return
        if left <= 0:
            self.close()
            raise TransportError("%s %s:%d: the deadline passed" % (what, self.host, self.port))
        _set_timeout(self.sock, min(self.timeout, left))

    def _connect_through_proxy(self, s):
        _, _, cred = parse_proxy(self.proxy)
        hp = "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)
        req = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (hp, hp)
        if cred:
            from urllib.parse import unquote

            req += "Proxy-Authorization: Basic %s\r\n" % base64.b64encode(unquote(cred).encode()).decode()
        s.sendall((req + "\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            left = self.left() if self.left is not None else None
            if left is not None:
                if left <= 0:
                    raise TransportError("HTTP proxy did not answer CONNECT before the deadline")
                s.settimeout(min(self.timeout, left))  # a proxy trickling its answer stops at the deadline
            try:
                d = s.recv(4096)
            except TimeoutError:
                raise TransportError("HTTP proxy did not answer CONNECT %s" % (
                    "before the deadline" if left is not None and left <= self.timeout else
                    "within %.0f s" % self.timeout)) from None
            except OSError as e:
                raise TransportError("HTTP proxy did not answer CONNECT: %s" % e) from None
            if not d:
                raise TransportError("HTTP proxy closed the connection during CONNECT")
            buf += d
            if len(buf) > 16384:
                raise TransportError("HTTP proxy answer to CONNECT is too long")
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise TransportError("HTTP proxy refused CONNECT %s: %s" % (hp, head.split(b"\r\n", 1)[0].decode(
                "latin-1")))
        if rest:
            raise TransportError("HTTP proxy sent data before the TLS handshake")

    def connect(self):
        from OpenSSL import SSL

        if self.conn is not None:
            return
        ctx = self._context()
        s = self._tcp()
        c = SSL.Connection(ctx, s)
        if not _d.is_ip(self.server_name):
            c.set_tlsext_host_name(self.server_name.encode("idna"))
        c.set_connect_state()
        self._pin_ok = None
        self._error = None
        self.pending = False
        # the whole handshake within `timeout` and the caller's deadline (the
        # socket timeout bounds each read only: a server trickling its
        # handshake bytes would hold it for ever): a timer shuts the socket down
        limit = self.timeout
        left = self.left() if self.left is not None else None
        if left is not None:
            if left <= 0:
                s.close()
                raise TransportError("TLS handshake with %s:%d: the deadline passed" % (self.host, self.port))
            limit = min(limit, left)
        fired = []

        def stop():
            fired.append(True)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        timer = threading.Timer(limit, stop)
        timer.daemon = True
        timer.start()
        try:
            c.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            s.close()
            raise TransportError("no answer from %s:%d during the TLS handshake" % (self.host, self.port)) from None
        except (SSL.Error, OSError) as e:
            s.close()
            if fired:
                raise TransportError("TLS handshake with %s:%d did not finish within %.1f s%s" % (
                    self.host, self.port, limit, " (the deadline)" if left is not None and left <= self.timeout
                    else "")) from None
            if isinstance(e, OSError):
                raise TransportError("TLS handshake with %s:%d: %s" % (self.host, self.port, e)) from None
            if self._error:
                raise SecurityError("TLS handshake with %s:%d refused: %s" % (self.host, self.port, self._error)) \
                    from None
            raise SecurityError("TLS handshake with %s:%d failed: %s" % (self.host, self.port, _d.ssl_error_text(e))) \
                from None
        finally:
            timer.cancel()
        if fired:  # it fired as the handshake ended: the socket is shut down
            s.close()
            raise TransportError("TLS handshake with %s:%d did not finish in time" % (self.host, self.port))
        if self.pin is not None and not self._pin_ok:  # the callback did not run: never trust that
            s.close()
            raise SecurityError("TLS handshake with %s:%d: the server's certificate was not checked"
                                % (self.host, self.port))
        self.conn, self.sock = c, s
        self.version = c.get_protocol_version_name()
        self.peer_chain = [x for x in (c.get_peer_cert_chain(as_cryptography=True) or [])]
        if self.version == "TLSv1.3":
            self.binding = c.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        else:
            self.binding = c.get_finished()  # tls-unique of a full handshake (RFC 5929)

    def peer_der(self):
        """The server's chain as presented (DER, leaf first)."""
        from cryptography.hazmat.primitives import serialization

        return [c.public_bytes(serialization.Encoding.DER) for c in self.peer_chain]

    # -- data --

    def write(self, data):
        from OpenSSL import SSL

        self._bound("writing to")
        try:
            self.conn.sendall(bytes(data))
        except (SSL.Error, OSError) as e:
            self.close()
            raise TransportError("writing to %s:%d failed: %s" % (self.host, self.port, e)) from None

    def read(self, n=16384):
        """Up to n bytes; b"" when the server closed the connection."""
        from OpenSSL import SSL

        self._bound("reading from")
        try:
            return self.conn.recv(n)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:  # unexpected EOF
                return b""
            self.close()
            raise TransportError("reading from %s:%d failed: %s" % (self.host, self.port, e)) from None
        except SSL.WantReadError:
            self.close()
            left = self.left() if self.left is not None else None
            if left is not None and left <= self.timeout:
                raise TransportError("no answer from %s:%d before the deadline" % (self.host, self.port)) from None
            raise TransportError("no answer from %s:%d within %.0f s" % (self.host, self.port, self.timeout)) \
                from None
        except (SSL.Error, OSError) as e:
            self.close()
            raise TransportError("reading from %s:%d failed: %s" % (self.host, self.port, e)) from None

    def peer_closed(self):
        """True when the server has closed this connection (close_notify,
        EOF, or it sent something unasked), checked before a kept
        connection carries the next request: servers close idle
        connections (the reference server after io_timeout_s, 10 s), and a
        request written into one was answered by "connection closed before
        a response" after a Retry-After wait."""
        import select

        from OpenSSL import SSL

        if self.conn is None:
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not r:
            return False
        self.sock.setblocking(False)
        try:
            self.conn.recv(1, socket.MSG_PEEK)
        except SSL.WantReadError:
            return False  # only TLS records without data (e.g. TLS 1.3 session tickets)
        except (SSL.Error, OSError):
            return True
        finally:
            if self.sock is not None:
                self.sock.setblocking(True)  # blocking again; the kernel timeouts (_set_timeout) stay
        return True  # data nobody asked for: not a connection to send a request on

    def close(self):
        if self.conn is not None:
            try:
                self.conn.shutdown()
            except Exception:  # noqa: BLE001 - best effort close_notify
                pass
            self.conn = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _set_timeout(sock, seconds):
    seconds = max(0.001, seconds)  # 0 would mean no timeout
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def sha256(data):
    return hashlib.sha256(data).digest()
