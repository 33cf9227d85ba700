"""Back up, check and restore a CA (or proxy) data directory while the
server keeps running: `est-lite ca backup DEST`, `est-lite ca verify PATH`,
`est-lite ca restore BACKUP --data-dir DIR` (docs/ca-backup.md).

backup_data_dir(src, dest)
    Every regular file of the data directory (subdirectories too), except
    SQLite's -wal/-shm/-journal files and temporary files of a write in
    progress (*.tmp, an interrupted backup's .est-lite-*). Each SQLite
    database (ca.db, proxy-state.sqlite, any other file starting with the
    SQLite header) is copied through SQLite's online backup API: one read
    transaction, so the copy is one point in time including what is still
    in the WAL, while the server's processes keep writing (WAL readers do
    not block writers). The copy is switched to journal_mode=DELETE: one
    self-contained file, readable from read-only media. Files keep their
    modes (private keys, databases and the password file at most 0600), the
    backup directory is 0700, and a manifest (est-lite-backup.json: time,
    source, size and SHA-256 of every file, store counts) is written last.
    Everything goes into a temporary directory next to DEST, fsynced,
    checked (verify), then renamed to DEST: an interrupted backup never
    leaves a half backup under DEST's name. A copy torn by a change during
    it is taken again; a root key rollover past its commit point is
    finished in the copy (ca.finish_rollover), its staging before it
    skipped.

verify(path)
    The check of a backup (or of a live data directory): the store opened
    read-only passes PRAGMA integrity_check and has its tables, every
    certificate in it parses with its serial, every PEM file loads, each
    key matches its certificate, the chain links (intermediate under root,
    server certificate under the issuing CA), the CRL is signed by the
    issuing CA, the password file parses, and every file of the manifest is
    there with its size and SHA-256. The first problem raises BackupError,
    one line naming the file.

restore(backup, data_dir, force=False, merge_from=None)
    verify(backup), then a copy in a temporary directory next to data_dir,
    renamed into place; an existing non-empty data_dir is refused unless
    force, which moves it aside to DIR.replaced-YYYYmmddTHHMMSSZ (nothing is
    deleted). merge_from: a store of this CA whose certificates and
    revocations the backup lacks are added. The CRL number never goes back.
    Returns what the operator must know: the backup's time and newest
    issuance, and, when the replaced store could be read, the certificates
    and revocations it had that the backup lacks.
"""

import os
import stat
import sys
import time
from shlex import quote  # printed commands run as printed, spaces and all

# (sqlite3, hashlib, json, tempfile, socket are imported where used: `est-lite
# ca` registers these subcommands at every start of the CLI)

from est_lite.errors import LocalProtocolError

MANIFEST = "est-lite-backup.json"
SQLITE_MAGIC = b"SQLite format 3\x00"
TMP_PREFIX = ".est-lite-"  # .est-lite-backup-XXXX / .est-lite-restore-XXXX
_SQLITE_SIDE = ("-wal", "-shm", "-journal")
FORMAT = 1


class BackupError(LocalProtocolError):
    """A backup, check or restore that cannot go on: one line naming the
    file and the problem (the CLI prints it and exits 1)."""


class _Vanished(BackupError):
    """A file listed for the copy was gone when it was read: the directory
    changed during the copy (backup_data_dir takes it again)."""


def _utc(t):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


def is_sqlite(path):
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _is_private(name, path):
    """Files only the owner may read: keys, databases, the password file."""
    if name.endswith(".key") or name in ("passwords",) or is_sqlite(path):
        return True
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY-----" in f.read(1 << 20)
    except OSError:
        return False


def skip_reason(name, names):
    """Why the file `name` of a directory holding `names` is not copied, or None."""
    for suf in _SQLITE_SIDE:
        if name.endswith(suf) and name[:-len(suf)] in names:
            return "SQLite's %s file of %s (its content is in the copy of %s)" % (suf, name[:-len(suf)],
                                                                                  name[:-len(suf)])
    if name.startswith(TMP_PREFIX):
        return "the temporary directory of an interrupted est-lite backup or restore"
    if name.endswith(".tmp"):
        return "a temporary file of a write in progress"
    if name == MANIFEST:
        return "a backup's manifest (a new one is written)"
    if name == "server.lock":  # datalock.LOCK_FILE
        return "the lock file of est-lite serve / proxy"
    return None


def scan(src):
    """([(relative path, absolute path, note or None)] to copy,
    [(relative path, why skipped)]) of the data directory src."""
    take, skipped = [], []

    def walk(d, rel):
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise BackupError("cannot read the directory %s: %s" % (d, e.strerror or e)) from None
        names = set(e.name for e in entries)
        for e in entries:
            r = os.path.join(rel, e.name) if rel else e.name
            why = skip_reason(e.name, names)
            if why:
                skipped.append((r, why))
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, r)
                elif e.is_file(follow_symlinks=False):
                    take.append((r, e.path, None))
                elif e.is_symlink() and os.path.isfile(e.path):
                    take.append((r, e.path, "a symbolic link: copied the file it points to"))
                else:
                    skipped.append((r, "not a regular file (a symbolic link to a directory, a socket, a FIFO...)"))
            except OSError as ex:
                raise BackupError("cannot read %s: %s" % (e.path, ex.strerror or ex)) from None

    walk(src, "")
    return take, skipped


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_file(src, dst, mode):
    """Copy src to a new file dst (O_EXCL, created 0600, then `mode`),
    fsynced, with src's times. Returns (size, sha256 hex)."""
    import hashlib
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi:
        st = os.fstat(fi.fileno())
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            for b in _chunks(fi):
                h.update(b)
                n += len(b)
                view = memoryview(b)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return n, h.hexdigest()


def _file_digest(path):
    import hashlib
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for b in _chunks(f):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


def _chunks(f):
    """The file's bytes, 1 MB at a time."""
    while True:
        b = f.read(1 << 20)
        if not b:
            return
        yield b


