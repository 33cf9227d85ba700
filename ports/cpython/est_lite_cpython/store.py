"""SQLite store of the reference CA: issued certificates, enrollment requests
waiting for (or decided by) manual approval, and revocations.

One database file in WAL mode. Every write is one short `BEGIN IMMEDIATE`
transaction committed before the server answers, so a certificate a client
received is always in the store, also after a kill -9 of the server. An event
loop that answers many clients may group the certificates it issues in one
round into one transaction (GroupCommit); it then holds their answers until
that transaction has committed (WAL with
synchronous=NORMAL is durable against a process crash; pass
synchronous="FULL" to be durable against a power cut as well, at the price of
an fsync per enrollment). Serial numbers are a PRIMARY KEY: a duplicate can
never be stored, and `add_certificate` reports a collision so the CA can draw
a new serial.

Each thread gets its own sqlite3 connection (sqlite3 objects are not shared
between threads); several processes may open the same file.
"""

import os
import shlex
import sqlite3
import threading
import time
import urllib.parse

from est_lite.errors import EstError, LocalProtocolError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certs(
    serial TEXT PRIMARY KEY,
    label TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    requester TEXT,
    request_id INTEGER,
    der BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS requests(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    op TEXT NOT NULL,
    subject TEXT NOT NULL,
    requester TEXT,
    csr BLOB NOT NULL,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    decided INTEGER,
    reason TEXT,
    serial TEXT
);
CREATE INDEX IF NOT EXISTS requests_fp ON requests(fingerprint);
CREATE TABLE IF NOT EXISTS revocations(
    serial TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT 'unspecified'
);
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_INSERT_CERT = "INSERT INTO certs VALUES (?,?,?,?,?,?,?,?,?)"

# The format of ca.db, in SQLite's user_version (PRAGMA user_version). 0 is
# a file of est-lite before formats were numbered (its tables are those of
# version 1): it is marked 1 when opened. A higher number than this code's
# was written by a newer est-lite: refused, the file left as it is.
FORMAT_VERSION = 1
# version N -> SQL bringing a file of version N to N + 1 (none yet)
_MIGRATIONS = {}

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
ISSUED = "issued"



def write_transaction(db, fn):
    """fn(db) inside one BEGIN IMMEDIATE transaction of the autocommit
    connection db (committed, or rolled back when fn raises); fn's result.
    The caller serializes the connection's use."""
    db.execute("BEGIN IMMEDIATE")
    try:
        r = fn(db)
        db.execute("COMMIT")  # SQLITE_FULL here leaves the transaction open: rolled back below
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return r


def full_disk(e, path, shown=None):
    """A StoreError saying so if the sqlite3 error e is SQLITE_FULL
    ("database or disk is full": the filesystem, a quota, or PRAGMA
    max_page_count), else None. No directory in the text (it may reach a
    client as a 500's reason; `shown`: the name to give instead)."""
    code = getattr(e, "sqlite_errorcode", 0)
    why = str(e)
    if code != 13 and "disk is full" not in why:
        if code & 0xFF != 10:  # not SQLITE_IOERR (a full disk as SQLite meets it growing -shm or the WAL)
            return None
        why = no_room(os.path.dirname(path) or ".")
        if why is None:
            return None
        why = "%s; a test write: %s" % (e, why)
    return StoreError("the CA store %s: no space on the disk (%s): nothing was written (nothing issued, revoked or "
                      "decided); free space on the server's disk, then try again"
                      % (shown or os.path.basename(path), why))


def no_room(d, size=65536):
    """Why `size` bytes cannot be written in directory d for want of space
    (strerror of ENOSPC, EDQUOT or EFBIG), or None (they can, or it fails
    for another reason). The test file is removed."""
    from .credstore import NO_SPACE_ERRNOS, write_probe

    try:
        write_probe(d, size, ".est-lite-space-")
    except OSError as e:
        return e.strerror if e.errno in NO_SPACE_ERRNOS else None
    return None


def restore_hint(data_dir):
    """The way back for a damaged or incomplete data directory: how the
    error lines of every `ca` command and of `serve` end (docs/ca-backup.md)."""
    return ("with serve stopped, restore the directory from a backup: est-lite ca restore BACKUP --data-dir %s "
            "--force" % shlex.quote(str(data_dir)))


def file_format(path, what, supported):
    """The format version (PRAGMA user_version) of the existing SQLite file
    path, read without changing it (a read-only connection, no journal
    mode set). A version above `supported` is a LocalProtocolError naming
    both versions, the file unchanged. 0: a file without a version."""
    db = sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(path)), uri=True, timeout=30)
    try:
        v = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()
    if v > supported:
        raise LocalProtocolError("the %s %s is format version %d, written by a newer est-lite; this est-lite reads "
                                 "format version %d at most: upgrade est-lite to use it (the file was not changed)"
                                 % (what, path, v, supported))
    return v


