"""aiocoap serving coaps:// over our DTLS transport: CoAP requests built with
est_lite.coap, sent by the CPython DtlsClient and by the MicroPython client;
resources read the client certificate and channel bindings from the remote."""

import json

import aiocoap
import aiocoap.resource as resource
import pytest

from est_lite import coap
from est_lite_cpython import dtls as d
from est_lite_cpython.coaps_transport import CoapsRemote, coaps_peer, coaps_server, create_coaps_server_context
from est_lite_cpython.dtls_client import DtlsClient
from helpers_dtls import LoopThread, LossyRelay, Pki

CON, ACK = 0, 2
GET, POST = 1, 2
CONTENT, CHANGED = 0x45, 0x44
BIG = bytes(range(256)) * 12  # 3072 bytes: Block2 from aiocoap


class Echo(resource.Resource):
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"echo " + request.payload)


class WhoAmI(resource.Resource):
    async def render_get(self, request):
        peer = coaps_peer(request)
        claims = list(request.remote.authenticated_claims)
        body = {
            "remote_is_coaps": isinstance(request.remote, CoapsRemote),
            "claims_is_peer": claims == [peer],
            "cn": peer.peer_certificate.subject.rfc4514_string(),
            "anchor": peer.verified_chain[-1].subject.rfc4514_string(),
            "tls_unique": peer.tls_unique.hex(),
            "exporter": peer.exporter.hex(),
            "cipher": peer.cipher,
            "uri_base": request.remote.uri_base,
        }
        return aiocoap.Message(code=aiocoap.CONTENT, payload=json.dumps(body).encode())


class Big(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=BIG)


def site():
    root = resource.Site()
    root.add_resource(["echo"], Echo())
    root.add_resource(["whoami"], WhoAmI())
    root.add_resource(["big"], Big())
    return root


class CoapsServer(LoopThread):
    def __init__(self, pki, **options):
        super().__init__()

        async def _start():
            return await create_coaps_server_context(
                site(), ("127.0.0.1", 0), cert=pki.server.cert, key=pki.server.key, trusted_cas=[pki.ca.root.cert],
                **options,
            )

        self.ctx, self.port = self.run(_start())
        self.dtls = coaps_server(self.ctx)

    def stop(self):
        try:
            self.run(self.ctx.shutdown())
        finally:
            super().stop()


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture
def server(pki):
    s = CoapsServer(pki)
    yield s
    s.stop()


class CoapClient:
    """CON requests over a DtlsClient with est_lite.coap, Block2 followed."""

    def __init__(self, dtls):
        self.dtls = dtls
        self.mid = 0x1000

    def request(self, code, path, payload=b"", block2=None):
        self.mid += 1
        tok = self.mid.to_bytes(2, "big")
        msg = coap.request(code, path, tok, self.mid, type=CON, payload=payload, block2=block2)
        self.dtls.send(msg.encode())
        while True:
            data = self.dtls.recv(5)
            assert data is not None, "no CoAP response"
            resp = coap.decode(data)
            if resp.token == tok:
                assert resp.type == ACK and resp.mid == self.mid  # piggybacked
                return resp

    def get_all(self, path):
        """GET with Block2 continuation at the block size the server chose."""
        parts, szxs, block2 = [], set(), None
        while True:
            resp = self.request(GET, path, block2=block2)
            assert resp.code == CONTENT
            parts.append(bytes(resp.payload))
            b2 = coap.opt(resp, 23)
            if b2 is None:
                return b"".join(parts), szxs
            num, more, szx = coap.block_decode(b2)
            szxs.add(szx)
            if not more:
                return b"".join(parts), szxs
            block2 = (num + 1, 0, szx)


def dtls_client(pki, port, **kw):
    kw.setdefault("timeout", 10)
    return DtlsClient("127.0.0.1", port, [pki.ca.root.cert], cert=pki.client.cert, key=pki.client.key, **kw)


def test_post_and_get_over_coaps(pki, server):
    with dtls_client(pki, server.port) as dc:
        c = CoapClient(dc)
        r = c.request(POST, ["echo"], b"ping")
        assert r.code == CHANGED and bytes(r.payload) == b"echo ping"
        r = c.request(GET, ["whoami"])
        assert r.code == CONTENT
        who = json.loads(bytes(r.payload))
        assert who["remote_is_coaps"] and who["claims_is_peer"]
        assert who["cn"] == "CN=device-0001" and who["anchor"] == "CN=est-lite test root"
        # the resource sees the same channel bindings as the client
        assert who["tls_unique"] == dc.tls_unique.hex()
        assert who["exporter"] == dc.exporter.hex()
        assert who["cipher"] == d.SUITE_CCM8
        assert who["uri_base"].startswith("coaps://127.0.0.1:")
        r = c.request(GET, ["nothing-here"])
        assert r.code == 0x84  # 4.04
    assert server.dtls.stats["handshakes"] == 1