def snapshot_sqlite(src, dst):
    """One point-in-time copy of the SQLite database src (with its WAL) in
    the new file dst through the online backup API, switched to
    journal_mode=DELETE. The running server's writes are not blocked: the
    copy is one read transaction."""
    import sqlite3
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    os.close(fd)
    s = d = None
    try:
        s = sqlite3.connect("file:%s?mode=ro" % _uri_path(src), uri=True, timeout=30)
        d = sqlite3.connect(dst, isolation_level=None)
        s.backup(d)  # pages=-1: every page in one step, one read transaction
        d.execute("PRAGMA journal_mode=DELETE")  # (its integrity: the check of the whole copy)
    except sqlite3.Error as e:
        from .store import no_room

        full = no_room(os.path.dirname(os.path.abspath(dst)))  # SQLite says "disk I/O error" for most of them
        why = e if full is None else "%s: no space on the disk of the backup (%s); free some space and run it again" % (
            e, full)
        raise BackupError("cannot copy the database %s: %s" % (src, why)) from None
    finally:
        for c in (s, d):
            if c is not None:
                c.close()
    for suf in _SQLITE_SIDE:  # a self-contained file
        if os.path.exists(dst + suf):
            os.unlink(dst + suf)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return _file_digest(dst)


def _uri_path(p):
    from urllib.parse import quote

    return quote(os.path.abspath(p))


def _ro(path):
    """A read-only connection to the SQLite file path."""
    import sqlite3
    return sqlite3.connect("file:%s?mode=ro" % _uri_path(path), uri=True, timeout=30)


def store_summary(db_path):
    """{certificates, revocations, pending, newest_issued_at,
    newest_revoked_at, revoked_not_in_store, crl_number} of the CA store
    db_path (read-only)."""
    c = _ro(db_path)
    try:
        out = {
            "certificates": c.execute("SELECT COUNT(*) FROM certs").fetchone()[0],
            "revocations": c.execute("SELECT COUNT(*) FROM revocations").fetchone()[0],
            "pending": c.execute("SELECT COUNT(*) FROM requests WHERE status='pending'").fetchone()[0],
            "newest_issued_at": c.execute("SELECT MAX(issued_at) FROM certs").fetchone()[0],
            "newest_revoked_at": c.execute("SELECT MAX(revoked_at) FROM revocations").fetchone()[0],
            # revoked with `ca revoke SERIAL --not-in-store` (issued after a restored backup)
            "revoked_not_in_store": c.execute("SELECT COUNT(*) FROM revocations WHERE serial NOT IN "
                                              "(SELECT serial FROM certs)").fetchone()[0],
        }
        r = c.execute("SELECT value FROM meta WHERE key='crl_number'").fetchone()
        out["crl_number"] = int(r[0]) if r else 0
        return out
    finally:
        c.close()


def _inside(path, d):
    a, b = os.path.realpath(path), os.path.realpath(d)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _dest_free(dest, what):
    """DEST must not exist, or be an empty directory."""
    if os.path.lexists(dest):
        if not os.path.isdir(dest) or os.path.islink(dest):
            raise BackupError("%s exists and is not a directory; give a new name for the %s" % (dest, what))
        if os.listdir(dest):
            raise BackupError("%s exists and is not empty; give a new name for the %s (a previous one is never "
                              "overwritten), e.g. with the time: %s"
                              % (dest, what, quote(dest.rstrip("/") + "-" + time.strftime("%H%M%SZ", time.gmtime()))))
        return True
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise BackupError("the directory %s for the %s does not exist: create it first (mkdir -p %s), "
                          "readable only by the CA's operators" % (parent, what, quote(parent)))
    return False


def _move_into_place(tmp, dest, dest_was_empty_dir):
    if dest_was_empty_dir:
        os.rmdir(dest)
    try:
        os.rename(tmp, dest)  # a directory rename never replaces a non-empty directory
    except OSError as e:
        raise BackupError("cannot rename %s to %s: %s (was it created meanwhile?)" % (tmp, dest, e.strerror or e)) \
            from None
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))


def _copy_tree(files, tmp, *, digests=None):
    """Copy [(rel, src path, note)] into tmp; sqlite files by snapshot.
    Returns {rel: {size, sha256, mode, sqlite}}."""
    out = {}
    for rel, path, _note in files:
        dst = os.path.join(tmp, rel)
        parent = os.path.dirname(dst)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
        try:
            st = os.stat(path)
            mode = stat.S_IMODE(st.st_mode)
            if _is_private(os.path.basename(rel), path):
                mode = 0o600
            if is_sqlite(path):
                size, digest = snapshot_sqlite(path, dst)
                os.chmod(dst, mode)
                out[rel] = {"size": size, "sha256": digest, "mode": "%04o" % mode, "sqlite": True}
            else:
                size, digest = _copy_file(path, dst, mode)
                if digests is not None and rel in digests and digests[rel] != (size, digest):
                    raise BackupError("%s changed while it was copied (size or SHA-256 differ from the checked "
                                      "backup)" % path)
                out[rel] = {"size": size, "sha256": digest, "mode": "%04o" % mode}
        except FileNotFoundError:
            raise _Vanished("%s was removed or renamed during the copy" % path) from None
        except OSError as e:
            raise BackupError("cannot copy %s: %s" % (path, e.strerror or e)) from None
    return out


def _fsync_tree(d):
    for sub, _dirs, _files in os.walk(d):
        _fsync_dir(sub)


