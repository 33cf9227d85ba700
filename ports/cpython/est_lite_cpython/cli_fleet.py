"""`est-lite fleet`: N simulated devices enroll against one reference
server (fresh CA, its own process); progress on stderr, a report with
throughput, p50/p95/p99 latency and failures by cause, optional JSON (one
object on the last line) and a PNG plot. See docs/hil.md and hil/fleet.py.

    est-lite fleet --devices 50 --transport coaps --loss 0.1 --concurrency 10
    est-lite fleet --devices 10000 --concurrency 64 --json --plot fleet.png
    est-lite fleet --devices 200 --via-proxy --loss 0.1 --concurrency 16   # through the RA
"""

import json
import os
import sys


def cmd_fleet(args):
    from .cli_hil import load_hil

    hil = load_hil()
    import importlib

    F = importlib.import_module(hil.__name__ + ".fleet")
    R = importlib.import_module(hil.__name__ + ".report")
    try:
        cfg = F.FleetConfig(devices=args.devices, transport=args.transport, loss=args.loss,
                            concurrency=args.concurrency, mp_boards=args.mp_boards, attempts=args.attempts,
                            ack_timeout=args.ack_timeout, seed=args.seed, in_process=args.in_process,
                            via_proxy=args.via_proxy)
    except ValueError as e:
        print("est-lite fleet: %s" % e, file=sys.stderr)
        return 2
    if args.plot:
        # said now, not after the whole fleet has run
        d = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            print("est-lite fleet: --plot %s: the directory %s does not exist or is not writable" % (args.plot, d),
                  file=sys.stderr)
            return 2
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("est-lite fleet: --plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
    from .cli_hil import terminate_as_exit

    with terminate_as_exit():
        rep = F.run_fleet(cfg, plot=args.plot, progress=not args.quiet)
    if args.json:
        print(json.dumps(rep))
    else:
        print(R.text(rep))
        if rep.get("proxy"):
            print(F.proxy_text(rep))
    return 0 if rep["failures"] == 0 else 1


def register(sub):
    p = sub.add_parser("fleet", help="simulate a fleet of devices enrolling against one reference server")
    p.add_argument("--devices", type=int, default=50, help="simulated CPython devices (default 50)")
    p.add_argument("--transport", choices=("coaps", "https"), default="coaps")
    p.add_argument("--loss", type=float, default=0.0,
                   help="datagram loss probability per direction on the CoAPs link (duplication and reordering "
                        "at a third of it), default 0")
    p.add_argument("--concurrency", type=int, default=10, help="devices enrolling at the same time (default 10)")
    p.add_argument("--mp-boards", type=int, default=0, help="virtual MicroPython boards enrolling alongside")
    p.add_argument("--attempts", type=int, default=3, help="attempts per device before it counts as failed")
    p.add_argument("--ack-timeout", type=float, default=2.0, help="CoAP ACK_TIMEOUT of the devices (s, default 2)")
    p.add_argument("--seed", type=int, help="seed of the lossy link")
    p.add_argument("--via-proxy", action="store_true",
                   help="enroll through an `est-lite proxy` (RA, its own process) in front of the server")
    p.add_argument("--in-process", action="store_true", help="run the server in this process (default: its own)")
    p.add_argument("--plot", metavar="PNG", help="write latency over time and its distribution (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (last line)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fleet)