def test_block2_follows_session_mtu(pki):
    # at MTU 1200 aiocoap sends 1024-byte blocks; at MTU 300 the remote's
    # maximum_block_size_exp drops to 128-byte blocks so each fits a datagram
    for mtu, want_szx in ((1200, 6), (300, 3)):
        s = CoapsServer(pki, mtu=mtu)
        relay = LossyRelay(("127.0.0.1", s.port))
        try:
            with dtls_client(pki, relay.port, mtu=mtu) as dc:
                body, szxs = CoapClient(dc).get_all(["big"])
            assert body == BIG
            assert szxs == {want_szx}
            assert max(relay.sizes["down"]) <= mtu and max(relay.sizes["up"]) <= mtu
        finally:
            relay.close()
            s.stop()


def test_coaps_with_gcm_client(pki, server):
    with dtls_client(pki, server.port, ciphers=[d.SUITE_GCM]) as dc:
        who = json.loads(bytes(CoapClient(dc).request(GET, ["whoami"]).payload))
        assert who["cipher"] == d.SUITE_GCM


def test_untrusted_client_gets_no_coap_service(pki, server):
    with pytest.raises(Exception) as e:
        DtlsClient("127.0.0.1", server.port, [pki.ca.root.cert], cert=pki.stranger.cert, key=pki.stranger.key,
                   timeout=5)
    assert type(e.value).__name__ == "SecurityError"
    assert server.call(lambda: server.dtls.session_count) == 0


def test_session_close_drops_the_remote(pki, server):
    with dtls_client(pki, server.port) as dc:
        CoapClient(dc).request(POST, ["echo"], b"x")
        iface = server.call(lambda: next(
            ri.token_interface.message_interface for ri in server.ctx.request_interfaces
        ))
        assert server.call(lambda: len(iface._remotes)) == 1
    import time

    for _ in range(100):
        if server.call(lambda: len(iface._remotes)) == 0:
            break
        time.sleep(0.02)
    assert server.call(lambda: len(iface._remotes)) == 0


def test_micropython_client_over_coaps(pki, server, tmp_path):
    """The MicroPython DTLS client sends a CoAP request built by est_lite.coap
    (running under MicroPython too) to the aiocoap site."""
    import os
    import pathlib
    import shutil
    import subprocess

    mp = shutil.which("micropython")
    if mp is None:
        pytest.skip("micropython not installed")
    root = pathlib.Path(__file__).resolve().parent.parent
    (tmp_path / "ca.der").write_bytes(pki.ca.root_der)
    (tmp_path / "cert.der").write_bytes(pki.client.cert_der)
    (tmp_path / "key.der").write_bytes(pki.client.key_der)
    script = tmp_path / "coaps_client.py"
    script.write_text(
        """
import sys
sys.path[:0] = [%r, %r]
from est_lite import coap
from est_lite_mp.dtls import DtlsClient
def rd(n):
    with open(%r + "/" + n, "rb") as f:
        return f.read()
c = DtlsClient("127.0.0.1", %d, cadata=rd("ca.der"), cert=rd("cert.der"), key=rd("key.der"), timeout_ms=10000)
c.send(coap.request(2, ["echo"], b"\\x01", 7, type=0, payload=b"from micropython").encode())
r = coap.decode(c.recv(5000))
print("CODE", r.code, "TYPE", r.type, "MID", r.mid, "PAYLOAD", bytes(r.payload).decode())
c.send(coap.request(1, ["whoami"], b"\\x02", 8, type=0).encode())
r = coap.decode(c.recv(5000))
print("WHO", bytes(r.payload).decode())
c.close()
"""
        % (str(root), str(root / "ports" / "micropython"), str(tmp_path), server.port)
    )
    proc = subprocess.run([mp, "-X", "heapsize=96K", str(script)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MICROPYPATH=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CODE 68 TYPE 2 MID 7 PAYLOAD echo from micropython" in proc.stdout, proc.stdout
    who = json.loads(proc.stdout.split("WHO ", 1)[1])
    assert who["cipher"] == d.SUITE_GCM and who["cn"] == "CN=device-0001"
