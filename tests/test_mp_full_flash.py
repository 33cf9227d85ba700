"""The device's credential store (est_lite_mp.credstore / storeops, as .mpy)
on a tiny filesystem that fills up, under the MicroPython unix port: a
RAM block device (MicroPython's "Filesystems and storage" recipe) with
vfs.VfsLfs2 or vfs.VfsFat mounted on it, filled by a filler file to every
level from "full" down to "empty" in steps of a quarter block, then a new
generation saved (tests/mp_scripts/full_flash.py does the work and prints
"BAD ..." for every broken promise).

The promises, at every level: the save succeeds and load() gives the new
key + certificate, or it raises an EstError that says "no space on the
filesystem" (FAT: EACCES for a full directory) and load() gives the old
pair -- also after a remount, as after a reboot -- and the failed save left
no file behind; once the filler is removed, the next save succeeds. Also a
block device whose Nth write returns EIO (every N until a renewal needs no
more writes): an EstError, and after a remount the old or the new pair,
never an empty or corrupt store.

Before the fix a full flash raised a bare OSError(28) and left the parts
it had written (flash the next try needed), a first save on a FAT that
had no room for the store's directory said ENOENT, and an EIO reported
after FAT's rename had replaced the manifest made save() remove the new
manifest: the store came back empty after a reboot."""

import subprocess

import pytest

from helpers_mp import MICROPYTHON, MISSING, MPY_CROSS, ROOT, compile_packages

pytestmark = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None, reason=MISSING)

SCRIPT = ROOT / "tests" / "mp_scripts" / "full_flash.py"


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    return compile_packages(tmp_path_factory.mktemp("fullflash"),
                            only={"est_lite": ["errors"], "est_lite_mp": ["credstore", "storeops"]})


def sweep(mplib, kind, bs, blocks, mode):
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=512K", str(SCRIPT), kind, str(bs), str(blocks), mode],
                       capture_output=True, text=True, timeout=600, env={"MICROPYPATH": str(mplib)})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert not bad, "\n".join(bad[:20])
    done = [ln for ln in out.splitlines() if ln.startswith("DONE")]
    assert len(done) == 1, out[-3000:]
    _, levels, ok, err = done[0].split()
    levels = [ln for ln in out.splitlines() if ln.startswith("LEVEL")]
    return int(ok), int(err), levels


@pytest.mark.parametrize("kind,bs,blocks", [("lfs2", 512, 24), ("lfs2", 4096, 16), ("fat", 512, 64)])
@pytest.mark.parametrize("mode", ["first", "renew", "renewkey"])
def test_every_fill_level(mplib, kind, bs, blocks, mode):
    ok, err, levels = sweep(mplib, kind, bs, blocks, mode)
    # both outcomes were met: the sweep reached a full flash and one with room
    assert ok > 0 and err > 0, (ok, err)
    failed = [ln for ln in levels if " err " in ln]
    assert any("no space on the filesystem" in ln for ln in failed) or kind == "fat", failed[:3]
    # a renewal that fails keeps the old pair; a first enrollment an empty store
    want = " none " if mode == "first" else " old "
    assert all(want in ln for ln in failed), failed[:3]


@pytest.mark.parametrize("kind,bs,blocks", [("lfs2", 512, 24), ("lfs2", 4096, 16), ("fat", 512, 64)])
def test_a_write_that_fails_with_eio(mplib, kind, bs, blocks):
    ok, err, levels = sweep(mplib, kind, bs, blocks, "eio")
    assert ok > 0 and err > 0, (ok, err)
    assert any("EIO" in ln for ln in levels if " err " in ln)


# --- provision() and renew_if_needed() against the reference server ---


@pytest.fixture(scope="module")
def devlib(tmp_path_factory):
    lib = compile_packages(tmp_path_factory.mktemp("fullflashdev"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


def test_provision_and_renew_on_a_full_flash(devlib, tmp_path):
    import json
    import os

    from helpers_client import der, root_der
    from helpers_coaps import EstBothServer, idevid_device, key_der

    srv = EstBothServer(tmp_path)
    try:
        dev = idevid_device(srv)

        def w(name, data):
            p = str(tmp_path / name)
            with open(p, "wb") as f:
                f.write(data)
            return p

        cfg = dict(server="coaps://127.0.0.1:%d" % srv.coaps_port, trust=[w("root.der", root_der(srv))],
                   cert=w("dev.der", der(dev.cert)), key=w("dev.key", key_der(dev.key)), cn="mp-full",
                   table=str(devlib / "p256_table.bin"))
        path = w("cfg.json", json.dumps(cfg).encode())
        p = subprocess.run([MICROPYTHON, "-X", "heapsize=512K", str(ROOT / "tests" / "mp_scripts" /
                                                                    "full_flash_provision.py"), path],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, MICROPYPATH=str(devlib)))
    finally:
        srv.stop()
    out = p.stdout + p.stderr
    lines = [ln for ln in out.splitlines() if ln.startswith(("OK", "ERR"))]
    assert p.returncode == 0 and out.rstrip().endswith("DONE") and len(lines) == 8, out[-3000:]
    # a full flash: a clear EstError, nothing in the store
    assert lines[0].startswith("ERR provision-full StoreError") and "no space on the filesystem" in lines[0], lines
    assert lines[1] == "OK load none", lines
    assert lines[2] == "OK provision 1", lines
    gen1 = lines[3]
    assert gen1.startswith("OK load gen=1"), lines
    # renewal on a full flash: the old pair stays in force
    assert lines[4].startswith("ERR renew-full StoreError") and "no space on the filesystem" in lines[4], lines
    assert lines[5] == gen1, lines
    assert lines[6] == "OK renew 2" and lines[7].startswith("OK load gen=2"), lines
