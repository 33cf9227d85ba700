"""`est-lite ca backup / verify / restore` (est_lite_cpython/backup.py,
docs/ca-backup.md): a backup taken while the server enrolls is one point in
time of the store (nothing issued before it is missing, the server never
sees "database is locked"), a restored CA issues and revokes, and the check
names each kind of damage in one line with exit status 1. Cross-checked
with the sqlite3 and openssl command-line tools."""

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_cli import cli, one_line
from helpers_server import PASSWORD, USER, EstTestServer, key_pem, make_csr
from test_coaps_cli import stop, wait_file

from est_lite_cpython import backup
from est_lite_cpython.ca import LocalCA, init_ca


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _column(db, sql):
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return set(r[0] for r in c.execute(sql))
    finally:
        c.close()


def _serials(db):
    return _column(db, "SELECT serial FROM certs")


def _revoked(db):
    return _column(db, "SELECT serial FROM revocations")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    """A CA with an intermediate, a user, an RA certificate, a revocation
    and crl.pem, made once; each test copies it."""
    d = tmp_path_factory.mktemp("bk") / "est-data"
    init_ca(str(d), intermediate=True).store.close()
    from est_lite_cpython.cli import main

    assert main(["ca", "passwd", "alice", "--password", "pw", "--data-dir", str(d)]) == 0
    assert main(["ca", "issue", "--data-dir", str(d), "--cn", "ra", "--eku", "clientAuth,cmcRA",
                 "--out", str(d / "ra")]) == 0
    ca = LocalCA(str(d))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=to-revoke"))
        serial = "%x" % cert.serial_number
    finally:
        ca.store.close()
    assert main(["ca", "revoke", serial, "--reason", "keyCompromise", "--data-dir", str(d)]) == 0
    return d


def _copy(ca_dir, tmp_path, name="ca"):
    d = tmp_path / name
    shutil.copytree(ca_dir, d)
    return d


# -- backup while the server enrolls ----------------------------------------------------------


def test_backup_while_https_server_enrolls_is_one_point_in_time(tmp_path, capsys, caplog):
    caplog.set_level(logging.WARNING)
    srv = EstTestServer(tmp_path)
    done = []  # (serial hex) of every enrollment whose response arrived, in order
    errors = []
    lock = threading.Lock()
    stop_flag = threading.Event()

    def enroll(i):
        for j in range(12):
            if stop_flag.is_set():
                return
            try:
                r = srv.request("POST", srv.path("simpleenroll"), make_csr("bk-%d-%d" % (i, j))[1],
                                auth=(USER, PASSWORD))
                if r.status != 200:
                    errors.append((r.status, r.text))
                    continue
                with lock:
                    done.append("%x" % r.certs()[0].serial_number)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=enroll, args=(i,), daemon=True) for i in range(4)]
    try:
        for t in threads:
            t.start()
        backups = []  # (backup dir, serials whose response had arrived before the backup started)
        k = 0
        while any(t.is_alive() for t in threads) and k < 40:
            with lock:
                before = set(done)
            dest = tmp_path / ("bk%d" % k)
            rc, out, err = cli(capsys, "ca", "backup", str(dest), "--config", srv.config_path)
            assert rc == 0 and err == "", err
            backups.append((dest, before))
            k += 1
        for t in threads:
            t.join(60)
    finally:
        stop_flag.set()
        srv.stop()
    assert errors == []
    assert len(done) == 48
    assert len(backups) >= 2
    live = _serials(os.path.join(srv.data_dir, "ca.db"))
    assert set(done) <= live
    for dest, before in backups:
        rc, out, err = cli(capsys, "ca", "verify", str(dest))
        assert rc == 0 and out.startswith("backup OK: "), (out, err)
        got = _serials(str(dest / "ca.db"))
        assert before <= got  # nothing issued before the backup started is missing
        assert got <= live  # and nothing invented
        assert not os.path.exists(str(dest / "ca.db-wal"))
    assert any(len(_serials(str(d / "ca.db"))) - 1 < len(done) for d, _b in backups)  # some taken mid-run
    assert "locked" not in caplog.text


