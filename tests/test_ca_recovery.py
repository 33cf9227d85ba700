"""Disaster recovery of the CA (docs/ca-backup.md): after a restore of a
backup older than the last issuance, a certificate issued after the backup
is revoked (`ca revoke --certificate FILE`, `ca revoke SERIAL
--not-in-store`): the CRL lists it (cryptography and `openssl crl`), a
running `est-lite serve` refuses it over HTTPS and EST-coaps, `ca list`
shows it, backup / verify / restore / --merge-from keep it. And `ca
restore`, `ca init --force`, `ca rollover` refuse to run under a running
server (datalock.py), work once it stops (also after kill -9), while `ca
backup` works during it."""

import hashlib
import os
import shlex
import signal
import ssl
import socket
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_cli import cli, one_line
from helpers_server import Response, key_pem, make_csr
from test_coaps_cli import stop, wait_file

from est_lite_cpython.ca import LocalCA, init_ca

PEM = serialization.Encoding.PEM


def _issue(data, cn, tmp_path):
    """A device certificate from the CA in data (as the server would issue
    it), written to tmp_path/cn.pem and cn.key; (cert, key, cert_file, key_file)."""
    ca = LocalCA(str(data))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=%s" % cn), days=30)
    finally:
        ca.store.close()
    cf, kf = tmp_path / ("%s.pem" % cn), tmp_path / ("%s.key" % cn)
    cf.write_bytes(cert.public_bytes(PEM))
    kf.write_bytes(key_pem(key))
    return cert, key, cf, kf


def _crl_serials(data):
    crl = x509.load_pem_x509_crl((data / "crl.pem").read_bytes())
    return set("%x" % r.serial_number for r in crl), crl


def _openssl_crl_serials(data):
    p = subprocess.run(["openssl", "crl", "-in", str(data / "crl.pem"), "-noout", "-text"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return set(line.split(":", 1)[1].strip().lower().lstrip("0") for line in p.stdout.splitlines()
               if line.strip().startswith("Serial Number:"))


def _tree(d):
    """{relative path: sha256} of every file under d except the lock file."""
    out = {}
    for root, _dirs, files in os.walk(str(d)):
        for f in files:
            p = os.path.join(root, f)
            if f != "server.lock":
                out[os.path.relpath(p, str(d))] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _flock_holders(path):
    """pids holding a shared flock on path (/proc/locks)."""
    ino = os.stat(str(path)).st_ino
    out = set()
    for line in open("/proc/locks"):
        f = line.split()
        if "->" in f:  # a waiter
            continue
        if f[1] == "FLOCK" and f[3] == "READ" and int(f[5].split(":")[2]) == ino:
            out.add(int(f[4]))
    return out


def _store_rows(data):
    import sqlite3

    c = sqlite3.connect("file:%s?mode=ro" % (data / "ca.db"), uri=True)
    try:
        return (sorted(c.execute("SELECT serial, der FROM certs")), sorted(c.execute("SELECT * FROM revocations")))
    finally:
        c.close()


def _serve(tmp_path, *, processes=1, name="server.toml"):
    cfg = tmp_path / name
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nport = 0\nprocesses = %d\n[coaps]\nport = 0\nmtu = 1000\n'
                   'processes = %d\n[profiles.default]\nauth = ["cert"]\n' % (processes, processes))
    pf, cpf = tmp_path / (name + ".port"), tmp_path / (name + ".cport")
    for f in (pf, cpf):
        if f.exists():
            f.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", str(cfg),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = wait_file(pf, proc, timeout=60)
        cport = wait_file(cpf, proc, timeout=60)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, port, cport


def _https_reenroll(port, data, cert_file, key_file, cn):
    """simplereenroll with the certificate as TLS client certificate: the
    HTTP status, or 'refused' when the handshake or connection is refused."""
    import base64

    ctx = ssl.create_default_context(cafile=str(data / "root.pem"))
    ctx.load_cert_chain(str(cert_file), str(key_file))
    body = base64.encodebytes(make_csr(cn)[1])
    head = ("POST /.well-known/est/simplereenroll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            "Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(body))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(head.encode() + body)
                return Response.read(t).status
    except (ssl.SSLError, ConnectionError):
        return "refused"


def _coaps_ok(cport, data, cert, key):
    """True if a DTLS session with this client certificate carries /crts."""
    from helpers_coaps import CoapsSession

    from est_lite.errors import SecurityError, TransportError
    from est_lite_cpython.dtls_client import DtlsClient

    root = x509.load_pem_x509_certificate((data / "root.pem").read_bytes())
    try:
        with DtlsClient("127.0.0.1", cport, [root], cert=cert, key=key, timeout=5, mtu=1000) as dc:
            return bool(CoapsSession(dc).cacerts().certs)
    except (SecurityError, TransportError):
        return False


@pytest.fixture
def restored(tmp_path, capsys):
    """tmp_path/data restored from a backup taken before two devices
    (a, b) were issued: their certificates are unknown to the store."""
    data = tmp_path / "data"
    init_ca(str(data)).store.close()
    _issue(data, "before", tmp_path)
    assert cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(data))[0] == 0
    a = _issue(data, "dev-a", tmp_path)
    b = _issue(data, "dev-b", tmp_path)
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force")
    assert rc == 0, err
    sa, sb = "%x" % a[0].serial_number, "%x" % b[0].serial_number
    ca = LocalCA(str(data))
    try:
        assert not ca.store.has_serial(sa) and not ca.store.has_serial(sb)
    finally:
        ca.store.close()
    return data, a, b


