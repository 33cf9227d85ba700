"""`est-lite demo`: start an embedded reference server with a fresh CA in a
temporary directory, enroll one virtual MicroPython board over CoAPs and one
CPython device over HTTPS, print what was issued (subjects, issuer,
validity, fingerprints) and clean up. See hil/demo.py.

    pip install -e '.[dev]'
    est-lite demo
"""


def cmd_demo(args):
    from .cli_hil import load_hil

    import importlib

    D = importlib.import_module(load_hil().__name__ + ".demo")
    try:
        D.run_demo(keep=args.keep, heap=args.heap, micropython=not args.no_micropython)
    except RuntimeError as e:
        import sys

        print("\nest-lite demo: %s" % e, file=sys.stderr)
        return 1
    return 0


def register(sub):
    p = sub.add_parser("demo", help="enroll a virtual MicroPython board (CoAPs) and a CPython device (HTTPS) "
                                    "against an embedded server with a fresh CA")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (CA, stores, board flash)")
    p.add_argument("--heap", default="256K", help="heap of the virtual MicroPython board (default 256K)")
    p.add_argument("--no-micropython", action="store_true", help="only the CPython device")
    p.set_defaults(func=cmd_demo)
