"""Server-side problems a newcomer met following the README (ca init, serve,
CoAPs bootstrap with the root's pin, revoked certificates, ca issue for the
proxy), each checked the way the user meets it: the CLI in-process or as a
subprocess, the CPython and the MicroPython clients against the server."""

import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers_client import der, load_cert
from helpers_coaps import EstBothServer, idevid_device, key_der, operational_device

from est_lite.errors import SecurityError
from est_lite_cpython import cli
from est_lite_cpython.ca import init_ca
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore
from est_lite_cpython.crypto import P256Key
from est_lite.csr import CsrBuilder

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEND_ALL = '\n[coaps]\nsend_chain = "all"\n'


def root_pin(cert):
    return cert.fingerprint(hashes.SHA256())


def coaps_client(srv, dev, **kw):
    return EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, cert=der(dev.cert), key=key_der(dev.key), **kw)


# -- 1. CoAPs first contact pinning the root CA --------------------------------


@pytest.fixture
def srv_all(tmp_path):
    s = EstBothServer(tmp_path, extra_toml=SEND_ALL)
    try:
        yield s
    finally:
        s.stop()


def test_coaps_bootstrap_with_the_root_pin_cpython(srv_all, tmp_path):
    srv = srv_all
    c = coaps_client(srv, idevid_device(srv), trust=None, pin=root_pin(srv.ca.root))
    try:
        r = c.provision(CredStore(str(tmp_path / "st")), cn="pinned-root")
    finally:
        c.close()
    assert load_cert(r.cert).subject.rfc4514_string() == "CN=pinned-root"
    # the server presented leaf + root (server.pem holds only the leaf)
    assert [cert for cert in srv.coaps.chain] == [srv.ca.root]


def test_coaps_send_chain_all_with_an_intermediate_ends_in_the_root(tmp_path):
    srv = EstBothServer(tmp_path, extra_toml=SEND_ALL, intermediate=True)
    try:
        assert srv.coaps.chain == [srv.ca.issuer, srv.ca.root]
        c = coaps_client(srv, idevid_device(srv), trust=None, pin=root_pin(srv.ca.root))
        try:
            assert srv.ca.root in [load_cert(x) for x in c.cacerts()]
        finally:
            c.close()
    finally:
        srv.stop()


def test_coaps_default_chain_leaves_the_root_out(tmp_path):
    # the default keeps handshakes small (docs/coaps.md): a root pin then
    # fails in the handshake, with a message naming the pin
    srv = EstBothServer(tmp_path)
    try:
        assert srv.coaps.chain == []
        c = coaps_client(srv, idevid_device(srv), trust=None, pin=root_pin(srv.ca.root), deadline=None)
        with pytest.raises(SecurityError, match="pinned"):
            c.cacerts()
        c.close()
    finally:
        srv.stop()


def test_https_bootstrap_with_the_root_pin_and_a_client_certificate(srv_all, tmp_path):
    srv = srv_all
    dev = operational_device(srv)
    c = EstClient("https://localhost:%d" % srv.port, pin=root_pin(srv.ca.root), cert=der(dev.cert),
                  key=key_der(dev.key))
    try:
        k = P256Key.generate()
        ev = c.enroll(CsrBuilder().subject(cn="https-pinned").sign(k), k.public_key)
    finally:
        c.close()
    load_cert(ev.cert).verify_directly_issued_by(srv.ca.issuer)


def test_coaps_bootstrap_with_the_root_pin_micropython(srv_all, tmp_path, mplib):
    import test_client_runtime_mp as M

    srv = srv_all
    cfg = M.coaps_cfg(srv, tmp_path, idevid_device(srv), trust=None, pin="sha256:" + root_pin(srv.ca.root).hex(),
                      steps=["provision"])
    rc, out = M.run(mplib, tmp_path, cfg)
    assert rc == 0 and "OK provision gen=1" in out, out
    M.check_store(srv, tmp_path, "mp-dev", 1)


from test_client_runtime_mp import mplib  # noqa: E402,F401 - the module-scoped .mpy build fixture


# -- 2, 4, 6. ca init / ca requests --------------------------------------------


