# provision() and renew_if_needed() of est_lite_mp.client.EstClient with
# the credential store on a tiny LittleFS that is full, under the
# MicroPython unix port, for tests/test_mp_full_flash.py:
#   micropython full_flash_provision.py CONFIG.json
# CONFIG: server, trust [DER paths], cert, key (DER paths: the first-contact
# identity), table (P-256 table file), cn.
# Steps: provision on a full flash (an EstError, an empty store), again
# with space (generation 1), renew on a full flash (an EstError, generation
# 1 still loads), again with space (generation 2). Prints "OK ..." or
# "ERR <Class>: <message>" per step, then "DONE".
import json
import os
import sys

import vfs

from est_lite.errors import EstError


def _read(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


class RamBlocks:
    def __init__(self, bs, n):
        self.bs = bs
        self.n = n
        self.data = bytearray(bs * n)

    def readblocks(self, b, buf, off=0):
        a = b * self.bs + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, b, buf, off=None):
        a = b * self.bs + (off or 0)
        self.data[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        return 0


def fill():
    # the flash full of "logs": 64-byte appends until ENOSPC
    while True:
        try:
            f = open("/flash/log", "ab")
        except OSError:
            return
        try:
            f.write(b"l" * 64)
            f.close()
        except OSError:
            try:
                f.close()
            except OSError:
                pass
            return


def step(name, fn):
    try:
        print("OK %s %s" % (name, fn()))
    except EstError as e:
        print("ERR %s %s: %s" % (name, type(e).__name__, e))


def main():
    f = open(sys.argv[1])
    cfg = json.load(f)
    f.close()
    from est_lite_mp import tablefile

    tablefile.install(cfg["table"])
    bd = RamBlocks(512, 32)
    vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/flash")
    from est_lite_mp.client import EstClient
    from est_lite_mp.credstore import CredStore

    store = CredStore("/flash/est")

    def client():
        return EstClient(cfg["server"], trust=[_read(p) for p in cfg["trust"]], cert=_read(cfg["cert"]),
                         key=_read(cfg["key"]), timeout=30, deadline=120)

    def load():
        c = store.load()
        return "none" if c is None else "gen=%d cert=%s" % (c.gen, c.cert[-8:].hex())

    fill()
    c = client()
    step("provision-full", lambda: c.provision(store, cn=cfg["cn"]).gen)
    c.close()
    step("load", load)
    os.remove("/flash/log")
    c = client()
    step("provision", lambda: c.provision(store, cn=cfg["cn"]).gen)
    c.close()
    step("load", load)
    fill()
    c = EstClient(cfg["server"], trust=[_read(p) for p in cfg["trust"]], timeout=30, deadline=120)
    step("renew-full", lambda: c.renew_if_needed(store, threshold=10 ** 9).gen)
    c.close()
    step("load", load)
    os.remove("/flash/log")
    step("renew", lambda: c.renew_if_needed(store, threshold=10 ** 9).gen)
    c.close()
    step("load", load)
    print("DONE")


main()