def _serve_procs(tmp_path):
    data = tmp_path / "data"
    init_ca(str(data))
    from est_lite_cpython.auth import PasswordFile
    from est_lite_cpython.config import load_config

    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nport = 0\nprocesses = 2\n[coaps]\nport = 0\nmtu = 1000\n'
                   'processes = 2\n[profiles.default]\nauth = ["basic", "cert"]\n')
    PasswordFile(load_config(str(cfg)).password_file, iterations=1000).set_password(USER, PASSWORD, "est-lite")
    pf, cpf = tmp_path / "port", tmp_path / "cport"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", str(cfg),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, data, cfg, pf, cpf


def test_backup_while_https_and_coaps_processes_enroll(tmp_path, capsys):
    """`est-lite serve` with two HTTPS and two EST-coaps processes writing
    the store (and this test's LocalCA issuing device certificates: a
    fifth writer) while `ca backup` runs as a separate process."""
    import base64

    from helpers_coaps import CoapsSession, Device, point
    from test_https_processes import _post

    from est_lite_cpython.dtls_client import DtlsClient

    proc, data, cfg, pf, cpf = _serve_procs(tmp_path)
    done, errors = [], []
    try:
        port = wait_file(pf, proc, timeout=60)
        cport = wait_file(cpf, proc, timeout=60)
        ca = LocalCA(str(data))

        def coaps_enroll():
            try:
                for j in range(6):
                    key = ec.generate_private_key(ec.SECP256R1())
                    dev = Device(key, ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=d-%d" % j)))
                    done.append("%x" % dev.cert.serial_number)
                    nkey, csr = make_csr("c-%d" % j)
                    with DtlsClient("127.0.0.1", cport, [ca.root], cert=dev.cert, key=dev.key, timeout=10,
                                    mtu=1000) as dc:
                        ev = CoapsSession(dc).enroll(csr, public_key=point(nkey))
                    done.append("%x" % x509.load_der_x509_certificate(ev.cert).serial_number)
            except Exception as e:  # noqa: BLE001 - asserted below
                errors.append(repr(e))

        authz = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()

        def enroll(i):
            for j in range(8):
                r = _post(port, str(data / "root.pem"), "/.well-known/est/simpleenroll",
                          make_csr("p-%d-%d" % (i, j))[1], authz)
                if r.status == 200:
                    done.append("%x" % r.certs()[0].serial_number)
                else:
                    errors.append((r.status, r.text))

        threads = [threading.Thread(target=enroll, args=(i,), daemon=True) for i in range(4)]
        threads.append(threading.Thread(target=coaps_enroll, daemon=True))
        for t in threads:
            t.start()
        backups = []
        k = 0
        while any(t.is_alive() for t in threads) and k < 20:
            before = set(done)
            p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "ca", "backup", str(tmp_path / str(k)),
                                "--config", str(cfg)], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0 and p.stderr == "", p.stderr
            backups.append((tmp_path / str(k), before))
            k += 1
        for t in threads:
            t.join(60)
        ca.store.close()
    finally:
        stop(proc)
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, err[-2000:]
    assert errors == [] and len(done) == 32 + 12
    assert "locked" not in err
    for dest, before in backups:
        v = backup.verify(str(dest))
        assert before <= _serials(str(dest / "ca.db"))
        assert v["store"]["certificates"] == len(_serials(str(dest / "ca.db")))


def test_backup_holds_what_is_still_in_the_wal(ca_dir, tmp_path):
    """Rows committed but not yet checkpointed live only in ca.db-wal: a
    copy of ca.db alone lacks them, the backup has them."""
    d = _copy(ca_dir, tmp_path)
    ca = LocalCA(str(d))
    try:
        db = ca.store._wdb()
        db.execute("PRAGMA wal_autocheckpoint=0")
        c = ca.store._db()
        c.execute("PRAGMA wal_autocheckpoint=0")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        key = ec.generate_private_key(ec.SECP256R1())
        new = "%x" % ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=in-wal")).serial_number
        ca.revoke(new, "superseded")
        assert os.path.getsize(str(d / "ca.db-wal")) > 0
        naive = tmp_path / "naive.db"
        shutil.copyfile(str(d / "ca.db"), str(naive))  # what `cp ca.db` gets
        assert new not in _serials(str(naive))
        backup.backup_data_dir(str(d), str(tmp_path / "bk"))
        assert new in _serials(str(tmp_path / "bk" / "ca.db"))
        assert new in _revoked(str(tmp_path / "bk" / "ca.db"))
    finally:
        ca.store.close()


