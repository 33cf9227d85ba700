"""asyncio clients for simulated devices: DTLS 1.2 over UDP and TLS over
TCP, both on pyOpenSSL memory BIOs, reusing the contexts, suites, record
packing and identity checks of est_lite_cpython.dtls. Thousands of them
share one event loop (the fleet simulator).

    c = AsyncDtls("127.0.0.1", port, cert=idevid_cert, key=idevid_key, pin=sha256_of_server_cert)
    await c.connect(timeout=30)
    c.send(coap_bytes); data = await c.recv(timeout)      # bytes or None
    c.close()

    t = AsyncTls("127.0.0.1", port, cert=..., key=..., trust_cas=[root])
    await t.connect(timeout=30); await t.write(req); data = await t.read(timeout)

Server identity: `pin` (32 bytes: SHA-256 of the server's leaf certificate,
the pinned bootstrap) or `trust_cas` plus the subjectAltName check of
`server_name` (default: the host). A `context` made once with
`client_context()` can be shared by devices with the same identity
options; devices with their own certificates need their own.
"""

import asyncio
import hashlib

from est_lite.errors import LocalProtocolError, SecurityError, TransportError
from est_lite_cpython import dtls as _d


def client_context(datagram=True, cert=None, key=None, trust_cas=None, ciphers=_d.CLIENT_SUITES):
    """An OpenSSL client context: DTLS 1.2 (our suites) or TLS 1.2/1.3.
    The server is verified inside the handshake, before our certificate goes
    out: the connection's owner (app data) holds the pin or the expected
    name, checked by `_verify` (and once more after the handshake)."""
    SSL = _d._ssl()
    if datagram:
        ctx = _d.base_context(False, ciphers, cert, key)
    else:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
        if cert is not None:
            ctx.use_certificate(_d.load_certificate(cert))
            ctx.use_privatekey(_d.load_private_key(key))
    if trust_cas is not None:
        _d.add_trust_anchors(ctx, trust_cas)
    ctx.set_verify(SSL.VERIFY_PEER, _verify)
    return ctx


def _verify(conn, x509, errno, depth, ok):
    """OpenSSL's verify callback: a leaf pin (SHA-256 of the server
    certificate) or trust anchors plus the server name decide before the
    client's certificate is sent."""
    owner = conn.get_app_data()
    if owner is None:
        return False
    if owner.pin is not None:
        if depth != 0:
            return True  # the pinned leaf decides
        from cryptography.hazmat.primitives import serialization

        der = x509.to_cryptography().public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).digest() == owner.pin
    if not ok:
        return False
    if depth == 0:
        try:
            _d.check_server_name(x509.to_cryptography(), owner.server_name)
        except SecurityError:
            return False
    return True


class _Base:
    def __init__(self, host, port, cert=None, key=None, trust_cas=None, pin=None, server_name=None, context=None):
        if pin is None and trust_cas is None and context is None:
            raise LocalProtocolError("give trust_cas or a pin (SHA-256 of the server certificate)")
        self.host, self.port = host, port
        self.pin = pin
        self.trust_cas = trust_cas
        self.server_name = server_name or host
        self._ctx = context or client_context(self.DATAGRAM, cert, key, trust_cas)
        self._conn = None
        self.peer_chain = []
        self.closed = False

    def _check_peer(self):
        self.peer_chain = _d.peer_chain(self._conn)
        if not self.peer_chain:
            raise SecurityError("the server sent no certificate")
        if self.pin is not None:
            from cryptography.hazmat.primitives import serialization

            der = self.peer_chain[0].public_bytes(serialization.Encoding.DER)
            if hashlib.sha256(der).digest() != self.pin:
                raise SecurityError("the server certificate does not match the pinned bootstrap identity")
        else:
            _d.check_server_name(self.peer_chain[0], self.server_name)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, max_queue=64):
        self.queue = asyncio.Queue(max_queue)
        self.error = None

    def datagram_received(self, data, addr):
        if not self.queue.full():
            self.queue.put_nowait(data)

    def error_received(self, exc):
        self.error = exc
        if not self.queue.full():
            self.queue.put_nowait(None)


