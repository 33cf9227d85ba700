"""MicroPython heap for one core workload (issue #2):

  build a P-256 CSR with a fixed test signer (est_lite.csr), encode the CoAP
  POST /.well-known/est/sen (est_lite.client.CoapOperation), and decode a
  2-certificate PKCS#7 answer that arrives in 64-byte Block2 blocks.

    python bench/core_heap.py

The answer's datagrams are made in the same interpreter by a tiny responder
(est_lite.coap.Message) that reads the PKCS#7 from a file block by block, as
a radio would deliver it; the signer returns a fixed DER signature (the CSR
is structurally complete; its signature is not valid, which the workload
does not check).

Measurements (MicroPython unix port, -X heapsize in 1 KB steps: bisection,
then checked 8 KB upwards, as passing is not monotone in the heap size:
_mp.heap_search):
- heap_peak_bytes: the issue's definition: smallest heapsize at which the
  workload (still) completes with the core loaded from .mpy files, minus the
  same for an empty script. lowest_heapsize_passing: the smallest size seen
  to pass below min_heapsize_passing (the heap's layout at some sizes lets
  it through). Loaded .mpy code lives in the GC heap on the unix port,
  so this counts code as well as data.
- romfs_peak_bytes: the same with the core in a ROMFS image mounted with
  vfs.VfsRom (the image stands in for flash: MicroPython >= 1.25 runs .mpy
  bytecode in place from ROMFS), minus an empty script that mounts the same
  image. Closer to a device with ROMFS or frozen code.
- workload_peak_bytes: smallest heapsize for imports + workload minus the
  smallest heapsize for the imports alone: the working set of the workload.
- alloc_total_bytes: micropython.mem_current() delta across the workload
  (after the imports). On this build it counts every allocation and never
  goes down, so it is allocation volume.
The last line is one JSON object.

    python bench/core_heap.py --imports

prints instead what each module of the workload adds to the heap when it is
imported from the ROMFS image, and how much of that went into new qstr pools.
"""

import json
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _mp  # noqa: E402

TARGET = 8 * 1024

WORKLOAD = r"""
import gc, sys
__PRELUDE__
import micropython
from est_lite import client as C
from est_lite import coap
from est_lite.csr import CsrBuilder

class FixedSigner:
    def __init__(self, pub, sig):
        self.public_key = pub
        self.sign_ = sig
    def sign(self, message):
        return self.sign_

PUB = __PUB__
SIG = __SIG__
BODY_PATH = __BODY__
BODY_LEN = __BODYLEN__
if __IMPORTS_ONLY__:
    print("DONE")
    sys.exit(0)
gc.collect()
a0 = micropython.mem_current()
csr = CsrBuilder().subject(cn="device-0001", o="est-lite").sign(FixedSigner(PUB, SIG))
op = C.CoapOperation(2, body=csr, token=b"\x01\x02\x03\x04", mid=C.MidSource(b"\x12\x34"), szx=6, public_key=PUB)
f = open(BODY_PATH, "rb")
blk = bytearray(64)
now = 0.0
n = 0
while True:
    d = op.send(now)
    while d is not None:
        req = coap.decode(d)
        b2 = coap.opt(req, 23)
        num = coap.block_decode(b2)[0] if b2 is not None else 0
        f.seek(num * 64)
        k = f.readinto(blk)
        more = 1 if (num + 1) * 64 < BODY_LEN else 0
        resp = coap.Message(2, 0x44, req.mid, req.token, [(12, b"\x01\x19"), (23, coap.block_encode(num, more, 2)), (28, coap.uint_encode(BODY_LEN))], memoryview(blk)[:k])
        wire = resp.encode()
        resp = req = None
        d = None
        op.receive_data(wire, now)
        n += 1
        d = op.send(now)
    ev = op.next_event()
    if ev is not C.NEED_DATA:
        break
f.close()
assert len(ev.chain) + 1 == 2, ev
a1 = micropython.mem_current()
print("ALLOC", a1 - a0, "BLOCKS", n)
print("DONE")
"""

ROMFS_PRELUDE = """
import vfs
_f = open(__IMG__, "rb"); _img = bytearray(__IMGLEN__); _f.readinto(_img); _f.close()
vfs.mount(vfs.VfsRom(_img), "/rom")
sys.path.insert(0, "/rom")
"""