# -- what a backup holds ----------------------------------------------------------------------


def test_backup_files_modes_and_manifest(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    (d / "passwords.tmp").write_text("half a write")
    (d / "ca.db-journal").write_bytes(b"")
    (d / "root-old.pem").write_bytes((d / "root.pem").read_bytes())  # a file another command may add
    os.chmod(str(d / "root.key"), 0o644)  # a key copied with `cp -r` and a loose umask: the backup tightens it
    dest = tmp_path / "bk"
    rc, out, err = cli(capsys, "ca", "backup", str(dest), "--data-dir", str(d))
    assert rc == 0 and err == "", err
    assert _mode(str(dest)) == 0o700
    for f in ("root.key", "intermediate.key", "server.key", "ra.key", "ca.db", "passwords"):
        assert _mode(str(dest / f)) == 0o600, f
    assert _mode(str(dest / "crl.pem")) == _mode(str(d / "crl.pem"))
    names = set(os.listdir(str(dest)))
    assert names == {"root.pem", "root.key", "intermediate.pem", "intermediate.key", "server.pem", "server.key",
                     "ra.pem", "ra.key", "ca.db", "passwords", "crl.pem", "root-old.pem", backup.MANIFEST}
    assert "skipped: passwords.tmp" in out and "skipped: ca.db-journal" in out
    assert "3 certificates" in out and "1 revocations" in out
    assert "est-lite ca verify %s" % dest in out and "est-lite ca restore %s" % dest in out
    m = json.loads((dest / backup.MANIFEST).read_text())
    assert m["store"]["certificates"] == 3 and m["store"]["revocations"] == 1
    assert set(m["files"]) == names - {backup.MANIFEST}
    # the copy is one file, no -wal needed
    c = sqlite3.connect("file:%s?mode=ro" % (dest / "ca.db"), uri=True)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    c.close()


def test_backup_names_files_outside_the_data_dir(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    (tmp_path / "tls.pem").write_bytes((d / "server.pem").read_bytes())
    (tmp_path / "tls.key").write_bytes((d / "server.key").read_bytes())
    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "ca"\n[server]\ntls_cert = "tls.pem"\ntls_key = "tls.key"\n')
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--config", str(cfg))
    assert rc == 0, err
    assert "NOT in the backup: %s (server.tls_key" % (tmp_path / "tls.key") in out
    assert "NOT in the backup: %s (the config" % cfg in out
    assert "it holds private keys (intermediate.key, ra.key, root.key, server.key)" in out


def test_backup_of_a_proxy_with_its_config(tmp_path, capsys):
    """`ca backup --config proxy.toml`: the proxy's [ca] data_dir, and the
    RA identity and upstream CA it names from elsewhere listed as not in it."""
    from est_lite_cpython.proxy import _open_state

    up = tmp_path / "up"
    init_ca(str(up)).store.close()
    assert cli(capsys, "ca", "issue", "--data-dir", up, "--cn", "ra", "--eku", "clientAuth,cmcRA",
               "--out", tmp_path / "ra")[0] == 0
    cfg = tmp_path / "proxy.toml"
    cfg.write_text('[ca]\ndata_dir = "pdata"\n[proxy]\nupstream = "https://127.0.0.1:8443"\n'
                   'upstream_ca = "up/root.pem"\nra_cert = "ra.pem"\nra_key = "ra.key"\n')
    assert cli(capsys, "ca", "passwd", "--config", cfg, "dev", "--password", "pw")[0] == 0
    _open_state(str(tmp_path / "pdata" / "proxy-state.sqlite")).close()
    rc, out, err = cli(capsys, "ca", "backup", tmp_path / "bk", "--config", cfg)
    assert rc == 0 and err == "", err
    assert "files:   2 (passwords, proxy-state.sqlite)" in out
    for what, f in (("proxy.ra_key", "ra.key"), ("proxy.ra_cert", "ra.pem"), ("proxy.upstream_ca", "up/root.pem")):
        assert "NOT in the backup: %s (%s" % (tmp_path / f, what) in out
    assert "it holds password hashes and state" in out
    rc, out, err = cli(capsys, "ca", "verify", tmp_path / "bk")
    assert rc == 0 and "users:        1 in passwords" in out, err


def test_backup_never_overwrites_and_refuses_inside(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    dest = tmp_path / "bk"
    dest.mkdir()
    (dest / "old").write_text("a previous backup")
    rc, out, err = cli(capsys, "ca", "backup", str(dest), "--data-dir", str(d))
    one_line(rc, err)
    assert "exists and is not empty" in err and str(dest) in err
    assert os.listdir(str(dest)) == ["old"]
    (tmp_path / "file").write_text("x")
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "file"), "--data-dir", str(d))
    one_line(rc, err)
    rc, out, err = cli(capsys, "ca", "backup", str(d / "bk"), "--data-dir", str(d))
    one_line(rc, err)
    assert "inside the data directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = cli(capsys, "ca", "backup", str(empty), "--data-dir", str(d))
    assert rc == 0, err
    assert _mode(str(empty)) == 0o700 and (empty / "root.key").exists()
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk2"), "--data-dir", str(tmp_path / "nothing"))
    one_line(rc, err)


def test_interrupted_backup_leaves_no_dest(ca_dir, tmp_path, capsys, monkeypatch):
    d = _copy(ca_dir, tmp_path)
    with pytest.raises(backup.BackupError):
        backup.backup_data_dir(str(d), str(tmp_path / "bk"), _fail_after=4)
    assert os.listdir(str(tmp_path)) == ["ca"]  # neither bk nor a temporary directory

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup, "snapshot_sqlite", boom)
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    one_line(rc, err)
    assert "No space left on device" in err and "ca.db" in err
    assert os.listdir(str(tmp_path)) == ["ca"]


