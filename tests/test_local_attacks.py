"""A local attacker (another user of a shared gateway or factory station)
and a careless operator (umask 000, a data directory others can write)
against every file est-lite writes: a symlink, a hard link or a FIFO
planted at a key's or certificate's name or at its temporary name must
never be written through (no key in someone else's file, no /etc file
overwritten, no hang); keys are 0600 and certificates 0644 whatever the
umask. docs/server.md and docs/client-runtime.md, "Local attacks tried",
list what was tried and what happened.

The attacker's objects are planted in directories of the test (tmp_path):
the kernel's fs.protected_symlinks / protected_hardlinks (which protect
sticky world-writable directories like /tmp on most distributions) do not
apply there, as they do not in a data directory an operator made 0777."""

import os
import stat
import subprocess
import sys
import time

import pytest
from helpers_cli import cli, one_line

from est_lite_cpython import datalock

VICTIM = b"root:x:0:0:root:/root:/bin/bash\n"


def _victim(tmp_path, name="victim"):
    p = tmp_path / name
    p.write_bytes(VICTIM)
    os.chmod(str(p), 0o644)
    return p


def _mode(p):
    return stat.S_IMODE(os.lstat(str(p)).st_mode)


def _regular(p):
    return stat.S_ISREG(os.lstat(str(p)).st_mode)


class _Fifo:
    """A FIFO at `path` whose read end the attacker holds open (so a
    writer does not block): .drain() is what was written into it."""

    def __init__(self, path):
        os.mkfifo(str(path))
        self.fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK)

    def drain(self):
        out = b""
        while True:
            try:
                b = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            if not b:
                return out
            out += b

    def close(self):
        os.close(self.fd)


def _plant(kind, at, tmp_path):
    """Plant a `kind` object at `at`; returns a function giving what the
    attacker got (bytes written into his object, or b"")."""
    if kind == "symlink":  # to an existing file (as root: /etc/passwd)
        v = _victim(tmp_path, "victim-" + at.name)
        os.symlink(str(v), str(at))
        return lambda: b"" if v.read_bytes() == VICTIM else v.read_bytes()
    if kind == "dangling":  # to a file the attacker will read once it is made
        v = tmp_path / ("stolen-" + at.name)
        os.symlink(str(v), str(at))
        return lambda: v.read_bytes() if os.path.exists(str(v)) else b""
    if kind == "hardlink":
        v = _victim(tmp_path, "victim-" + at.name)
        os.link(str(v), str(at))
        return lambda: b"" if v.read_bytes() == VICTIM else v.read_bytes()
    if kind == "fifo":
        f = _Fifo(at)
        return f.drain
    raise AssertionError(kind)


KINDS = ["symlink", "dangling", "hardlink", "fifo"]


# ---------------------------------------------------------------- ca init / issue


@pytest.mark.parametrize("name", ["root.pem", "server.key", "server.pem", "intermediate.key", "intermediate.pem"])
@pytest.mark.parametrize("kind", KINDS)
def test_ca_init_never_writes_through_what_is_planted(tmp_path, capsys, name, kind):
    """`ca init` into an existing directory others could write: a key or
    certificate name holding a link or FIFO. The old code opened with
    O_TRUNC and followed it: server.key -> a file of the attacker put the
    TLS key there (as root, fchmod even succeeded on his file), root.pem ->
    /etc/passwd overwrote it, a FIFO with a reader got the key."""
    d = tmp_path / "ca"
    d.mkdir()
    got = _plant(kind, d / name, tmp_path)
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", d, "--intermediate")
    assert rc == 0, err
    assert got() == b""  # nothing of ours reached the attacker's object
    assert _regular(d / name) and _mode(d / name) == (0o600 if name.endswith(".key") else 0o644)
    assert os.stat(str(d / name)).st_nlink == 1