def make_inputs(tmp):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import NameOID
    import datetime
    import hashlib

    # fixed keys, serials and RFC 6979 signatures: the same bytes every run.
    # With random ones the DER lengths moved by a byte or two and the
    # heap search by up to 5 KB (58,368-63,488 B in two runs of one commit)
    ca_key = ec.derive_private_key(0xC0FFEE, ec.SECP256R1())
    dev_key = ec.derive_private_key(0xDE71CE, ec.SECP256R1())
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)

    def cert(subject, issuer, pub, key, ca):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(pub)
            .serial_number(int.from_bytes(hashlib.sha256(subject.encode()).digest()[:20], "big") >> 1)  # 159 bits, as random_serial_number
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        return b.sign(key, hashes.SHA256(), ecdsa_deterministic=True)

    ca = cert("bench CA", "bench CA", ca_key.public_key(), ca_key, True)
    leaf = cert("device-0001", "bench CA", dev_key.public_key(), ca_key, False)
    body = pkcs7.serialize_certificates([leaf, ca], serialization.Encoding.DER)
    pub = dev_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    sig = dev_key.sign(b"fixed", ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    path = tmp / "answer.p7"
    path.write_bytes(body)
    return pub, sig, path, len(body)


def compile_core(dst):
    (dst / "est_lite").mkdir(parents=True)
    for py in sorted((_mp.ROOT / "est_lite").glob("*.py")):
        # named by module (-s), as a device bundle (hil/bundle.py) and
        # bench/device.py: the name is interned on import, and with the
        # file's path the figure would depend on where the repo is cloned
        name = "est_lite" if py.stem == "__init__" else "est_lite." + py.stem
        subprocess.run([_mp.MPY_CROSS, "-s", name, "-o", str(dst / "est_lite" / (py.stem + ".mpy")), str(py)],
                       check=True)


def script(pub, sig, path, n, prelude="", imports_only=False, img=None):
    s = WORKLOAD.replace("__PRELUDE__", prelude).replace("__IMG__", repr(str(img)))
    if img is not None:
        s = s.replace("__IMGLEN__", str(img.stat().st_size))
    return (
        s.replace("__PUB__", repr(pub))
        .replace("__SIG__", repr(sig))
        .replace("__BODY__", repr(str(path)))
        .replace("__BODYLEN__", str(n))
        .replace("__IMPORTS_ONLY__", "True" if imports_only else "False")
    )


MODULES = ("errors", "der", "csr", "coap", "client", "pkcs7")


def import_table(modules=MODULES):
    """Heap each core module's import takes with the core in a ROMFS image
    (in the order given: each row counts what that import adds), and how
    much of it went into new qstr pools."""
    import re

    from mpremote.romfs import make_romfs

    with tempfile.TemporaryDirectory() as d:
        lib = pathlib.Path(d) / "lib"
        compile_core(lib)
        img = pathlib.Path(d) / "core.romfs"
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            img.write_bytes(make_romfs(str(lib), mpy_cross=False))
        s = "import gc, sys, micropython\n" + ROMFS_PRELUDE.replace("__IMG__", repr(str(img))).replace(
            "__IMGLEN__", str(img.stat().st_size)
        )
        s += "import est_lite\ngc.collect(); m0 = gc.mem_alloc(); micropython.qstr_info()\n"
        for m in modules:
            s += "import est_lite.%s\ngc.collect(); m1 = gc.mem_alloc(); print('MOD', %r, m1 - m0); m0 = m1\n" % (m, m)
            s += "micropython.qstr_info()\n"
        p = _mp.run_mp(s, heapsize=1 << 20)
        if p.returncode:
            sys.exit(p.stdout + p.stderr)
        pat = r"n_qstr=(\d+), n_str_data_bytes=\d+, n_total_bytes=(\d+)"
        q = [(int(a), int(b)) for a, b in re.findall(pat, p.stdout)]
        rows = {}
        for i, (m, h) in enumerate(re.findall(r"MOD (\w+) (\d+)", p.stdout)):
            rows[m] = {
                "mpy_bytes": (lib / "est_lite" / (m + ".mpy")).stat().st_size,
                "import_heap_bytes": int(h),
                "qstr_pool_bytes": q[i + 1][1] - q[i][1],
                "new_qstrs": q[i + 1][0] - q[i][0],
            }
    print("%-8s %7s %12s %16s %9s" % ("module", ".mpy", "import heap", "of it qstr pools", "new qstrs"))
    for m, r in rows.items():
        row = (m, r["mpy_bytes"], r["import_heap_bytes"], r["qstr_pool_bytes"], r["new_qstrs"])
        print("%-8s %7d %12d %16d %9d" % row)
    print(json.dumps({"romfs_imports": rows}))


def main():
    if "--imports" in sys.argv:
        return import_table()
    _mp.need_tools()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        pub, sig, path, n = make_inputs(tmp)
        lib = tmp / "lib"
        compile_core(lib)
        files_prelude = "sys.path.insert(0, %r)" % str(lib)
        work = script(pub, sig, path, n, files_prelude)
        imports = script(pub, sig, path, n, files_prelude, imports_only=True)

        from mpremote.romfs import make_romfs

        img = tmp / "core.romfs"
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # make_romfs prints its tree
            img.write_bytes(make_romfs(str(lib), mpy_cross=False))
        rom_prelude = ROMFS_PRELUDE
        rom_work = script(pub, sig, path, n, rom_prelude, img=img)
        rom_empty = "import sys\n" + rom_prelude.replace("__IMG__", repr(str(img))).replace("__IMGLEN__", str(img.stat().st_size)) + "print('DONE')\n"

        p = _mp.run_mp(work)
        if p.returncode != 0 or "DONE" not in p.stdout:
            sys.exit("workload failed:\n" + p.stdout + p.stderr)
        alloc = int(p.stdout.split("ALLOC", 1)[1].split()[0])
        blocks = int(p.stdout.split("BLOCKS", 1)[1].split()[0])

        base = _mp.baseline_heapsize()
        full, lowest = _mp.min_heapsize(work, lowest=True)
        imp = _mp.min_heapsize(imports)
        rom_base = _mp.min_heapsize(rom_empty)
        rom_full = _mp.min_heapsize(rom_work)
    result = {
        "heap_peak_bytes": full - base,
        "alloc_total_bytes": alloc,
        "romfs_peak_bytes": rom_full - rom_base,
        "workload_peak_bytes": full - imp,
        "imports_peak_bytes": imp - base,
        "empty_script_heapsize": base,
        "min_heapsize_passing": full,
        "lowest_heapsize_passing": lowest,
        "answer_bytes": n,
        "answer_blocks": blocks,
        "block_bytes": 64,
        "target_bytes": TARGET,
        "within_target": full - base <= TARGET,
    }
    print("workload: CSR + CoAP POST + %d-byte PKCS#7 in %d blocks of 64 bytes" % (n, blocks))
    for k in ("heap_peak_bytes", "romfs_peak_bytes", "workload_peak_bytes", "imports_peak_bytes", "alloc_total_bytes"):
        print("%-22s %7d" % (k, result[k]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
