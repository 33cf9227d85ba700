"""Credential store for CPython: the portable est_lite_mp.credstore format
(a device and a gateway read each other's stores) with files created 0600
in a 0700 directory, fsync of every file before the commit rename and of the
directory after it.

    from est_lite_cpython.credstore import CredStore, StoreError
    s = CredStore("/var/lib/est/dev-1")
    c = s.load()                  # Creds(key, cert, ca, gen) or None; StoreError if corrupt
    s.save(key=der, cert=der, ca=[der, ...])

Beyond the portable checks (every file against its hash in the manifest):
a file that exists but cannot be read (a directory, no permission) is a
StoreError, not an empty store; load() and save() refuse a key that does
not belong to the certificate (StoreError / LocalProtocolError); a save
that fails on the filesystem (a full disk included: "no space on the
filesystem") raises StoreError and removes the files it had written (the
committed generation stays in force); files are created
fresh (an existing file or symlink of that name is removed first); save()
holds an exclusive flock on the directory, load() a shared one, so two
processes using one store do not interleave (a save inside a save would
wait for itself: do not call load() from a save hook).
"""

import errno
import os

from est_lite.errors import LocalProtocolError

from est_lite_mp.credstore import Creds, StoreError, split_der  # noqa: F401 - re-exported
from est_lite_mp.credstore import CredStore as _PortableStore


def write_file_atomic(path, data, mode=0o600, tmp_suffix=".tmp"):
    """Write `path` as a whole: a fresh temporary file path + tmp_suffix
    (never through a file or symlink left at that name), fsync, rename, so
    a reader sees the old file or the new one, never part of one; nothing
    is left behind on failure (OSError is raised). mode 0o600: exactly
    that, whatever the umask (keys, pending requests); any other mode is
    given to open() and the umask applies (public files such as a CRL).
    tmp_suffix: e.g. ".PID.tmp" where several processes may write the same
    file at once."""
    tmp = path + tmp_suffix
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode == 0o600:
                os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# bytes check_writable() writes (and removes) to see that the disk has room
# for a new generation next to the old one and the PEM copies (a few KB of
# data, a filesystem block or more per file)
SPACE_PROBE = 32768

# the errno values of a write that found no room: a full disk, a quota, a
# file size limit (RLIMIT_FSIZE)
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_probe(d, size, prefix=".est-lite-probe-"):
    """Write `size` bytes to a new file in directory d, then remove it;
    the OSError of the write as it came (errno in NO_SPACE_ERRNOS: no room).
    Nothing stays, whatever happens."""
    import tempfile

    name = None
    try:
        fd, name = tempfile.mkstemp(dir=d, prefix=prefix)
        try:
            view = memoryview(bytes(size))
            while view:  # (a short write at a file size limit, EFBIG at the next)
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    finally:
        if name is not None:
            try:
                os.remove(name)
            except OSError:
                pass