@pytest.mark.parametrize("kind", KINDS)
def test_ca_init_root_key_link(tmp_path, capsys, kind):
    """root.key is checked ("a CA already exists") only when it resolves to
    a file: a dangling link, a FIFO passed the check and the root key went
    through it. Now: refused or replaced, never written through."""
    d = tmp_path / "ca"
    d.mkdir()
    got = _plant(kind, d / "root.key", tmp_path)
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", d)
    assert got() == b""
    if rc == 0:
        assert _regular(d / "root.key") and _mode(d / "root.key") == 0o600
    else:
        one_line(rc, err)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_whatever_the_umask(tmp_path, capsys, umask):
    """Keys 0600, certificates and CRLs 0644 (0600 under umask 077 is
    fine), directories 0700. Under umask 000 the old code left root.pem,
    server.pem and `ca issue`'s certificate 0666: any local user could
    replace the trust anchor clients are given."""
    old = os.umask(umask)
    try:
        d = tmp_path / "ca"
        rc, out, err = cli(capsys, "ca", "init", "--data-dir", d, "--intermediate")
        assert rc == 0, err
        rc, out, err = cli(capsys, "ca", "issue", "--data-dir", d, "--cn", "ra", "--out", tmp_path / "ra")
        assert rc == 0, err
        rc, out, err = cli(capsys, "ca", "crl", "--data-dir", d, "--out", tmp_path / "crl.pem")
        assert rc == 0, err
        rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", d)
        assert rc == 0, err
    finally:
        os.umask(old)
    assert _mode(d) == 0o700
    files = [d / f for f in os.listdir(str(d))] + [tmp_path / "ra.pem", tmp_path / "ra.key", tmp_path / "crl.pem"]
    for p in files:
        m = _mode(p)
        assert not m & 0o022, (p, oct(m))  # nothing writable by others
        if p.name.endswith(".key") or p.name.startswith("ca.db") or p.name in ("passwords", "server.lock"):
            assert m == 0o600, (p, oct(m))
        elif p.name.endswith(".pem"):
            assert m in (0o644, 0o600 if umask == 0o077 else 0o644), (p, oct(m))


@pytest.mark.parametrize("kind", KINDS)
def test_ca_issue_out_links(tmp_path, capsys, kind):
    """`ca issue --out /tmp/ra --force`: ra.key and ra.pem planted."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    got_key = _plant(kind, tmp_path / "ra.key", tmp_path)
    got_pem = _plant(kind, tmp_path / "ra.pem", tmp_path)
    rc, out, err = cli(capsys, "ca", "issue", "--data-dir", d, "--cn", "ra", "--out", tmp_path / "ra", "--force")
    assert rc == 0, err
    assert got_key() == b"" and got_pem() == b""
    assert _mode(tmp_path / "ra.key") == 0o600 and _mode(tmp_path / "ra.pem") == 0o644


def test_passwords_tmp_link(tmp_path, capsys, monkeypatch):
    """The password file (its Digest HA1 values are password-equivalent)
    is written to passwords.tmp, then renamed: a link planted there got
    them."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    got = _plant("dangling", d / "passwords.tmp", tmp_path)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    rc, out, err = cli(capsys, "ca", "passwd", "--data-dir", d, "alice", "--password", "s3cret-pw")
    assert rc == 0, err
    assert got() == b"" and _mode(d / "passwords") == 0o600


# ---------------------------------------------------------------- rollover staging


def test_rollover_stage_link_does_not_empty_another_directory(tmp_path, capsys):
    """rollover.new (the staging directory, removed before each rollover)
    as a symlink to another directory: the old code deleted every file in
    that directory, then failed with a traceback."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_bytes(VICTIM)
    os.symlink(str(other), str(d / "rollover.new"))
    rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", d)
    assert rc == 0, err
    assert (other / "keep.txt").read_bytes() == VICTIM


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink"])
def test_rollover_journal_tmp_link(tmp_path, capsys, kind):
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    got = _plant(kind, d / "rollover.journal.tmp", tmp_path)
    rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", d)
    assert rc == 0, err
    assert got() == b""


# ---------------------------------------------------------------- the data directory's lock


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_lock_file_planted(tmp_path, capsys, kind):
    """server.lock gets 'PID what' written into it (truncated first): a
    symlink or hard link to /etc/passwd lost that file. Now refused with
    one line naming the file; the victim is unchanged."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    if os.path.lexists(str(d / "server.lock")):
        os.unlink(str(d / "server.lock"))
    got = _plant(kind, d / "server.lock", tmp_path)
    rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", d)
    one_line(rc, err)
    assert "server.lock" in err and "remove it" in err
    assert got() == b""
    with pytest.raises(datalock.LocalProtocolError):
        datalock.hold_shared(str(d), "est-lite serve")
    assert got() == b""


