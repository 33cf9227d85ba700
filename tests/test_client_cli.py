"""`est-lite cacerts|csrattrs|enroll|reenroll|serverkeygen` against the
reference server (HTTPS and CoAPs), run in-process through
est_lite_cpython.cli.main: outputs, the --out credential store with PEM
copies, --json, and one-line errors with a non-zero exit code."""

import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from helpers_client import der, root_der
from helpers_coaps import EstBothServer, idevid_files
from helpers_server import PASSWORD, USER

from est_lite_cpython.cli import main
from est_lite_cpython.credstore import CredStore
from est_lite_cpython.crypto import P256Key
from est_lite_cpython.dtls import fingerprint


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def https(srv):
    return "https://localhost:%d" % srv.port


def test_bootstrap_enroll_reenroll_with_a_store(est_server, tmp_path, capsys):
    srv = est_server
    out_dir = str(tmp_path / "dev1")
    rc, out, err = cli(capsys, "cacerts", "--server", https(srv), "--pin", "sha256:" + fingerprint(srv.ca.root).hex(),
                       "--out", out_dir)
    assert rc == 0 and "1 CA certificate(s) written" in out, err
    assert CredStore(out_dir).load().ca == [root_der(srv)]
    # enroll: the trust anchors now come from the store
    rc, out, err = cli(capsys, "enroll", "--server", https(srv), "--out", out_dir, "--user", USER, "--password",
                       PASSWORD, "--cn", "cli-1", "--dns", "cli-1.example", "--ip", "192.0.2.7")
    assert rc == 0 and out.startswith("enrolled: CN=cli-1"), err
    c1 = CredStore(out_dir).load()
    cert = x509.load_der_x509_certificate(c1.cert)
    cert.verify_directly_issued_by(srv.ca.issuer)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cli-1.example"]
    for name in ("cert.pem", "key.pem", "ca.pem"):
        p = os.path.join(out_dir, name)
        assert open(p, "rb").read().startswith(b"-----BEGIN") and os.stat(p).st_mode & 0o777 == 0o600
    assert x509.load_pem_x509_certificate(open(os.path.join(out_dir, "cert.pem"), "rb").read()) == cert
    # reenroll: authenticated by the stored certificate, new key, --json
    rc, out, err = cli(capsys, "reenroll", "--server", https(srv), "--out", out_dir, "--json")
    assert rc == 0, err
    j = json.loads(out)
    assert j["generation"] == 3 and j["cert"]["subject"] == "CN=cli-1"
    c2 = CredStore(out_dir).load()
    assert c2.key != c1.key and c2.cert != c1.cert


def test_reenroll_from_files(est_server, tmp_path, capsys):
    srv = est_server
    k = P256Key.generate()
    cert = srv.ca.issue_raw(k.key.public_key(), x509.Name.from_rfc4514_string("CN=from-files"), days=10)
    cp, kp, rp = tmp_path / "c.der", tmp_path / "k.der", tmp_path / "root.pem"
    cp.write_bytes(der(cert))
    kp.write_bytes(k.export_pkcs8())
    rp.write_bytes(open(srv.root_pem, "rb").read())
    rc, out, err = cli(capsys, "reenroll", "--server", https(srv), "--trust", str(rp), "--cert", str(cp), "--key",
                       str(kp), "--out", str(tmp_path / "o"), "--keep-key")
    assert rc == 0 and "re-enrolled: CN=from-files" in out, err
    got = CredStore(str(tmp_path / "o")).load()
    assert got.key == k.export_pkcs8() and got.cert != der(cert)