# -- the check ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_backup(ca_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("good") / "bk"
    backup.backup_data_dir(str(ca_dir), str(dest))
    return dest


def _damage(d, kind):
    if kind == "truncated key":
        data = (d / "root.key").read_bytes()
        (d / "root.key").write_bytes(data[:len(data) // 2])
        return ("root.key", "damaged or truncated")
    if kind == "wrong key":
        (d / "server.key").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
        return ("server.key", "does not match", "server.pem")
    if kind == "wrong intermediate key":
        (d / "intermediate.key").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
        return ("intermediate.key", "does not match")
    if kind == "not a database":
        (d / "ca.db").write_bytes(b"this is not a database\n" * 100)
        return ("ca.db", "not an SQLite database")
    if kind == "damaged database pages":
        data = bytearray((d / "ca.db").read_bytes())
        for i in range(4096 + 100, len(data), 4096):  # every page after the first: garbage in the middle
            data[i:i + 200] = b"\xa5" * 200
        (d / "ca.db").write_bytes(bytes(data))
        return ("ca.db",)
    if kind == "missing root key":
        os.unlink(str(d / "root.key"))
        return ("root.key", "missing")
    if kind == "missing crl":
        os.unlink(str(d / "crl.pem"))
        return ("crl.pem", "missing", "manifest")
    if kind == "truncated certificate":
        data = (d / "intermediate.pem").read_bytes()
        (d / "intermediate.pem").write_bytes(data[:200])
        return ("intermediate.pem", "damaged")
    if kind == "edited password file":
        with open(str(d / "passwords"), "a") as f:
            f.write("mallory:est-lite:x:y:z\n")
        return ("passwords", "differs")
    if kind == "bad password file":
        (d / "passwords").write_text("not:a:password:line\n")
        return ("passwords", "damaged")
    if kind == "foreign root":
        other = d.parent / "other"
        init_ca(str(other)).store.close()
        shutil.copyfile(str(other / "root.pem"), str(d / "root.pem"))
        shutil.copyfile(str(other / "root.key"), str(d / "root.key"))
        return ("intermediate.pem", "not issued by the root")
    if kind == "damaged manifest":
        (d / backup.MANIFEST).write_text("{")
        return (backup.MANIFEST, "damaged")
    raise AssertionError(kind)


DAMAGE = ["truncated key", "wrong key", "wrong intermediate key", "not a database", "damaged database pages",
          "missing root key", "missing crl", "truncated certificate", "edited password file", "bad password file",
          "foreign root", "damaged manifest"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_verify_names_each_kind_of_damage(good_backup, tmp_path, capsys, kind):
    d = tmp_path / "bk"
    shutil.copytree(str(good_backup), str(d))
    rc, out, err = cli(capsys, "ca", "verify", str(d))
    assert rc == 0 and "backup OK" in out, err
    words = _damage(d, kind)
    rc, out, err = cli(capsys, "ca", "verify", str(d))
    one_line(rc, err)
    for w in words:
        assert w in err, (kind, err)
    # and restoring it is refused, leaving nothing behind
    rc, out, err = cli(capsys, "ca", "restore", str(d), "--data-dir", str(tmp_path / "restored"))
    one_line(rc, err)
    assert not os.path.exists(str(tmp_path / "restored"))
    assert sorted(os.listdir(str(tmp_path))) == ["bk"] + (["other"] if kind == "foreign root" else [])


def test_verify_as_a_subprocess_and_on_a_live_data_dir(good_backup, ca_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "ca", "verify", str(good_backup)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "3 certificates" in p.stdout and "1 revocations" in p.stdout, p.stderr
    d = _copy(ca_dir, tmp_path)
    (d / "root.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "ca", "verify", "--data-dir", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "root.key" in p.stderr, p.stderr


def test_backup_checked_with_sqlite3_and_openssl(good_backup):
    d = good_backup
    db = str(d / "ca.db")
    r = subprocess.run(["sqlite3", db, "PRAGMA integrity_check"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = subprocess.run(["sqlite3", db, "SELECT COUNT(*) FROM certs; SELECT COUNT(*) FROM revocations"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["3", "1"]
    for stem in ("root", "intermediate", "server", "ra"):
        k = subprocess.run(["openssl", "pkey", "-in", str(d / (stem + ".key")), "-pubout"], capture_output=True,
                           timeout=30)
        c = subprocess.run(["openssl", "x509", "-in", str(d / (stem + ".pem")), "-noout", "-pubkey"],
                           capture_output=True, timeout=30)
        assert k.returncode == 0 and c.returncode == 0 and k.stdout == c.stdout and b"PUBLIC KEY" in k.stdout, stem
    r = subprocess.run(["openssl", "verify", "-CAfile", str(d / "root.pem"), "-untrusted", str(d / "intermediate.pem"),
                        str(d / "server.pem")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["openssl", "crl", "-in", str(d / "crl.pem"), "-noout", "-CAfile", str(d / "intermediate.pem")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "verify OK" in r.stdout + r.stderr, r.stdout + r.stderr


# -- restore ------------------------------------------------------------------------------------


def test_restored_ca_issues_revokes_and_keeps_revocations(good_backup, tmp_path, capsys):
    target = tmp_path / "restored"
    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target))
    assert rc == 0, err
    assert "restored %s into %s" % (good_backup, target) in out
    assert "WARNING: this CA is now as it was at" in err and "revocations made after that are lost" in err
    assert _mode(str(target)) == 0o700 and _mode(str(target / "root.key")) == 0o600
    assert _mode(str(target / "ca.db")) == 0o600
    assert not (target / backup.MANIFEST).exists()
    in_backup = _serials(str(good_backup / "ca.db"))
    revoked_in_backup = _revoked(str(good_backup / "ca.db"))
    assert len(revoked_in_backup) == 1
    ca = LocalCA(str(target))
    try:
        new = []
        for i in range(5):
            key = ec.generate_private_key(ec.SECP256R1())
            new.append("%x" % ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=after-%d" % i))
                       .serial_number)
        assert not set(new) & in_backup
        ca.revoke(new[0], "superseded")
        crl = ca.crl()
    finally:
        ca.store.close()
    listed = set("%x" % r.serial_number for r in crl)
    assert listed == revoked_in_backup | {new[0]}
    rc, out, err = cli(capsys, "ca", "crl", "--data-dir", str(target), "--out", str(target / "crl.pem"))
    assert rc == 0, err
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", str(target))
    assert rc == 0 and "8 certificates" in out and "2 revocations" in out, (out, err)


def test_restore_onto_an_existing_ca_needs_force_and_moves_it_aside(good_backup, tmp_path, capsys):
    target = tmp_path / "ca"
    assert cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target))[0] == 0
    ca = LocalCA(str(target))  # this CA goes on after the backup
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        later = "%x" % ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=later")).serial_number
        ca.revoke(later, "keyCompromise")
        old_revoked = sorted(_revoked(str(good_backup / "ca.db")))[0]
        ca.store.next_crl_number()
        ca.store.next_crl_number()
        ca.store.next_crl_number()
    finally:
        ca.store.close()
    before = sorted(os.listdir(str(target)))
    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target))
    one_line(rc, err)
    assert "--force" in err and "not empty" in err
    assert sorted(os.listdir(str(target))) == before and later in _serials(str(target / "ca.db"))

    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target), "--force")
    assert rc == 0, err
    aside = [n for n in os.listdir(str(tmp_path)) if n.startswith("ca.replaced-")]
    assert len(aside) == 1 and "moved to %s" % (tmp_path / aside[0]) in out
    assert later in _serials(str(tmp_path / aside[0] / "ca.db"))  # nothing deleted
    assert later not in _serials(str(target / "ca.db"))
    assert "1 certificate(s) of the replaced store are not in the backup (serials: %s)" % later in err
    assert "--merge-from %s" % (tmp_path / aside[0]) in err
    assert old_revoked in _revoked(str(target / "ca.db"))
    # CRL numbers never go back: the replaced store had used more
    ca = LocalCA(str(target))
    try:
        assert ca.store.next_crl_number() == 5
    finally:
        ca.store.close()

    # the restore can keep what the replaced store had: --merge-from
    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target), "--force",
                       "--merge-from", str(tmp_path / aside[0]))
    assert rc == 0, err
    assert "merged:       1 certificates and 1 revocations" in out
    assert later in _serials(str(target / "ca.db")) and later in _revoked(str(target / "ca.db"))
    assert cli(capsys, "ca", "verify", "--data-dir", str(target))[0] == 0


def test_merge_from_another_ca_is_refused(good_backup, tmp_path, capsys):
    other = tmp_path / "other"
    init_ca(str(other)).store.close()
    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(tmp_path / "t"),
                       "--merge-from", str(other))
    one_line(rc, err)
    assert "another CA" in err and not (tmp_path / "t").exists()


def test_failed_restore_leaves_the_old_directory(good_backup, tmp_path, capsys, monkeypatch):
    target = tmp_path / "ca"
    assert cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target))[0] == 0
    (target / "marker").write_text("the CA before")
    calls = []
    real = backup._copy_file

    def failing(src, dst, mode):
        calls.append(src)
        if len(calls) == 5:
            raise OSError(5, "Input/output error")
        return real(src, dst, mode)

    monkeypatch.setattr(backup, "_copy_file", failing)
    rc, out, err = cli(capsys, "ca", "restore", str(good_backup), "--data-dir", str(target), "--force")
    one_line(rc, err)
    assert "Input/output error" in err
    assert (target / "marker").read_text() == "the CA before"
    assert sorted(os.listdir(str(tmp_path))) == ["ca"]  # no half-restored directory, no temporary one


