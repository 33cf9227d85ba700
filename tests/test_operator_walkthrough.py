"""What the person who runs the reference server and its CA day to day met
following docs/server.md: a damaged or half-copied data directory, the TLS
files, revocation of a revoked certificate, the CRL file other programs
read. Each checked the way the operator meets it: `est-lite ca ...` in
process (one line on stderr, exit status) or `est-lite serve` as a
subprocess."""

import os
import shutil
import subprocess
import sys

import pytest
from cryptography import x509
from helpers_cli import cli, main, one_line

from est_lite_cpython.ca import init_ca


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    """A CA made once; each test damages its own copy."""
    d = tmp_path_factory.mktemp("ca") / "est-data"
    init_ca(str(d)).store.close()
    return d


def _copy(ca_dir, tmp_path, name="D"):
    d = tmp_path / name
    shutil.copytree(ca_dir, d)
    return d


def _serve(d, *args):
    env = dict(os.environ)
    env.pop("EST_LITE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(d), "--port", "0"]
                          + list(args), capture_output=True, text=True, timeout=60, env=env)


def _serve_one_line(p, *words):
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("est-lite: error: "), p.stderr
    assert "internal error" not in p.stderr
    for w in words:
        assert w in lines[0], p.stderr
    assert "est-lite EST server on" not in p.stdout


# -- a damaged data directory: one line naming the file, exit 1 (was "internal error", 70) ------


@pytest.mark.parametrize("name, damage, words", [
    ("root.key", "garbage", ("root CA private key", "root.key", "damaged")),
    ("root.key", None, ("root CA private key", "root.key", "No such file")),
    ("root.key", "dir", ("root CA private key", "root.key", "cannot read")),
    ("root.pem", "truncate", ("root CA certificate", "root.pem", "damaged")),
    ("ca.db", "garbage", ("CA store", "ca.db", "not a database")),
    ("ca.db", "dir", ("CA store", "ca.db")),
])
def test_damaged_data_dir_is_one_line_for_every_ca_command(ca_dir, tmp_path, capsys, name, damage, words):
    d = _copy(ca_dir, tmp_path)
    p = d / name
    for f in (name, name + "-wal", name + "-shm"):
        if (d / f).exists():
            os.unlink(d / f)
    if damage == "garbage":
        p.write_bytes(b"this is not what it should be\n" * 10)
    elif damage == "dir":
        p.mkdir()
    elif damage == "truncate":
        p.write_bytes((ca_dir / name).read_bytes()[:100])
    for argv in (("list",), ("requests",), ("revoke", "abc"), ("crl",), ("approve", "1")):
        rc, out, err = cli(capsys, "ca", argv[0], "--data-dir", d, *argv[1:])
        one_line(rc, err)
        for w in words:
            assert w in err, err
        assert "est-lite ca restore BACKUP --data-dir %s --force" % d in err, err


def test_a_missing_store_is_refused_not_recreated_empty(ca_dir, tmp_path, capsys):
    """ca.db lost (a partial copy, a wrong restore): every `ca` command and
    serve stop with one line instead of starting an empty store, in which
    revocations would be gone (was: a new empty ca.db, revoked certificates
    accepted again, an empty CRL)."""
    d = _copy(ca_dir, tmp_path)
    for f in ("ca.db", "ca.db-wal", "ca.db-shm"):
        if (d / f).exists():
            os.unlink(d / f)
    for argv in (("list",), ("requests",), ("revoke", "abc"), ("crl",), ("approve", "1")):
        rc, out, err = cli(capsys, "ca", argv[0], "--data-dir", d, *argv[1:])
        one_line(rc, err)
        assert "CA store" in err and "ca.db" in err and "is missing" in err and "ca init --force" in err, err
        assert "est-lite ca restore BACKUP --data-dir %s --force" % d in err, err
    _serve_one_line(_serve(d), "CA store", "ca.db", "is missing")
    assert not (d / "ca.db").exists()
    # ca init --force (what the line suggests) makes a new CA with a store
    rc, out, err = cli(capsys, "ca", "init", "--force", "--data-dir", d)
    assert rc == 0 and (d / "ca.db").exists(), err


