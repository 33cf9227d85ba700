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
    # a usage error is one line on stderr, exit 2 (argparse's usage block is
    # not printed); the subparsers are of this class too (add_subparsers
    # default), so the hint names the help of the command given
    _top = False

    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, one_line(message), self.prog))

    def parse_known_args(self, args=None, namespace=None):
        # an option the command does not have: said by the command's parser
        # ("est-lite reenroll: ... (see est-lite reenroll --help)"), not by
        # the top one after the subcommand returns (a subcommand takes all
        # the arguments after its name, so these are its own)
        ns, extra = super().parse_known_args(args, namespace)
        if extra and not self._top:
            self.error("unrecognized arguments: %s" % " ".join(extra))
        return ns, extra


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
    parser._top = True
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(est_lite_cpython.__path__), key=lambda i: i.name):
        if info.name.startswith("cli_"):
            mod = importlib.import_module("est_lite_cpython." + info.name)
            mod.register(sub)
    return parser


# exit status (README, docs/client-runtime.md "Exit status"): 0 done, 1 an
# error (one line on stderr), 2 a usage error (argparse's convention), 70
# an internal error (a bug), 75 the server asked to come back later and
# --deadline came first, 130 Ctrl-C, 141 stdout closed by its reader
# (`| head -1`; 128 + SIGPIPE, what a shell reports for a command SIGPIPE stopped)
EXIT_BROKEN_PIPE = 141


def main(argv=None):
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return rc
    except BrokenPipeError:
        # the reader of stdout is gone (Python docs, "Note on SIGPIPE"): not
        # an error of ours to report; stdout goes to devnull so the final
        # flush at exit does not fail again
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, sys.stdout.fileno())
            os.close(fd)
        except (OSError, AttributeError, ValueError):  # not a real file (in-process callers)
            pass
        return EXIT_BROKEN_PIPE


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from est_lite.errors import EstError, TransportError

    try:
        return args.func(args) or 0
    except BrokenPipeError:
        raise
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
