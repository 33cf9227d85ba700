"""`est-lite hil ...`: the hardware-in-the-loop harness (hil/ in the source
tree; see docs/hil.md).

    est-lite hil bundle --out build/mpy              # .mpy bundle (core + port + scenario runner)
    est-lite hil scenarios                           # the scenario files
    est-lite hil run enroll_coaps reenroll           # on a virtual board, embedded server
    est-lite hil run enroll_coaps --port /dev/ttyACM0 --host 192.168.1.10   # a real board (mpremote)
    est-lite hil deploy --port /dev/ttyACM0          # install the bundle on a real board
    est-lite hil powercut --runs 20 --json           # power-cut campaign on a virtual board
    est-lite hil pty-board --flash DIR               # a serial stand-in (pty) to try the real-board path
"""

import json
import os
import pathlib
import sys
import tempfile


def load_hil():
    """The hil package: installed as est_lite_hil, or hil/ of the source
    checkout this port was installed from (editable install)."""
    try:
        import est_lite_hil as hil

        return hil
    except ImportError:
        pass
    root = pathlib.Path(__file__).resolve().parents[3]
    if (root / "hil" / "__init__.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import hil

        return hil
    from est_lite.errors import LocalProtocolError

    raise LocalProtocolError("the HIL harness (hil/) is not installed: use a source checkout with "
                             "pip install -e '.[dev]'")


class terminate_as_exit:
    """While a long hil/fleet command runs, SIGTERM (a CI job's timeout,
    `kill`) unwinds like Ctrl-C (SystemExit(143) raised where the main
    thread is), so boards are killed, servers stopped and temporary
    directories removed; before, the process died at once and left its
    MicroPython boards running. The previous handler comes back after."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            def _exit(signum, frame):
                raise SystemExit(128 + signum)

            self._old = signal.signal(signal.SIGTERM, _exit)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _terminable(fn):
    def run(args):
        with terminate_as_exit():
            return fn(args)
    return run


def _sub(name):
    import importlib

    return importlib.import_module(load_hil().__name__ + "." + name)


def cmd_bundle(args):
    B = _sub("bundle")
    info = B.build(args.out, runner=not args.no_runner)
    print("%d files, %d bytes of .mpy in %s (%s)" % (len(info["files"]), info["total_bytes"], args.out,
                                                     info["mpy_cross"]))
    print("install on a board: mpremote mip install %s" % os.path.join(args.out, "package.json"))
    return 0


def cmd_scenarios(args):
    S = _sub("scenario")
    for n in S.names():
        scn = S.load(n)
        print("%-14s %-6s %s" % (n, scn["transport"], scn.get("description", "")))
    return 0


def _board(args, workdir, name):
    boards = _sub("boards")
    if args.port:
        return boards.SerialBoard(args.port, name=name)
    return boards.VirtualBoard(os.path.join(workdir, name), heap=args.heap, name=name)


def _check_host(host):
    """--host must be an address of this machine (the embedded server binds
    it): tried with a UDP socket bound to it and closed again, which sends
    nothing, before the bundle is built and the server started."""
    import socket

    from est_lite.errors import LocalProtocolError

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise LocalProtocolError("hil run: --host %s is not an address or a name that resolves here (%s)"
                                 % (host, getattr(e, "strerror", None) or e)) from None
    last = None
    for family, kind, proto, _, addr in infos:
        s = socket.socket(family, kind, proto)
        try:
            s.bind(addr)
            return
        except OSError as e:
            last = e
        finally:
            s.close()
    raise LocalProtocolError("hil run: cannot listen on --host %s: %s: --host must be an address of this machine "
                             "that the board can reach (see ip addr)" % (host, last.strerror or last))


def _loopback(host):
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_run(args):
    B, S = _sub("bundle"), _sub("scenario")
    R = _sub("refserver")
    names = args.scenarios or [n for n in S.names() if n != "powercut"]
    try:
        scns = [S.load(n) for n in names]
    except ValueError as e:
        print("est-lite hil run: %s" % e, file=sys.stderr)
        return 2
    for scn in scns:
        if scn.get("powercut"):
            print("est-lite hil run: %s is a power-cut campaign: run it with est-lite hil powercut" % scn["name"],
                  file=sys.stderr)
            return 2
    _check_host(args.host)
    if args.port:
        _check_port(args.port, "hil run")
        if _loopback(args.host) and not os.path.realpath(args.port).startswith("/dev/pts/"):
            # (a pseudo-terminal is the local stand-in, which loopback reaches)
            print("est-lite hil run: note: --host %s is this machine's loopback, which a board on %s cannot reach: "
                  "give --host an address of this machine on the board's network (e.g. --host 192.168.1.10), or "
                  "each scenario fails after its deadline" % (args.host, args.port), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="est-lite-hil-") as d:
        bundle = args.bundle
        if bundle is None:
            bundle = os.path.join(d, "bundle")
            B.build(bundle)
        srv = R.RefServer(os.path.join(d, "server"), host=args.host).start()
        failed = 0
        try:
            board = _board(args, d, "board-1")
            if not args.port or not args.no_deploy:
                board.deploy(bundle)
            for scn in scns:
                res = S.run(scn, board, srv, seed=args.seed)
                failed += not res.ok
                if args.json:
                    print(json.dumps(res.summary()))
                else:
                    print("%-14s %s  %.1f s%s" % (scn["name"], "ok  " if res.ok else "FAIL", res.elapsed,
                                                  "" if res.ok else "  " + "; ".join(res.problems)))
        finally:
            srv.stop()
    return 1 if failed else 0


def _board_errors(fn):
    # a board that is not there, mpremote missing, a bundle that cannot be
    # built: one line on stderr (est-lite: error: ...), not "internal error"
    def run(args):
        boards, B = _sub("boards"), _sub("bundle")
        try:
            return fn(args)
        except boards.BoardError as e:
            from est_lite.errors import TransportError

            raise TransportError("hil: %s" % e) from None
        except B.BundleError as e:
            from est_lite.errors import LocalProtocolError

            raise LocalProtocolError("hil: %s" % e) from None
        except OSError as e:
            # a --out / --flash / --workdir that cannot be written: say which
            from est_lite.errors import LocalProtocolError

            if e.filename is None:
                raise
            raise LocalProtocolError("hil: %s: %s" % (e.filename, e.strerror or e)) from None
    return run


def _check_port(port, what):
    # a missing /dev/... port is said before the bundle is built
    if port.startswith("/dev/") and not os.path.exists(port):
        from est_lite.errors import TransportError

        raise TransportError("%s: no serial port %s: is the board connected (ls /dev/ttyACM* /dev/ttyUSB*)?"
                             % (what, port))


def cmd_deploy(args):
    boards, B = _sub("boards"), _sub("bundle")
    _check_port(args.port, "hil deploy")
    with tempfile.TemporaryDirectory() as d:
        bundle = args.bundle or os.path.join(d, "bundle")
        if args.bundle is None:
            B.build(bundle)
        boards.SerialBoard(args.port).deploy(bundle)
    print("deployed the bundle to %s:/lib" % args.port)
    return 0


def cmd_powercut(args):
    return _sub("powercut").main_args(args)


def cmd_pty_board(args):
    import time

    P = _sub("ptyboard")
    pb = P.PtyBoard(args.flash, heap=args.heap)
    dev = pb.start()
    print("MicroPython unix port on %s (flash %s); Ctrl-C to stop" % (dev, pb.flash), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        pb.stop()
    return 0


def _heap(text):
    from .cli_demo import heap_size

    return heap_size(text)


def register(sub):
    p = sub.add_parser("hil", help="hardware-in-the-loop: bundle, scenarios on virtual/real boards, power cuts")
    hs = p.add_subparsers(dest="hil_command", metavar="HIL_COMMAND")

    q = hs.add_parser("bundle", help="build the .mpy bundle for boards")
    q.add_argument("--out", default="build/mpy")
    q.add_argument("--no-runner", action="store_true", help="without the HIL scenario runner")
    q.set_defaults(func=_board_errors(cmd_bundle))

    q = hs.add_parser("scenarios", help="list the scenario files")
    q.set_defaults(func=cmd_scenarios)

    q = hs.add_parser("run", help="run scenarios on a virtual board (default) or a real one (--port)")
    q.add_argument("scenarios", nargs="*", help="scenario names or files (default: all but powercut)")
    q.add_argument("--port", help="serial port of a real board (driven with mpremote)")
    q.add_argument("--host", default="127.0.0.1",
                   help="address the embedded server listens on and the board connects to (default 127.0.0.1; "
                        "a real board needs the host's network address)")
    q.add_argument("--heap", default="256K", type=_heap, help="virtual board heap (default 256K)")
    q.add_argument("--bundle", help="a built bundle directory (default: build one)")
    q.add_argument("--no-deploy", action="store_true", help="real board: the bundle is already installed")
    q.add_argument("--seed", type=int, help="seed of the lossy link")
    q.add_argument("--json", action="store_true", help="one JSON object per scenario")
    q.set_defaults(func=_terminable(_board_errors(cmd_run)))

    q = hs.add_parser("deploy", help="install the .mpy bundle on a real board (mpremote mip install)")
    q.add_argument("--port", required=True)
    q.add_argument("--bundle", help="a built bundle directory (default: build one)")
    q.set_defaults(func=_terminable(_board_errors(cmd_deploy)))

    q = hs.add_parser("powercut", help="power-cut campaign on a virtual board")
    q.add_argument("--runs", type=int, default=20, help="number of power cuts (default 20)")
    q.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    q.add_argument("--transport", choices=("coaps", "https"), default="coaps")
    q.add_argument("--heap", default="256K", type=_heap, help="MicroPython heap of the virtual board (default 256K)")
    q.add_argument("--workdir", help="keep the work files here (default: a temporary directory, removed unless "
                                     "a store broke)")
    q.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    q.set_defaults(func=_terminable(_board_errors(cmd_powercut)))

    q = hs.add_parser("pty-board", help="serve a virtual board on a pseudo-terminal (a serial stand-in)")
    q.add_argument("--flash", required=True, help="directory standing in for the board's flash")
    q.add_argument("--heap", default="256K", type=_heap)
    q.set_defaults(func=_terminable(_board_errors(cmd_pty_board)))

    def _help(args):
        p.print_help()
        return 2

    p.set_defaults(func=_help)
