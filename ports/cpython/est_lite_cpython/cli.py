"""The `est-lite` command.

Subcommands live in modules named `cli_*.py` in this package; each defines
`register(subparsers)` which adds its parsers and sets `func` (called with the
parsed args, returns an exit code). Discovery keeps each feature's CLI in its
own file.
"""

import argparse
import importlib
import os
import pkgutil
import sys

import est_lite_cpython


class _Parser(argparse.ArgumentParser):
    # a usage error is one line on stderr (argparse prints the usage block
    # first); the subparsers are of this class too (add_subparsers default)
    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, one_line(message), self.prog))


def one_line(text):
    """text on one line: whitespace runs become one space, other control
    characters (a peer's ESC sequences) become '?'."""
    text = " ".join(str(text).split())
    return "".join("?" if c < " " or "\x7f" <= c < "\xa0" else c for c in text)


def build_parser():
    parser = _Parser(
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
    from est_lite.errors import EstError, TransportError

    try:
        return args.func(args) or 0
    except EstError as e:
        print("est-lite: error: %s" % one_line(e), file=sys.stderr)
        # 75 (EX_TEMPFAIL): the server asked to come back later (202 / 5.03,
        # e.g. a request waiting for manual approval) and the deadline came
        # first; a script can retry the same command later
        return 75 if isinstance(e, TransportError) and e.coap_code == 0xA3 else 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line, not a traceback (EST_LITE_DEBUG=1 shows it)
        if os.environ.get("EST_LITE_DEBUG"):
            raise
        print("est-lite: internal error: %s: %s (EST_LITE_DEBUG=1 shows the traceback; please report it)"
              % (type(e).__name__, one_line(e)), file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
