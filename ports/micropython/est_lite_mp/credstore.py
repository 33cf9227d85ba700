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

import hashlib
import os

from est_lite.errors import EstError, LocalProtocolError

_MAGIC = "est-lite-store 1"
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


def _hex(data):
    return hashlib.sha256(data).digest().hex()


def split_der(data, max_certs=8):
    """Concatenated DER SEQUENCEs -> list of bytes (for the CA file)."""
    out = []
    mv = memoryview(data)
    off = 0
    n = len(mv)
    while off < n:
        if len(out) >= max_certs or n - off < 2 or mv[off] != 0x30:
            raise StoreError("credential store: CA file is not a list of DER certificates")
        ln = mv[off + 1]
        h = 2
        if ln & 0x80:
            k = ln & 0x7F
            if not 1 <= k <= 3 or n - off < 2 + k:
                raise StoreError("credential store: CA file is not a list of DER certificates")
            ln = int.from_bytes(bytes(mv[off + 2:off + 2 + k]), "big")
            h = 2 + k
        end = off + h + ln
        if end > n:
            raise StoreError("credential store: CA file is truncated")
        out.append(bytes(mv[off:end]))
        off = end
    return out


class CredStore:
    """A credential store in directory `path` (created on first save).
    max_file bounds every file read (a store is small)."""

    def __init__(self, path, max_file=16384):
        self.path = path.rstrip("/") or "/"
        self.max_file = max_file

    # -- filesystem hooks (est_lite_cpython.credstore overrides these) --

    def _p(self, name):
        return self.path + "/" + name

    def _write(self, name, data):
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
        except OSError:
            pass  # exists (or the parent is missing: the first write says so)

    # -- manifest --

    def _parse(self, text):
        # -> {"gen": n, part: (file, hex)}; StoreError if malformed or
        # its closing hash does not match
        try:
            s = text.decode()
        except UnicodeError:
            s = ""
        i = s.rfind("end ")
        body = s[:i]
        lines = body.split("\n")
        if i < 0 or lines[0] != _MAGIC or s[i + 4:].strip() != _hex(body.encode()):
            raise StoreError("credential store manifest is corrupt or half-written (%s)" % self._p("manifest"))
        m = {"gen": 0}
        for ln in lines[1:]:
            w = ln.split()
            if len(w) == 2 and w[0] == "gen":
                m["gen"] = int(w[1])
            elif len(w) == 3 and w[0] in _PARTS:
                m[w[0]] = (w[1], w[2])
            elif w:
                raise StoreError("credential store manifest has an unknown line %r" % ln)
        return m

    def _manifest(self):
        data = self._read("manifest")
        if data is None:
            tmp = self._read("manifest.tmp")
            if tmp is None:
                return None
            try:
                m = self._parse(tmp)  # a complete manifest.tmp: the commit was cut between remove and rename
            except StoreError:
                # cut while writing the first manifest.tmp (the old manifest
                # is removed only once a new one is complete): never committed
                return None
            os.rename(self._p("manifest.tmp"), self._p("manifest"))
            return m
        return self._parse(data)

    # -- public --

    def load(self):
        """The committed credentials (Creds), or None if the store is empty.
        Raises StoreError if anything fails its check."""
        m = self._manifest()
        if m is None:
            return None
        got = {}
        for part in _PARTS:
            e = m.get(part)
            if e is None:
                continue
            data = self._read(e[0])
            if data is None:
                raise StoreError("credential store: %s is missing (%s)" % (part, self._p(e[0])))
            if _hex(data) != e[1]:
                raise StoreError("credential store: %s does not match its hash (%s): corrupt, not loaded"
                                 % (part, self._p(e[0])))
            got[part] = data
        ca = got.get("ca")
        return Creds(got.get("key"), got.get("cert"), split_der(ca) if ca else (), m["gen"])

    def save(self, key=None, cert=None, ca=None, keep=()):
        """Commit a new generation: key (DER), cert (DER), ca (list of DER).
        A part given as None keeps the committed one if it is named in
        `keep` (e.g. keep=("key", "cert") to replace only the CA
        certificates), else the new generation has none. Returns the new
        generation number."""
        for p in keep:
            if p not in _PARTS:
                raise LocalProtocolError("keep: unknown part %r" % (p,))
        old = None
        try:
            old = self._manifest()
        except StoreError:
            if keep:
                raise
        self._mkdir()
        gen = 0 if old is None else old["gen"]
        for n in self._names():  # above any generation left by an interrupted save
            d = n.rfind(".")
            if d > 0 and n[:d] in _PARTS and n[d + 1:].isdigit():
                gen = max(gen, int(n[d + 1:]))
        gen += 1
        new = {"key": key, "cert": cert, "ca": None if ca is None else b"".join([bytes(c) for c in ca])}
        lines = [_MAGIC, "gen %d" % gen]
        for part in _PARTS:
            data = new[part]
            if data is None:
                if part in keep and old is not None and part in old:
                    lines.append("%s %s %s" % (part, old[part][0], old[part][1]))
                continue
            data = bytes(data)
            name = "%s.%d" % (part, gen)
            self._write(name, data)
            h = _hex(data)
            back = self._read(name)
            if back is None or _hex(back) != h:
                raise StoreError("credential store: %s did not read back as written" % self._p(name))
            lines.append("%s %s %s" % (part, name, h))
        body = "\n".join(lines) + "\n"
        self._write("manifest.tmp", (body + "end " + _hex(body.encode()) + "\n").encode())
        try:
            os.rename(self._p("manifest.tmp"), self._p("manifest"))  # the commit point
        except OSError:
            # a filesystem whose rename does not replace (FAT): remove, then
            # rename; load() recovers manifest.tmp if cut in between
            self._remove("manifest")
            os.rename(self._p("manifest.tmp"), self._p("manifest"))
        self._sync_dir()
        self._clean(lines)
        return gen

    def _clean(self, lines):
        # remove the parts no longer referenced (older generations, leftovers)
        used = [ln.split()[1] for ln in lines[2:]]
        for n in self._names():
            d = n.rfind(".")
            if d > 0 and n[:d] in _PARTS and n not in used:
                self._remove(n)

    def clear(self):
        """Remove every file of the store (the directory stays)."""
        for n in self._names():
            d = n.rfind(".")
            if n in ("manifest", "manifest.tmp") or (d > 0 and n[:d] in _PARTS):
                self._remove(n)