def test_lock_file_is_a_plain_private_file(tmp_path):
    fd = datalock.hold_shared(str(tmp_path), "est-lite serve")
    try:
        assert _regular(tmp_path / "server.lock") and _mode(tmp_path / "server.lock") == 0o600
        assert datalock.holder(str(tmp_path))[1] == "est-lite serve"
    finally:
        os.close(fd)


# ---------------------------------------------------------------- serve --port-file


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_serve_port_file_link(tmp_path, capsys, kind):
    """`est-lite serve --port-file /tmp/est.port`: a symlink or hard link
    planted there had the port number written through it (as root: over
    /etc/passwd). Now the file is replaced, written whole."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    pf = tmp_path / "est.port"
    got = _plant(kind, pf, tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(d), "--host", "127.0.0.1", "--port", "0",
                          "--port-file", str(pf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60  # a guard against a hang, not a timing assert
        while time.monotonic() < end and p.poll() is None and not got() and not (
                _regular(pf) and os.stat(str(pf)).st_nlink == 1 and pf.read_bytes().strip()):
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()
    finally:
        p.terminate()
        p.wait()
    assert got() == b""
    assert _regular(pf) and int(pf.read_bytes()) > 0 and _mode(pf) == 0o644


# ---------------------------------------------------------------- a directory every user may write


def test_ca_init_refuses_a_world_writable_data_dir(tmp_path, capsys):
    """`ca init --data-dir /tmp` (or a 0777 directory): anyone could
    replace root.pem or the keys afterwards. Refused, nothing written."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(str(d), 0o1777)
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", d)
    one_line(rc, err)
    assert "writable by every user (mode 1777)" in err
    assert not [n for n in os.listdir(str(d)) if n != "server.lock"]


def test_client_refuses_a_world_writable_out(est_server, tmp_path, capsys):
    """A store in /tmp itself: another user plants manifest + ca.N, and the
    next command without --trust takes his CA certificate as its trust
    anchor. Refused before any network traffic, for --out and the library
    (CredStore.load / save)."""
    from est_lite_cpython.credstore import CredStore, StoreError

    srv = est_server
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(str(d), 0o777)
    rc, out, err = cli(capsys, "cacerts", "--server", "https://localhost:%d" % srv.port, "--trust", srv.root_pem,
                       "--out", d)
    one_line(rc, err)
    assert "writable by every user (mode 0777)" in err and os.listdir(str(d)) == []
    for f in (CredStore(str(d)).load, lambda: CredStore(str(d)).save(ca=[b"0"]), CredStore(str(d)).check_writable):
        with pytest.raises(StoreError, match="writable by every user"):
            f()
    assert os.listdir(str(d)) == []


# ---------------------------------------------------------------- the client's --out (credential store + PEM copies)