def test_damaged_intermediate_key_is_named(tmp_path, capsys):
    d = tmp_path / "I"
    init_ca(str(d), intermediate=True).store.close()
    (d / "intermediate.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    rc, out, err = cli(capsys, "ca", "list", "--data-dir", d)
    one_line(rc, err)
    assert "intermediate CA private key" in err and "intermediate.key" in err


def test_serve_with_a_damaged_store_or_ca_key(ca_dir, tmp_path):
    d = _copy(ca_dir, tmp_path)
    (d / "root.key").write_text("garbage\n")
    _serve_one_line(_serve(d), "root CA private key", "root.key")
    d = _copy(ca_dir, tmp_path, "E")
    for f in ("ca.db", "ca.db-wal", "ca.db-shm"):
        if (d / f).exists():
            os.unlink(d / f)
    (d / "ca.db").write_text("garbage\n" * 20)
    _serve_one_line(_serve(d), "CA store", "ca.db", "not a database")


# -- the TLS certificate and key of serve: which file, and what is wrong with it -----------------


def test_serve_tls_key_missing_names_the_key(ca_dir, tmp_path):
    d = _copy(ca_dir, tmp_path)
    os.unlink(d / "server.key")
    _serve_one_line(_serve(d), "TLS private key", "server.key", "No such file")


def test_serve_tls_certificate_not_pem(ca_dir, tmp_path):
    d = _copy(ca_dir, tmp_path)
    (d / "server.pem").write_text("junk\n")
    p = _serve(d)
    _serve_one_line(p, "TLS certificate", "server.pem", "no start line")
    assert "('" not in p.stderr  # not OpenSSL's list of tuples


def test_serve_tls_key_of_another_certificate(ca_dir, tmp_path):
    d = _copy(ca_dir, tmp_path)
    other = tmp_path / "other"
    init_ca(str(other)).store.close()
    shutil.copy(other / "server.key", d / "server.key")
    _serve_one_line(_serve(d), "does not belong to the certificate", "server.key", "server.pem")


# -- ca revoke: a second revocation, a mistyped reason, the CRL file ------------------------------


def _issue(d):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from est_lite_cpython.ca import LocalCA

    ca = LocalCA(str(d))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]),
                            days=30, eku=("clientAuth",), label="", requester="test")
    finally:
        ca.store.close()
    return "%x" % cert.serial_number


def _crl(d):
    return x509.load_pem_x509_crl((d / "crl.pem").read_bytes())