def backup_data_dir(src, dest, *, outside=(), attempts=3, _fail_after=None):
    """Write a consistent backup of the data directory src to dest (which
    must not exist, or be an empty directory). Returns the manifest (dict).
    outside: [(what, path)] files the CA uses that live outside src (from
    its config): listed in the manifest as not backed up.

    The copy is checked (verify) before it is renamed to dest. A copy that
    fails while src passes was torn by a change during the copy (`ca
    rollover`, `ca issue --force` into the directory): it is dropped and
    taken again, up to `attempts` times. When src itself fails the check,
    the faithful copy is written anyway (a damaged CA is better kept than
    lost) and manifest["problem"] says why (the CLI exits 1).
    _fail_after: tests only, raise after copying that many files."""
    import tempfile

    src = os.path.abspath(src)
    if not os.path.isdir(src):
        raise BackupError("no data directory %s" % src)
    if _inside(dest, src):
        raise BackupError("the backup %s would be inside the data directory %s; put it elsewhere (another disk)"
                          % (dest, src))
    if not any(os.path.exists(os.path.join(src, f)) for f in ("root.pem", "root.key", "ca.db")) and \
            not any(is_sqlite(os.path.join(src, f)) for f in os.listdir(src)):
        raise BackupError("%s holds no CA (no root.pem, root.key or ca.db) and no database: not a data directory"
                          % src)
    was_empty = _dest_free(dest, "backup")
    last = None
    for _attempt in range(attempts):
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "backup-", dir=os.path.dirname(os.path.abspath(dest)))
        try:
            try:
                manifest = _copy_once(src, tmp, outside, _fail_after)
            except _Vanished as e:
                last = str(e)
                _rmtree(tmp)
                continue
            try:
                verify(tmp)
                problem = None
            except BackupError as e:
                problem = str(e)
            if problem is not None:
                try:
                    verify(src)
                    src_problem = None
                except BackupError as e:
                    src_problem = str(e)
                if src_problem is None:  # torn by a change during the copy: take it again
                    last = problem
                    _rmtree(tmp)
                    continue
                manifest["problem"] = src_problem
                _write_manifest(tmp, manifest, replace=True)
            _fsync_dir(tmp)
            _move_into_place(tmp, dest, was_empty)
        except BaseException:
            _rmtree(tmp)
            raise
        return manifest
    raise BackupError("the data directory %s changed during each of %d copies (a ca rollover or ca issue --force "
                      "writing into it?), the last copy failed the check: %s; run the backup again"
                      % (src, attempts, last))


def _copy_once(src, tmp, outside, _fail_after):
    """One copy of src into tmp and its manifest (written into tmp)."""
    import socket

    os.chmod(tmp, 0o700)
    files, skipped = scan(src)
    started = time.time()
    for n, f in enumerate(files):
        if _fail_after is not None and n >= _fail_after:
            raise BackupError("interrupted after %d files (test)" % n)
        _copy_tree([f], tmp)
    notes = []
    # a root key rollover (ca.py) caught in the copy: after its commit point
    # (rollover.journal) the CA is the new one, and every LocalCA opening the
    # directory finishes the renames: so does the copy. Before it, the staged
    # files are not the CA (a new attempt removes them).
    from .ca import ROLLOVER_JOURNAL, ROLLOVER_STAGE, finish_rollover

    if os.path.exists(os.path.join(tmp, ROLLOVER_JOURNAL)):
        finish_rollover(tmp)
        notes.append("a root key rollover was finishing its renames: the backup holds the rolled-over CA")
    elif os.path.isdir(os.path.join(tmp, ROLLOVER_STAGE)):
        _rmtree(os.path.join(tmp, ROLLOVER_STAGE))
        skipped.append((ROLLOVER_STAGE, "an unfinished root key rollover's staged files (the CA is the previous one)"))
    _fsync_tree(tmp)
    copied = {}
    for rel, path, _note in scan(tmp)[0]:
        size, digest = _file_digest(path)
        info = {"size": size, "sha256": digest, "mode": "%04o" % stat.S_IMODE(os.stat(path).st_mode)}
        if is_sqlite(path):
            info["sqlite"] = True
        copied[rel] = info
    summary = None
    if os.path.exists(os.path.join(tmp, "ca.db")):
        import sqlite3
        try:
            summary = store_summary(os.path.join(tmp, "ca.db"))
        except (sqlite3.Error, ValueError):
            pass  # not a CA store (an empty database a server made after ca.db was deleted, a damaged file):
            # the check below names it; the copy is kept, a damaged CA is better kept than lost
    manifest = {
        "format": FORMAT,
        "created": int(started),
        "created_utc": _utc(started),
        "source": src,
        "host": socket.gethostname(),
        "files": copied,
        "skipped": [[r, why] for r, why in skipped],
        "symlinks_followed": [r for r, _p, note in files if note],
        "notes": notes,
        "not_backed_up": [[w, p] for w, p in outside],
        "store": summary,
    }
    _write_manifest(tmp, manifest)
    return manifest


def _write_manifest(tmp, manifest, replace=False):
    import json

    path = os.path.join(tmp, MANIFEST)
    if replace:
        os.unlink(path)
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(d):
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def read_manifest(path):
    import json
    mp = os.path.join(path, MANIFEST)
    if not os.path.exists(mp):
        return None
    try:
        with open(mp, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or m.get("format") != FORMAT:
            raise ValueError("not a format %d manifest" % FORMAT)
        return m
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BackupError("the backup manifest %s is damaged: %s" % (mp, e)) from None


# ------------------------------------------------------------------ verify

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BackupError("cannot read %s: %s" % (path, e.strerror or e)) from None


def _load_certs(path):
    from cryptography import x509

    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise BackupError("%s is damaged or holds no PEM certificate" % path)
    return certs


def _load_key(path):
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, None)
    except TypeError:
        raise BackupError("the private key %s is encrypted (est-lite needs it unencrypted)" % path) from None
    except ValueError:
        raise BackupError("the private key %s is damaged or truncated (not a PEM private key)" % path) from None


