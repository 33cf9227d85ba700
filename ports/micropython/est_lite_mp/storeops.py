# The work of est_lite_mp.credstore.CredStore (layout and commit protocol
# described there): load, save, clear, imported only when called. Files are
# reached through the store's hooks only (_read, _write, _rename, _remove,
# _names, _mkdir, _sync_dir).
import hashlib

from est_lite.errors import LocalProtocolError, const
from est_lite_mp.credstore import _PARTS, Creds, StoreError

_MAGIC = const("est-lite-store 1")


def _hex(data):
    return hashlib.sha256(data).digest().hex()


def split_der(data, max_certs=8):
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


def _parse(st, text):
    # -> {"gen": n, part: (file, hex)}; StoreError if malformed or
    # its closing hash does not match
    try:
        s = text.decode()
    except UnicodeError:
        s = ""
    i = s.rfind("end ")
    body = s[:i]
    lines = body.split("\n")
    if lines[0] != _MAGIC and lines[0][:15] == _MAGIC[:15]:
        # another format (a newer est-lite's): refused, never rewritten
        # (not a StoreError, which save() would write over)
        raise LocalProtocolError("credential store %s is format %s; this est-lite reads format 1: upgrade est-lite "
                                 "(the store was not changed)" % (st.path, lines[0][15:]))
    if i < 0 or lines[0] != _MAGIC or s[i + 4:].strip() != _hex(body.encode()):
        raise StoreError("credential store manifest is corrupt or half-written (%s)" % st._p("manifest"))
    m = {"gen": 0}
    for ln in lines[1:]:
        w = ln.split()
        if len(w) == 2 and w[0] == "gen" and w[1].isdigit():
            m["gen"] = int(w[1])
        elif len(w) == 3 and (_numbered(w[1]) or (None,))[0] == w[0]:
            m[w[0]] = (w[1], w[2])
        elif w:
            # also a part file the store never writes (e.g. "../x"): not read
            raise StoreError("credential store manifest has an unknown line %r" % ln)
    return m


def _numbered(name):
    # (part, generation) of a file name save() writes ("key.7"), else None
    d = name.rfind(".")
    if d > 0 and name[:d] in _PARTS and name[d + 1:].isdigit():
        try:
            return name[:d], int(name[d + 1:])
        except ValueError:  # CPython's isdigit() also takes e.g. "²"
            pass
    return None


def _manifest(st):
    data = st._read("manifest")
    if data is None:
        tmp = st._read("manifest.tmp")
        if tmp is None:
            return None
        try:
            m = _parse(st, tmp)  # a complete manifest.tmp: the commit was cut between remove and rename
        except StoreError:
            # cut while writing the first manifest.tmp (the old manifest
            # is removed only once a new one is complete): never committed
            return None
        st._rename("manifest.tmp", "manifest")
        return m
    return _parse(st, data)


def load(st):
    m = _manifest(st)
    if m is None:
        return None
    got = {}
    for part in _PARTS:
        e = m.get(part)
        if e is None:
            continue
        data = st._read(e[0])
        if data is None:
            raise StoreError("credential store: %s is missing (%s)" % (part, st._p(e[0])))
        if _hex(data) != e[1]:
            raise StoreError("credential store: %s does not match its hash (%s): corrupt, not loaded"
                             % (part, st._p(e[0])))
        got[part] = data
    ca = got.get("ca")
    return Creds(got.get("key"), got.get("cert"), split_der(ca) if ca else (), m["gen"])


def save(st, key, cert, ca, keep):
    for p in keep:
        if p not in _PARTS:
            raise LocalProtocolError("keep: unknown part %r" % (p,))
    old = None
    try:
        old = _manifest(st)
    except StoreError:
        if keep:
            raise
    gen = 0 if old is None else old["gen"]
    for n in st._names():  # above any generation left by an interrupted save
        p = _numbered(n)
        if p is not None and p[1] > gen:
            gen = p[1]
    gen += 1
    if old is not None:
        # parts of an interrupted save (a power cut, an older version) take
        # flash the new generation may need: only the committed ones stay
        used = [old[p][0] for p in _PARTS if p in old]
        for n in st._names():
            if _numbered(n) and n not in used:
                st._remove(n)
    cut = False
    try:
        st._mkdir()
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
            st._write(name, data)
            h = _hex(data)
            back = st._read(name)
            if back is None or _hex(back) != h:
                raise StoreError("credential store: %s did not read back as written" % st._p(name))
            lines.append("%s %s %s" % (part, name, h))
        body = "\n".join(lines) + "\n"
        st._write("manifest.tmp", (body + "end " + _hex(body.encode()) + "\n").encode())
        try:
            st._rename("manifest.tmp", "manifest")  # the commit point
        except OSError as e:
            if "manifest.tmp" not in st._names():
                pass  # renamed, then the filesystem reported an error (EIO while syncing): committed
            elif e.args and e.args[0] == 28:
                raise
            else:
                # a filesystem whose rename does not replace (FAT): remove,
                # then rename; load() recovers manifest.tmp if cut in between
                cut = True
                st._remove("manifest")
                st._rename("manifest.tmp", "manifest")
    except (OSError, StoreError) as e:
        why = str(e)
        if isinstance(e, OSError):
            n = e.args[0] if e.args else 0
            why = "credential store %s: cannot write: %s" % (st.path, "no space on the filesystem (free some space "
                                                                "and try again)" if n == 28 else
                                                                "EACCES (no permission, or a full FAT filesystem)"
                                                                if n == 13 else why)
        if cut:
            # the old manifest is gone, the new one complete: load() takes it
            raise StoreError(why + "; the commit was cut: the next load() takes the new credentials")
        # not committed: the previous generation stays in force; remove what
        # this save wrote so that the flash it took is free for the next try
        for n in st._names():
            if n == "manifest.tmp" or (_numbered(n) or (0, 0))[1] == gen:
                st._remove(n)
        raise StoreError(why + "; nothing saved, the store is as it was")
    st._sync_dir()
    _clean(st, lines)
    return gen


def _clean(st, lines):
    # remove the parts no longer referenced (older generations, leftovers)
    used = [ln.split()[1] for ln in lines[2:]]
    for n in st._names():
        d = n.rfind(".")
        if d > 0 and n[:d] in _PARTS and n not in used:
            st._remove(n)


def clear(st):
    for n in st._names():
        d = n.rfind(".")
        if n in ("manifest", "manifest.tmp") or (d > 0 and n[:d] in _PARTS):
            st._remove(n)
