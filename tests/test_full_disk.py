"""A full disk wherever est-lite writes (CPython client and server).

Two ways to fill a disk, both real (nothing of est-lite is mocked):
- tmpfs: a small tmpfs mounted for the test (`mount -t tmpfs -o size=..`),
  filled by a filler file: the kernel's own ENOSPC ("No space left on
  device"). Needs root and a kernel that lets the test mount (a container
  may not); without them these tests are skipped, and say why.
- RLIMIT_FSIZE: the command runs in a subprocess whose file size limit is
  set with resource.setrlimit (as `ulimit -f`): a write past the limit
  fails with EFBIG ("File too large"; CPython ignores SIGXFSZ). Works for
  any user, in any CI; it is the same failure path (an OSError from a
  write), with another errno.
"""

import contextlib
import datetime
import os
import resource
import subprocess
import sys
import tempfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_server import PASSWORD, USER

from est_lite_cpython.cli import main
from est_lite_cpython.credstore import CredStore, StoreError, write_file_atomic

CLI = "import sys; from est_lite_cpython.cli import main; sys.exit(main(sys.argv[1:]))"


# --- filling a disk ---


def _can_mount():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    d = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", d], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", d], check=True)
        return ok
    except OSError:
        return False
    finally:
        os.rmdir(d)


CAN_MOUNT = _can_mount()
needs_tmpfs = pytest.mark.skipif(not CAN_MOUNT, reason="mounting a tmpfs needs root and a kernel that allows it; "
                                                       "the RLIMIT_FSIZE tests cover the same paths")


@contextlib.contextmanager
def tmpfs(tmp_path, size="256k"):
    d = tmp_path / "small"
    d.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(d)], check=True)
    try:
        yield str(d)
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def fill(mnt, leave=0):
    """A filler file that takes all the space but `leave` bytes (about:
    tmpfs counts pages). Returns its path."""
    p = os.path.join(mnt, "filler")
    st = os.statvfs(mnt)
    want = max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while want > 0:
            try:
                n = os.write(fd, chunk[:min(4096, want)])
            except OSError:
                break
            want -= n
    finally:
        os.close(fd)
    return p


def limited(nbytes):
    """preexec_fn: a file size limit of nbytes for the subprocess (EFBIG past it)."""
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return set_limit


def run_limited(nbytes, argv, code=CLI, **kw):
    return subprocess.run([sys.executable, "-c", code] + list(argv), capture_output=True, text=True, timeout=120,
                          preexec_fn=limited(nbytes), **kw)


def one_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(d):
    out = {}
    for n in sorted(os.listdir(d)):
        with open(os.path.join(d, n), "rb") as f:
            out[n] = f.read()
    return out


# --- credentials without a server ---


def pair(cn):
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30)).sign(k, hashes.SHA256()))
    kd = k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return kd, c.public_bytes(serialization.Encoding.DER)


def seeded(path):
    key, cert = pair("old")
    s = CredStore(path)
    s.save(key=key, cert=cert, ca=[cert])
    for name, data in s.pem_files().items():  # as the CLI writes them
        write_file_atomic(os.path.join(path, name), data)
    return s, (key, cert)


# --- the client's credential store ---


@needs_tmpfs
def test_store_save_at_every_fill_level(tmp_path):
    new = pair("new")
    with tmpfs(tmp_path) as mnt:
        d = os.path.join(mnt, "st")
        s, old = seeded(d)
        seen = set()
        for leave in range(0, 40 * 1024, 2048):
            before = snapshot(d)
            filler = fill(mnt, leave)
            try:
                s.save(key=new[0], cert=new[1], ca=[new[1]])
            except StoreError as e:
                seen.add("full")
                assert "no space on the filesystem" in str(e) and "nothing saved" in str(e), e
                assert snapshot(d) == before  # nothing written stays (PEM copies included)
                got = CredStore(d).load()
                assert (got.key, got.cert) == old
                os.remove(filler)
                s.save(key=new[0], cert=new[1], ca=[new[1]])  # space freed: it works
            else:
                seen.add("ok")
                os.remove(filler)
            got = CredStore(d).load()
            assert (got.key, got.cert) == new
            s.save(key=old[0], cert=old[1], ca=[old[1]])  # back to the old pair for the next level
        assert seen == {"full", "ok"}, seen