def _spki(pub):
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert, issuer):
    from cryptography.exceptions import InvalidSignature

    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca_cert(cert):
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _check_store(db):
    """Summary of the CA store db (read-only), or BackupError."""
    import sqlite3
    from cryptography import x509

    if not is_sqlite(db):
        raise BackupError("%s is not an SQLite database (damaged or replaced): restore it from another backup" % db)
    try:
        c = _ro(db)
    except sqlite3.Error as e:
        raise BackupError("the CA store %s cannot be opened: %s" % (db, e)) from None
    try:
        r = c.execute("PRAGMA integrity_check").fetchall()
        if [x[0] for x in r] != ["ok"]:
            raise BackupError("the CA store %s fails SQLite's integrity check: %s"
                              % (db, "; ".join(x[0] for x in r[:3])))
        tables = set(x[0] for x in c.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        for t in ("certs", "requests", "revocations", "meta"):
            if t not in tables:
                raise BackupError("the CA store %s has no %s table: not an est-lite CA store" % (db, t))
        for serial, der in c.execute("SELECT serial, der FROM certs"):
            try:
                cert = x509.load_der_x509_certificate(bytes(der))
            except ValueError:
                raise BackupError("the CA store %s: the certificate of serial %s is damaged" % (db, serial)) from None
            if "%x" % cert.serial_number != serial:
                raise BackupError("the CA store %s: the row of serial %s holds the certificate of serial %x"
                                  % (db, serial, cert.serial_number))
        # a revocation without a certificate row is `ca revoke SERIAL --not-in-store` (a certificate issued
        # after a restored backup): kept and counted (store_summary), not an error; its serial must be one
        for (serial,) in c.execute("SELECT serial FROM revocations WHERE serial NOT IN (SELECT serial FROM certs)"):
            try:
                ok = 0 < int(serial, 16) < (1 << 159) and "%x" % int(serial, 16) == serial
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise BackupError("the CA store %s: a revocation of %r, which is not a serial number" % (db, serial))
    except sqlite3.Error as e:
        raise BackupError("the CA store %s cannot be read: %s" % (db, e)) from None
    finally:
        c.close()
    return store_summary(db)


def _crl_damaged(crl_path, path, manifest):
    if manifest is None:  # a live data directory: the CRL is written again from the store
        return ("the CRL %s is damaged: write it again from the store: est-lite ca crl --data-dir %s --out %s"
                % (crl_path, quote(path), quote(crl_path)))
    # (was "run est-lite ca crl after restoring": restore refuses a backup that fails the check)
    return "the CRL %s is damaged: this backup cannot be restored as it is (restore another one)" % crl_path


def verify(path):
    """Check the backup (or data directory) `path`; returns a dict (kind,
    manifest, store summary, root, issuer, files checked). The first
    problem raises BackupError (one line)."""
    import sqlite3
    from cryptography import x509

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise BackupError("no backup or data directory %s" % path)
    manifest = read_manifest(path)
    p = lambda f: os.path.join(path, f)  # noqa: E731
    is_ca = any(os.path.lexists(p(f)) for f in ("root.pem", "root.key", "ca.db"))
    if manifest is not None and any(f in manifest["files"] for f in ("root.pem", "root.key", "ca.db")):
        is_ca = True
    out = {"path": path, "manifest": manifest, "kind": "CA" if is_ca else "data", "store": None, "checked": 0}
    if is_ca:
        required = ["root.pem", "root.key", "ca.db", "server.pem", "server.key"]
        if os.path.lexists(p("intermediate.pem")) or os.path.lexists(p("intermediate.key")):
            required[2:2] = ["intermediate.pem", "intermediate.key"]
        for f in required:
            if not os.path.lexists(p(f)):
                if manifest is None:  # a data directory (ca verify --data-dir, serve's hint), not a backup
                    from .store import restore_hint

                    raise BackupError("%s is missing from %s: this CA cannot run without it; %s"
                                      % (f, path, restore_hint(path)))
                raise BackupError("%s is missing from %s: this backup cannot restore the CA" % (f, path))
            if not os.path.isfile(p(f)):  # a FIFO there made verify and restore wait forever for a writer
                raise BackupError("%s in %s is not a regular file (a FIFO, a directory, a dangling link)" % (f, path))
        out["store"] = _check_store(p("ca.db"))
    files, _skipped = scan(path)
    names = [r for r, _a, _n in files if r != MANIFEST]
    certs, keys = {}, {}
    for rel in names:
        full = p(rel)
        if is_sqlite(full):
            if rel != "ca.db":
                try:
                    c = _ro(full)
                    try:
                        r = c.execute("PRAGMA integrity_check").fetchone()[0]
                    finally:
                        c.close()
                except sqlite3.Error as e:
                    raise BackupError("the database %s cannot be read: %s" % (full, e)) from None
                if r != "ok":
                    raise BackupError("the database %s fails SQLite's integrity check: %s" % (full, r))
            out["checked"] += 1
            continue
        if rel == "ca.db" and is_ca:
            continue  # (_check_store said it is not a database)
        try:
            with open(full, "rb") as f:
                head = f.read(1 << 20)
        except OSError as e:
            raise BackupError("cannot read %s: %s" % (full, e.strerror or e)) from None
        if rel.endswith(".key") or b"PRIVATE KEY-----" in head:
            keys[rel] = _load_key(full)
        elif b"-----BEGIN CERTIFICATE-----" in head:
            certs[rel] = _load_certs(full)
        elif rel.endswith((".pem", ".crt")) and b"-----BEGIN " not in head:
            if rel == "crl.pem" and is_ca:
                raise BackupError(_crl_damaged(full, path, manifest))
            raise BackupError("%s is damaged or not PEM (no -----BEGIN line)" % full)
        # (other PEM files: a CRL is checked below against the CA, CSRs and public keys are only compared)
        out["checked"] += 1
    # each key with its certificate: NAME.key with NAME.pem (or NAME.crt)
    for rel, key in sorted(keys.items()):
        stem = rel[:-4] if rel.endswith(".key") else rel
        for ext in (".pem", ".crt"):
            if stem + ext in certs:
                if _spki(certs[stem + ext][0].public_key()) != _spki(key.public_key()):
                    raise BackupError("the private key %s does not match the certificate in %s"
                                      % (p(rel), p(stem + ext)))
                break
        else:
            if is_ca and rel in ("root.key", "intermediate.key", "server.key"):
                raise BackupError("the private key %s has no certificate %s.pem" % (p(rel), stem))
    if is_ca:
        root = certs["root.pem"][0]
        if not _issued_by(root, root):
            raise BackupError("the root certificate %s is not self-signed by its key" % p("root.pem"))
        issuer = root
        if "intermediate.pem" in certs:
            issuer = certs["intermediate.pem"][0]
            if not _issued_by(issuer, root):
                raise BackupError("the intermediate certificate %s is not issued by the root in %s"
                                  % (p("intermediate.pem"), p("root.pem")))
        # this CA's certificates under the same names with other keys (a root key rollover:
        # root-old.pem, the cross certificates), not another CA that happens to be in the directory
        cas = [c for cs in certs.values() for c in cs if _is_ca_cert(c) and c.subject in (root.subject, issuer.subject)]
        if not any(_issued_by(certs["server.pem"][0], c) for c in [issuer] + cas):
            raise BackupError("the TLS certificate %s is not issued by this CA (%s)"
                              % (p("server.pem"), issuer.subject.rfc4514_string()))
        crl_path = p("crl.pem")
        if os.path.exists(crl_path):
            try:
                with open(crl_path, "rb") as f:
                    crl = x509.load_pem_x509_crl(f.read())
            except (OSError, ValueError):
                raise BackupError(_crl_damaged(crl_path, path, manifest)) from None
            # by the issuing CA, or (after a root key rollover) a previous key of it
            if not any(c.subject == crl.issuer and crl.is_signature_valid(c.public_key()) for c in [issuer] + cas):
                raise BackupError("the CRL %s is not signed by this CA (%s)"
                                  % (crl_path, issuer.subject.rfc4514_string()))
        out["root"] = root
        out["issuer"] = issuer
        out["cas"] = [issuer, root] + [c for i, c in enumerate(cas) if c not in cas[:i]]
    pw = p("passwords")
    if os.path.exists(pw):
        from .auth import PasswordFile

        try:
            out["users"] = len(PasswordFile(pw).users())
        except (OSError, UnicodeDecodeError, LocalProtocolError) as e:
            raise BackupError("the password file %s is damaged: %s" % (pw, getattr(e, "msg", None) or e)) from None
    if manifest is not None:
        for rel, info in sorted(manifest["files"].items()):
            full = p(rel)
            if not os.path.lexists(full):
                raise BackupError("%s is missing from the backup (its manifest lists it)" % full)
            try:
                size, digest = _file_digest(full)
            except OSError as e:
                raise BackupError("cannot read %s: %s" % (full, e.strerror or e)) from None
            if (size, digest) != (info.get("size"), info.get("sha256")):
                raise BackupError("%s differs from the file the backup wrote (%d bytes, was %s; SHA-256 differs): "
                                  "damaged copy" % (full, size, info.get("size")))
        # files put there after the backup: checked as files, not against the manifest (a restore copies them)
        out["unlisted"] = sorted(r for r in names if r not in manifest["files"])
    return out


def describe(v):
    """Lines for est-lite ca verify's output."""
    lines = []
    m = v["manifest"]
    s = v["store"]
    if m is not None:
        lines.append("backup OK: %s (taken %s on %s from %s)" % (v["path"], m["created_utc"], m.get("host", "?"),
                                                                 m.get("source", "?")))
    else:
        lines.append("data directory OK: %s (no backup manifest: files checked, not compared)" % v["path"])
    unlisted = v.get("unlisted") or []
    lines.append("  files:        %d checked%s" % (v["checked"], "" if not m else ", sizes and SHA-256 as written"
                                                   if not unlisted else ", %d with sizes and SHA-256 as written"
                                                   % len(m["files"])))
    if unlisted:
        lines.append("  not in the manifest (put there after the backup; a restore copies them): %s"
                     % ", ".join(unlisted))
    if v.get("root") is not None:
        lines.append("  root:         %s, until %s" % (v["root"].subject.rfc4514_string(),
                                                       v["root"].not_valid_after_utc.strftime("%Y-%m-%d")))
        if v["issuer"] is not v["root"]:
            lines.append("  issuer:       %s, until %s" % (v["issuer"].subject.rfc4514_string(),
                                                           v["issuer"].not_valid_after_utc.strftime("%Y-%m-%d")))
    if s is not None:
        lines.append("  store:        %d certificates (newest issued %s), %d revocations, %d pending requests, "
                     "integrity ok" % (s["certificates"], _utc(s["newest_issued_at"]), s["revocations"], s["pending"]))
        if s.get("revoked_not_in_store"):
            lines.append("  revoked:      %d serial(s) without a certificate in the store (ca revoke --not-in-store; "
                         "in the CRL)" % s["revoked_not_in_store"])
    if "users" in v:
        lines.append("  users:        %d in passwords" % v["users"])
    return lines


# ------------------------------------------------------------------ restore

def _crl_number_of(path):
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            crl = x509.load_pem_x509_crl(f.read())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except Exception:  # noqa: BLE001 - any unreadable CRL: unknown
        return None


def _crl_revocations(path, cas):
    """[(serial hex, revoked_at epoch, reason)] of the CRL file path if one
    of `cas` (this CA) signed it; [] if it is absent, unreadable or another
    CA's."""
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            crl = x509.load_pem_x509_crl(f.read())
        if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()) for ca in cas):
            return []
        out = []
        for e in crl:
            try:
                reason = e.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
            except x509.ExtensionNotFound:
                reason = "unspecified"
            when = e.revocation_date_utc.timestamp()
            out.append(("%x" % e.serial_number, when, reason))
        return out
    except Exception:  # noqa: BLE001 - any unreadable CRL: nothing to tell
        return []


