"""docs/ca-backup.md and README "Run a server" followed literally by an
operator (brief AW): each test is a discrepancy found that way, and runs the
command lines est-lite itself printed."""

import os
import shlex
import shutil
import sqlite3

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_cli import cli, one_line

from est_lite_cpython.ca import LocalCA, init_ca


def _revoked(db):
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return set(r[0] for r in c.execute("SELECT serial FROM revocations"))
    finally:
        c.close()


def _printed_commands(err, marker):
    """The `est-lite ...` command lines of the WARNING lines containing marker."""
    return [shlex.split(line.split(": est-lite ", 1)[1]) for line in err.splitlines()
            if marker in line and ": est-lite " in line]


@pytest.fixture()
def ca_and_backup(tmp_path, capsys):
    d = tmp_path / "est-data"
    init_ca(str(d)).store.close()
    bk = tmp_path / "backups" / "est-2027-01-01"
    os.mkdir(str(tmp_path / "backups"))
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(bk))
    assert rc == 0, err
    return d, bk


def _issue(d, cn):
    ca = LocalCA(str(d))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        return "%x" % ca.issue_raw(key.public_key(), x509.Name.from_rfc4514_string("CN=" + cn)).serial_number
    finally:
        ca.store.close()


def test_ca_db_deleted_restore_prints_the_revocations_of_the_replaced_crl(ca_and_backup, tmp_path, capsys):
    """ca.db deleted after a keyCompromise revocation: the replaced
    directory's store cannot tell what the backup lacks, its crl.pem can;
    the restore prints the runnable revoke line (was: only the generic hint,
    the revoked device enrolled again)."""
    d, bk = ca_and_backup
    before = _issue(d, "after-backup")  # issued and revoked after the backup
    assert cli(capsys, "ca", "revoke", before, "--reason", "keyCompromise", "--data-dir", str(d))[0] == 0
    os.remove(str(d / "ca.db"))
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", str(d))
    one_line(rc, err)
    assert "this backup" not in err and "est-lite ca restore BACKUP --data-dir %s --force" % d in err
    rc, out, err = cli(capsys, "ca", "restore", str(bk), "--data-dir", str(d))
    one_line(rc, err)
    assert "--force" in err
    rc, out, err = cli(capsys, "ca", "restore", str(bk), "--data-dir", str(d), "--force")
    assert rc == 0, err
    lines = _printed_commands(err, "replaced directory's CRL")
    assert len(lines) == 1 and before in lines[0] and "--not-in-store" in lines[0], err
    assert before not in _revoked(str(d / "ca.db"))
    rc, out, err2 = cli(capsys, *lines[0])  # the line as printed
    assert rc == 0, err2
    assert before in _revoked(str(d / "ca.db"))


def test_verify_of_a_damaged_data_dir_leads_to_the_restore(ca_and_backup, capsys):
    """A key file overwritten in the live directory: `ca verify --data-dir`
    names the problem and the restore (was: the problem alone)."""
    d, bk = ca_and_backup
    with open(str(d / "server.key"), "wb") as f:
        f.write(open(str(d / "root.key"), "rb").read())
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", str(d))
    one_line(rc, err)
    assert "does not match" in err and "est-lite ca restore BACKUP --data-dir %s --force" % d in err, err
    argv = shlex.split(err.split(": est-lite ", 1)[1])
    argv[argv.index("BACKUP")] = str(bk)
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert cli(capsys, "ca", "verify", "--data-dir", str(d))[0] == 0
    # a backup keeps its own message: no restore hint about itself
    with open(str(bk / "passwords"), "ab") as f:
        f.write(b"x")
    rc, out, err = cli(capsys, "ca", "verify", str(bk))
    one_line(rc, err)
    assert "est-lite ca restore" not in err