@pytest.mark.parametrize("kind", KINDS)
def test_enroll_out_never_writes_through_what_is_planted(est_server, tmp_path, capsys, kind):
    """Every name an enrollment writes in --out (store parts of generation
    1 and 2, manifest.tmp, the PEM copies and their .tmp names) holding a
    link or FIFO: nothing reaches the attacker, every file is 0600. (Already
    so: credstore and write_file_atomic remove what is there and create
    with O_EXCL | O_NOFOLLOW; kept as a regression test.)"""
    from est_lite_cpython.credstore import CredStore
    from helpers_server import PASSWORD, USER

    srv = est_server
    d = tmp_path / "dev"
    d.mkdir(mode=0o700)
    names = ["key.1", "cert.1", "ca.1", "key.2", "cert.2", "ca.2", "manifest.tmp", "key.pem", "key.pem.tmp",
             "cert.pem.tmp", "ca.pem"]
    got = [_plant(kind, d / n, tmp_path) for n in names]
    argv = ("enroll", "--server", "https://localhost:%d" % srv.port, "--trust", srv.root_pem, "--user", USER,
            "--password", PASSWORD, "--cn", "dev-1", "--out", d)
    if kind == "fifo":
        # load() reads manifest.tmp when there is no manifest (a commit cut
        # on FAT): the old code's open() waited for a writer forever
        rc, out, err = cli(capsys, *argv)
        one_line(rc, err)
        assert "manifest.tmp is not a plain file" in err
        os.unlink(str(d / "manifest.tmp"))
    old = os.umask(0)
    try:
        rc, out, err = cli(capsys, *argv)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert [g() for g in got] == [b""] * len(names)
    c = CredStore(str(d)).load()
    assert c is not None and c.key
    for n in os.listdir(str(d)):
        if _regular(d / n):
            assert _mode(d / n) == 0o600 and os.stat(str(d / n)).st_nlink == 1, n


def test_write_file_atomic_pre_created_temp_name(tmp_path):
    """write_file_atomic (PEM copies, pending-key.pem, pending.json, CRLs,
    port files) with the attacker's objects at the final and the temporary
    name; umask 000: a key file is 0600, a public one 0644."""
    from est_lite_cpython.credstore import write_file_atomic

    for kind in KINDS:
        d = tmp_path / kind
        d.mkdir()
        got = [_plant(kind, d / "pending-key.pem", tmp_path), _plant(kind, d / "pending-key.pem.tmp", tmp_path)]
        old = os.umask(0)
        try:
            write_file_atomic(str(d / "pending-key.pem"), b"SECRET KEY")
            write_file_atomic(str(d / "crl.pem"), b"crl", 0o644)
        finally:
            os.umask(old)
        assert [g() for g in got] == [b"", b""], kind
        assert (d / "pending-key.pem").read_bytes() == b"SECRET KEY" and _mode(d / "pending-key.pem") == 0o600
        assert _mode(d / "crl.pem") == 0o644
        assert sorted(os.listdir(str(d))) == ["crl.pem", "pending-key.pem"]


def test_new_store_wal_and_shm_are_private(tmp_path):
    """ca.db holds every CSR (a challengePassword too) and certificate:
    SQLite gives -wal and -shm the database file's mode, and the old code
    made ca.db 0600 only after SQLite had created it (and its -wal/-shm:
    0644) with the umask, so while that first process ran (ca init, a
    server's first start in-process) they were readable by every user
    when the data directory was not 0700 (mkdir under umask 022)."""
    from est_lite_cpython.store import Store

    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        s = Store(str(d / "ca.db"))
    finally:
        os.umask(old)
    try:
        names = sorted(n for n in os.listdir(str(d)) if n.startswith("ca.db"))
        assert "ca.db-wal" in names and "ca.db-shm" in names, names
        assert {n: _mode(d / n) for n in names} == {n: 0o600 for n in names}
    finally:
        s.close()


# ---------------------------------------------------------------- secrets in logs and output


def test_no_password_or_key_in_debug_logs_or_output(est_server, tmp_path, capsys, caplog):
    """An enrollment with a password (HTTP Basic) and a serverkeygen, -v
    and every logger at DEBUG: neither the password (nor its base64 in the
    Authorization header) nor a private key shows in the log records, on
    stdout (--json too) or on stderr. (Already so; a regression test.)"""
    import base64
    import logging

    from est_lite_cpython.credstore import CredStore
    from helpers_server import PASSWORD, USER

    srv = est_server
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
    seen = []
    for op, out in (("enroll", "a"), ("serverkeygen", "b")):
        rc, o, err = cli(capsys, op, "-v", "--server", "https://localhost:%d" % srv.port, "--trust", srv.root_pem,
                         "--user", USER, "--password", PASSWORD, "--cn", "dev-" + out, "--out", tmp_path / out,
                         "--json")
        assert rc == 0, err
        key = CredStore(str(tmp_path / out)).load().key
        seen.append((o + err + caplog.text, key))
    assert "simpleenroll" in caplog.text and "serverkeygen" in caplog.text  # the debug log did record the requests
    for text, key in seen:
        assert PASSWORD not in text and basic not in text
        assert base64.b64encode(key).decode()[:48] not in text.replace("\n", "")
        assert "PRIVATE KEY" not in text


