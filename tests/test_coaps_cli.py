"""`est-lite serve` offers HTTPS and EST-coaps together from one config (a
[coaps] section, or --coaps-port): both listeners share the CA and policy."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers_coaps import CoapsSession, Device, make_csr, point


def wait_file(path, proc, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("server did not start")


def serve(tmp_path, *extra):
    from est_lite_cpython.ca import init_ca

    data = tmp_path / "data"
    init_ca(str(data))
    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nport = 0\nworkers = 2\n[coaps]\nport = 0\nmtu = 1000\n'
                   '[profiles.default]\nauth = ["cert"]\n')
    pf, cpf = tmp_path / "port", tmp_path / "cport"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", str(cfg),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, data, pf, cpf


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError("server did not stop on SIGTERM")


def test_serve_runs_https_and_coaps_from_one_config(tmp_path):
    from est_lite_cpython.ca import LocalCA
    from est_lite_cpython.dtls_client import DtlsClient

    proc, data, pf, cpf = serve(tmp_path)
    try:
        port = wait_file(pf, proc)
        cport = int(open(cpf).read())
        ca = LocalCA(str(data))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cli-dev")]))
        # HTTPS: cacerts
        ctx = ssl.create_default_context(cafile=str(data / "root.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                head = t.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        # CoAPs: enroll with the same CA, on the same store
        dev = Device(key, cert)
        nkey, csr = make_csr("cli-dev-2")
        with DtlsClient("127.0.0.1", cport, [ca.root], cert=dev.cert, key=dev.key, timeout=10, mtu=1000) as dc:
            ev = CoapsSession(dc).enroll(csr, public_key=point(nkey))
        issued = x509.load_der_x509_certificate(ev.cert)
        assert issued.public_key() == nkey.public_key()
        assert ca.store.has_serial(issued.serial_number)
        ca.store.close()
    finally:
        stop(proc)
    out = proc.stdout.read().decode()
    assert "https://127.0.0.1:%d" % port in out and "coaps://127.0.0.1:%d" % cport in out


def test_coaps_port_flag_without_section(tmp_path):
    from est_lite_cpython.ca import init_ca

    data = tmp_path / "d"
    init_ca(str(data))
    pf, cpf = tmp_path / "p", tmp_path / "cp"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(data),
                             "--port", "0", "--coaps-port", "0", "--port-file", str(pf),
                             "--coaps-port-file", str(cpf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_file(pf, proc)
        assert int(open(cpf).read()) > 0
    finally:
        stop(proc)


def test_config_rejects_unknown_coaps_keys():
    import pytest

    from est_lite_cpython.config import ConfigError, ServerConfig

    c = ServerConfig({})
    assert c.coaps_enabled is False
    c = ServerConfig({"coaps": {"port": 5685, "send_chain": "none"}})
    assert c.coaps_enabled and c.coaps_port == 5685 and c.coaps_send_chain == "none"
    with pytest.raises(ConfigError):
        ServerConfig({"coaps": {"mtu": 100}})
    with pytest.raises(ConfigError):
        ServerConfig({"coaps": {"portt": 1}})
    with pytest.raises(ConfigError):
        ServerConfig({"coaps": {"send_chain": "everything"}})
    # the per-host handshake limit of the attack review: a setting, 16 by default
    assert ServerConfig({"coaps": {}}).coaps_max_handshakes_per_host == 16
    assert ServerConfig({"coaps": {"max_handshakes_per_host": 4}}).coaps_max_handshakes_per_host == 4
    with pytest.raises(ConfigError):
        ServerConfig({"coaps": {"max_handshakes_per_host": 0}})


def test_serve_with_two_coaps_processes(tmp_path):
    """[coaps] processes = 2: a second process serves the same UDP port
    (SO_REUSEPORT); sessions from many client ports all complete, and every
    certificate lands in the one store."""
    from est_lite_cpython.ca import LocalCA, init_ca
    from est_lite_cpython.dtls_client import ClientContext, DtlsClient

    data = tmp_path / "data"
    init_ca(str(data))
    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nport = 0\nworkers = 2\n[coaps]\nport = 0\nprocesses = 2\n'
                   '[profiles.default]\nauth = ["cert"]\n')
    pf, cpf = tmp_path / "port", tmp_path / "cport"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", str(cfg),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_file(pf, proc, timeout=60)
        cport = int(open(cpf).read())
        ca = LocalCA(str(data))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mp-dev")]))
        ctx = ClientContext([ca.root], cert=cert, key=key)
        serials = set()
        for i in range(12):
            nkey, csr = make_csr("two-procs-%d" % i)
            with DtlsClient("127.0.0.1", cport, context=ctx, timeout=10) as dc:
                ev = CoapsSession(dc).enroll(csr, public_key=point(nkey))
            serials.add(x509.load_der_x509_certificate(ev.cert).serial_number)
        assert len(serials) == 12 and all(ca.store.has_serial(s) for s in serials)
        kids = open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).read().split()
        assert len(kids) >= 1  # the worker process
        ca.store.close()
    finally:
        stop(proc)
