"""`est-lite demo`: start an embedded reference server with a fresh CA in a
temporary directory, enroll one virtual MicroPython board over CoAPs and one
CPython device over HTTPS, print what was issued (subjects, issuer,
validity, fingerprints) and clean up. See hil/demo.py.

    pip install -e '.[dev]'
    est-lite demo
"""


def cmd_demo(args):
    import os

    from est_lite.errors import LocalProtocolError

    from .cli_hil import load_hil

    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        raise LocalProtocolError("--keep %s is not empty (a demo from an earlier run?): give a new or empty directory "
                                 "(the demo makes its CA, board flash and stores there)" % args.keep)
    if args.keep and os.path.exists(args.keep) and not os.path.isdir(args.keep):
        raise LocalProtocolError("--keep %s is not a directory" % args.keep)

    import importlib

    D = importlib.import_module(load_hil().__name__ + ".demo")
    try:
        D.run_demo(keep=args.keep, heap=args.heap, micropython=not args.no_micropython)
    except RuntimeError as e:
        import sys

        print("\nest-lite demo: %s" % e, file=sys.stderr)
        return 1
    return 0


def heap_size(text):
    """argparse type of a MicroPython -X heapsize value: digits with an
    optional K or M (at least 32K: less cannot even load the client)."""
    import argparse
    import re

    m = re.fullmatch(r"([0-9]{1,7})([kKmM]?)", text.strip())
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()] if m else 0
    if not 32 * 1024 <= n <= 1 << 30:
        raise argparse.ArgumentTypeError("%r is not a heap size from 32K to 1024M (digits with K or M, e.g. 256K)"
                                         % text)
    return m.group(1) + m.group(2).upper()


def register(sub):
    p = sub.add_parser("demo", help="enroll a virtual MicroPython board (CoAPs) and a CPython device (HTTPS) "
                                    "against an embedded server with a fresh CA")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (CA, stores, board flash)")
    p.add_argument("--heap", default="256K", type=heap_size,
                   help="heap of the virtual MicroPython board, e.g. 256K or 1M (default 256K)")
    p.add_argument("--no-micropython", action="store_true", help="only the CPython device")
    p.set_defaults(func=cmd_demo)
