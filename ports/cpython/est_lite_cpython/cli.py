"""The `est-lite` command.

Subcommands live in modules named `cli_*.py` in this package; each defines
`register(subparsers)` which adds its parsers and sets `func` (called with the
parsed args, returns an exit code). Discovery keeps each feature's CLI in its
own file.
"""

import argparse
import importlib
import pkgutil
import sys

import est_lite_cpython


def build_parser():
    parser = argparse.ArgumentParser(
        prog="est-lite",
        description="EST (RFC 7030) and EST-coaps (RFC 9148) client, server and tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(est_lite_cpython.__path__), key=lambda i: i.name):
        if info.name.startswith("cli_"):
            mod = importlib.import_module("est_lite_cpython." + info.name)
            mod.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from est_lite.errors import EstError

    try:
        return args.func(args) or 0
    except EstError as e:
        print("est-lite: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
