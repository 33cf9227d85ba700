"""P-256 ECDSA on the MicroPython unix port (est_lite_mp, pure Python)
against python-ecdsa (pure Python, no gmpy) on CPython, in the same run.

    python bench/ecdsa.py [--rounds 5] [--signs 200] [--keygens 100] [--verifies 30]

Measures, with the modules compiled to .mpy by mpy-cross (as on a device):
- sign / key-generation / verify time: each round times a batch on both
  implementations back to back; the reported time is the median over rounds
  of CPU time per operation (the MicroPython child's rusage minus that of an
  empty run; process_time for python-ecdsa), which other processes on a
  busy machine disturb far less than wall-clock time (the best wall-clock
  batch is reported too); ratio = MicroPython / python-ecdsa;
- live heap peak of one sign (and keygen, verify): with the modules and the
  table loaded, the smallest free heap at which the operation completes
  (see SQUEEZE below), and, for the record, the smallest -X heapsize of an
  empty script, of the loaded modules and table, and of import + sign;
- allocation volume of one sign: delta of micropython.mem_current() (on this
  build it counts every allocation and never goes down);
- .mpy sizes of the crypto code and of the precomputed table.

Prints a summary, then one JSON object on the last line.
"""

import argparse
import hashlib
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import _mp  # noqa: E402

# this file is named ecdsa.py: keep its directory off the path so that
# `import ecdsa` finds python-ecdsa, not this script
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]

ROOT = _mp.ROOT
MP_PKG = ROOT / "ports" / "micropython" / "est_lite_mp"
CODE_MODULES = ("p256", "keys", "crypto")  # what signing, verifying and key I/O need
OPTIONAL_MODULES = ("secure_element",)
D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721


def build_mpy(dest):
    """Compile est_lite/*.py and est_lite_mp/*.py (not the generator) into dest."""
    sizes = {}
    for pkg_dir, name in ((ROOT / "est_lite", "est_lite"), (MP_PKG, "est_lite_mp")):
        out_dir = pathlib.Path(dest) / name
        out_dir.mkdir()
        for py in sorted(pkg_dir.glob("*.py")):
            if py.stem.startswith("gen_"):
                continue
            out = out_dir / (py.stem + ".mpy")
            # -s: embed the bare file name, so sizes do not depend on the checkout path
            subprocess.run([_mp.MPY_CROSS, "-s", py.name, "-o", str(out), str(py)], check=True, capture_output=True)
            sizes[name + "." + py.stem] = out.stat().st_size
    return sizes


def mp_script(mpy_dir, body):
    return "import sys\nsys.path.insert(0, %r)\n" % str(mpy_dir) + body


def run_mp(mpy_dir, body, heapsize=None):
    p = _mp.run_mp(mp_script(mpy_dir, body), heapsize)
    if p.returncode != 0:
        raise RuntimeError("micropython failed:\n" + p.stdout + p.stderr)
    return p.stdout


# One timed batch of one operation (1 sign, 2 keygen, 3 verify; 0 = none,
# to subtract start-up and import from the child's CPU time).
TIMED = """
import time
from est_lite_mp import crypto, p256
p256.table()
k = crypto.P256Key(%d)
sig = k.sign(b"v")
op = %%d
msgs = [b"message %%%%d" %%%% i for i in range(%%d)]
t = time.ticks_us()
if op == 1:
    for m in msgs:
        k.sign(m)
elif op == 2:
    for m in msgs:
        crypto.P256Key.generate()
elif op == 3:
    for m in msgs:
        crypto.verify(k.public_key, b"v", sig)
print(time.ticks_diff(time.ticks_us(), t))
""" % D
OPS = ("sign", "keygen", "verify")


def mp_batch(mpy_dir, op, n):
    """(wall seconds of the batch measured inside, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run_mp(mpy_dir, TIMED % (op, n))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return int(out.split()[-1]) / 1e6, cpu


# Live heap peak of an operation, by squeezing: with the modules imported,
# the table loaded and the key in memory, reserve R bytes, fill every other
# free byte of the heap with small objects, drop the reserve, and run the
# operation. The smallest R (bisected in 64-byte steps) at which it still
# completes is its live peak. (Bisecting -X heapsize alone cannot see it:
# the sign's few KB fit into holes the imports leave behind.)
SQUEEZE = """
import gc
from est_lite_mp import crypto, p256
p256.table()
class K:
    pass
k = K()
k._d = %d
pub = crypto.P256Key(%d).public_key
m = b"benchmark message"
sig = crypto.P256Key.sign_digest(k, crypto.sha256(m))
sha = crypto.sha256
sd = crypto.P256Key.sign_digest
gc.collect()
reserve = bytearray(%%d)
c = None
n = 4096
while n >= 8:
    try:
        c = (c, bytearray(n))
    except MemoryError:
        n >>= 1