def _old_state(d):
    """What the directory being replaced knows that a backup may lack:
    {serials, revoked {serial: (when, reason)}, crl_number, newest} or
    None when its store cannot be read."""
    import sqlite3
    db = os.path.join(d, "ca.db")
    if not is_sqlite(db):
        return None
    try:
        c = _ro(db)
        try:
            serials = dict(c.execute("SELECT serial, issued_at FROM certs"))
            revoked = dict((s, (w, r)) for s, w, r in c.execute("SELECT serial, revoked_at, reason FROM revocations"))
            r = c.execute("SELECT value FROM meta WHERE key='crl_number'").fetchone()
            n = int(r[0]) if r else 0
        finally:
            c.close()
    except (sqlite3.Error, ValueError):
        return None
    return {"serials": serials, "revoked": revoked, "crl_number": n}


def _merge_store(db, src_db, cas):
    """Add to the CA store db (a file of the restore's temporary copy) the
    certificates and revocations of the store src_db it lacks (INSERT OR
    IGNORE: nothing of db changes). Every added certificate must be issued
    by one of `cas` (this CA). Returns (certificates, revocations) added."""
    import sqlite3

    from cryptography import x509

    _check_store(src_db)
    c = sqlite3.connect("file:%s" % _uri_path(db), uri=True, isolation_level=None)
    try:
        c.execute("ATTACH DATABASE ? AS m", ("file:%s?mode=ro" % _uri_path(src_db),))
        c.execute("BEGIN IMMEDIATE")
        for serial, der in c.execute("SELECT serial, der FROM m.certs WHERE serial NOT IN (SELECT serial FROM certs)"
                                     ).fetchall():
            cert = x509.load_der_x509_certificate(bytes(der))
            if not any(_issued_by(cert, ca) for ca in cas):
                raise BackupError("%s holds certificate %s of another CA (%s): not merged"
                                  % (src_db, serial, cert.issuer.rfc4514_string()))
        n_certs = c.execute("INSERT OR IGNORE INTO certs(serial, label, subject, not_before, not_after, issued_at, "
                            "requester, request_id, der) SELECT serial, label, subject, not_before, not_after, "
                            "issued_at, requester, NULL, der FROM m.certs").rowcount
        # every revocation, also those recorded without a certificate (ca revoke --not-in-store)
        n_revs = c.execute("INSERT OR IGNORE INTO revocations(serial, revoked_at, reason) SELECT serial, revoked_at, "
                           "reason FROM m.revocations").rowcount
        c.execute("COMMIT")
    except sqlite3.Error as e:
        raise BackupError("cannot merge %s: %s" % (src_db, e)) from None
    finally:
        c.close()
    return n_certs, n_revs


