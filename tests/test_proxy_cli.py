"""`est-lite proxy --config proxy.toml` as a subprocess in front of our
HTTPS server: a CoAPs device and an HTTPS device enroll through it."""

import signal
import subprocess
import sys
import time

import pytest
from cryptography import x509

from helpers_coaps import CoapsSession, idevid_device, make_csr, point
from helpers_proxy import write_proxy_dir
from helpers_server import EstTestServer


@pytest.fixture
def up(tmp_path):
    s = EstTestServer(tmp_path / "up")
    yield s
    s.stop()


def test_proxy_command(up, tmp_path):
    from est_lite_cpython.dtls_client import DtlsClient

    d = tmp_path / "px"
    write_proxy_dir(up, d)
    pf, cpf = d / "port", d / "cport"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", str(d / "proxy.toml"),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        while not (pf.exists() and pf.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < end, "proxy did not start"
            time.sleep(0.05)
        cport = int(cpf.read_text())
        dev = idevid_device(up, "cli-px-dev")
        key, csr = make_csr("cli-px-dev")
        with DtlsClient("127.0.0.1", cport, [up.ca.root], cert=dev.cert, key=dev.key, timeout=10) as dc:
            ev = CoapsSession(dc).enroll(csr, public_key=point(key))
        c = x509.load_der_x509_certificate(ev.cert)
        assert c.public_key() == key.public_key() and up.ca.store.has_serial(c.serial_number)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    out = proc.stdout.read().decode()
    assert "(RA)" in out and "coaps://" in out and "https://" in out


def test_proxy_config_errors(tmp_path):
    from est_lite_cpython.config import ConfigError
    from est_lite_cpython.proxy import load_proxy_config

    p = tmp_path / "p.toml"
    p.write_text("[server]\nport = 0\n")
    with pytest.raises(ConfigError, match="no \\[proxy\\] section"):
        load_proxy_config(str(p))
    p.write_text("[proxy]\nupstream = \"https://x:1\"\n")
    with pytest.raises(ConfigError, match="ra_cert"):
        load_proxy_config(str(p))
    p.write_text("[proxy]\nupstream = \"https://x:1\"\nra_cert = \"a\"\nra_key = \"b\"\nreenroll_as = \"x\"\n")
    with pytest.raises(ConfigError, match="reenroll_as"):
        load_proxy_config(str(p))
    p.write_text("[proxy]\nupstream = \"https://x:1\"\nra_cert = \"a\"\nra_key = \"b\"\nfoo = 1\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_proxy_config(str(p))