def mark_format(db, what, path, version, migrations):
    """Bring the SQLite file of the autocommit connection db to format
    `version` in one write transaction: a file without one (0, its tables
    just created if missing) or of an older version runs `migrations`
    ({N: SQL from N to N + 1}) and gets user_version = version. Returns the
    version the file had. A newer one (written by a newer est-lite since
    file_format looked) is refused as there."""
    def tx(db):
        v = db.execute("PRAGMA user_version").fetchone()[0]
        if v > version:
            raise LocalProtocolError("the %s %s is format version %d, written by a newer est-lite; this est-lite "
                                     "reads format version %d at most: upgrade est-lite to use it (the file was not "
                                     "changed)" % (what, path, v, version))
        if v < version:
            for n in range(max(v, 1), version):
                for stmt in migrations[n]:
                    db.execute(stmt)
            db.execute("PRAGMA user_version = %d" % version)
        return v

    return write_transaction(db, tx)


class StoreError(EstError):
    http_status = 500
    coap_code = 0xA0


class DuplicateSerial(StoreError):
    pass


def serial_hex(serial):
    """Canonical text form of a serial number (lowercase hex, no leading 0s)."""
    if isinstance(serial, str):
        s = serial.strip().lower().replace(":", "")
        if s.startswith("0x"):
            s = s[2:]
        try:
            serial = int(s, 16)
        except ValueError:
            raise LocalProtocolError("serial %r is not a hexadecimal number" % serial) from None
    return "%x" % serial


_THREAD = threading.local()  # .group: the GroupCommit installed in this thread


def current_group():
    """The GroupCommit installed in the calling thread, or None."""
    return getattr(_THREAD, "group", None)


class GroupCommit:
    """Group commit for one event-loop thread. While installed in a thread
    (install() ... uninstall()), Store.add_issued there queues each issued
    certificate's row instead of writing it; flush() writes the queued rows
    of each store in one transaction (one commit for all the certificates a
    loop issued in one round, instead of one each) and sets `errors`, each
    row's error or None, in the order the rows were queued.

    The loop must not let a certificate leave before the flush() that made
    its row durable, and must answer with the error instead when its row's
    entry is not None: what a client received is then in the store, as with
    a write per certificate. A row queued but never flushed (the process
    killed) is a certificate no client received."""

    __slots__ = ("rows", "errors")

    def __init__(self):
        self.rows = []  # (store, row, after)
        self.errors = []

    def install(self):
        if getattr(_THREAD, "group", None) is not None:
            raise LocalProtocolError("a GroupCommit is already installed in this thread")
        _THREAD.group = self

    def uninstall(self):
        if getattr(_THREAD, "group", None) is self:
            _THREAD.group = None

    def error(self, start, end):
        """After flush(): the first error among the rows queued at
        positions start..end-1, or None when they are all durable."""
        return self.first(self.errors, start, end)

    @staticmethod
    def certificates(rows, start, end):
        """The certificates (DER) of rows[start:end] of a group's queued
        `rows` (the list, taken before its flush)."""
        return [row[-1] for _store, row, _after in rows[start:end]]

    @staticmethod
    def first(errors, start, end):
        """The first error in errors[start:end] (flush's list), or None."""
        for e in errors[start:end]:
            if e is not None:
                return e
        return None

    def flush(self):
        """Write the queued rows (see the class); `errors` says how each
        went. Never raises for a row's failure."""
        rows, self.rows = self.rows, []
        errors = [None] * len(rows)
        by_store = {}
        for i, (store, row, _after) in enumerate(rows):
            by_store.setdefault(store, []).append(i)
        for store, idx in by_store.items():
            for i, e in zip(idx, store._insert_group([rows[i][1] for i in idx])):
                errors[i] = e
        self.errors = errors
        for (_store, _row, after), e in zip(rows, errors):
            if e is None and after is not None:
                try:
                    after()
                except Exception:  # noqa: BLE001 - (a log line) the rows are written: the answers go out
                    pass
        return errors