def _printed(out, prefix):
    """argv of the line of out starting with prefix ('checked: ', 'next: '),
    up to the first double space (the comment after it)."""
    line = [ln for ln in out.splitlines() if ln.startswith(prefix)][0][len(prefix):]
    return shlex.split(line.split("   (")[0].replace(" passes", ""))


def test_printed_commands_run_as_printed_in_paths_with_spaces(tmp_path, capsys):
    """`ca init`, `ca backup` and `ca restore` into directories with spaces:
    each printed command line runs as printed (was: unquoted paths)."""
    d = tmp_path / "ca data"
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", str(d))
    assert rc == 0, err
    assert _printed(out, "next: ") == ["est-lite", "serve", "--data-dir", str(d)]
    bk = tmp_path / "my backups" / "est 2027-01-01"
    os.mkdir(str(tmp_path / "my backups"))
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(bk))
    assert rc == 0, err
    verify = _printed(out, "checked: ")
    restore = _printed(out, "restore: ")
    assert verify == ["est-lite", "ca", "verify", str(bk)], out
    assert restore == ["est-lite", "ca", "restore", str(bk), "--data-dir", str(d)], out
    assert cli(capsys, *verify[1:])[0] == 0
    shutil.rmtree(str(d))  # lost
    rc, out, err = cli(capsys, *restore[1:])
    assert rc == 0, err
    assert _printed(out, "next: ") == ["est-lite", "serve", "--data-dir", str(d)]


def test_restore_of_a_proxy_data_dir_names_the_proxy_not_a_ca(tmp_path, capsys):
    """`ca restore --config proxy.toml`: the next line starts the proxy with
    its config, not `serve --data-dir` (which would run a CA-less server
    without the config's TLS files); no "its newest certificate was issued -"
    about a CA that is not there."""
    from est_lite_cpython.proxy import _open_state

    up = tmp_path / "up"
    init_ca(str(up)).store.close()
    cfg = tmp_path / "proxy.toml"
    cfg.write_text('[ca]\ndata_dir = "pdata"\n[proxy]\nupstream = "https://127.0.0.1:8443"\n'
                   'upstream_ca = "up/root.pem"\nra_cert = "ra.pem"\nra_key = "ra.key"\n')
    assert cli(capsys, "ca", "passwd", "--config", cfg, "dev", "--password", "pw")[0] == 0
    _open_state(str(tmp_path / "pdata" / "proxy-state.sqlite")).close()
    assert cli(capsys, "ca", "backup", tmp_path / "bk", "--config", cfg)[0] == 0
    rc, out, err = cli(capsys, "ca", "restore", tmp_path / "bk", "--config", cfg, "--force")
    assert rc == 0, err
    assert _printed(out, "next: ") == ["est-lite", "proxy", "--config", str(cfg)], out
    assert "certificate" not in err and "this data directory is now as it was at" in err, err
    shutil.rmtree(str(tmp_path / "pdata"))
    rc, out, err = cli(capsys, "ca", "restore", tmp_path / "bk", "--data-dir", tmp_path / "pdata")
    assert rc == 0, err
    assert "est-lite serve" not in out and "est-lite proxy --config FILE" in out, out
    # a CA restored with its server config: serve with that config
    scfg = tmp_path / "server.toml"
    scfg.write_text('[ca]\ndata_dir = "up"\n')
    assert cli(capsys, "ca", "backup", tmp_path / "upbk", "--config", scfg)[0] == 0
    rc, out, err = cli(capsys, "ca", "restore", tmp_path / "upbk", "--config", scfg, "--force")
    assert rc == 0, err
    assert _printed(out, "next: ") == ["est-lite", "serve", "--config", str(scfg)], out