def test_ca_init_prints_the_root_pin(tmp_path, capsys):
    d = str(tmp_path / "D")
    assert cli.main(["ca", "init", "--data-dir", d]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(d, "root.pem"), "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    want = "sha256:" + root.fingerprint(hashes.SHA256()).hex()
    assert "pin:    %s" % want in out, out


@pytest.mark.parametrize("bad", [
    ["--user", "alice"],                 # no password
    ["--user", "alice:"],                # empty password
    ["--user", "al ice:pw"],             # space in the name
    ["--user", "alice:pw", "--realm", "a:b"],
    ["--days", "0"],
    ["--server-name", "bad name"],
    ["--cn", ""],
])
def test_ca_init_checks_every_argument_before_writing(tmp_path, capsys, bad):
    d = str(tmp_path / "D")
    assert cli.main(["ca", "init", "--data-dir", d] + bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("est-lite: error: ") and err.count("\n") == 1 and "internal error" not in err, err
    assert not os.path.exists(d)  # nothing written: the corrected command works
    assert cli.main(["ca", "init", "--data-dir", d, "--user", "alice:s3cret"]) == 0
    assert "user:   alice" in capsys.readouterr().out


def test_ca_requests_says_when_the_queue_is_empty(tmp_path, capsys):
    d = str(tmp_path / "D")
    init_ca(d).store.close()
    capsys.readouterr()
    assert cli.main(["ca", "requests", "--data-dir", d]) == 0
    assert capsys.readouterr().out.startswith("no enrollment requests in ")
    assert cli.main(["ca", "requests", "--data-dir", d, "--status", "pending"]) == 0
    assert capsys.readouterr().out.startswith("no pending enrollment requests in ")


# -- 3. serve when a port is taken ---------------------------------------------


def _serve(tmp_path, *args):
    d = str(tmp_path / "D")
    if not os.path.exists(d):
        init_ca(d).store.close()
    env = dict(os.environ)
    env.pop("EST_LITE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", d] + list(args),
                          capture_output=True, text=True, timeout=60, env=env)


def _one_line_error(p, what):
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("est-lite: error: cannot serve %s on 127.0.0.1:" % what), p.stderr
    assert "Address already in use" in lines[0] and "internal error" not in lines[0]
    assert "est-lite EST server on" not in p.stdout  # no banner for a server that does not run


def test_serve_https_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        p = _serve(tmp_path, "--port", str(s.getsockname()[1]))
    _one_line_error(p, "HTTPS")
    assert "--port" in p.stderr


def test_serve_coaps_port_in_use(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        p = _serve(tmp_path, "--port", "0", "--coaps-port", str(s.getsockname()[1]))
    _one_line_error(p, "EST-coaps")
    assert "--coaps-port" in p.stderr  # and no "did not stop cleanly" / "never awaited" (one line)


def test_coaps_server_failed_start_leaves_nothing_to_stop(tmp_path, caplog):
    from est_lite_cpython.coaps_server import EstCoapsServer

    srv = EstBothServer(tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            second = EstCoapsServer.from_config(srv.service, srv.config, port=s.getsockname()[1])
            with pytest.raises(OSError):
                second.start()
        assert second._loop is None and second._thread is None
        with caplog.at_level(logging.WARNING):
            second.stop()  # returns at once, nothing to warn about
        assert not [r for r in caplog.records if "did not stop cleanly" in r.getMessage()]
    finally:
        srv.stop()


# -- 5. a revoked certificate over CoAPs: the certificate_revoked alert --------


def test_dtls_refuses_a_revoked_certificate_with_certificate_revoked(tmp_path):
    from est_lite_cpython.dtls_client import DtlsClient

    srv = EstBothServer(tmp_path)
    try:
        dev = operational_device(srv)
        srv.ca.revoke("%x" % dev.cert.serial_number)
        with pytest.raises(SecurityError) as ei:
            with DtlsClient("127.0.0.1", srv.coaps_port, [srv.ca.root], cert=dev.cert, key=dev.key, timeout=10):
                pass
        assert "our certificate has been revoked" in str(ei.value) and "internal error" not in str(ei.value), ei.value
        # another device is still served by the same context
        ok = operational_device(srv, cn="not-revoked")
        with DtlsClient("127.0.0.1", srv.coaps_port, [srv.ca.root], cert=ok.cert, key=ok.key, timeout=10):
            pass
    finally:
        srv.stop()


# -- 7, 8. ca issue (RA certificate), examples, .gitignore ----------------------


def test_ca_issue_makes_an_ra_certificate_the_server_accepts_as_ra(tmp_path, capsys):
    from est_lite_cpython.config import ServerConfig

    d = str(tmp_path / "D")
    init_ca(d).store.close()
    out = str(tmp_path / "ra")
    assert cli.main(["ca", "issue", "--data-dir", d, "--cn", "ra-1", "--eku", "clientAuth,cmcRA", "--out", out]) == 0
    with open(out + ".pem", "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.28"]
    assert os.stat(out + ".key").st_mode & 0o777 == 0o600
    with open(out + ".key", "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    assert key.public_key() == cert.public_key()
    with open(os.path.join(d, "root.pem"), "rb") as f:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(f.read()))
    # what the server's RA check and the proxy's RA identity check look for
    from est_lite_cpython.service import has_ra_eku

    assert has_ra_eku(cert)
    # a profile may now issue cmcRA certificates too
    assert ServerConfig({"profiles": {"default": {"eku": ["clientAuth", "cmcRA"]}}}).profile("").eku == (
        "clientAuth", "cmcRA")
    capsys.readouterr()
    assert cli.main(["ca", "issue", "--data-dir", d, "--cn", "ra-1", "--out", out]) == 1  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_example_config_lists_every_coaps_key():
    from est_lite_cpython.config import ServerConfig

    text = (ROOT / "examples" / "server.toml").read_text()
    section = text.split("# [coaps]", 1)[1].split("\n[", 1)[0]
    keys = {line.lstrip("# ").split(" ", 1)[0] for line in section.splitlines()
            if line.startswith("# ") and " = " in line and not line.startswith("#  ")}
    known = {a[len("coaps_"):] for a in vars(ServerConfig({})) if a.startswith("coaps_")}
    assert keys == known, (keys ^ known)


def test_data_dir_of_the_example_is_ignored_by_git():
    p = subprocess.run(["git", "check-ignore", "-q", "est-data/root.key"], cwd=str(ROOT))
    assert p.returncode == 0


def test_proxy_renews_through_ra_and_tls_certificates_from_ca_issue(tmp_path, capsys):
    # docs/proxy.md: the RA certificate comes from `est-lite ca issue --eku
    # clientAuth,cmcRA`, the upstream's label sets ra_trust, and a device
    # renews through the proxy with the default reenroll_as = simplereenroll
    from helpers_coaps import CoapsSession, make_csr, point
    from helpers_proxy import ProxyHarness
    from helpers_server import BASE_CONFIG, EstTestServer

    from est_lite_cpython.dtls_client import DtlsClient

    text = BASE_CONFIG.replace("[profiles.default]\n", '[profiles.default]\nra_trust = ["ca"]\n', 1)
    assert text != BASE_CONFIG
    up = EstTestServer(tmp_path / "up", config_text=text)
    px = None
    try:
        d = tmp_path / "px"
        d.mkdir()
        assert cli.main(["ca", "issue", "--data-dir", up.data_dir, "--cn", "est-proxy-ra", "--eku", "clientAuth,cmcRA",
                         "--out", str(d / "ra")]) == 0
        os.rename(str(d / "ra.pem"), str(d / "ra.crt"))
        px = ProxyHarness(d, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                          vendor_pem=os.path.join(up.tmp, "vendor.pem"), reenroll_as="simplereenroll", ra="given")
        dev = idevid_device(up, "px-renew")
        key, csr = make_csr("px-renew")
        with DtlsClient("127.0.0.1", px.coaps_port, [up.ca.root], cert=dev.cert, key=dev.key, timeout=10) as dc:
            ev = CoapsSession(dc).enroll(csr, public_key=point(key))
        first = x509.load_der_x509_certificate(ev.cert)
        key2, csr2 = make_csr("px-renew")
        with DtlsClient("127.0.0.1", px.coaps_port, [up.ca.root], cert=first, key=key, timeout=10) as dc:
            ev2 = CoapsSession(dc).reenroll(csr2, public_key=point(key2))
        second = x509.load_der_x509_certificate(ev2.cert)
        assert second.subject == first.subject and second.public_key() == key2.public_key()
        assert up.ca.store.has_serial(second.serial_number)
    finally:
        if px is not None:
            px.stop()
        up.stop()