class Store:
    """The CA database. `path` is the SQLite file (created if missing)."""

    def __init__(self, path, *, synchronous="NORMAL", busy_timeout_s=30.0, clock=time.time):
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise LocalProtocolError("synchronous must be NORMAL or FULL, not %r" % synchronous)
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        self._local = threading.local()
        self._all = []
        self._all_lock = threading.Lock()
        self._wconn = None
        self._wlock = threading.Lock()
        new = not os.path.exists(self.path)
        if new:  # 0600 from the start: SQLite gives its -wal and -shm files the mode of the database file
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
            except OSError:
                pass  # sqlite3 says why below
        try:
            if not new:  # before anything writes to it (journal_mode=WAL would)
                file_format(self.path, "CA store", FORMAT_VERSION)
            db = self._db()
            db.executescript(_SCHEMA)
            self.format_was = mark_format(db, "CA store", self.path, FORMAT_VERSION, _MIGRATIONS)
        except LocalProtocolError:
            self.close()
            raise
        except sqlite3.Error as e:  # not a database, damaged, unreadable: name the file, no traceback
            self.close()
            full = full_disk(e, self.path, self.path)
            if full is not None:  # not a damaged store: no restore to suggest
                raise LocalProtocolError(full.msg) from None
            raise LocalProtocolError("the CA store %s cannot be used: %s; %s"
                                     % (self.path, e, restore_hint(os.path.dirname(self.path) or "."))) from None
        if new:
            os.chmod(self.path, 0o600)
        self._file_id = self._stat_id()

    def _stat_id(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    # -- connections --
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=%s" % self.synchronous)
        db.execute("PRAGMA foreign_keys=ON")
        with self._all_lock:
            self._all.append(db)
        return db

    def _db(self):
        """This thread's connection (reads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _wdb(self):
        """The connection every write of this Store goes through, one per
        Store and used under _wlock. SQLite drops a connection's page cache
        whenever another connection has written: with one connection per
        worker thread, each insert began by re-reading the B-tree pages
        (pread calls); the single writer keeps them cached."""
        db = self._wconn
        if db is None:
            db = self._wconn = self._connect()
        return db

    def close(self):
        with self._all_lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._all = []
        self._local = threading.local()
        self._wconn = None

    def _check_file(self):
        # removed or replaced under a running server (rm, a backup copied
        # over it): SQLite would go on writing into the unlinked file, lost
        # at the next start. One stat per write; the caller holds _wlock.
        if self._stat_id() != self._file_id:
            # (the text may reach a client as the 500's reason: no path in it)
            raise StoreError("the CA store %s was removed or replaced while this server ran: nothing was written "
                             "(nothing issued, revoked or decided); with the server stopped, restore the data "
                             "directory from a backup (est-lite ca restore BACKUP --data-dir DIR --force)"
                             % os.path.basename(self.path))

    def _write(self, fn):
        with self._wlock:
            self._check_file()
            try:
                return write_transaction(self._wdb(), fn)
            except sqlite3.OperationalError as e:
                raise full_disk(e, self.path) or e from None

    def _now(self):
        return int(self.clock())

    # -- certificates --
    def add_certificate(self, cert, *, label="", requester=None, request_id=None, after=None):
        """Store an issued certificate (a cryptography x509.Certificate).
        Raises DuplicateSerial if the serial is already taken. When
        request_id is given the request is marked issued in the same
        transaction."""
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.add_issued(cert.serial_number, cert.public_bytes(Encoding.DER), cert.subject.rfc4514_string(),
                               int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp()),
                               label=label, requester=requester, request_id=request_id, after=after)

    def add_issued(self, serial, der, subject, not_before, not_after, *, label="", requester=None, request_id=None,
                   after=None):
        """add_certificate from the fields the CA already knows (serial int,
        certificate DER, subject as RFC 4514 text, validity as Unix times):
        no certificate parsing. Same durability and DuplicateSerial.

        `after()`, if given, is called once the row is durable. In a thread
        with a GroupCommit installed, a certificate without request_id is
        only queued: durable (and `after` called) at the group's flush(),
        which reports a DuplicateSerial or a failed write there."""
        serial = "%x" % serial
        row = (serial, label or "", subject, int(not_before), int(not_after), self._now(), requester, request_id, der)
        if request_id is None:
            group = getattr(_THREAD, "group", None)
            if group is not None:
                group.rows.append((self, row, after))
                return serial
            # one statement = one implicit transaction (autocommit): durable on return
            try:
                with self._wlock:
                    self._check_file()
                    self._wdb().execute(_INSERT_CERT, row)
            except sqlite3.IntegrityError:
                raise DuplicateSerial("serial %s already issued" % serial) from None
            except sqlite3.OperationalError as e:
                raise full_disk(e, self.path) or e from None
            if after is not None:
                after()
            return serial

        def tx(db):
            try:
                db.execute(_INSERT_CERT, row)
            except sqlite3.IntegrityError:
                raise DuplicateSerial("serial %s already issued" % serial) from None
            db.execute(
                "UPDATE requests SET status=?, serial=?, decided=COALESCE(decided, ?) WHERE id=?",
                (ISSUED, serial, self._now(), request_id),
            )

        self._write(tx)
        if after is not None:
            after()
        return serial

    def _insert_group(self, rows):
        """GroupCommit.flush for this store's rows: each row's error, or
        None once it is durable. One transaction; when a serial is taken
        (2**-159 odds) the rows go one by one, so only that one fails."""
        errors = [None] * len(rows)
        try:
            with self._wlock:
                self._check_file()
                db = self._wdb()
                try:
                    if len(rows) == 1:  # one statement, one implicit transaction (fewer calls)
                        db.execute(_INSERT_CERT, rows[0])
                    else:
                        write_transaction(db, lambda db: db.executemany(_INSERT_CERT, rows))
                except sqlite3.IntegrityError:
                    for i, row in enumerate(rows):  # each its own commit: each its own outcome
                        try:
                            db.execute(_INSERT_CERT, row)
                        except sqlite3.IntegrityError:
                            errors[i] = DuplicateSerial("the CA drew serial %s, which it had already issued (odds "
                                                        "2**-159): nothing was issued; try again" % row[0])
                        except sqlite3.Error as e:  # this row only: the ones before are durable
                            errors[i] = full_disk(e, self.path) or e
        except sqlite3.OperationalError as e:
            return [full_disk(e, self.path) or e] * len(rows)
        except Exception as e:  # noqa: BLE001 - StoreError (file replaced), a bug: no row written
            return [e] * len(rows)
        return errors

    def get_certificate(self, serial):
        """DER of an issued certificate, or None."""
        r = self._db().execute("SELECT der FROM certs WHERE serial=?", (serial_hex(serial),)).fetchone()
        return bytes(r[0]) if r else None

    def certificate_label(self, serial):
        """The label an issued certificate was issued for ('' = the default
        label, `ca issue` and `ca init`), or None if this store has no such
        serial."""
        r = self._db().execute("SELECT label FROM certs WHERE serial=?", (serial_hex(serial),)).fetchone()
        return r[0] if r else None

    def has_serial(self, serial):
        return self.get_certificate(serial) is not None

    def list_certificates(self, limit=1000):
        cur = self._db().execute(
            "SELECT c.serial, c.label, c.subject, c.not_after, c.issued_at, r.revoked_at "
            "FROM certs c LEFT JOIN revocations r ON r.serial=c.serial ORDER BY c.issued_at, c.rowid LIMIT ?",
            (limit,),
        )
        return [
            {"serial": s, "label": lab, "subject": subj, "not_after": na, "issued_at": ia, "revoked_at": rv}
            for (s, lab, subj, na, ia, rv) in cur
        ]

    def all_serials(self):
        return [r[0] for r in self._db().execute("SELECT serial FROM certs")]

    def count_certificates(self):
        return self._db().execute("SELECT COUNT(*) FROM certs").fetchone()[0]

    def import_certificate(self, cert, *, requester="est-lite ca revoke --certificate"):
        """Add a certificate this CA issued that the store lacks (e.g. one
        issued after the backup a restore went back to; the caller has
        checked its signature). issued_at is its notBefore plus the minute
        the CA sets it back. Returns (serial_hex, added): False when the
        same certificate was there; another certificate under its serial
        is a LocalProtocolError."""
        from cryptography.hazmat.primitives.serialization import Encoding

        serial = "%x" % cert.serial_number
        der = cert.public_bytes(Encoding.DER)
        nb = int(cert.not_valid_before_utc.timestamp())
        row = (serial, "", cert.subject.rfc4514_string(), nb, int(cert.not_valid_after_utc.timestamp()), nb + 60,
               requester, None, der)

        def tx(db):
            r = db.execute("SELECT der FROM certs WHERE serial=?", (serial,)).fetchone()
            if r is not None:
                if bytes(r[0]) != der:
                    raise LocalProtocolError("the store holds another certificate with serial %s: not imported"
                                             % serial)
                return False
            db.execute(_INSERT_CERT, row)
            return True

        return serial, self._write(tx)

    # -- revocation --
    def revoke(self, serial, reason="unspecified", when=None, *, not_in_store=False):
        """Record the revocation of an issued serial (the first one stands).
        A serial the store has no certificate for is an error (a typo),
        unless not_in_store=True: the operator vouches this CA issued it
        (e.g. after a restore of an older backup); it is recorded without
        a certificate row, listed in the CRL and refused by is_revoked
        like any other."""
        serial = serial_hex(serial)
        n = int(serial, 16)
        if not 0 < n < (1 << 159):  # RFC 5280 4.1.2.2: positive, at most 20 octets
            raise LocalProtocolError("serial %s cannot be a certificate serial number (positive, at most 20 "
                                     "octets)" % serial)

        def tx(db):
            if not db.execute("SELECT 1 FROM certs WHERE serial=?", (serial,)).fetchone() and not not_in_store:
                raise LocalProtocolError(
                    "no certificate with serial %s was issued by this CA (not in its store; if it was issued after "
                    "the backup this store was restored from: est-lite ca revoke --certificate FILE, or SERIAL "
                    "--not-in-store)" % serial)
            db.execute(
                "INSERT OR IGNORE INTO revocations VALUES (?,?,?)",
                (serial, int(when if when is not None else self._now()), reason),
            )

        self._write(tx)
        return serial

    def is_revoked(self, serial):
        r = self._db().execute("SELECT 1 FROM revocations WHERE serial=?", (serial_hex(serial),)).fetchone()
        return r is not None

    def revocation(self, serial):
        """(revoked_at, reason) of a revoked serial, or None."""
        r = self._db().execute("SELECT revoked_at, reason FROM revocations WHERE serial=?",
                               (serial_hex(serial),)).fetchone()
        return tuple(r) if r else None

    def revocations_without_certificate(self):
        """[(serial_hex, revoked_at, reason)] of serials revoked with
        not_in_store=True that the store still has no certificate for."""
        return list(self._db().execute(
            "SELECT serial, revoked_at, reason FROM revocations WHERE serial NOT IN (SELECT serial FROM certs) "
            "ORDER BY revoked_at, serial"))

    def revocations(self):
        """[(serial_hex, revoked_at, reason)]"""
        return list(self._db().execute("SELECT serial, revoked_at, reason FROM revocations ORDER BY revoked_at"))

    def next_crl_number(self):
        def tx(db):
            r = db.execute("SELECT value FROM meta WHERE key='crl_number'").fetchone()
            n = int(r[0]) + 1 if r else 1
            db.execute("INSERT OR REPLACE INTO meta VALUES ('crl_number', ?)", (str(n),))
            return n

        return self._write(tx)

    # -- enrollment requests (manual approval) --
    def find_request(self, fingerprint):
        """The newest request with this fingerprint as a dict, or None."""
        r = self._db().execute(
            "SELECT id, fingerprint, label, op, subject, requester, status, created, decided, reason, serial "
            "FROM requests WHERE fingerprint=? ORDER BY id DESC LIMIT 1",
            (fingerprint,),
        ).fetchone()
        return _req(r) if r else None

    def get_request(self, request_id):
        r = self._db().execute(
            "SELECT id, fingerprint, label, op, subject, requester, status, created, decided, reason, serial "
            "FROM requests WHERE id=?",
            (int(request_id),),
        ).fetchone()
        return _req(r) if r else None

    def request_csr(self, request_id):
        r = self._db().execute("SELECT csr FROM requests WHERE id=?", (int(request_id),)).fetchone()
        return bytes(r[0]) if r else None

    def add_request(self, fingerprint, *, label, op, subject, csr_der, requester=None):
        """Record a request waiting for approval; returns its id. If a request
        with this fingerprint is already pending, that one's id is returned."""

        def tx(db):
            r = db.execute(
                "SELECT id FROM requests WHERE fingerprint=? AND status=? ORDER BY id DESC LIMIT 1",
                (fingerprint, PENDING),
            ).fetchone()
            if r:
                return r[0]
            cur = db.execute(
                "INSERT INTO requests(fingerprint, label, op, subject, requester, csr, status, created) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (fingerprint, label or "", op, subject, requester, csr_der, PENDING, self._now()),
            )
            return cur.lastrowid

        return self._write(tx)

    def decide(self, request_id, approve, reason=None):
        """Approve or reject a pending request. Returns the updated request."""
        status = APPROVED if approve else REJECTED

        def tx(db):
            r = db.execute("SELECT status FROM requests WHERE id=?", (int(request_id),)).fetchone()
            if not r:
                raise LocalProtocolError("no enrollment request with id %s" % request_id)
            if r[0] != PENDING:
                raise LocalProtocolError("request %s is already %s" % (request_id, r[0]))
            db.execute(
                "UPDATE requests SET status=?, decided=?, reason=? WHERE id=?",
                (status, self._now(), reason, int(request_id)),
            )

        self._write(tx)
        return self.get_request(request_id)

    def list_requests(self, status=None, limit=1000):
        q = "SELECT id, fingerprint, label, op, subject, requester, status, created, decided, reason, serial FROM requests"
        args = ()
        if status:
            q += " WHERE status=?"
            args = (status,)
        q += " ORDER BY id LIMIT ?"
        return [_req(r) for r in self._db().execute(q, args + (limit,))]

    def integrity_check(self):
        return self._db().execute("PRAGMA integrity_check").fetchone()[0]


def _req(r):
    keys = ("id", "fingerprint", "label", "op", "subject", "requester", "status", "created", "decided", "reason", "serial")
    return dict(zip(keys, r))
