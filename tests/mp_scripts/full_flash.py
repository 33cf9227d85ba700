# The device's credential store (est_lite_mp.credstore / storeops) on a
# tiny filesystem that fills up, under the MicroPython unix port, for
# tests/test_mp_full_flash.py:
#   micropython full_flash.py KIND BLOCK_SIZE BLOCKS MODE
# KIND: lfs2 or fat (vfs.VfsLfs2 / vfs.VfsFat on a RAM block device);
# MODE: first (empty store, as a first enrollment), renew (a committed
# generation is replaced, as a renewal), renewkey (renewal that keeps the
# key: keep=("key",)), eio (renewal on a block device whose Nth write
# fails with EIO, for every N).
# For every fill level (a filler file of 0 .. all free bytes) it saves a
# new generation, then checks: the save either succeeded and load() gives
# the new generation, or it raised an EstError and load() gives the old one
# (also after a remount, as after a reboot); then it frees the space and
# saves again, which must succeed. Prints one line per level
# ("LEVEL <bytes> <ok|err> <loaded> <error>"), "BAD <why>" for a broken
# promise, and "DONE <levels> <ok> <err>".
import os
import sys

import vfs

from est_lite.errors import EstError
from est_lite_mp.credstore import CredStore

KIND, BS, NB, MODE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MNT = "/flash"


class RamBlocks:
    # a RAM block device (MicroPython "Filesystems and storage"); fail: the
    # write number (1-based, counted from arm()) that returns EIO
    def __init__(self, bs, n):
        self.bs = bs
        self.n = n
        self.data = bytearray(bs * n)
        self.fail = 0
        self.writes = 0

    def arm(self, nth):
        self.fail = nth
        self.writes = 0

    def readblocks(self, b, buf, off=0):
        a = b * self.bs + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, b, buf, off=None):
        if self.fail:
            self.writes += 1
            if self.writes == self.fail:
                return -5  # EIO, nothing written
        a = b * self.bs + (off or 0)
        self.data[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        return 0


def fs_of(bd):
    return vfs.VfsLfs2(bd) if KIND == "lfs2" else vfs.VfsFat(bd)


def mkfs(bd):
    if KIND == "lfs2":
        vfs.VfsLfs2.mkfs(bd)
    else:
        vfs.VfsFat.mkfs(bd)


def remount(bd):
    vfs.umount(MNT)
    vfs.mount(fs_of(bd), MNT)


def blob(tag, n):
    # a DER SEQUENCE of n bytes (the CA file is a list of them)
    body = bytes([tag]) * (n - 4)
    return b"\x30\x82" + bytes([len(body) >> 8, len(body) & 255]) + body


OLD = (blob(1, 138), blob(2, 480), [blob(3, 520), blob(4, 540)])
NEW = (blob(5, 138), blob(6, 490), [blob(7, 520), blob(8, 560)])


def fill(limit):
    # a filler file of up to `limit` bytes (less if the filesystem fills
    # first), appended 64 bytes at a time, each piece closed (committed)
    n = 0
    while n < limit:
        k = min(64, limit - n)
        try:
            f = open(MNT + "/filler", "ab")
        except OSError:
            break
        try:
            f.write(b"f" * k)
            f.close()
        except OSError:
            try:
                f.close()
            except OSError:
                pass
            break
        n += k
    try:
        return os.stat(MNT + "/filler")[6]
    except OSError:
        return 0


def ls():
    try:
        return sorted(os.listdir(MNT + "/est"))
    except OSError:
        return []


def what(store):
    # which generation load() gives: "old", "new", "none", or "ERR <msg>"/"??"
    try:
        c = store.load()
    except EstError as e:
        return "ERR " + str(e)
    except Exception as e:
        return "EXC %r" % (e,)
    if c is None:
        return "none"
    got = (c.key, c.cert, c.ca)
    if got == (NEW[0], NEW[1], NEW[2]) or (MODE == "renewkey" and got == (OLD[0], NEW[1], NEW[2])):
        return "new"
    if got == (OLD[0], OLD[1], OLD[2]):
        return "old"
    return "??"


def save_new(store):
    if MODE == "renewkey":
        return store.save(cert=NEW[1], ca=NEW[2], keep=("key",))
    return store.save(key=NEW[0], cert=NEW[1], ca=NEW[2])


bad = []


def level(limit, nth=0):
    bd = RamBlocks(BS, NB)
    mkfs(bd)
    vfs.mount(fs_of(bd), MNT)
    try:
        store = CredStore(MNT + "/est")
        if MODE != "first":
            store.save(key=OLD[0], cert=OLD[1], ca=OLD[2])
        before = "none" if MODE == "first" else "old"
        got = fill(limit)
        names = ls()
        bd.arm(nth)
        err = ""
        try:
            save_new(store)
            res = "ok"
        except EstError as e:
            res, err = "err", str(e)
        except Exception as e:
            res, err = "exc", "%r" % (e,)
        bd.arm(0)
        left = ls()
        now = what(store)
        remount(bd)
        store = CredStore(MNT + "/est")
        rebooted = what(store)
        tag = "level %d nth %d" % (got, nth)
        if res == "exc":
            bad.append("%s: save raised a non-EstError %s" % (tag, err))
        if res == "ok" and now != "new":
            bad.append("%s: save succeeded, load gives %s" % (tag, now))
        if res == "err" and now != before and nth == 0:
            bad.append("%s: save failed (%s), load gives %s, not %s" % (tag, err, now, before))
        if res == "err" and nth == 0 and "no space" not in err and "full FAT" not in err:
            bad.append("%s: save failed without saying why: %s" % (tag, err))
        if res == "err" and nth == 0 and left != names:
            bad.append("%s: the failed save left %s (before: %s)" % (tag, left, names))
        if rebooted != now and not (nth and rebooted in (before, "new")):
            bad.append("%s: after a remount load gives %s, before it %s" % (tag, rebooted, now))
        if nth and rebooted not in (before, "new"):
            bad.append("%s: EIO: after a remount load gives %s" % (tag, rebooted))
        # free the space: the next save must succeed
        try:
            os.remove(MNT + "/filler")
        except OSError:
            pass
        try:
            save_new(store)
            again = what(store)
        except Exception as e:
            again = "%s %s" % (type(e).__name__, e)
        if again != "new":
            bad.append("%s: after freeing space the save gives %s" % (tag, again))
        print("LEVEL %d %s %s %s" % (got, res, now, err))
        return res
    finally:
        vfs.umount(MNT)


def free_bytes():
    bd = RamBlocks(BS, NB)
    mkfs(bd)
    vfs.mount(fs_of(bd), MNT)
    n = fill(1 << 30)
    vfs.umount(MNT)
    return n


top = free_bytes()
counts = {"ok": 0, "err": 0, "exc": 0}
n = 0
if MODE == "eio":
    # a renewal whose Nth block write fails
    nth = 1
    while nth < 200:
        r = level(0, nth)
        counts[r] += 1
        n += 1
        if r == "ok" and nth > 60:
            break
        nth += 1
else:
    step = BS // 4
    lim = top
    while lim >= 0:
        counts[level(lim)] += 1
        n += 1
        lim -= step
for b in bad:
    print("BAD " + b)
print("DONE %d %d %d" % (n, counts["ok"], counts["err"] + counts["exc"]))