def test_revoking_twice_says_the_first_revocation_stands(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    serial = _issue(d)
    rc, out, err = cli(capsys, "ca", "revoke", "--data-dir", d, serial, "--reason", "keyCompromise")
    assert rc == 0 and out.startswith("revoked %s (keyCompromise)" % serial), (out, err)
    rc, out, err = cli(capsys, "ca", "revoke", "--data-dir", d, serial.upper(), "--reason", "superseded")
    # was: "revoked ... (superseded)" while the store and the CRL kept keyCompromise
    assert rc == 0 and "already revoked" in out and "keyCompromise" in out and "superseded" not in out, out
    (entry,) = list(_crl(d))
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise


def test_revoke_with_an_unknown_reason_is_a_usage_error(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    serial = _issue(d)
    with pytest.raises(SystemExit) as ei:
        main(["ca", "revoke", "--data-dir", str(d), serial, "--reason", "stolen"])
    rc, err = ei.value.code, capsys.readouterr().err
    # was "est-lite: reason must be ..." (not the usage-error form of every other command)
    assert rc == 2 and err.startswith("est-lite ca revoke: error: argument --reason: 'stolen'"), err
    assert "keyCompromise" in err and "see est-lite ca revoke --help" in err and err.count("\n") == 1
    assert not (d / "crl.pem").exists()


def test_revoke_of_a_serial_never_issued(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    rc, out, err = cli(capsys, "ca", "revoke", "--data-dir", d, "deadbeef")
    one_line(rc, err)
    assert "no certificate with serial deadbeef was issued by this CA" in err
    assert not (d / "crl.pem").exists()
    rc, out, err = cli(capsys, "ca", "revoke", "--data-dir", d, "zz")
    one_line(rc, err)
    assert "not a hexadecimal number" in err


def test_crl_file_is_replaced_whole(ca_dir, tmp_path, capsys, monkeypatch):
    """A reader of crl.pem (a web server publishing it, a proxy's
    upstream_crl) sees the old file or the new one, never a part: the file
    is renamed into place. A write that fails leaves the old one."""
    d = _copy(ca_dir, tmp_path)
    serial = _issue(d)
    rc, out, err = cli(capsys, "ca", "crl", "--data-dir", d, "--out", d / "crl.pem")
    assert rc == 0, err
    before = (d / "crl.pem").read_bytes()
    inode = os.stat(d / "crl.pem").st_ino
    real_fsync = os.fsync

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    rc, out, err = cli(capsys, "ca", "revoke", "--data-dir", d, serial)
    one_line(rc, err)
    assert "No space left on device" in err and "crl.pem" in err
    assert (d / "crl.pem").read_bytes() == before  # was: truncated by open(..., "wb") before the write
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
    monkeypatch.setattr(os, "fsync", real_fsync)
    rc, out, err = cli(capsys, "ca", "crl", "--data-dir", d, "--out", d / "crl.pem")
    assert rc == 0 and os.stat(d / "crl.pem").st_ino != inode  # a new file renamed over the old one
    assert [e.serial_number for e in _crl(d)] == [int(serial, 16)]
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


# -- keys copied without their modes (cp -r): serve warns, one line per file, and runs -----------


def _serve_until_banner(d, *args):
    """stderr of `serve` up to its banner, then SIGTERM; (returncode, stderr)."""
    env = dict(os.environ)
    env.pop("EST_LITE_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(d), "--port", "0"]
                         + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = p.stdout.readline()
        assert banner.startswith("est-lite EST server on"), banner
        p.terminate()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err


def test_serve_warns_of_private_files_other_users_can_read(ca_dir, tmp_path):
    d = _copy(ca_dir, tmp_path)
    os.chmod(d / "root.key", 0o644)
    os.chmod(d / "server.key", 0o640)
    rc, err = _serve_until_banner(d)
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("est-lite: warning: ")]
    assert len(warnings) == 2, err
    assert "root.key is readable or writable by other users (mode 0644): chmod 600" in warnings[0], err
    assert "server.key" in warnings[1] and "(mode 0640)" in warnings[1], err
    assert "Traceback" not in err


def test_serve_is_quiet_about_a_data_dir_made_by_ca_init(ca_dir, tmp_path):
    rc, err = _serve_until_banner(_copy(ca_dir, tmp_path))
    assert rc == 0 and "warning" not in err, err


def test_passwd_with_an_empty_password_is_the_usual_error_line(ca_dir, tmp_path, capsys, monkeypatch):
    import io

    d = _copy(ca_dir, tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    rc, out, err = cli(capsys, "ca", "passwd", "--data-dir", d, "dave")
    one_line(rc, err)  # was "est-lite: empty password" (no "error:")
    assert "empty password for dave" in err and not (d / "passwords").exists()


# -- SIGTERM while serve is still starting --------------------------------------------------------


def test_sigterm_while_serve_writes_its_port_file_stops_it_cleanly(ca_dir, tmp_path):
    """A supervisor stops the server as soon as its banner appears. The
    port file is a FIFO nobody reads, so serve is held in open() after the
    banner, deterministically, when SIGTERM comes (was: the handler was
    installed after the port file, the process died of the signal, -15)."""
    d = _copy(ca_dir, tmp_path)
    fifo = tmp_path / "port.fifo"
    os.mkfifo(fifo)
    rc, err = _serve_until_banner(d, "--port-file", fifo)
    assert rc == 0 and err.splitlines() == ["stopped"], (rc, err)


def test_serve_sigterm_and_sigint_stop_with_stopped(ca_dir, tmp_path):
    import signal
    import time

    d = _copy(ca_dir, tmp_path)
    for sig in (signal.SIGTERM, signal.SIGINT):
        env = dict(os.environ)
        env.pop("EST_LITE_DEBUG", None)
        p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(d), "--port",
                              "0", "--port-file", str(tmp_path / "port")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert p.stdout.readline().startswith("est-lite EST server on")
            for _ in range(200):  # the port file is the last thing written before serving
                if (tmp_path / "port").exists() and (tmp_path / "port").read_text().endswith("\n"):
                    break
                time.sleep(0.05)
            p.send_signal(sig)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0 and err.splitlines() == ["stopped"], (sig, p.returncode, err)
        os.unlink(tmp_path / "port")
    rc = main(["ca", "list", "--data-dir", str(d)])
    assert rc == 0  # the store opens after both stops


# -- est-lite proxy: a port in use is serve's one line (was "internal error: OSError", 70) ---------


@pytest.mark.parametrize("which", ["https", "coaps"])
def test_proxy_port_in_use_is_one_line(tmp_path, which):
    import socket

    from helpers_proxy import write_proxy_dir
    from helpers_server import EstTestServer

    up = EstTestServer(tmp_path / "up")
    try:
        d = tmp_path / "px"
        write_proxy_dir(up, d)
        kind = socket.SOCK_STREAM if which == "https" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            if which == "https":
                s.listen(1)
            taken = str(s.getsockname()[1])
            ports = ["--port", taken, "--coaps-port", "0"] if which == "https" else ["--port", "0", "--coaps-port", taken]
            env = dict(os.environ)
            env.pop("EST_LITE_DEBUG", None)
            p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config",
                                str(d / "proxy.toml"), "--host", "127.0.0.1"] + ports,
                               capture_output=True, text=True, timeout=60, env=env)
    finally:
        up.stop()
    what, flag = ("HTTPS", "--port") if which == "https" else ("EST-coaps", "--coaps-port")
    _serve_one_line(p, "cannot serve %s on 127.0.0.1:%s" % (what, taken), "Address already in use", flag)
    assert "(RA)" not in p.stdout