def test_backup_of_a_proxy_data_dir(tmp_path, capsys):
    """A proxy's data directory: its password file and proxy-state.sqlite (WAL), no CA."""
    from est_lite_cpython.auth import PasswordFile
    from est_lite_cpython.proxy import _open_state as open_state  # the proxy's own state file

    d = tmp_path / "pdata"
    d.mkdir(mode=0o700)
    PasswordFile(str(d / "passwords"), iterations=1000).set_password("dev", "pw", "est-lite")
    # the proxy's own TLS identity kept in its data directory, and a public key file: no CA files needed
    up = tmp_path / "upstream"
    init_ca(str(up)).store.close()
    shutil.copyfile(str(up / "server.pem"), str(d / "server.pem"))
    shutil.copyfile(str(up / "server.key"), str(d / "server.key"))
    (d / "pub.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    db = open_state(str(d / "proxy-state.sqlite"))
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("INSERT INTO pending_owners VALUES ('k1', 'dev', 1)")
        rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
        assert rc == 0, err
    finally:
        db.close()
    c = sqlite3.connect(str(tmp_path / "bk" / "proxy-state.sqlite"))
    assert c.execute("SELECT key FROM pending_owners").fetchall() == [("k1",)]
    c.close()
    assert _mode(str(tmp_path / "bk" / "proxy-state.sqlite")) == 0o600
    rc, out, err = cli(capsys, "ca", "verify", str(tmp_path / "bk"))
    assert rc == 0 and "backup OK" in out and "files:        5 checked" in out, (out, err)
    (tmp_path / "bk" / "server.key").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    rc, out, err = cli(capsys, "ca", "verify", str(tmp_path / "bk"))
    one_line(rc, err)
    assert "server.key does not match" in err


# -- a directory that changes, or is damaged, while it is copied ---------------------------------


def test_a_copy_torn_by_a_change_is_taken_again(ca_dir, tmp_path, capsys, monkeypatch):
    """`ca issue --force --out DIR/server` replacing server.pem/.key while
    the backup copies them: the first copy has the old key with the new
    certificate, fails the check, and is taken again."""
    d = _copy(ca_dir, tmp_path)
    real = backup._copy_file
    swapped = []

    def copy(src, dst, mode):
        if os.path.basename(src) == "server.key" and not swapped:
            r = real(src, dst, mode)  # the old key is copied, then the pair changes
            from est_lite_cpython.cli import main

            assert main(["ca", "issue", "--data-dir", str(d), "--cn", "localhost", "--eku", "serverAuth",
                         "--dns", "localhost", "--out", str(d / "server"), "--force"]) == 0
            swapped.append(1)
            return r
        return real(src, dst, mode)

    monkeypatch.setattr(backup, "_copy_file", copy)
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    assert rc == 0 and err == "", err
    assert swapped == [1]
    assert (tmp_path / "bk" / "server.key").read_bytes() == (d / "server.key").read_bytes()
    assert (tmp_path / "bk" / "server.pem").read_bytes() == (d / "server.pem").read_bytes()
    assert backup.verify(str(tmp_path / "bk"))["store"]["certificates"] == 4
    assert sorted(os.listdir(str(tmp_path))) == ["bk", "ca"]


def test_a_file_renamed_away_during_the_copy_is_taken_again(ca_dir, tmp_path, capsys, monkeypatch):
    d = _copy(ca_dir, tmp_path)
    real = backup._copy_file
    calls = []

    def copy(src, dst, mode):
        if os.path.basename(src) == "crl.pem":
            calls.append(src)
            if len(calls) == 1:  # listed, then gone when read (renamed away and back, as a rewrite may)
                os.rename(src, src + ".away")
                try:
                    return real(src, dst, mode)
                finally:
                    os.rename(src + ".away", src)
        return real(src, dst, mode)

    monkeypatch.setattr(backup, "_copy_file", copy)
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    assert rc == 0 and err == "", err
    assert len(calls) == 2 and (tmp_path / "bk" / "crl.pem").read_bytes() == (d / "crl.pem").read_bytes()
    assert sorted(os.listdir(str(tmp_path))) == ["bk", "ca"]


def test_a_directory_that_keeps_changing_gives_no_backup(ca_dir, tmp_path, capsys, monkeypatch):
    d = _copy(ca_dir, tmp_path)
    real = backup._copy_file

    def copy(src, dst, mode):
        if os.path.basename(src) == "server.pem":  # every copy gets a certificate of another key
            key = ec.generate_private_key(ec.SECP256R1())
            ca = LocalCA(str(d))
            try:
                c = ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=localhost"))
            finally:
                ca.store.close()
            with open(dst, "wb") as f:
                f.write(c.public_bytes(serialization.Encoding.PEM))
            os.chmod(dst, mode)
            return backup._file_digest(dst)
        return real(src, dst, mode)

    monkeypatch.setattr(backup, "_copy_file", copy)
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    one_line(rc, err)
    assert "changed during each of 3 copies" in err and "server.key does not match" in err
    assert sorted(os.listdir(str(tmp_path))) == ["ca"]


def test_a_damaged_data_dir_is_still_backed_up_and_says_so(ca_dir, tmp_path, capsys):
    d = _copy(ca_dir, tmp_path)
    (d / "passwords").write_text("not:a:password:line\n")
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    one_line(rc, err)
    assert "the data directory fails the check" in err and str(d / "passwords") in err
    assert (tmp_path / "bk" / "passwords").read_text() == "not:a:password:line\n"  # a faithful copy
    assert (tmp_path / "bk" / "root.key").read_bytes() == (d / "root.key").read_bytes()
    m = json.loads((tmp_path / "bk" / backup.MANIFEST).read_text())
    assert "passwords" in m["problem"]


# -- a root key rollover (ca rollover) -------------------------------------------------------------


def test_backup_and_restore_after_a_root_key_rollover(tmp_path, capsys):
    from est_lite_cpython.ca import rollover_ca

    d = tmp_path / "ca"
    ca = init_ca(str(d), intermediate=True)
    key = ec.generate_private_key(ec.SECP256R1())
    old_leaf = ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=before-rollover"))
    ca.store.close()
    assert cli(capsys, "ca", "revoke", "%x" % old_leaf.serial_number, "--data-dir", str(d))[0] == 0
    rollover_ca(str(d)).store.close()
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    assert rc == 0, err
    for f in ("root-old.pem", "root-old.key", "root-new-with-old.pem", "root-old-with-new.pem", "intermediate-old.pem"):
        assert f in out and (tmp_path / "bk" / f).read_bytes() == (d / f).read_bytes()
    assert _mode(str(tmp_path / "bk" / "root-old.key")) == 0o600
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "r"))
    assert rc == 0, err
    r = LocalCA(str(tmp_path / "r"))
    try:
        assert r.old_root is not None and r.root.public_key() != r.old_root.public_key()
        assert r.is_revoked(old_leaf)
    finally:
        r.store.close()
    # the old root's key does not match the new root: caught
    shutil.copyfile(str(d / "root-old.key"), str(tmp_path / "bk" / "root.key"))
    rc, out, err = cli(capsys, "ca", "verify", str(tmp_path / "bk"))
    one_line(rc, err)
    assert "root.key does not match" in err