SAVE = """
import sys
from est_lite_cpython.credstore import CredStore, StoreError
d, key, cert = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
try:
    CredStore(d).save(key=key, cert=cert, ca=[cert])
except StoreError as e:
    print(e)
    sys.exit(1)
"""


def test_store_save_past_the_file_size_limit(tmp_path):
    d = str(tmp_path / "st")
    s, old = seeded(d)
    before = snapshot(d)
    key, cert = pair("new")
    assert len(key) < 200 < len(cert)  # the key is written, the certificate not
    (tmp_path / "k").write_bytes(key)
    (tmp_path / "c").write_bytes(cert)
    p = run_limited(200, [d, str(tmp_path / "k"), str(tmp_path / "c")], code=SAVE)
    assert p.returncode == 1 and "cannot write: [Errno 27] File too large" in p.stdout, p
    assert "nothing saved" in p.stdout
    assert snapshot(d) == before
    got = CredStore(d).load()
    assert (got.key, got.cert) == old


def test_check_writable_says_a_full_disk(tmp_path):
    d = str(tmp_path / "st")
    seeded(d)
    code = ("import sys\nfrom est_lite_cpython.credstore import CredStore, StoreError\ntry:\n"
            "    CredStore(sys.argv[1]).check_writable()\nexcept StoreError as e:\n    print(e)\n    sys.exit(1)\n")
    p = run_limited(8192, [d], code=code)
    assert p.returncode == 1 and "no space on the filesystem" in p.stdout and "File too large" in p.stdout, p
    assert not [n for n in os.listdir(d) if n.startswith(".est-lite-probe")]
    assert run_limited(1 << 20, [d], code=code).returncode == 0


# --- the client's commands ---


def https(srv):
    return "https://localhost:%d" % srv.port


def enroll_into(srv, out, capsys, cn="full-1"):
    rc = main(["enroll", "--server", https(srv), "--trust", srv.root_pem, "--out", out, "--user", USER,
               "--password", PASSWORD, "--cn", cn])
    capsys.readouterr()
    assert rc == 0


def commands(srv, out, skg):
    return {
        "reenroll": ["reenroll", "--server", https(srv), "--out", out],
        "enroll": ["enroll", "--server", https(srv), "--trust", srv.root_pem, "--out", out, "--user", USER,
                   "--password", PASSWORD, "--cn", "full-1", "--replace"],
        "serverkeygen": ["serverkeygen", "--server", https(srv), "--trust", srv.root_pem, "--out", skg, "--user",
                         USER, "--password", PASSWORD, "--cn", "full-2"],
    }


@pytest.mark.parametrize("cmd", ["reenroll", "enroll", "serverkeygen"])
def test_cli_on_a_full_tmpfs(est_server, tmp_path, capsys, cmd):
    if not CAN_MOUNT:
        pytest.skip("mounting a tmpfs needs root; test_cli_past_the_file_size_limit covers the same path")
    srv = est_server
    with tmpfs(tmp_path) as mnt:
        out, skg = os.path.join(mnt, "dev"), os.path.join(mnt, "skg")
        enroll_into(srv, out, capsys)
        before = snapshot(out)
        issued = srv.ca.store.count_certificates()
        filler = fill(mnt)
        argv = commands(srv, out, skg)[cmd]
        rc = main(argv)
        _, err = capsys.readouterr()
        line = one_line(err)
        assert rc == 1 and "no space on the filesystem" in line and "free some space" in line, err
        assert snapshot(out) == before  # the previous pair, PEM copies included
        assert srv.ca.store.count_certificates() == issued  # said before the server issued anything
        os.remove(filler)
        rc = main(argv)
        _, err = capsys.readouterr()
        assert rc == 0, err
        got = CredStore(skg if cmd == "serverkeygen" else out).load()
        assert got.cert != CredStore(out).load().cert or cmd != "serverkeygen"
        assert srv.ca.store.count_certificates() == issued + 1