@pytest.mark.parametrize("junk", [b"junk\n", b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"])
def test_a_damaged_crl_pem_is_written_again_as_printed(ca_and_backup, tmp_path, capsys, junk):
    """crl.pem damaged in the live directory: the line says to write it
    again with `ca crl --data-dir DIR --out DIR/crl.pem` (was: "run est-lite
    ca crl --out FILE after restoring", which writes the default est-data's
    CRL, or a generic "not PEM"); in a backup it says the backup cannot be
    restored (restore refuses it), not "after restoring"."""
    d, bk = ca_and_backup
    (d / "crl.pem").write_bytes(junk)
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", str(d))
    one_line(rc, err)
    argv = shlex.split(err.split(": est-lite ", 1)[1])
    assert argv == ["ca", "crl", "--data-dir", str(d), "--out", str(d / "crl.pem")], err
    assert cli(capsys, *argv)[0] == 0
    assert cli(capsys, "ca", "verify", "--data-dir", str(d))[0] == 0
    (d / "crl.pem").write_bytes(junk)
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(tmp_path / "bk2"))
    assert rc == 1
    rc, out, err = cli(capsys, "ca", "verify", str(tmp_path / "bk2"))
    one_line(rc, err)
    assert "cannot be restored" in err and "after restoring" not in err, err
    rc, out, err = cli(capsys, "ca", "restore", str(tmp_path / "bk2"), "--data-dir", str(tmp_path / "r"))
    one_line(rc, err)


def test_a_root_restore_keeps_the_server_users_ownership(ca_and_backup, tmp_path, capsys):
    """`sudo est-lite ca restore --force` over a directory the server's user
    owns: the restored files are that user's (was: root's 0600 files, which
    the server running as its user could not open). Not root: the files are
    the caller's, as before."""
    d, bk = ca_and_backup
    uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    for dirpath, dirnames, filenames in os.walk(str(d)):
        for n in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            os.chown(n, uid, gid)
    rc, out, err = cli(capsys, "ca", "restore", str(bk), "--data-dir", str(d), "--force")
    assert rc == 0, err
    for n in os.listdir(str(d)):
        st = os.stat(str(d / n))
        assert (st.st_uid, st.st_gid) == (uid, gid), n
    st = os.stat(str(d))
    assert (st.st_uid, st.st_gid) == (uid, gid)
    if os.geteuid() == 0:
        assert "owner:        uid 65534, gid 65534, as the directory it replaces" in out


def test_the_readme_backup_line_twice_a_day_into_a_new_directory(ca_and_backup, tmp_path, capsys):
    """A dated backup line (README had `ca backup --data-dir est-data
    /backups/est-$(date +%F)`): the first run on a host without the parent
    directory, and a second run the same day, each fail with the command or
    name that works (was: the problem alone)."""
    d, _bk = ca_and_backup
    dest = tmp_path / "no backups" / "est-2027-01-01"
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(dest))
    one_line(rc, err)
    mkdir = shlex.split(err.split("(mkdir -p ", 1)[1].split("),", 1)[0])
    assert mkdir == [str(tmp_path / "no backups")], err
    os.makedirs(mkdir[0])
    assert cli(capsys, "ca", "backup", "--data-dir", str(d), str(dest))[0] == 0
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(dest))
    one_line(rc, err)
    new = shlex.split(err.split("e.g. with the time: ", 1)[1])
    assert len(new) == 1 and new[0].startswith(str(dest) + "-"), err
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), new[0])
    assert rc == 0, err


def test_a_copied_backup_with_an_added_file_says_so(ca_and_backup, tmp_path, capsys):
    """A backup copied with `cp -r` and a file added to it (notes, a stray
    key): verify still passes (the manifest's files are intact) but names
    the file it could not compare (was: "7 checked, sizes and SHA-256 as
    written", the added file silently restored into the data directory)."""
    d, bk = ca_and_backup
    cp = tmp_path / "copied"
    shutil.copytree(str(bk), str(cp))  # cp -r
    rc, out, err = cli(capsys, "ca", "verify", str(cp))
    assert rc == 0 and "sizes and SHA-256 as written" in out and "not in the manifest" not in out, (out, err)
    (cp / "NOTES.txt").write_text("taken before the upgrade\n")
    rc, out, err = cli(capsys, "ca", "verify", str(cp))
    assert rc == 0, err
    assert "not in the manifest (put there after the backup; a restore copies them): NOTES.txt" in out, out
    assert ", sizes and SHA-256 as written" not in out