def restore(backup, data_dir, *, force=False, merge_from=None, now=None):
    """Restore the checked backup into data_dir. Returns a dict: verify()'s
    result, moved_aside (path or None), crl_number, old (the replaced
    store's state or None), lost_certs [serial], lost_revocations
    [(serial, when, reason)], merged (certificates, revocations) or None.
    merge_from: a data directory or ca.db (e.g. the directory being
    replaced, read before it is moved aside) whose certificates and
    revocations the backup lacks are added to the restored store."""
    import tempfile
    import sqlite3
    v = verify(backup)
    backup = v["path"]
    target = os.path.abspath(data_dir)
    if _inside(target, backup) or _inside(backup, target):
        raise BackupError("the backup %s and the data directory %s overlap" % (backup, target))
    exists = os.path.lexists(target)
    empty = exists and os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target)
    if exists and not empty:
        if not os.path.isdir(target) or os.path.islink(target):
            raise BackupError("%s exists and is not a directory" % target)
        if not force:
            raise BackupError("%s exists and is not empty (a CA is there?): stop est-lite serve/proxy using it, "
                              "then add --force to move it aside to %s.replaced-<time> and restore" % (target, target))
    if not exists and not os.path.isdir(os.path.dirname(target)):
        raise BackupError("the directory %s for %s does not exist" % (os.path.dirname(target), target))
    if exists and not empty:
        from .datalock import exclusive

        # a server running on the directory would keep writing to the moved-away
        # store: refused, nothing changed (datalock.py); held until the rename
        with exclusive(target, "est-lite ca restore"):
            return _restore(v, backup, target, exists, empty, merge_from, now)
    return _restore(v, backup, target, exists, empty, merge_from, now)


def _restore(v, backup, target, exists, empty, merge_from, now):
    import tempfile
    import sqlite3
    old = _old_state(target) if exists and not empty else None
    old_crl = _crl_number_of(os.path.join(target, "crl.pem")) if exists and not empty else None
    # the replaced store is gone or unreadable (ca.db deleted): its crl.pem
    # still names the revocations made after the backup
    crl_revs = _crl_revocations(os.path.join(target, "crl.pem"), v.get("cas") or []) if exists and not empty \
        and old is None and v["store"] is not None else []
    merge_db = None
    if merge_from is not None:
        merge_db = os.path.join(merge_from, "ca.db") if os.path.isdir(merge_from) else merge_from
        if not os.path.exists(merge_db):
            raise BackupError("nothing to merge: no CA store %s" % merge_db)
        if v["store"] is None:
            raise BackupError("--merge-from: the backup %s has no CA store to merge into" % backup)
    manifest = v["manifest"] or {}
    digests = dict((r, (i["size"], i["sha256"])) for r, i in manifest.get("files", {}).items())
    files, _skipped = scan(backup)
    files = [f for f in files if f[0] != MANIFEST]
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "restore-", dir=os.path.dirname(target))
    moved = None
    try:
        os.chmod(tmp, 0o700)
        _copy_tree(files, tmp, digests=digests)
        owner = None
        if exists and not empty and hasattr(os, "geteuid") and os.geteuid() == 0:
            # a root restore of a directory a server user owns: the restored files are that
            # user's again (was: root's 0600 files, which the server could not open)
            st = os.stat(target)
            if (st.st_uid, st.st_gid) != (0, 0):
                owner = (st.st_uid, st.st_gid)
                for dirpath, dirnames, filenames in os.walk(tmp):
                    for n in [dirpath] + [os.path.join(dirpath, f) for f in dirnames + filenames]:
                        os.lchown(n, st.st_uid, st.st_gid)
        _fsync_tree(tmp)
        crl_number = merged = None
        db = os.path.join(tmp, "ca.db")
        if os.path.exists(db):
            crl_number = v["store"]["crl_number"] if v["store"] else 0
            merged_crl = None
            if merge_db is not None:
                cas = v["cas"]  # the issuing CA, its root, and any previous CA certificate (rollover)
                merged = _merge_store(db, merge_db, cas)
                merged_crl = store_summary(merge_db)["crl_number"]
            want = max([n for n in (crl_number, old and old["crl_number"], old_crl, merged_crl) if n] or [0])
            if want > crl_number:  # CRL numbers never go back (RFC 5280 5.2.3)
                c = sqlite3.connect(db, isolation_level=None)
                try:
                    c.execute("INSERT OR REPLACE INTO meta VALUES ('crl_number', ?)", (str(want),))
                finally:
                    c.close()
                crl_number = want
            fd = os.open(db, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(tmp)
        if exists and not empty:
            moved = "%s.replaced-%s" % (target, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time())))
            k = 1
            while os.path.lexists(moved):
                k += 1
                moved = moved.split("~")[0] + "~%d" % k
            os.rename(target, moved)
            try:
                _move_into_place(tmp, target, False)
            except BaseException:
                os.rename(moved, target)  # put the old one back: never a half-restored directory
                raise
        else:
            _move_into_place(tmp, target, empty)
    except BaseException:
        _rmtree(tmp)
        raise
    out = {"verify": v, "moved_aside": moved, "crl_number": crl_number, "old": old, "merged": merged,
           "owner": owner}
    lost_certs, lost_revs = [], []
    out["have_certs"] = set()
    out["crl_revocations"] = []
    if (old is not None or crl_revs) and v["store"] is not None:
        c = _ro(os.path.join(target, "ca.db"))
        try:
            have = out["have_certs"] = set(r[0] for r in c.execute("SELECT serial FROM certs"))
            have_rev = set(r[0] for r in c.execute("SELECT serial FROM revocations"))
        finally:
            c.close()
        if old is not None:
            lost_certs = sorted(s for s in old["serials"] if s not in have)
            lost_revs = sorted((s, w, r) for s, (w, r) in old["revoked"].items() if s not in have_rev)
        out["crl_revocations"] = sorted(x for x in crl_revs if x[0] not in have_rev)
    out["lost_certs"] = lost_certs
    out["lost_revocations"] = lost_revs
    return out