@pytest.mark.parametrize("cmd", ["reenroll", "enroll", "serverkeygen"])
def test_cli_past_the_file_size_limit(est_server, tmp_path, capsys, cmd):
    srv = est_server
    out, skg = str(tmp_path / "dev"), str(tmp_path / "skg")
    enroll_into(srv, out, capsys)
    before = snapshot(out)
    issued = srv.ca.store.count_certificates()
    argv = commands(srv, out, skg)[cmd]
    p = run_limited(8192, argv)
    line = one_line(p.stderr)
    assert p.returncode == 1 and "no space on the filesystem" in line and "File too large" in line, p.stderr
    assert snapshot(out) == before
    assert srv.ca.store.count_certificates() == issued
    assert run_limited(1 << 20, argv).returncode == 0


SKG_LATE = CLI.replace("from est_lite_cpython.cli import main;",
                       "from est_lite_cpython.cli import main; import est_lite_cpython.credstore as c; "
                       "c.SPACE_PROBE = 0;")


def test_serverkeygen_when_the_disk_fills_after_the_check(est_server, tmp_path):
    # the disk fills between the check and the save (SPACE_PROBE = 0: the
    # check passes under the limit): the key the server made is lost, and
    # the message says so, with the serial to revoke and what to do
    srv = est_server
    skg = str(tmp_path / "skg")
    issued = srv.ca.store.count_certificates()
    p = run_limited(300, commands(srv, None, skg)["serverkeygen"], code=SKG_LATE)
    line = one_line(p.stderr)
    assert p.returncode == 1 and "server-generated key was not kept" in line and "revoke that serial" in line, line
    assert srv.ca.store.count_certificates() == issued + 1
    serial = line.split("(serial ")[1].split(")")[0]
    assert srv.ca.store.has_serial(int(serial, 16))
    assert not os.path.exists(os.path.join(skg, "manifest"))


# --- the server: ca.db full ---


def _cap_pages(srv):
    """The CA store may not grow (PRAGMA max_page_count = its page count, on
    the store's write connection: SQLite's SQLITE_FULL, as on a full disk).
    Returns the function that lifts the cap."""
    db = srv.ca.store._wdb()
    n = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute("PRAGMA max_page_count = %d" % n)
    return lambda: db.execute("PRAGMA max_page_count = 1073741823")


def _enroll_until_refused(srv, enroll, limit=60):
    """Enroll until the store refuses; every answered enrollment is recorded.
    -> the error of the refused one."""
    from est_lite.errors import EstError

    for _ in range(limit):
        before = srv.ca.store.count_certificates()
        try:
            ev = enroll()
        except EstError as e:
            assert srv.ca.store.count_certificates() == before  # refused: nothing recorded (or issued)
            return e
        serial = x509.load_der_x509_certificate(ev.cert).serial_number
        assert srv.ca.store.has_serial(serial) and srv.ca.store.count_certificates() == before + 1
    raise AssertionError("the store never filled up")


def _clients(srv):
    from helpers_client import der as der_
    from helpers_client import root_der
    from helpers_coaps import idevid_device

    from est_lite_cpython.client import EstClient
    from est_lite_cpython.crypto import P256Key

    dev = idevid_device(srv)
    key = dev.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    out = {}
    for name, url, kw in (("https", "https://localhost:%d" % srv.port, {"user": USER, "password": PASSWORD}),
                          ("coaps", "coaps://127.0.0.1:%d" % srv.coaps_port, {"cert": der_(dev.cert), "key": key})):
        def enroll(url=url, kw=kw):
            from est_lite.csr import CsrBuilder

            c = EstClient(url, trust=root_der(srv), deadline=20, **kw)
            try:
                k = P256Key.generate()
                return c.enroll(CsrBuilder().subject(cn="full-disk").sign(k), k.public_key)
            finally:
                c.close()

        def cacerts(url=url, kw=kw):
            c = EstClient(url, trust=root_der(srv), deadline=20, **kw)
            try:
                return c.cacerts()
            finally:
                c.close()
        out[name] = (enroll, cacerts)
    return out