def test_backup_of_a_directory_whose_ca_db_is_an_empty_database(ca_and_backup, tmp_path, capsys):
    """ca.db deleted under a running server, which then opened a new, empty
    one: `ca backup` keeps the faithful copy and says what is wrong in one
    line, exit 1 (was: internal error OperationalError: no such table)."""
    d, _bk = ca_and_backup
    os.remove(str(d / "ca.db"))
    sqlite3.connect(str(d / "ca.db")).execute("CREATE TABLE t(x)").connection.close()
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", str(d), str(tmp_path / "bk2"))
    one_line(rc, err)
    assert "faithful copy" in err and "no certs table" in err, err
    assert os.path.exists(str(tmp_path / "bk2" / "ca.db"))


def test_the_documented_openssl_check_of_a_backup_without_intermediate(ca_and_backup):
    """docs/ca-backup.md's openssl line for the default CA (no
    intermediate): it said `-untrusted BACKUP/intermediate.pem`, a file a
    default `ca init` does not make (openssl: No such file)."""
    import subprocess

    _d, bk = ca_and_backup
    assert not os.path.exists(str(bk / "intermediate.pem"))
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "ca-backup.md")).read()
    line = "openssl verify -CAfile BACKUP/root.pem BACKUP/server.pem"
    assert "`%s`" % line in " ".join(doc.split()), "the documented line changed"
    r = subprocess.run(line.replace("BACKUP", str(bk)).split(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "OK" in r.stdout, (r.stdout, r.stderr)


def test_revoke_of_a_serial_the_restored_store_lacks_prints_runnable_lines(ca_and_backup, tmp_path, capsys):
    """`ca revoke SERIAL` of a certificate issued after the backup: the
    refusal's two ways out name this directory and the reason asked for
    (was: without --data-dir, so they ran on the default est-data)."""
    d, bk = ca_and_backup
    later = _issue(d, "later")
    shutil.rmtree(str(d))
    assert cli(capsys, "ca", "restore", str(bk), "--data-dir", str(d))[0] == 0
    rc, out, err = cli(capsys, "ca", "revoke", later.upper(), "--reason", "keyCompromise", "--data-dir", str(d))
    one_line(rc, err)
    line = err.split("--not-in-store --reason", 1)[0].rsplit(", or est-lite ", 1)[1] + "--not-in-store --reason" + \
        err.split("--not-in-store --reason", 1)[1].rstrip(")\n")
    argv = shlex.split(line)
    assert argv == ["ca", "revoke", later, "--not-in-store", "--reason", "keyCompromise", "--data-dir", str(d)], err
    assert cli(capsys, *argv)[0] == 0
    assert later in _revoked(str(d / "ca.db"))


def test_a_backup_taken_with_config_prints_a_restore_with_config(tmp_path, capsys):
    """`ca backup --config server.toml`: the printed restore line keeps the
    config, so the restore's next line starts serve with it (was: --data-dir,
    and then `serve --data-dir` without the config's TLS files and profiles)."""
    d = tmp_path / "data"
    init_ca(str(d)).store.close()
    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nprocesses = 2\n')
    rc, out, err = cli(capsys, "ca", "backup", tmp_path / "bk", "--config", cfg)
    assert rc == 0, err
    restore = _printed(out, "restore: ")
    assert restore == ["est-lite", "ca", "restore", str(tmp_path / "bk"), "--config", str(cfg)], out
    shutil.rmtree(str(d))
    rc, out, err = cli(capsys, *restore[1:])
    assert rc == 0, err
    assert _printed(out, "next: ") == ["est-lite", "serve", "--config", str(cfg)], out