# ------------------------------------------------------------------ CLI

def _outside_files(args, data_dir):
    """[(what, path)] files the config names outside the data directory."""
    out = []
    cfg_path = getattr(args, "config", None)
    if not cfg_path:
        cand = os.path.join(data_dir, "server.toml")
        return out if not os.path.exists(cand) else _outside_of_config(cand, data_dir)
    return _outside_of_config(cfg_path, data_dir)


def _outside_of_config(cfg_path, data_dir):
    from .config import load_config

    out = []
    if not _inside(cfg_path, data_dir):
        out.append(("the config", os.path.abspath(cfg_path)))
    try:
        cfg = load_config(cfg_path, data_dir=None, skip=("proxy",))
    except LocalProtocolError:
        return out
    for what, p in (("server.tls_cert", cfg.tls_cert), ("server.tls_key", cfg.tls_key),
                    ("server.password_file", cfg.password_file)):
        if p and not _inside(p, data_dir):
            out.append((what, p))
    try:
        from .proxy import load_proxy_config

        _s, pc = load_proxy_config(cfg_path)
    except Exception:  # noqa: BLE001 - not a proxy config (or one the proxy itself would refuse)
        return out
    for what, p in (("proxy.ra_cert", pc.ra_cert), ("proxy.ra_key", pc.ra_key), ("proxy.upstream_ca", pc.upstream_ca),
                    ("proxy.state", pc.state)) + tuple(("proxy.upstream_crl", c) for c in pc.upstream_crl):
        if p and not _inside(p, data_dir):
            out.append((what, p))
    return out


def cmd_backup(args):
    from .cli_ca import _data_dir

    d = os.path.abspath(_data_dir(args))
    outside = _outside_files(args, d)
    m = backup_data_dir(d, args.dest, outside=outside)
    dest = os.path.abspath(args.dest)
    s = m["store"]
    print("backup of %s written to %s (0700) at %s" % (d, dest, m["created_utc"]))
    for note in m.get("notes", ()):
        print("  note:    %s" % note)
    print("  files:   %d (%s)" % (len(m["files"]), ", ".join(sorted(m["files"]))))
    if s is not None:
        print("  store:   %d certificates (newest issued %s), %d revocations, %d pending requests; a point-in-time "
              "copy through SQLite's backup API" % (s["certificates"], _utc(s["newest_issued_at"]), s["revocations"],
                                                    s["pending"]))
    for r, why in m["skipped"]:
        print("  skipped: %s (%s)" % (r, why))
    for r in m["symlinks_followed"]:
        print("  note:    %s is a symbolic link: the backup holds the file it points to" % r)
    for what, p in m["not_backed_up"]:
        print("  NOT in the backup: %s (%s, outside the data directory): back it up separately" % (p, what))
    keys = sorted(r for r in m["files"] if r.endswith(".key"))
    if keys:
        print("  it holds private keys (%s): keep it as safe as the data directory (encrypted, offline)"
              % ", ".join(keys))
    else:
        print("  it holds password hashes and state: keep it as private as the data directory")
    if m.get("problem"):
        # written anyway: a damaged CA is better kept than lost
        print("est-lite: error: the data directory fails the check, the backup is a faithful copy of it: %s"
              % m["problem"], file=sys.stderr)
        return 1
    from shlex import quote as q  # the lines run as printed, spaces and all
    print("checked: est-lite ca verify %s passes" % q(dest))
    print("restore: est-lite ca restore %s %s   (with the server stopped)" % (q(dest), _dir_args(args, d)))
    return 0


def cmd_verify(args):
    if args.path is None:
        from .cli_ca import _data_dir

        path = _data_dir(args)
    else:
        path = args.path
    try:
        v = verify(path)
    except BackupError as e:
        if args.path is not None or "est-lite ca " in str(e) or os.path.exists(os.path.join(path, MANIFEST)):
            raise
        # a damaged live data directory: the way out is a restore
        from .store import restore_hint

        raise BackupError("%s; %s" % (e, restore_hint(os.path.abspath(path)))) from None
    for line in describe(v):
        print(line)
    return 0


