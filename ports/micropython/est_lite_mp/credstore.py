# est-lite credential store: key, certificate and CA certificates in one
# directory, replaced atomically. Portable (MicroPython VFS and CPython);
# est_lite_cpython.credstore adds 0600 files and fsync.
#
#   s = CredStore("/flash/est")
#   c = s.load()            # None for an empty store; raises StoreError if corrupt
#   c.key, c.cert, c.ca     # DER bytes, DER bytes, list of DER (any may be None/[])
#   s.save(key=k, cert=c, ca=[ca1, ca2])   # a new generation, committed by one rename
#
# Layout: the parts of generation N are files "key.N", "cert.N", "ca.N"
# (the CA certificates concatenated as DER). The text file "manifest" names
# them with their SHA-256 and ends with the SHA-256 of its own lines:
#
#   est-lite-store 1
#   gen 7
#   key key.7 <hex>
#   cert cert.7 <hex>
#   ca ca.7 <hex>
#   end <hex of the bytes above>
#
# save(): write the new parts (the old generation stays untouched), read
# them back and check their hashes, write "manifest.tmp", then
# rename("manifest.tmp", "manifest") -- the single commit point -- and only
# then remove the files of older generations. A power cut before the rename
# leaves the old generation in force; after it, the new one. load() checks
# every hash: a corrupt or half-written store raises StoreError and nothing
# is returned. On a filesystem whose rename cannot replace a file (FAT) the
# old manifest is removed first, and load() recovers a complete
# "manifest.tmp" when "manifest" is missing.
#
# This module holds the class and its filesystem hooks (a device creates its
# store at start-up and keeps it); load/save/clear run in
# est_lite_mp.storeops, imported when called. Every file operation goes
# through a hook (est_lite_cpython.credstore and test harnesses override
# them) and this module's `os`.

import os

from est_lite.errors import EstError, LocalProtocolError

_PARTS = ("key", "cert", "ca")


class StoreError(EstError):
    """The credential store is corrupt or half-written (never loaded)."""


class Creds:
    """What a store holds: key (DER private key or None), cert (DER or
    None), ca (list of DER CA certificates), gen (generation number)."""

    def __init__(self, key=None, cert=None, ca=(), gen=0):
        self.key = key
        self.cert = cert
        self.ca = list(ca)
        self.gen = gen

    def __repr__(self):
        return "<Creds gen %d key=%s cert=%s ca=%d>" % (self.gen, self.key is not None, self.cert is not None,
                                                         len(self.ca))


def split_der(data, max_certs=8):
    """Concatenated DER SEQUENCEs -> list of bytes (for the CA file)."""
    from est_lite_mp import storeops

    return storeops.split_der(data, max_certs)


class CredStore:
    """A credential store in directory `path` (created on first save).
    max_file bounds every file read (a store is small)."""

    def __init__(self, path, max_file=16384):
        if not isinstance(path, str) or not path.strip("/ "):
            # "" or "/" would put the store's files in the root directory
            raise LocalProtocolError("credential store path %r: give a directory (not empty, not /)" % (path,))
        self.path = path.rstrip("/")
        self.max_file = max_file

    # -- filesystem hooks (est_lite_cpython.credstore overrides some) --

    def _p(self, name):
        return self.path + "/" + name

    def _write(self, name, data):
        try:  # a link left at that name (unix port) is replaced, not written through
            os.remove(self._p(name))
        except OSError:
            pass
        f = open(self._p(name), "wb")
        try:
            f.write(data)
            f.flush()
            self._sync(f)
        finally:
            f.close()

    def _sync(self, f):
        pass  # MicroPython: flush()/close() hand the data to the filesystem

    def _sync_dir(self):
        pass

    def _read(self, name):
        try:
            n = os.stat(self._p(name))[6]
            f = open(self._p(name), "rb")
        except OSError:
            return None
        if n > self.max_file:
            f.close()
            raise StoreError("credential store: %s is larger than max_file=%d" % (name, self.max_file))
        try:
            return f.read(n)  # sized read: no max_file buffer on MicroPython
        finally:
            f.close()

    def _names(self):
        try:
            return os.listdir(self.path)
        except OSError:
            return []

    def _remove(self, name):
        try:
            os.remove(self._p(name))
        except OSError:
            pass

    def _mkdir(self):
        try:
            os.mkdir(self.path)
        except OSError as e:
            if e.args[0] not in (2, 17):
                raise  # full (ENOSPC; EACCES on FAT): save() says so
            # exists (or the parent is missing: the first write says so)

    def _rename(self, a, b):
        os.rename(self._p(a), self._p(b))

    # -- public (est_lite_mp.storeops) --

    def load(self):
        """The committed credentials (Creds), or None if the store is empty.
        Raises StoreError if anything fails its check."""
        from est_lite_mp import storeops

        return storeops.load(self)

    def save(self, key=None, cert=None, ca=None, keep=()):
        """Commit a new generation: key (DER), cert (DER), ca (list of DER).
        A part given as None keeps the committed one if it is named in
        `keep` (e.g. keep=("key", "cert") to replace only the CA
        certificates), else the new generation has none. Returns the new
        generation number."""
        from est_lite_mp import storeops

        return storeops.save(self, key, cert, ca, keep)

    def clear(self):
        """Remove every file of the store (the directory stays)."""
        from est_lite_mp import storeops

        storeops.clear(self)