# ---------------------------------------------------------------- MicroPython unix port (virtual boards)


def test_micropython_unix_port_store_files_follow_the_umask_so_the_board_dir_is_0700(tmp_path):
    """The MicroPython unix port has no os.chmod: its credential store's
    files (key.N) are 0666 & ~umask, 0644 under umask 022. A virtual or pty
    board's flash directory is what keeps the key private: it is made 0700
    (was 0755 under umask 022). A link planted at key.N is replaced, not
    written through (storeops picks a fresh generation and removes it);
    one at manifest.tmp is removed before the write (credstore._write)."""
    from helpers_mp import MICROPYTHON, ROOT

    from hil.boards import VirtualBoard

    old = os.umask(0o022)
    try:
        b = VirtualBoard(str(tmp_path / "work" / "board-1"))
    finally:
        os.umask(old)
    assert _mode(b.flash) == 0o700
    store = os.path.join(b.flash, "est")
    os.mkdir(store)
    got = _plant("symlink", tmp_path / "work" / "board-1" / "est" / "key.1", tmp_path)
    got_tmp = _plant("symlink", tmp_path / "work" / "board-1" / "est" / "manifest.tmp", tmp_path)
    script = tmp_path / "save.py"
    script.write_text("import sys\nsys.path[:0] = [%r, %r]\nfrom est_lite_mp.credstore import CredStore\n"
                      "s = CredStore(%r)\ns.save(key=bytes([48, 3, 2, 1, 1]), cert=None, ca=[])\n"
                      "print(s.load().gen)\n" % (str(ROOT), str(ROOT / "ports" / "micropython"), store))
    r = subprocess.run([MICROPYTHON, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert got() == b"" and not os.path.lexists(os.path.join(store, "key.1"))
    # manifest.tmp, written and renamed over manifest: the old code wrote the
    # manifest into the link's target and renamed the link, so `manifest`
    # became a symlink to a file outside the store
    assert got_tmp() == b"" and _regular(os.path.join(store, "manifest"))


# ---------------------------------------------------------------- ca backup / restore


@pytest.mark.parametrize("name", ["root.key", "ca.db", "server.pem"])
def test_backup_with_a_fifo_or_a_link_inside(tmp_path, capsys, name):
    """A backup directory where NAME is a FIFO: `ca verify` and `ca
    restore` waited forever for a writer (the old code opened it); now one
    line. NAME a symlink to a copy of the file elsewhere: the restored
    data directory holds a plain file (the backup's link is not carried
    into the CA), with its mode."""
    import shutil

    d, b = tmp_path / "ca", tmp_path / "b1"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    rc, out, err = cli(capsys, "ca", "backup", "--data-dir", d, b)
    assert rc == 0, err
    fifo = tmp_path / "b-fifo"
    shutil.copytree(str(b), str(fifo))
    os.unlink(str(fifo / name))
    os.mkfifo(str(fifo / name))
    for argv in (("ca", "verify", fifo), ("ca", "restore", fifo, "--data-dir", tmp_path / "r1")):
        rc, out, err = cli(capsys, *argv)
        one_line(rc, err)
        assert "%s in %s is not a regular file" % (name, fifo) in err
    assert not os.path.exists(str(tmp_path / "r1"))
    link = tmp_path / "b-link"
    shutil.copytree(str(b), str(link))
    os.rename(str(link / name), str(tmp_path / ("elsewhere-" + name)))
    os.symlink(str(tmp_path / ("elsewhere-" + name)), str(link / name))
    rc, out, err = cli(capsys, "ca", "restore", link, "--data-dir", tmp_path / "r2")
    assert rc == 0, err
    r = tmp_path / "r2" / name
    assert _regular(r) and _mode(r) == (0o644 if name.endswith(".pem") else 0o600)


def test_pending_files_after_a_202_hold_no_password(est_server, tmp_path, capsys, monkeypatch):
    """An enrollment left waiting for manual approval (202): its key in
    pending-key.pem (0600, even under umask 000) and the request in
    pending.json, which holds neither the password (given here through
    EST_PASSWORD, as /proc/PID/cmdline would show --password) nor the key."""
    import base64

    from helpers_server import PASSWORD, USER

    srv = est_server
    d = tmp_path / "dev"
    monkeypatch.setenv("EST_PASSWORD", PASSWORD)
    old = os.umask(0)
    try:
        rc, out, err = cli(capsys, "enroll", "--server", "https://localhost:%d/manual" % srv.port, "--trust",
                           srv.root_pem, "--user", USER, "--cn", "dev-9", "--out", d, "--deadline", "1")
    finally:
        os.umask(old)
    one_line(rc, err, 75)
    assert _mode(d) == 0o700 and _mode(d / "pending-key.pem") == 0o600 and _mode(d / "pending.json") == 0o600
    key_b64 = b"".join((d / "pending-key.pem").read_bytes().splitlines()[1:-1]).decode()
    req = (d / "pending.json").read_text()
    basic = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
    for text in (req, out, err):
        assert PASSWORD not in text and basic not in text and key_b64[:40] not in text


def test_proxy_warns_about_its_ra_key_and_a_config_with_the_upstream_password(tmp_path):
    """`est-lite serve` warns when a private file of its own is readable by
    other users; the proxy said nothing about its RA key (its identity at
    the CA) or a config holding proxy.upstream_auth = "user:password". Now
    the same one-line warning; the proxy still starts."""
    from helpers_proxy import write_proxy_dir
    from helpers_server import EstTestServer

    up = EstTestServer(tmp_path / "up")
    try:
        d = tmp_path / "px"
        cfg = write_proxy_dir(up, d)
        cfg.write_text(cfg.read_text() + 'upstream_auth = "ra-user:Upstream-S3cret"\n')
        for f in (d / "ra.key", cfg, d / "proxy-tls.key"):
            os.chmod(str(f), 0o644)
        pf = d / "port"
        p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", str(cfg),
                              "--port-file", str(pf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 60  # a guard against a hang, not a timing assert
            while p.poll() is None and time.monotonic() < end and not (pf.exists() and pf.read_text().strip()):
                time.sleep(0.05)
            assert p.poll() is None
        finally:
            p.terminate()
            p.wait()
        err = p.stderr.read().decode()
    finally:
        up.stop()
    for f in (d / "ra.key", cfg, d / "proxy-tls.key"):
        assert "est-lite: warning: %s is readable or writable by other users (mode 0644)" % f in err, err
    assert "Upstream-S3cret" not in err


def test_serve_warns_about_a_data_directory_others_may_write(tmp_path, capsys):
    """`serve` (and `proxy`) on a data directory other users may write
    (made by hand, or `chmod -R a+w`): they could swap its keys and
    certificates under the server. One warning line at start (was
    silent); 0700 (what ca init makes) says nothing."""
    import types

    from est_lite_cpython.cli_serve import _warn_open_private_files

    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    cfg = types.SimpleNamespace(data_dir=str(d), tls_key=None, password_file=None)
    _warn_open_private_files(cfg)
    assert capsys.readouterr().err == ""
    os.chmod(str(d), 0o777)
    _warn_open_private_files(cfg)
    err = capsys.readouterr().err
    assert err == ("est-lite: warning: the data directory %s is writable by other users (mode 0777): they could "
                   "replace its keys and certificates; chmod 700 %s\n" % (d, d))