def test_csrattrs_and_serverkeygen(est_server, tmp_path, capsys):
    srv = est_server
    rc, out, err = cli(capsys, "csrattrs", "--server", https(srv) + "/strict", "--trust", srv.root_pem, "--json")
    assert rc == 0, err
    j = json.loads(out)
    assert j["challenge_password"] is True and j["key_curve"] == "1.2.840.10045.3.1.7"
    rc, out, err = cli(capsys, "serverkeygen", "--server", https(srv), "--trust", srv.root_pem, "--user", USER,
                       "--password", PASSWORD, "--cn", "skg-cli", "--out", str(tmp_path / "skg"))
    assert rc == 0 and "server-generated key" in out, err
    got = CredStore(str(tmp_path / "skg")).load()
    pub = x509.load_der_x509_certificate(got.cert).public_key()
    assert pub.public_numbers() == P256Key.load_der(got.key).key.public_key().public_numbers()
    # to stdout without --out
    rc, out, err = cli(capsys, "cacerts", "--server", https(srv), "--trust", srv.root_pem)
    assert rc == 0 and x509.load_pem_x509_certificate(out.encode()) == srv.ca.root


def test_enroll_a_given_csr(est_server, tmp_path, capsys):
    from est_lite.csr import CsrBuilder

    p = tmp_path / "req.der"
    p.write_bytes(CsrBuilder().subject(cn="given").sign(P256Key.generate()))
    rc, out, err = cli(capsys, "enroll", "--server", https(est_server), "--trust", est_server.root_pem, "--user",
                       USER, "--password", PASSWORD, "--csr", str(p))
    assert rc == 0 and x509.load_pem_x509_certificate(out.encode()).subject.rfc4514_string() == "CN=given", err


@pytest.mark.parametrize("argv,msg", [
    (["enroll", "--cn", "x", "--out", "{tmp}/e", "--user", USER, "--password", "wrong"], "401"),
    (["cacerts", "--pin", "sha256:" + "00" * 32], "pinned certificate"),
    (["cacerts", "--pin", "sha256:abcd"], "pin must be"),
    (["enroll", "--cn", "x", "--user", USER, "--password", PASSWORD], "needs --out"),
    (["cacerts", "--trust", "{tmp}/missing.pem"], "cannot read --trust"),
    (["reenroll", "--out", "{tmp}/empty", "--trust", "{root}"], "no certificate and key"),
])
def test_failures_exit_non_zero_with_one_line(est_server, tmp_path, capsys, argv, msg):
    argv = [a.format(tmp=tmp_path, root=est_server.root_pem) for a in argv]
    if "--trust" not in argv and "--pin" not in argv:
        argv += ["--trust", est_server.root_pem]
    rc, out, err = cli(capsys, argv[0], "--server", https(est_server), *argv[1:])
    assert rc == 1 and msg in err, (out, err)
    assert err.startswith("est-lite: error: ") and err.count("\n") == 1


def test_server_down(tmp_path, capsys, est_server):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc, out, err = cli(capsys, "cacerts", "--server", "https://127.0.0.1:%d" % port, "--trust", est_server.root_pem,
                       "--deadline", "2")
    assert rc == 1 and "cannot connect" in err and "deadline" in err


def test_coaps_enroll_with_an_idevid(tmp_path, capsys):
    srv = EstBothServer(tmp_path / "srv") if (tmp_path / "srv").mkdir() is None else None
    try:
        dev = idevid_files(srv, tmp_path)
        rc, out, err = cli(capsys, "enroll", "--server", "coaps://127.0.0.1:%d" % srv.coaps_port, "--trust",
                           srv.root_pem, "--cert", str(tmp_path / "id.der"), "--key", str(tmp_path / "id.key"),
                           "--cn", "coaps-cli", "--out", str(tmp_path / "o"))
        assert rc == 0 and "enrolled: CN=coaps-cli" in out, err
        rc, out, err = cli(capsys, "reenroll", "--server", "coaps://127.0.0.1:%d" % srv.coaps_port, "--out",
                           str(tmp_path / "o"))
        assert rc == 0 and "re-enrolled: CN=coaps-cli" in out, err
    finally:
        srv.stop()


def test_console_script_entry_point(est_server):
    # the installed command: one process, exit status and stderr line
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "cacerts", "--server", https(est_server),
                        "--pin", "sha256:" + "11" * 32], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.startswith("est-lite: error: bootstrap refused")
