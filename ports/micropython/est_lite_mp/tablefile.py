# The P-256 base-point table (p256_table.py) as a binary file read one
# window at a time, for devices whose heap cannot hold the imported table
# (38.5 KB from .mpy). Each k*G then reads 64 windows of 512 bytes (the top
# one 1 KB): about 1.5 KB live instead of 38.5 KB, at the cost of 64 small
# reads per scalar multiplication.
#
#   python -m est_lite_mp.tablefile p256_table.bin     # on a PC (CPython)
#   mpremote cp p256_table.bin :/p256_table.bin
#   from est_lite_mp import tablefile
#   tablefile.install("/p256_table.bin")               # before key generation / signing
#
# FileTable follows the table protocol of p256.set_table (w, len, [i]).
# Format: b"P256T" W n, then n big-endian 16-bit window lengths, then the
# windows' point data back to back (exactly p256_table.T).

from est_lite.errors import const

_MAGIC = const(b"P256T")


class FileTable:
    """Sequence of the table's windows, read from the file on demand."""

    def __init__(self, path):
        from array import array

        f = open(path, "rb")
        h = f.read(7)
        if len(h) != 7 or h[:5] != _MAGIC:
            f.close()
            raise ValueError("%s is not a P-256 table file" % path)
        self.w = h[5]
        n = h[6]
        lens = f.read(2 * n)
        # n + 1 file offsets in one array (260 bytes; two lists of ints were 1 KB)
        o = 7 + 2 * n
        self._off = array("i", [o])  # ("i": a name interned anyway; "I" would be one more)
        for i in range(n):
            o += lens[2 * i] << 8 | lens[2 * i + 1]
            self._off.append(o)
        self._f = f

    def __len__(self):
        return len(self._off) - 1

    def __getitem__(self, i):
        f = self._f
        o = self._off
        a = o[i]
        n = o[i + 1] - a
        f.seek(a)
        d = f.read(n)
        if len(d) != n:
            raise ValueError("P-256 table file is truncated")
        return d

    def close(self):
        self._f.close()


def install(path):
    """Make est_lite_mp.p256 read its base-point table from `path`
    (p256.set_table with a FileTable); returns the FileTable."""
    from est_lite_mp import p256

    t = FileTable(path)
    try:
        prev = p256.set_table(t)
    except BaseException:
        t.close()
        raise
    if isinstance(prev, FileTable):
        prev.close()
    return t


def uninstall():
    """Back to the built-in table; closes an installed FileTable."""
    from est_lite_mp import p256

    t = p256.set_table(None)
    if isinstance(t, FileTable):
        t.close()


def write(path):
    """Write the table file from p256_table (run where memory allows)."""
    from est_lite_mp import p256_table as P

    T = P.T
    head = bytearray(_MAGIC)
    head.append(P.W)
    head.append(len(T))
    for t in T:
        head.append(len(t) >> 8)
        head.append(len(t) & 255)
    f = open(path, "wb")
    try:
        f.write(head)
        for t in T:
            f.write(t)
    finally:
        f.close()


if __name__ == "__main__":
    import sys

    write(sys.argv[1] if len(sys.argv) > 1 else "p256_table.bin")