class CredStore(_PortableStore):
    def __init__(self, path, max_file=16384):
        # the portable store turns "" (and "/") into the root directory
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip("/ "):
            raise LocalProtocolError("credential store path %r: give a directory (not empty, not /)" % (path,))
        super().__init__(os.fspath(path), max_file)

    def check_writable(self):
        """StoreError now if save() could not write here: the path (or the
        first of its parents that exists) is not a directory we may write.
        Creates nothing that stays: EstClient.provision() and
        renew_if_needed() call it before contacting the server, so a store
        that cannot be written costs no certificate (issued, then lost
        with its key). A full disk is one: it writes SPACE_PROBE bytes and
        removes them ("no space on the filesystem")."""
        self.check_dir()
        p = os.path.abspath(self.path)
        probe = p
        while not os.path.lexists(probe):
            up = os.path.dirname(probe)
            if up == probe:
                break
            probe = up
        if not os.path.isdir(probe):
            raise StoreError("credential store %s cannot be created: %s is not a directory" % (self.path, probe))
        if probe != p and not os.access(probe, os.W_OK | os.X_OK):
            raise StoreError("credential store %s cannot be created: %s is not writable" % (self.path, probe))
        # a test write of SPACE_PROBE bytes, removed at once: a full disk is
        # said before the server issues a certificate that could not be kept
        try:
            write_probe(probe, SPACE_PROBE)
        except OSError as e:
            if e.errno in NO_SPACE_ERRNOS:
                raise StoreError("credential store %s: no space on the filesystem (a %d-byte test write failed: %s): "
                                 "free some space and try again" % (self.path, SPACE_PROBE, e.strerror)) from None
            raise StoreError("credential store %s is not writable: %s" % (self.path, e.strerror or e)) from None

    def check_dir(self):
        """StoreError if the store's directory exists and every user may
        write it (/tmp itself, a 0777 directory): anyone could plant a key,
        a certificate or a trust anchor there (a later load() would use
        them) or remove ours. Checked by load(), save(), check_writable()."""
        import stat

        try:
            st = os.stat(self.path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002:
            raise StoreError("credential store %s is writable by every user (mode %04o): anyone could replace its "
                             "key or trust anchors; chmod 700 %s if it is yours, else give a directory of its own "
                             "(est-lite creates it 0700)" % (self.path, stat.S_IMODE(st.st_mode), self.path))

    def _mkdir(self):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StoreError("credential store %s is not a directory" % self.path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _read(self, name):
        if "/" in name or "\\" in name or name.startswith(".") or not name:
            raise StoreError("credential store %s: the manifest names %r, a file outside the store" % (self.path, name))
        p = self._p(name)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise StoreError("credential store %s is not a directory" % self.path) from None
        except OSError as e:
            raise StoreError("credential store: cannot read %s: %s" % (p, e.strerror or e)) from None
        if os.path.isdir(p):
            raise StoreError("credential store: %s is a directory, not a file" % p)
        import stat

        if not stat.S_ISREG(st.st_mode):  # a FIFO: open() would wait for a writer forever
            raise StoreError("credential store: %s is not a plain file (a FIFO or device)" % p)
        return super()._read(name)

    def _lock(self, exclusive):
        # an advisory lock on the store's directory (flock), so that two
        # processes (a renewal timer and a manual run) do not interleave
        # their writes: shared for load, exclusive for save; None when the
        # directory does not exist yet (or flock is unavailable)
        try:
            import fcntl

            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (ImportError, OSError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            return None
        return fd

    def load(self):
        self.check_dir()
        fd = self._lock(False)
        try:
            return self._load()
        finally:
            if fd is not None:
                os.close(fd)

    def _load(self):
        try:
            c = super().load()
        except ValueError as e:  # a manifest line the portable parser does not expect ("gen x")
            raise StoreError("credential store %s: manifest is corrupt (%s)" % (self.path, e)) from None
        if c is not None:
            why = pair_mismatch(c.key, c.cert)
            if why:
                raise StoreError("credential store %s: %s: not loaded" % (self.path, why))
        return c

    def save(self, key=None, cert=None, ca=None, keep=()):
        why = pair_mismatch(key, cert)
        if why:
            raise LocalProtocolError("credential store: refusing to save: %s" % why)
        if not os.path.isdir(self.path):
            try:
                self._mkdir()
            except OSError as e:
                raise StoreError("credential store %s cannot be created: %s" % (self.path, e.strerror or e)) from None
        self.check_dir()
        fd = self._lock(True)
        try:
            return self._save(key, cert, ca, keep)
        finally:
            if fd is not None:
                os.close(fd)

    def _save(self, key, cert, ca, keep):
        # the portable save removes what it wrote when it fails before its
        # commit (ENOSPC included); an OSError that gets here came from a
        # read or after the commit: nothing of this save to remove
        try:
            return super().save(key, cert, ca, keep)
        except OSError as e:
            raise StoreError("credential store %s: cannot write: %s%s" % (
                self.path, e.strerror or e, " (%s)" % e.filename if e.filename else "")) from None

    def _write(self, name, data):
        p = self._p(name)
        try:
            os.remove(p)  # never write through a file or symlink left at that name
        except FileNotFoundError:
            pass
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_dir(self):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pem_files(self, creds=None):
        """{"key.pem": bytes, "cert.pem": bytes, "ca.pem": bytes} for the
        committed credentials (for tools that want PEM)."""
        import base64

        c = creds or self.load()
        out = {}
        if c is None:
            return out

        def pem(kind, der):
            b = base64.encodebytes(der).replace(b"\n", b"")
            lines = [b[i:i + 64] for i in range(0, len(b), 64)]
            return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (kind, b"\n".join(lines), kind)

        if c.key is not None:
            out["key.pem"] = pem(b"PRIVATE KEY" if _is_pkcs8(c.key) else b"EC PRIVATE KEY", c.key)
        if c.cert is not None:
            out["cert.pem"] = pem(b"CERTIFICATE", c.cert)
        if c.ca:
            out["ca.pem"] = b"".join(pem(b"CERTIFICATE", x) for x in c.ca)
        return out


def pair_mismatch(key, cert):
    """None if key (DER private key) belongs to cert (DER certificate), or
    either is missing; else the reason, as text."""
    if key is None or cert is None:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        k = serialization.load_der_private_key(bytes(key), password=None)
    except (ValueError, TypeError):
        return "the key is not a DER private key"
    try:
        c = x509.load_der_x509_certificate(bytes(cert))
        cpub = c.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        return "the certificate is not a DER certificate"
    kpub = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if kpub != cpub:
        return "the key does not belong to the certificate"
    return None


def _is_pkcs8(der):
    # PKCS#8 PrivateKeyInfo: SEQUENCE { INTEGER 0, SEQUENCE AlgorithmIdentifier, ... };
    # SEC1 ECPrivateKey: SEQUENCE { INTEGER 1, OCTET STRING, ... }
    from est_lite import der as D
    from est_lite.errors import EstError

    try:
        s, e = D.read(der, 0, D.SEQUENCE)
        a, b = D.read(der, s, D.INTEGER, e)
        return D.read_int(der, a, b) == 0
    except EstError:
        return False