@pytest.fixture
def both(tmp_path):
    from helpers_coaps import EstBothServer

    s = EstBothServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_serve_with_a_full_ca_store(both, transport, caplog):
    srv = both
    enroll, cacerts = _clients(srv)[transport]
    lift = _cap_pages(srv)
    e = _enroll_until_refused(srv, enroll)
    assert "no space on the disk" in str(e) and "nothing was written" in str(e), e
    assert e.http_status == 500 if transport == "https" else e.coap_code == 0xA0, (e.http_status, e.coap_code)
    assert srv.ca.data_dir not in str(e)  # no server path in what the client sees
    assert not [r for r in caplog.records if r.exc_info]  # logged as one line, no traceback
    assert cacerts()  # still serving
    e2 = _enroll_until_refused(srv, enroll, limit=1)  # still refused, the same clear reason
    assert "no space on the disk" in str(e2)
    lift()
    before = srv.ca.store.count_certificates()
    enroll()  # space is back: enrollments work again
    assert srv.ca.store.count_certificates() == before + 1


@needs_tmpfs
def test_serve_with_its_data_directory_on_a_full_tmpfs(tmp_path):
    from helpers_coaps import EstBothServer

    with tmpfs(tmp_path, "2m") as mnt:
        srv = EstBothServer(mnt)
        try:
            clients = _clients(srv)
            filler = fill(mnt)
            for transport in ("https", "coaps"):
                enroll, cacerts = clients[transport]
                e = _enroll_until_refused(srv, enroll)
                assert "no space on the disk" in str(e), e
                assert cacerts()
            os.remove(filler)
            for transport in ("https", "coaps"):
                before = srv.ca.store.count_certificates()
                clients[transport][0]()
                assert srv.ca.store.count_certificates() == before + 1
        finally:
            srv.stop()