def test_revoke_what_the_restored_store_never_saw_and_the_server_refuses_it(restored, tmp_path, capsys):
    data, a, b = restored
    sa, sb = "%x" % a[0].serial_number, "%x" % b[0].serial_number
    proc, port, cport = _serve(tmp_path)
    try:
        # both still work: they chain to the CA (the control of the refusals below)
        for cert, key, cf, kf in (a, b):
            assert _https_reenroll(port, data, cf, kf, cert.subject.rfc4514_string()[3:]) == 200
            assert _coaps_ok(cport, data, cert, key)
        # a mistyped serial is still an error, nothing recorded
        rc, out, err = cli(capsys, "ca", "revoke", sb[:-1] + ("0" if sb[-1] != "0" else "1"), "--data-dir", str(data))
        one_line(rc, err)
        assert "no certificate with serial" in err and "--not-in-store" in err
        rc, out, err = cli(capsys, "ca", "revoke", sb, "--data-dir", str(data))  # without the flag: refused too
        one_line(rc, err)
        # the two ways
        rc, out, err = cli(capsys, "ca", "revoke", "--certificate", str(a[2]), "--reason", "keyCompromise",
                           "--data-dir", str(data))
        assert rc == 0 and "imported %s" % sa in out and "revoked %s (keyCompromise)" % sa in out, (out, err)
        rc, out, err = cli(capsys, "ca", "revoke", sb, "--not-in-store", "--reason", "keyCompromise",
                           "--data-dir", str(data))
        assert rc == 0 and "without a certificate" in out and "revoked %s" % sb in out, (out, err)
        # refused by the running server (it has no row for b)
        for cert, key, cf, kf in (a, b):
            assert _https_reenroll(port, data, cf, kf, cert.subject.rfc4514_string()[3:]) != 200
            assert not _coaps_ok(cport, data, cert, key)
    finally:
        stop(proc)
    listed, crl = _crl_serials(data)
    assert {sa, sb} <= listed
    ca = LocalCA(str(data))
    try:
        assert crl.is_signature_valid(ca.issuer.public_key())
        assert ca.store.get_certificate(sa) == a[0].public_bytes(serialization.Encoding.DER)
        assert ca.store.get_certificate(sb) is None and ca.is_revoked(b[0])
    finally:
        ca.store.close()
    assert {sa, sb} <= _openssl_crl_serials(data)
    rc, out, err = cli(capsys, "ca", "list", "--data-dir", str(data))
    assert rc == 0
    line_a = [x for x in out.splitlines() if x.startswith(sa)]
    line_b = [x for x in out.splitlines() if x.startswith(sb)]
    assert len(line_a) == 1 and "CN=dev-a" in line_a[0] and "REVOKED" in line_a[0], out
    assert len(line_b) == 1 and "not in the store" in line_b[0] and "REVOKED" in line_b[0], out
    # revoking again says so; the first revocation stands
    rc, out, err = cli(capsys, "ca", "revoke", sb, "--not-in-store", "--data-dir", str(data))
    assert rc == 0 and "already revoked" in out