def test_backup_during_a_rollover(tmp_path, capsys, monkeypatch):
    """Caught after the rollover's commit point (rollover.journal, some
    files renamed): the backup holds the rolled-over CA, as the next
    LocalCA would make it. Caught before it (staged files only): the
    previous CA, without the staging."""
    import est_lite_cpython.ca as CA
    from est_lite_cpython.ca import rollover_ca

    d = tmp_path / "ca"
    init_ca(str(d)).store.close()
    old_root = (d / "root.pem").read_bytes()
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the journal, two staged files, then a crash
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(CA.os, "replace", flaky)
    with pytest.raises(OSError):
        rollover_ca(str(d))
    monkeypatch.undo()
    assert (d / "rollover.journal").exists()
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk"), "--data-dir", str(d))
    assert rc == 0, err
    assert "a root key rollover was finishing its renames" in out
    bk = tmp_path / "bk"
    assert not (bk / "rollover.journal").exists() and not (bk / "rollover.new").exists()
    assert (bk / "root-old.pem").read_bytes() == old_root and (bk / "root.pem").read_bytes() != old_root
    assert (d / "rollover.journal").exists()  # the data directory itself is left as it was

    d2 = tmp_path / "ca2"
    init_ca(str(d2)).store.close()
    (d2 / "rollover.new").mkdir(mode=0o700)
    (d2 / "rollover.new" / "root.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nhalf")
    rc, out, err = cli(capsys, "ca", "backup", str(tmp_path / "bk2"), "--data-dir", str(d2))
    assert rc == 0, err
    assert "skipped: rollover.new (an unfinished root key rollover" in out
    assert set(os.listdir(str(tmp_path / "bk2"))) == \
        set(os.listdir(str(d2))) - {"rollover.new", "ca.db-wal", "ca.db-shm"} | {backup.MANIFEST}
    assert (d2 / "rollover.new" / "root.key").exists()  # left as it was