reserve = None
%%s
print('DONE')
""" % (D, D)
SQUEEZE_HEAP = 256 * 1024
WORKLOADS = {
    # the same code path as P256Key.sign(m), on an object holding the scalar
    "sign": "r = sd(k, sha(m))",
    "keygen": "r = crypto.P256Key.generate()",
    "verify": "r = crypto.verify(pub, m, sig)",
    "nothing": "r = None",
}


def squeeze_peak(mpy_dir, work, step=64):
    def ok(reserve):
        p = _mp.run_mp(mp_script(mpy_dir, SQUEEZE % (reserve, work)), SQUEEZE_HEAP)
        return p.returncode == 0 and "DONE" in p.stdout

    lo, hi = 0, 16
    while not ok(hi * step):
        lo, hi = hi, hi * 2
        if hi * step > SQUEEZE_HEAP:
            raise RuntimeError("workload does not complete: %s" % work)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid * step):
            hi = mid
        else:
            lo = mid
    return hi * step


IMPORTED = """
import gc
from est_lite_mp import crypto, p256
p256.table()
gc.collect()
print('DONE')
"""
IMPORT_AND_SIGN = IMPORTED.replace(
    "print('DONE')", "k = crypto.P256Key(%d)\nsig = k.sign(b'benchmark message')\nprint('DONE')" % D
)
ALLOC = """
import gc, micropython
from est_lite_mp import crypto
k = crypto.P256Key(%d)
m = b"benchmark message"
k.sign(m)
a = micropython.mem_current()
k.sign(m)
b = micropython.mem_current()
a2 = micropython.mem_current()
crypto.P256Key.generate()
b2 = micropython.mem_current()
print(b - a, b2 - a2)
""" % D
TABLE_RAM = """
import gc
gc.collect()
a = gc.mem_alloc()
from est_lite_mp import p256_table
gc.collect()
b = gc.mem_alloc()
print(b - a, sum(len(t) for t in p256_table.T), p256_table.W)
"""


def py_ecdsa_batch(op, n):
    """(wall seconds, CPU seconds) of n operations with python-ecdsa."""
    from ecdsa import NIST256p, SigningKey

    sk = SigningKey.from_secret_exponent(D, curve=NIST256p, hashfunc=hashlib.sha256)
    vk = sk.get_verifying_key()
    sig = sk.sign_deterministic(b"v")
    vk.verify(sig, b"v")
    msgs = [b"message %d" % i for i in range(n)]
    w, c = time.perf_counter(), time.process_time()
    if op == 1:
        for m in msgs:
            sk.sign_deterministic(m)
    elif op == 2:
        for m in msgs:
            SigningKey.generate(curve=NIST256p, hashfunc=hashlib.sha256)
    else:
        for m in msgs:
            vk.verify(sig, b"v")
    return time.perf_counter() - w, time.process_time() - c


def timings(mpy_dir, rounds, counts):
    """Per operation: best wall ms and median CPU ms of both, per-round CPU
    ratios. Each round runs the two implementations back to back."""
    res = {}
    for i, name in enumerate(OPS):
        op, n = i + 1, counts[name]
        mp_wall, mp_cpu, py_wall, py_cpu, ratios = [], [], [], [], []
        for _ in range(rounds):
            pw, pc = py_ecdsa_batch(op, n)
            mw, mc = mp_batch(mpy_dir, op, n)
            _, mc0 = mp_batch(mpy_dir, 0, 0)
            mc = max(mc - mc0, 1e-9)
            mp_wall.append(mw / n * 1e3)
            mp_cpu.append(mc / n * 1e3)
            py_wall.append(pw / n * 1e3)
            py_cpu.append(pc / n * 1e3)
            ratios.append(mc / pc)
        res[name] = {
            "mp_cpu_ms": statistics.median(mp_cpu),
            "py_cpu_ms": statistics.median(py_cpu),
            "ratio": statistics.median(ratios),
            "ratios": sorted(ratios),
            "mp_wall_ms": min(mp_wall),
            "py_wall_ms": min(py_wall),
        }
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--signs", type=int, default=200)
    ap.add_argument("--keygens", type=int, default=100)
    ap.add_argument("--verifies", type=int, default=30)
    args = ap.parse_args()
    _mp.need_tools()

    import ecdsa.numbertheory

    gmpy = bool(getattr(ecdsa.numbertheory, "GMPY", False) or getattr(ecdsa.numbertheory, "GMPY2", False))
    if gmpy:
        sys.exit("python-ecdsa uses gmpy here; the comparison needs its pure-Python path")

    with tempfile.TemporaryDirectory() as mpy_dir:
        sizes = build_mpy(mpy_dir)

        t = timings(mpy_dir, args.rounds, {"sign": args.signs, "keygen": args.keygens, "verify": args.verifies})

        def heap(body):
            return _mp.min_heapsize(mp_script(mpy_dir, body))

        empty = _mp.baseline_heapsize()
        imported = _mp.min_heapsize(mp_script(mpy_dir, IMPORTED))
        import_and_sign = _mp.min_heapsize(mp_script(mpy_dir, IMPORT_AND_SIGN))
        peaks = {name: squeeze_peak(mpy_dir, work) for name, work in WORKLOADS.items()}
        alloc_sign, alloc_keygen = (int(x) for x in run_mp(mpy_dir, ALLOC).split())
        table_ram, table_bytes, window = (int(x) for x in run_mp(mpy_dir, TABLE_RAM).split())

    code = {m: sizes["est_lite_mp." + m] for m in CODE_MODULES}
    result = {
        "mp_sign_ms": round(t["sign"]["mp_cpu_ms"], 3),
        "py_ecdsa_sign_ms": round(t["sign"]["py_cpu_ms"], 3),
        "sign_ratio": round(t["sign"]["ratio"], 2),
        "sign_ratio_per_round": [round(r, 2) for r in t["sign"]["ratios"]],
        "mp_keygen_ms": round(t["keygen"]["mp_cpu_ms"], 3),
        "py_ecdsa_keygen_ms": round(t["keygen"]["py_cpu_ms"], 3),
        "keygen_ratio": round(t["keygen"]["ratio"], 2),
        "mp_verify_ms": round(t["verify"]["mp_cpu_ms"], 3),
        "py_ecdsa_verify_ms": round(t["verify"]["py_cpu_ms"], 3),
        "verify_ratio": round(t["verify"]["ratio"], 2),
        "wall_best_ms": {n: [round(t[n]["mp_wall_ms"], 3), round(t[n]["py_wall_ms"], 3)] for n in OPS},
        "time_basis": "median over rounds of CPU time per operation (child rusage minus an empty run for MicroPython, process_time for python-ecdsa)",
        "sign_heap_peak_bytes": peaks["sign"] - peaks["nothing"],
        "keygen_heap_peak_bytes": peaks["keygen"] - peaks["nothing"],
        "verify_heap_peak_bytes": peaks["verify"] - peaks["nothing"],
        "heap_peak_step_bytes": 64,
        "sign_alloc_bytes": alloc_sign,
        "keygen_alloc_bytes": alloc_keygen,
        "empty_script_heap_bytes": empty,
        "loaded_modules_and_table_heap_bytes": imported - empty,
        "import_key_and_sign_heap_bytes": import_and_sign - empty,
        "mpy_code_bytes": sum(code.values()),
        "mpy_code_modules": code,
        "mpy_optional_modules": {m: sizes["est_lite_mp." + m] for m in OPTIONAL_MODULES},
        "table_bytes": table_bytes,
        "table_mpy_bytes": sizes["est_lite_mp.p256_table"],
        "table_ram_bytes_from_mpy": table_ram,
        "table_window_bits": window,
        "rounds": args.rounds,
        "batch": {"sign": args.signs, "keygen": args.keygens, "verify": args.verifies},
        "py_ecdsa_gmpy": gmpy,
        "heapsize_bisection_step_bytes": 1024,
    }
    print("P-256 ECDSA-SHA256: MicroPython unix port (est_lite_mp, .mpy) vs python-ecdsa on CPython %s" % sys.version.split()[0])
    print("  CPU time per operation, median of %d rounds (MicroPython vs python-ecdsa; best wall-clock batch in brackets):" % args.rounds)
    for n in OPS:
        r = t[n]
        print("  %-7s %8.3f ms vs %8.3f ms  ratio %.2f  [%.3f vs %.3f ms]  per-round ratios %s"
              % (n, r["mp_cpu_ms"], r["py_cpu_ms"], r["ratio"], r["mp_wall_ms"], r["py_wall_ms"],
                 " ".join("%.2f" % x for x in r["ratios"])))
    print("  live heap peak (squeeze, 64 B steps): sign %d B, keygen %d B, verify %d B"
          % tuple(peaks[n] - peaks["nothing"] for n in ("sign", "keygen", "verify")))
    print("  smallest -X heapsize (1 KB steps): empty script %d B; + modules and table from .mpy %d B;"
          " + key load and one sign %d B" % (empty, imported - empty, import_and_sign - empty))
    print("  allocation volume: one sign %d B, one keygen %d B" % (alloc_sign, alloc_keygen))
    print("  .mpy code %d B (%s); table %d B of points (W=%d), .mpy %d B, %d B of RAM when imported from .mpy"
          % (sum(code.values()), ", ".join("%s %d" % kv for kv in code.items()), table_bytes, window,
             sizes["est_lite_mp.p256_table"], table_ram))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
