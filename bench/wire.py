"""Bytes on the wire for a full enrollment: cacerts + csrattrs + simpleenroll
over EST-coaps on one DTLS session (UDP payloads both ways, handshake and
cookie exchange included) vs the same three operations over HTTPS on one
TLS 1.2 connection (TCP payload both ways). The client authenticates with
the same certificate on both; the server uses the same certificate (its
leaf) on both; the CSR is the same.

    python bench/wire.py [--https-client lean|stdlib] [--mtu 1200]

Counting relays sit between client and server (a UDP relay that adds up
datagram payloads, a TCP relay that adds up the bytes it forwards). The
CoAPs client is the CPython DtlsClient with the core's CoapOperation; the
HTTPS client is the core's HTTP/1.1 request writer (est_lite.http1) over
stdlib ssl, keep-alive, no HTTP authentication (the certificate is the
credential). --https-client stdlib uses stdlib's default TLS 1.2
ClientHello (every suite and extension OpenSSL offers); lean (default)
offers what the DTLS client offers: ECDHE-ECDSA with AES-128-GCM, P-256.

The last line printed is one JSON object with coaps_bytes, https_bytes,
coaps_datagrams and ratio (coaps / https), plus the breakdown.
"""

import argparse
import json
import os
import select
import socket
import ssl
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

CONFIG = """
[ca]
data_dir = "ca"

[server]
listen = "127.0.0.1"
port = 0
workers = 2
tls_max_version = "1.2"

[coaps]
port = 0

[profiles.default]
key_types = ["ec:P-256"]
auth = ["cert"]
"""


class UdpCounter:
    """UDP relay on 127.0.0.1 that counts payload bytes per direction."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.up = self.down = 0
        self.up_n = self.down_n = 0
        self.sizes = []
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.client = None
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop:
            r, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for s in r:
                data, addr = s.recvfrom(65535)
                if s is self.front:
                    self.client = addr
                    self.up += len(data)
                    self.up_n += 1
                    self.sizes.append(("up", len(data)))
                    self.back.sendto(data, self.upstream)
                elif self.client is not None:
                    self.down += len(data)
                    self.down_n += 1
                    self.sizes.append(("down", len(data)))
                    self.front.sendto(data, self.client)

    def close(self):
        self._stop = True
        self.t.join(2)
        self.front.close()
        self.back.close()


class TcpCounter:
    """TCP relay for one connection that counts the bytes it forwards."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.up = self.down = 0
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        c, _ = self.lsock.accept()
        u = socket.create_connection(self.upstream)
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks = [c, u]
        while socks:
            r, _, _ = select.select(socks, [], [], 5)
            if not r:
                break
            for s in r:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:  # a peer that resets instead of closing (at the end): end of its stream
                    data = b""
                other = u if s is c else c
                if not data:
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    socks.remove(s)
                    continue
                if s is c:
                    self.up += len(data)
                else:
                    self.down += len(data)
                try:
                    other.sendall(data)
                except OSError:  # the other side is gone: nothing more to count
                    socks = []
                    break
        c.close()
        u.close()

    def close(self):
        self.t.join(5)
        self.lsock.close()


def coaps_run(port, root_der, cert, key, csr, pub, mtu):
    from est_lite import client as C
    from est_lite import numbers as N
    from est_lite_cpython.dtls_client import DtlsClient

    relay = UdpCounter(("127.0.0.1", port))
    try:
        with DtlsClient("127.0.0.1", relay.port, [root_der], cert=cert, key=key, timeout=10, mtu=mtu) as dc:
            hs = (relay.up, relay.down, relay.up_n + relay.down_n)
            cipher = dc.cipher
            mids = C.MidSource(os.urandom(2))
            results = []
            for op, body in ((N.OP_CACERTS, b""), (N.OP_CSRATTRS, b""), (N.OP_SIMPLEENROLL, csr)):
                o = C.CoapOperation(op, body=body, token=os.urandom(2), mid=mids,
                                    public_key=pub if op == N.OP_SIMPLEENROLL else None)
                while True:
                    d = o.send(time.monotonic())
                    while d is not None:
                        dc.send(bytes(d))
                        d = o.send(time.monotonic())
                    ev = o.next_event()
                    if ev is not C.NEED_DATA:
                        break
                    data = dc.recv(timeout=2)
                    if data:
                        o.receive_data(data, time.monotonic())
                results.append(type(ev).__name__)
        time.sleep(0.1)  # let the close_notify through the relay
    finally:
        relay.close()
    assert results == ["CaCerts", "CsrAttrs", "Enrolled"], results
    return {
        "bytes": relay.up + relay.down, "up": relay.up, "down": relay.down,
        "datagrams": relay.up_n + relay.down_n, "handshake_bytes": hs[0] + hs[1], "handshake_datagrams": hs[2],
        "cipher": cipher, "sizes": relay.sizes,
    }