def test_revoke_certificate_of_another_ca_or_a_ca_certificate_is_refused(restored, tmp_path, capsys):
    data, a, b = restored
    other = tmp_path / "other"
    init_ca(str(other)).store.close()  # the same subject names, another key
    foreign = _issue(other, "dev-x", tmp_path)
    before = _store_rows(data)
    for f in (foreign[2], data / "root.pem"):
        rc, out, err = cli(capsys, "ca", "revoke", "--certificate", str(f), "--data-dir", str(data))
        one_line(rc, err)
    rc, out, err = cli(capsys, "ca", "revoke", "--certificate", str(foreign[2]), "--data-dir", str(data))
    assert "not issued by this CA" in err
    # a serial that does not match the file, a file without a certificate
    rc, out, err = cli(capsys, "ca", "revoke", "abc", "--certificate", str(a[2]), "--data-dir", str(data))
    one_line(rc, err)
    rc, out, err = cli(capsys, "ca", "revoke", "--certificate", str(a[3]), "--data-dir", str(data))
    one_line(rc, err)
    rc, out, err = cli(capsys, "ca", "revoke", "0", "--not-in-store", "--data-dir", str(data))
    one_line(rc, err)
    assert _store_rows(data) == before and not os.path.exists(str(data / "crl.pem"))


def test_backup_verify_restore_and_merge_keep_revocations_without_a_certificate(restored, tmp_path, capsys):
    data, a, b = restored
    sa, sb = "%x" % a[0].serial_number, "%x" % b[0].serial_number
    assert cli(capsys, "ca", "revoke", "--certificate", str(a[2]), "--data-dir", str(data))[0] == 0
    assert cli(capsys, "ca", "revoke", sb, "--not-in-store", "--reason", "superseded", "--data-dir", str(data))[0] == 0
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", str(data))
    assert rc == 0 and "1 serial(s) without a certificate" in out, (out, err)
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk2"), "--data-dir", str(data))
    assert rc == 0, err
    rc, out, err = cli(capsys, "ca", "verify", str(tmp_path / "bk2"))
    assert rc == 0 and "2 revocations" in out and "1 serial(s) without a certificate" in out, (out, err)
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk2"), "--data-dir", str(tmp_path / "r2"))
    assert rc == 0, err
    assert cli(capsys, "ca", "crl", "--data-dir", str(tmp_path / "r2"), "--out", str(tmp_path / "r2" / "crl.pem"))[0] == 0
    assert {sa, sb} <= _crl_serials(tmp_path / "r2")[0]

    # the old backup over it: the warning's revoke lines run as printed
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "r2"), "--force")
    assert rc == 0, err
    lines = [w.split(": est-lite ", 1)[1] for w in err.splitlines() if " was revoked " in w]
    assert len(lines) == 2 and all("--not-in-store" in x for x in lines), err
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["ca", "revoke"]
        assert cli(capsys, *argv)[0] == 0
    assert {sa, sb} <= _crl_serials(tmp_path / "r2")[0]
    assert {sa, sb} <= _openssl_crl_serials(tmp_path / "r2")

    # --merge-from brings both revocations (and a's certificate)
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "r3"),
                       "--merge-from", str(data))
    assert rc == 0 and "merged:       1 certificates and 2 revocations" in out, (out, err)
    ca = LocalCA(str(tmp_path / "r3"))
    try:
        assert ca.is_revoked(a[0]) and ca.is_revoked(b[0]) and ca.store.has_serial(sa)
        assert not ca.store.has_serial(sb)
    finally:
        ca.store.close()
    assert cli(capsys, "ca", "verify", "--data-dir", str(tmp_path / "r3"))[0] == 0


# ---------------------------------------------------------------- no restore under a running server


def _refused_while_serving(proc, data, tmp_path, capsys):
    before = _tree(data)
    cmds = [("ca", "restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force"),
            ("ca", "init", "--force", "--data-dir", str(data)),
            ("ca", "rollover", "--data-dir", str(data))]
    for argv in cmds:
        rc, out, err = cli(capsys, *argv)
        one_line(rc, err)
        assert "est-lite serve (pid %d) is running on %s" % (proc.pid, data) in err, err
        assert "stop it first" in err and out == ""
        assert _tree(data) == before
        assert not [n for n in os.listdir(str(tmp_path)) if n.startswith("data.replaced-")]
    # a backup works meanwhile
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / ("while-%d" % proc.pid)), "--data-dir", str(data))
    assert rc == 0, err
    assert "server.lock" not in os.listdir(str(tmp_path / ("while-%d" % proc.pid)))


