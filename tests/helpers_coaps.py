"""Test helpers for EST-coaps: the reference server's CA and EstService
behind both front ends (HTTPS and CoAPs), device identities, and a CPython
EST-coaps client (est_lite.client.CoapOperation over DtlsClient)."""

import os
import random
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est_lite import client as C
from est_lite import numbers as N

from helpers_server import EstTestServer, issue_cert, make_csr  # noqa: F401

COAPS_TOML = """
[profiles.coapsonly]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
pop_exempt_transports = ["coaps"]

[profiles.basiconly]
auth = ["basic"]
reenroll = false

[profiles.mp]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
key_types = ["ec:P-256"]
"""


def der(obj):
    return obj.public_bytes(serialization.Encoding.DER)


def key_der(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def point(key):
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


class Device:
    """A key and a certificate (cryptography objects) for a DTLS client."""

    def __init__(self, key, cert):
        self.key = key
        self.cert = cert

    @property
    def cn(self):
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def operational_device(srv, cn="device-op-1"):
    """A device certificate issued by the server's own CA (trust set "ca")."""
    from cryptography import x509

    key = ec.generate_private_key(ec.SECP256R1())
    cert = srv.ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), days=30)
    return Device(key, cert)


def idevid_device(srv, cn="device-idevid-1"):
    """A manufacturer certificate from the vendor CA (trust set "idevid")."""
    key, cert = issue_cert(srv.vendor["cert"], srv.vendor["key"], cn)
    return Device(key, cert)


def idevid_files(srv, dirpath, cn="device-idevid-1"):
    """idevid_device(srv, cn) written where the CLI's --cert/--key read it:
    dirpath/id.der (certificate) and dirpath/id.key (PKCS#8 key), both DER.
    Returns the Device."""
    import pathlib

    dev = idevid_device(srv, cn)
    d = pathlib.Path(dirpath)
    (d / "id.der").write_bytes(der(dev.cert))
    (d / "id.key").write_bytes(key_der(dev.key))
    return dev


class EstBothServer(EstTestServer):
    """EstTestServer (HTTPS) plus an EstCoapsServer on the same service."""

    def __init__(self, tmp, extra_toml="", coaps_options=None, **kw):
        super().__init__(tmp, extra_toml=COAPS_TOML + extra_toml, **kw)
        from est_lite_cpython.coaps_server import EstCoapsServer

        opts = dict(coaps_options or {})
        self.coaps = EstCoapsServer.from_config(self.service, self.config, port=0)
        self.coaps.dtls_options.update({k: v for k, v in opts.items() if k not in self.coaps.resource_options})
        self.coaps.resource_options.update({k: v for k, v in opts.items() if k in self.coaps.resource_options})
        try:
            self.coaps_port = self.coaps.start()
        except BaseException:
            super().stop()
            raise

    def stop(self):
        try:
            self.coaps.stop()
        finally:
            super().stop()

    def coaps_stats(self):
        async def _s():
            return self.coaps.stats

        return self.coaps.call(_s())

    def dtls_client(self, device, port=None, **kw):
        from est_lite_cpython.dtls_client import DtlsClient

        kw.setdefault("timeout", 10)
        return DtlsClient("127.0.0.1", port or self.coaps_port, [self.ca.root], cert=device.cert, key=device.key, **kw)

    def issued_count(self):
        return self.ca.store.count_certificates()


class CoapsSession:
    """EST-coaps operations over one DTLS session with the core's
    CoapOperation (retransmissions, Block1/Block2, separate responses)."""

    def __init__(self, dtls, *, rng=None, ack_timeout=1.0):
        self.dtls = dtls
        self.ack_timeout = ack_timeout
        self.rng = rng or random.Random(1)
        self.mids = C.MidSource(os.urandom(2))
        self.buf = bytearray(1152)
        self.last = None

    def op(self, op, label=None, body=b"", *, szx=6, accept=None, skc=False, public_key=None, max_body=8192,
           timeout=20.0):
        o = C.CoapOperation(op, label=label, body=body, token=os.urandom(4), mid=self.mids, szx=szx, accept=accept,
                            skc=skc, public_key=public_key, rand=self.rng.random, max_body=max_body, buf=self.buf,
                            ack_timeout=self.ack_timeout)
        self.last = o
        end = time.monotonic() + timeout
        while True:
            d = o.send(time.monotonic())
            while d is not None:
                self.dtls.send(bytes(d))
                d = o.send(time.monotonic())
            ev = o.next_event()
            if ev is not C.NEED_DATA:
                return ev
            now = time.monotonic()
            if now > end:
                raise AssertionError("EST-coaps operation did not finish in %.0f s" % timeout)
            t = o.next_timeout()
            wait = 0.5 if t is None else max(0.0, min(0.5, t - now))
            data = self.dtls.recv(timeout=wait)
            if data:
                o.receive_data(data, time.monotonic())

    def cacerts(self, label=None, **kw):
        return self.op(N.OP_CACERTS, label, **kw)

    def csrattrs(self, label=None, **kw):
        return self.op(N.OP_CSRATTRS, label, **kw)

    def enroll(self, csr, label=None, **kw):
        return self.op(N.OP_SIMPLEENROLL, label, csr, **kw)

    def reenroll(self, csr, label=None, **kw):
        return self.op(N.OP_SIMPLEREENROLL, label, csr, **kw)

    def serverkeygen(self, csr, label=None, **kw):
        return self.op(N.OP_SERVERKEYGEN, label, csr, **kw)


class RawCoap:
    """Hand-made CoAP requests (est_lite.coap) over a DtlsClient: for the
    error paths the EST client would never produce."""

    def __init__(self, dtls):
        self.dtls = dtls
        self.mid = random.randrange(0x10000)

    def request(self, code, path, payload=b"", *, options=(), timeout=5.0, **kw):
        from est_lite import coap

        self.mid = (self.mid + 1) & 0xFFFF
        tok = os.urandom(4)
        msg = coap.request(code, path, tok, self.mid, payload=payload, extra_options=list(options), **kw)
        self.dtls.send(msg.encode())
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.dtls.recv(timeout=max(0.01, end - time.monotonic()))
            if data is None:
                break
            resp = coap.decode(data)
            if resp.type == 0 and resp.code >= 0x40:  # separate CON response: ACK it
                self.dtls.send(coap.Message(type=2, code=0, mid=resp.mid).encode())
            if resp.code >= 0x40 and bytes(resp.token) == tok:
                return resp
        raise AssertionError("no CoAP answer to %s" % "/".join(path))

    def get_all(self, path, **kw):
        """GET following Block2 (at the server's block size); returns
        (first response, whole payload)."""
        from est_lite import coap

        first, parts, b2 = None, [], None
        while True:
            r = self.request(1, path, block2=b2, **kw)
            first = first or r
            parts.append(bytes(r.payload))
            v = coap.opt(r, 23)
            if v is None:
                return first, b"".join(parts)
            num, more, szx = coap.block_decode(v)
            if not more:
                return first, b"".join(parts)
            b2 = (num + 1, 0, szx)

    def path(self, name, label=None):
        return [".well-known", "est"] + ([label] if label else []) + [name]


def opt_uint(msg, number):
    from est_lite import coap

    v = coap.opt(msg, number)
    return None if v is None else coap.uint_decode(v)
