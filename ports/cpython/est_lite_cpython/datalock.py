"""The lock of a data directory: a running server against a command that
replaces its files.

`est-lite serve` (each of its --https-processes / [coaps] processes) and
`est-lite proxy` hold a SHARED fcntl.flock on DIR/server.lock while they
run; `ca restore` (which renames DIR away), `ca init --force` and `ca
rollover` (which replace the keys and the store under it) take it
EXCLUSIVELY without waiting and refuse with one line naming the server.
A server keeps its open ca.db and keys: without the lock, enrollments
after a restore would go to the moved-away store, silently.

The kernel drops a flock when the process ends, however it ends (kill -9
too): a stale lock file is just a file. `ca backup`, `ca issue`, `ca
revoke` and the other commands take no lock (they work while serving).

    lock = hold_shared(data_dir, "est-lite serve")   # None if DIR is missing
    with exclusive(data_dir, "est-lite ca restore"): ...
"""

import contextlib
import errno
import fcntl
import os
import stat

from est_lite.errors import LocalProtocolError

LOCK_FILE = "server.lock"


def _open(data_dir):
    """The lock file's fd, or None when data_dir is not a directory."""
    if not os.path.isdir(data_dir):
        return None
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        # never through a symlink (_note truncates and writes the file: a
        # link to /etc/passwd would lose it); a FIFO or device is refused below
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):  # a read-only directory: nothing can replace it either
            return None
        if e.errno == errno.ELOOP:
            raise LocalProtocolError("the lock file %s is a symbolic link: remove it (est-lite makes a plain "
                                     "file there)" % path) from None
        raise LocalProtocolError("cannot open the lock file %s: %s" % (path, e.strerror or e)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a FIFO, a device, a hard link to another file
        os.close(fd)
        raise LocalProtocolError("the lock file %s is not a plain file of its own (%s): remove it (est-lite makes "
                                 "one there)" % (path, "%d hard links" % st.st_nlink if stat.S_ISREG(st.st_mode)
                                                 else "a FIFO or device"))
    return fd


def _note(fd, what):
    """Write 'PID WHAT' into the lock file (who holds it, for the refusal)."""
    data = ("%d %s\n" % (os.getpid(), what)).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass


def holder(data_dir):
    """(pid, what) last written into DIR's lock file by a holder that is
    still alive, or None."""
    try:
        fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        text = os.read(fd, 200).decode("utf-8", "replace").strip() if stat.S_ISREG(os.fstat(fd).st_mode) else ""
    except OSError:
        return None
    finally:
        os.close(fd)
    pid, _sp, what = text.partition(" ")
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, OSError):  # not written yet, or that process is gone (a worker of it still holds the lock)
        return None
    return pid, what or "est-lite serve"


def hold_shared(data_dir, what, *, note=True):
    """Take DIR's lock shared (a server). Returns the fd (keep it open
    while serving; the lock goes with the process) or None when DIR does
    not exist yet. A command holding it exclusively (a restore, init,
    rollover in progress) is one LocalProtocolError."""
    fd = _open(data_dir)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        h = holder(data_dir)
        raise LocalProtocolError("%s is being changed by %s: start %s when it has finished"
                                 % (data_dir, "%s (pid %d)" % (h[1], h[0]) if h else
                                    "est-lite ca restore, init --force or rollover", what)) from None
    if note:
        _note(fd, what)
    return fd


@contextlib.contextmanager
def exclusive(data_dir, what):
    """Hold DIR's lock exclusively for a command that replaces its files
    (nothing when DIR does not exist); a server running on DIR is one
    LocalProtocolError naming it, and nothing is changed."""
    fd = _open(data_dir)
    if fd is None:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = holder(data_dir)
            who = "%s (pid %d)" % (h[1], h[0]) if h else "an est-lite serve or est-lite proxy"
            raise LocalProtocolError("%s is running on %s: stop it first (%s changes the files it keeps using); "
                                     "nothing changed" % (who, data_dir, what)) from None
        _note(fd, what)
        yield fd
    finally:
        os.close(fd)