@pytest.mark.parametrize("processes", [1, 2])
def test_restore_init_rollover_refused_while_serving(tmp_path, capsys, processes):
    data = tmp_path / "data"
    init_ca(str(data)).store.close()
    assert cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(data))[0] == 0
    proc, port, cport = _serve(tmp_path, processes=processes)
    try:
        if processes == 2:  # the workers hold the lock too: the main process stopped alone is not enough
            kids = open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).read().split()
            workers = [int(k) for k in kids if b"spawn_main" in open("/proc/%s/cmdline" % k, "rb").read()]
            assert len(workers) == 2
            assert set(workers) | {proc.pid} <= _flock_holders(data / "server.lock")
        _refused_while_serving(proc, data, tmp_path, capsys)
    finally:
        stop(proc)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    # stopped: each works
    rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", str(data))
    assert rc == 0, err
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force")
    assert rc == 0, err
    rc, out, err = cli(capsys, "ca", "init", "--force", "--data-dir", str(data))
    assert rc == 0, err


def test_a_server_killed_with_sigkill_leaves_no_stale_lock(tmp_path, capsys):
    data = tmp_path / "data"
    init_ca(str(data)).store.close()
    assert cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(data))[0] == 0
    proc, port, cport = _serve(tmp_path)
    try:
        _refused_while_serving(proc, data, tmp_path, capsys)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(15)
    assert os.path.exists(str(data / "server.lock"))  # the file stays, the lock went with the process
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(data), "--force")
    assert rc == 0, err
    # a server starting while a restore holds the lock is refused in one line
    from est_lite_cpython.datalock import exclusive

    with exclusive(str(data), "est-lite ca restore"):
        p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(data),
                            "--port", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "is being changed by est-lite ca restore (pid %d)" % os.getpid() in p.stderr


def test_restore_refused_while_a_proxy_runs_on_its_data_directory(tmp_path, capsys):
    """est-lite proxy holds the lock of its data directory (passwords and
    its state database) too."""
    from helpers_proxy import write_proxy_dir
    from helpers_server import EstTestServer

    up = EstTestServer(tmp_path / "up")
    try:
        cfg = write_proxy_dir(up, tmp_path / "px")
        data = tmp_path / "px" / "proxydata"
        pf = tmp_path / "px" / "port"
        proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", str(cfg),
                                 "--port-file", str(pf), "--no-coaps"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_file(pf, proc, timeout=60)
            rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "pbk"), "--config", str(cfg))
            assert rc == 0, err
            rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "pbk"), "--data-dir", str(data), "--force")
            one_line(rc, err)
            assert "est-lite proxy (pid %d) is running on %s" % (proc.pid, data) in err, err
        finally:
            stop(proc)
        rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "pbk"), "--data-dir", str(data), "--force")
        assert rc == 0, err
    finally:
        up.stop()


def test_revoke_certificate_of_the_previous_root_key_after_a_rollover(tmp_path, capsys):
    """After a root key rollover (no intermediate) a certificate of the old
    key the store lacks is still this CA's: --certificate accepts it."""
    import sqlite3

    data = tmp_path / "data"
    init_ca(str(data)).store.close()
    old = _issue(data, "old-gen", tmp_path)
    assert cli(capsys, "ca", "rollover", "--data-dir", str(data))[0] == 0
    new = _issue(data, "new-gen", tmp_path)
    assert new[0].issuer == old[0].issuer  # same name, another key
    c = sqlite3.connect(str(data / "ca.db"))
    c.execute("DELETE FROM certs WHERE serial IN (?, ?)", ("%x" % old[0].serial_number, "%x" % new[0].serial_number))
    c.commit()
    c.close()
    for cert, key, cf, kf in (old, new):
        rc, out, err = cli(capsys, "ca", "revoke", "--certificate", str(cf), "--data-dir", str(data))
        assert rc == 0 and "imported" in out, (out, err)
    assert {"%x" % old[0].serial_number, "%x" % new[0].serial_number} <= _crl_serials(data)[0]