def https_run(port, root_pem, cert_file, key_file, csr, lean):
    from est_lite import http1
    from est_lite import numbers as N

    relay = TcpCounter(("127.0.0.1", port))
    ctx = ssl.create_default_context(cafile=root_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if lean:
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        ctx.set_ecdh_curve("prime256v1")
        ctx.options |= ssl.OP_NO_TICKET
    ctx.load_cert_chain(cert_file, key_file)
    statuses = []
    with socket.create_connection(("127.0.0.1", relay.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            hs = None
            for i, (op, body) in enumerate(((N.OP_CACERTS, b""), (N.OP_CSRATTRS, b""), (N.OP_SIMPLEENROLL, csr))):
                req = http1.build_est_request(op, "localhost:%d" % port, body, keep_alive=(i < 2))
                t.sendall(req)
                p = http1.ResponseParser(max_body=65536, method="GET" if not body else "POST")
                while True:
                    ev = p.next_event()
                    if ev is not http1.NEED_DATA:
                        break
                    p.receive_data(t.recv(65536))
                statuses.append(ev.status)
                if hs is None:
                    hs = True
            cipher = t.cipher()[0]
            try:
                t.unwrap()
            except (ssl.SSLError, OSError):
                pass
    relay.close()
    assert statuses[0] == 200 and statuses[2] == 200, statuses
    return {"bytes": relay.up + relay.down, "up": relay.up, "down": relay.down, "cipher": cipher,
            "statuses": statuses}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--https-client", default="lean", choices=["lean", "stdlib"])
    ap.add_argument("--mtu", type=int, default=1200)
    args = ap.parse_args(argv)

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from helpers_server import der, make_csr, write_identity

    from est_lite_cpython.ca import init_ca
    from est_lite_cpython.coaps_server import EstCoapsServer
    from est_lite_cpython.config import load_config
    from est_lite_cpython.https_server import server_from_config

    tmp = tempfile.mkdtemp(prefix="est-wire-")
    init_ca(os.path.join(tmp, "ca"))
    with open(os.path.join(tmp, "server.toml"), "w") as f:
        f.write(CONFIG)
    cfg = load_config(os.path.join(tmp, "server.toml"))
    https = server_from_config(cfg)
    port = https.start()
    coaps = EstCoapsServer.from_config(https.service, cfg, port=0, mtu=args.mtu)
    cport = coaps.start()
    try:
        ca = https.service.ca
        dkey = ec.generate_private_key(ec.SECP256R1())
        dcert = ca.issue_raw(dkey.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wire-device")]))
        cert_file, key_file = write_identity(tmp, "device", dkey, dcert)
        key, csr = make_csr("wire-device-2")
        pub = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        c = coaps_run(cport, der(ca.root), dcert, dkey, csr, pub, args.mtu)
        h = https_run(port, os.path.join(tmp, "ca", "root.pem"), cert_file, key_file, csr,
                      args.https_client == "lean")
        srv_cert = len(der(x509.load_pem_x509_certificate(open(ca.server_cert_file, "rb").read())))
    finally:
        coaps.stop()
        https.stop()
    ratio = c["bytes"] / h["bytes"]
    print("CoAPs: %d bytes in %d datagrams (%d up, %d down; handshake %d bytes in %d datagrams), %s"
          % (c["bytes"], c["datagrams"], c["up"], c["down"], c["handshake_bytes"], c["handshake_datagrams"],
             c["cipher"]))
    print("HTTPS: %d bytes of TCP payload (%d up, %d down), %s, %s client"
          % (h["bytes"], h["up"], h["down"], h["cipher"], args.https_client))
    print("certificates: server leaf %d B, device %d B, CSR %d B" % (srv_cert, len(der(dcert)), len(csr)))
    print("ratio CoAPs / HTTPS = %.3f (target <= 0.80)" % ratio)
    print(json.dumps({
        "coaps_bytes": c["bytes"], "https_bytes": h["bytes"], "coaps_datagrams": c["datagrams"],
        "ratio": round(ratio, 3),
        "coaps": {k: v for k, v in c.items() if k != "sizes"}, "https": h,
        "https_client": args.https_client, "mtu": args.mtu,
        "server_cert_bytes": srv_cert, "device_cert_bytes": len(der(dcert)), "csr_bytes": len(csr),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