def test_a_commit_that_fails_is_rolled_back():
    # SQLite leaves the transaction open when COMMIT itself fails (SQLITE_FULL
    # while the WAL grows; here a deferred foreign key, the same path): the
    # Store's one write connection then refused every later write ("cannot
    # start a transaction within a transaction") until the server restarted
    import sqlite3

    from est_lite_cpython.store import write_transaction

    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE p(id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE c(p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        write_transaction(db, lambda d: d.execute("INSERT INTO c VALUES (7)"))
    assert not db.in_transaction
    write_transaction(db, lambda d: d.execute("INSERT INTO p VALUES (7)"))  # the next write works
    assert db.execute("SELECT COUNT(*) FROM c").fetchone()[0] == 0


# --- the ca commands ---

SIDE = ("ca.db", "ca.db-shm", "ca.db-wal", "server.lock")  # the store (compared by its rows), the directory's lock


def ca_files(d):
    return {n: v for n, v in snapshot(d).items() if n not in SIDE}


def ca_rows(d):
    import sqlite3

    db = sqlite3.connect(os.path.join(d, "ca.db"))
    try:
        return [db.execute("SELECT * FROM %s ORDER BY 1" % t).fetchall() for t in ("certs", "revocations", "meta")]
    finally:
        db.close()


def ca_commands(d, out):
    return {
        "issue": ["issue", "--data-dir", d, "--cn", "ra", "--eku", "clientAuth,cmcRA", "--out",
                  os.path.join(out, "ra")],
        "crl": ["crl", "--data-dir", d, "--out", os.path.join(out, "crl.pem")],
        "rollover": ["rollover", "--data-dir", d],
        "backup": ["backup", "--data-dir", d, os.path.join(out, "bk")],
    }


def run(argv):
    return subprocess.run([sys.executable, "-c", CLI] + list(argv), capture_output=True, text=True, timeout=120)


@needs_tmpfs
def test_ca_commands_on_a_full_tmpfs(tmp_path):
    # (each command in its own process, as an operator runs them)
    with tmpfs(tmp_path, "512k") as mnt:
        d = os.path.join(mnt, "ca")
        assert run(["ca", "init", "--data-dir", d]).returncode == 0
        before, rows = ca_files(d), ca_rows(d)
        filler = fill(mnt)
        for name, argv in ca_commands(d, mnt).items():
            p = run(["ca"] + argv)
            line = one_line(p.stderr)
            assert p.returncode == 1 and "no space on the disk" in line and "restore" not in line, (name, line)
            assert ca_files(d) == before, name  # nothing changed, nothing half-written
            assert sorted(os.listdir(mnt)) == ["ca", "filler"], name  # no half backup, key, CRL
        # ca init: nothing left that would make the next one fail
        p = run(["ca", "init", "--data-dir", os.path.join(mnt, "ca2")])
        assert p.returncode == 1 and "No space left on device" in one_line(p.stderr)
        assert not os.path.exists(os.path.join(mnt, "ca2"))
        os.remove(filler)
        assert ca_rows(d) == rows  # nothing issued or revoked, no CRL number taken
        for name, argv in ca_commands(d, mnt).items():
            p = run(["ca"] + argv)
            assert p.returncode == 0, (name, p.stderr)
        assert run(["ca", "init", "--data-dir", os.path.join(mnt, "ca2")]).returncode == 0


@pytest.fixture
def ca_dir(tmp_path):
    d = str(tmp_path / "ca")
    assert run(["ca", "init", "--data-dir", d]).returncode == 0
    return d


@pytest.mark.parametrize("name", ["issue", "crl", "rollover", "backup"])
def test_ca_commands_past_the_file_size_limit(ca_dir, tmp_path, name):
    # SQLite meets the limit creating ca.db-shm (32 KB) and says "disk I/O
    # error": before, the line told the operator to restore a backup
    out = str(tmp_path / "out")
    os.mkdir(out)
    before, rows = ca_files(ca_dir), ca_rows(ca_dir)
    argv = ["ca"] + ca_commands(ca_dir, out)[name]
    p = run_limited(8192, argv)
    line = one_line(p.stderr)
    assert p.returncode == 1 and "no space on the disk" in line and "File too large" in line, line
    assert "restore" not in line
    assert ca_files(ca_dir) == before and ca_rows(ca_dir) == rows
    assert os.listdir(out) == []
    assert run_limited(1 << 24, argv).returncode == 0


def test_ca_init_past_the_file_size_limit(tmp_path):
    # root.key (241 B) fits, root.pem does not: before, root.key stayed and
    # the next `ca init` said "a CA already exists (use --force)"
    d = str(tmp_path / "ca")
    p = run_limited(300, ["ca", "init", "--data-dir", d])
    assert p.returncode == 1 and "File too large" in one_line(p.stderr), p.stderr
    assert not os.path.exists(d)
    os.mkdir(d)
    p = run_limited(300, ["ca", "init", "--data-dir", d])  # a directory that was there stays, with no CA file
    assert p.returncode == 1 and [n for n in os.listdir(d) if n != "server.lock"] == [], os.listdir(d)
    assert run_limited(1 << 24, ["ca", "init", "--data-dir", d]).returncode == 0


@needs_tmpfs
def test_ca_rollover_when_the_disk_fills_half_way(tmp_path):
    # the store has room for the new TLS certificate, the staged files do
    # not: before, "internal error: OSError: [Errno 28]" (exit 70)
    seen = set()
    for leave in range(40 * 1024, 96 * 1024, 8 * 1024):
        with tmpfs(tmp_path, "512k") as mnt:
            d = os.path.join(mnt, "ca")
            assert run(["ca", "init", "--data-dir", d]).returncode == 0
            before = ca_files(d)
            filler = fill(mnt, leave)
            p = run(["ca", "rollover", "--data-dir", d])
            if p.returncode == 0:
                seen.add("done")
                continue
            line = one_line(p.stderr)
            assert p.returncode == 1 and "no space on the disk" in line, line
            assert ca_files(d) == before  # the old CA, no staging left
            seen.add("cannot write its files" in line and "the CA is as it was" in line or "store")
            os.remove(filler)
            assert run(["ca", "verify", d]).returncode == 0
            assert run(["ca", "rollover", "--data-dir", d]).returncode == 0
    assert seen == {"done", True, "store"}, seen