def cmd_restore(args):
    from shlex import quote as q

    from .cli_ca import _data_dir

    target = os.path.abspath(_data_dir(args))
    r = restore(args.backup, target, force=args.force, merge_from=args.merge_from)
    v = r["verify"]
    m = v["manifest"]
    s = v["store"]
    print("restored %s into %s" % (v["path"], target))
    if r["moved_aside"]:
        print("  the previous %s was moved to %s (nothing deleted)" % (target, r["moved_aside"]))
    if r.get("owner"):
        print("  owner:        uid %d, gid %d, as the directory it replaces" % r["owner"])
    elif hasattr(os, "geteuid") and os.geteuid() == 0 and not r["moved_aside"]:
        print("  owner:        root (0600 files): a server running as another user needs chown -R USER:GROUP %s"
              % q(target))
    for line in describe(v)[1:]:
        print(line)
    if r["merged"] is not None:
        print("  merged:       %d certificates and %d revocations from %s that the backup lacked"
              % (r["merged"][0], r["merged"][1], args.merge_from))
    warn = []
    if m is not None and s is not None:
        warn.append("this CA is now as it was at %s (the backup's time); its newest certificate was issued %s"
                    % (m["created_utc"], _utc(s["newest_issued_at"])))
    elif m is not None:  # no CA: a proxy's data directory
        warn.append("this data directory is now as it was at %s (the backup's time): passwords set and requests "
                    "bound to devices (waiting for the upstream's approval) after it are lost" % m["created_utc"])
    if s is not None and r["merged"] is None:
        warn.append("certificates issued after that are unknown to it: they stay valid and est-lite ca list does not "
                    "show them; to revoke one: est-lite ca revoke --certificate FILE --reason R --data-dir %s (the "
                    "certificate, checked against this CA's key), or by its serial alone: est-lite ca revoke SERIAL "
                    "--not-in-store --reason R --data-dir %s; a store that has them (a later backup, the replaced "
                    "directory) can be added with --merge-from" % (q(target), q(target)))
        warn.append("revocations made after that are lost: revoke those certificates again from your records "
                    "(the revoke commands run, or a crl.pem published after the backup: openssl crl -in FILE -noout "
                    "-text): est-lite ca revoke SERIAL --reason R --data-dir %s (add --not-in-store for a serial "
                    "the restored store lacks); the CRL is written to %s at each revoke"
                    % (q(target), q(os.path.join(target, "crl.pem"))))
        warn.append("the next CRL is number %d or higher (never lower than one published before)"
                    % (r["crl_number"] + 1)
                    if r["old"] is not None else
                    "the next CRL is number %d: if a CRL numbered higher was published after the backup, relying "
                    "parties may ignore the new ones until theirs expires" % ((r["crl_number"] or 0) + 1))
    if r["old"] is not None:
        if r["lost_certs"]:
            warn.append("%d certificate(s) of the replaced store are not in the backup (serials: %s%s); to keep "
                        "them and their revocations: est-lite ca restore %s %s --force --merge-from %s"
                        % (len(r["lost_certs"]), ", ".join(r["lost_certs"][:10]),
                           ", ..." if len(r["lost_certs"]) > 10 else "", q(v["path"]), _dir_args(args, target),
                           q(r["moved_aside"])))
        # runnable lines for every revocation the backup lacks; a serial whose
        # certificate the restored store lacks too needs --not-in-store
        # (--merge-from above brings the certificate as well)
        have = r["have_certs"]
        for serial, when, reason in r["lost_revocations"][:20]:
            warn.append("%s was revoked %s in the replaced store, not in the backup: est-lite ca revoke %s%s --reason "
                        "%s --data-dir %s" % (serial, _utc(when), serial, "" if serial in have else " --not-in-store",
                                              reason, q(target)))
        n = len(r["lost_revocations"])
        if n > 20:
            warn.append("... %d more revocations only in %s" % (n - 20, r["moved_aside"]))
    if r["crl_revocations"]:
        # the replaced store could not be read, its crl.pem could: one
        # runnable line per serial it revokes that the restored store does not
        have = r["have_certs"]
        crl = os.path.join(r["moved_aside"], "crl.pem")
        for serial, when, reason in r["crl_revocations"][:20]:
            warn.append("%s was revoked %s in the replaced directory's CRL %s, not in the backup: est-lite ca revoke "
                        "%s%s --reason %s --data-dir %s" % (serial, _utc(when), crl, serial,
                                                            "" if serial in have else " --not-in-store", reason,
                                                            q(target)))
        n = len(r["crl_revocations"])
        if n > 20:
            warn.append("... %d more serials revoked in %s (openssl crl -in %s -noout -text)" % (n - 20, crl, q(crl)))
    for w in warn:
        print("WARNING: " + w, file=sys.stderr)
    cfg = getattr(args, "config", None)
    if cfg:  # the server or proxy this config runs, with its TLS files and profiles
        print("next: est-lite %s --config %s" % ("proxy" if _is_proxy_config(cfg) else "serve",
                                                 q(os.path.abspath(cfg))))
    elif v["kind"] == "CA":
        print("next: est-lite serve --data-dir %s" % q(target))
    else:
        print("next: the est-lite proxy (or serve) whose config names %s as [ca] data_dir: est-lite proxy --config "
              "FILE" % q(target))
    return 0


def _dir_args(args, data_dir):
    """How a printed command names the directory: the --config given (the
    next command's serve/proxy line keeps it), else --data-dir."""
    cfg = getattr(args, "config", None)
    return "--config %s" % quote(os.path.abspath(cfg)) if cfg else "--data-dir %s" % quote(data_dir)


def _is_proxy_config(path):
    import tomllib

    try:
        with open(path, "rb") as f:
            return "proxy" in tomllib.load(f)
    except (OSError, ValueError):
        return False


def register(csub, common):
    """The backup, verify and restore subcommands of `est-lite ca`."""
    q = csub.add_parser("backup", help="copy the data directory (keys, certificates, a point-in-time copy of the "
                                       "store) to DEST while the server runs")
    common(q)
    q.add_argument("dest", metavar="DEST", help="the new backup directory (must not exist, or be empty)")
    q.set_defaults(func=cmd_backup)

    q = csub.add_parser("verify", help="check a backup (or a data directory): store integrity, keys match "
                                       "certificates, chain, files as written")
    common(q)
    q.add_argument("path", metavar="BACKUP", nargs="?", help="a backup directory (default: the data directory)")
    q.set_defaults(func=cmd_verify)

    q = csub.add_parser("restore", help="check a backup and restore it as the data directory (--force: move an "
                                        "existing one aside)")
    common(q)
    q.add_argument("backup", metavar="BACKUP")
    q.add_argument("--force", action="store_true",
                   help="restore over an existing data directory: it is moved to DIR.replaced-<time> (not deleted)")
    q.add_argument("--merge-from", metavar="STORE",
                   help="a data directory or ca.db of this CA (the one being replaced, a later backup): its "
                        "certificates and revocations the backup lacks are added to the restored store")
    q.set_defaults(func=cmd_restore)