class AsyncDtls(_Base):
    DATAGRAM = True

    def __init__(self, host, port, cert=None, key=None, trust_cas=None, pin=None, server_name=None, context=None,
                 mtu=_d.DEFAULT_MTU):
        super().__init__(host, port, cert, key, trust_cas, pin, server_name, context)
        self.mtu = mtu
        self._transport = None
        self._proto = None

    def _flush(self):
        for dg in _d.drain_bio(self._conn, self.mtu):
            self._transport.sendto(dg)

    async def _datagram(self, timeout):
        try:
            d = await asyncio.wait_for(self._proto.queue.get(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return None
        if d is None:
            raise TransportError("%s:%s is unreachable (%s)" % (self.host, self.port, self._proto.error))
        return d

    async def connect(self, timeout=30.0):
        SSL = _d._ssl()
        loop = asyncio.get_running_loop()
        self._transport, self._proto = await loop.create_datagram_endpoint(_Datagrams,
                                                                           remote_addr=(self.host, self.port))
        self._conn = _d.new_connection(self._ctx, self.mtu)
        self._conn.set_app_data(self)
        self._conn.set_connect_state()
        end = loop.time() + timeout
        try:
            while True:
                try:
                    self._conn.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                self._flush()
                while True:
                    now = loop.time()
                    if now >= end:
                        raise TransportError("DTLS handshake with %s:%s timed out" % (self.host, self.port))
                    t = self._conn.DTLSv1_get_timeout()
                    wait = end - now if t is None else min(t, end - now)
                    d = await self._datagram(wait)
                    if d:
                        self._conn.bio_write(d)
                        break
                    try:
                        self._conn.DTLSv1_handle_timeout()
                    except SSL.Error as e:
                        raise TransportError("DTLS retransmissions exhausted: %s" % _d.ssl_error_text(e))
                    self._flush()
        except SSL.Error as e:
            self.close()
            raise SecurityError("DTLS handshake with %s:%s failed: %s" % (self.host, self.port, _d.ssl_error_text(e)))
        except BaseException:
            self.close()
            raise
        self._flush()
        try:
            self._check_peer()
        except SecurityError:
            self.close()
            raise

    def send(self, data):
        SSL = _d._ssl()
        try:
            self._conn.send(bytes(data))
        except SSL.Error as e:
            raise TransportError("DTLS send failed: %s" % _d.ssl_error_text(e))
        self._flush()

    async def recv(self, timeout):
        """One decrypted datagram, or None after `timeout` seconds."""
        SSL = _d._ssl()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                data = self._conn.recv(65535)
                if data:
                    return data
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                raise TransportError("the server closed the DTLS session")
            except SSL.Error as e:
                raise TransportError("DTLS session failed: %s" % _d.ssl_error_text(e))
            self._flush()
            d = await self._datagram(end - loop.time())
            if d is None:
                return None
            self._conn.bio_write(d)

    def close(self):
        if self.closed:
            return
        self.closed = True
        SSL = _d._ssl()
        if self._conn is not None and self._transport is not None:
            try:
                self._conn.shutdown()  # close_notify: the server frees the session now
                self._flush()
            except SSL.Error:
                pass
        if self._transport is not None:
            self._transport.close()


class AsyncTls(_Base):
    DATAGRAM = False

    def __init__(self, host, port, cert=None, key=None, trust_cas=None, pin=None, server_name=None, context=None):
        super().__init__(host, port, cert, key, trust_cas, pin, server_name, context)
        self._reader = self._writer = None

    async def _pump_out(self):
        SSL = _d._ssl()
        parts = []
        while True:
            try:
                b = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not b:
                break
            parts.append(b)
        if parts:
            self._writer.write(b"".join(parts))
            await self._writer.drain()

    async def connect(self, timeout=30.0):
        SSL = _d._ssl()
        try:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise TransportError("cannot connect to %s:%s: %s" % (self.host, self.port, e))
        self._conn = SSL.Connection(self._ctx, None)
        self._conn.set_app_data(self)
        if self.server_name and not _d.is_ip(self.server_name):
            self._conn.set_tlsext_host_name(self.server_name.encode("idna"))
        self._conn.set_connect_state()
        try:
            while True:
                try:
                    self._conn.do_handshake()
                    break
                except SSL.WantReadError:
                    pass
                await self._pump_out()
                data = await asyncio.wait_for(self._reader.read(65536), timeout)
                if not data:
                    raise TransportError("%s:%s closed the connection during the TLS handshake" % (self.host,
                                                                                                   self.port))
                self._conn.bio_write(data)
            await self._pump_out()
            self._check_peer()
        except SSL.Error as e:
            self.close()
            raise SecurityError("TLS handshake with %s:%s failed: %s" % (self.host, self.port, _d.ssl_error_text(e)))
        except asyncio.TimeoutError:
            self.close()
            raise TransportError("TLS handshake with %s:%s timed out" % (self.host, self.port))
        except BaseException:
            self.close()
            raise

    async def write(self, data):
        SSL = _d._ssl()
        try:
            self._conn.sendall(bytes(data))
        except SSL.Error as e:
            raise TransportError("TLS write failed: %s" % _d.ssl_error_text(e))
        await self._pump_out()

    async def read(self, timeout):
        """Decrypted bytes; b"" at the end of the stream."""
        SSL = _d._ssl()
        while True:
            try:
                return self._conn.recv(65536)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError:
                return b""
            except SSL.Error as e:
                raise TransportError("TLS read failed: %s" % _d.ssl_error_text(e))
            await self._pump_out()
            try:
                data = await asyncio.wait_for(self._reader.read(65536), timeout)
            except asyncio.TimeoutError:
                raise TransportError("no answer from %s:%s in %.0f s" % (self.host, self.port, timeout))
            if not data:
                return b""  # the peer closed the TCP connection
            self._conn.bio_write(data)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
