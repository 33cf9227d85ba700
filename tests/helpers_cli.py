"""The `est-lite` command run in process, as the CLI tests drive it."""

from est_lite_cpython.cli import main


def cli(capsys, *argv):
    """`est-lite ARGV...` in this process: (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc, err, code=1):
    """The command failed with exit status `code` and said why in one
    `est-lite: error:` line, not a traceback or an internal error."""
    assert rc == code and err.startswith("est-lite: error: ") and err.count("\n") == 1, (rc, err)
    assert "internal error" not in err and "Traceback" not in err, err
