"""Second reader's findings on the local-attack, full-disk and conformance
changes (89bad43..): each test failed on the code it names."""

import os

from helpers_cli import cli, one_line


def _files(d):
    # keys and certificates by content; ca.db by name (closing the first
    # command's store checkpoints its WAL into it)
    return dict((n, b"" if n.startswith("ca.db") else open(os.path.join(str(d), n), "rb").read())
                for n in sorted(os.listdir(str(d))) if n not in ("server.lock", "ca.db-wal", "ca.db-shm"))


def test_ca_init_force_refused_for_a_world_writable_dir_keeps_the_ca(tmp_path, capsys):
    """`ca init --force` in a data directory that became 0777: the refusal
    ('writable by every user') came from inside init, and the clean-up of
    a failed init removed, with --force, every CA file there: the CA it
    had refused to replace was gone (root.key included)."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    before = _files(d)
    assert "root.key" in before and "ca.db" in before
    os.chmod(str(d), 0o777)
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", d, "--force")
    one_line(rc, err)
    assert "writable by every user (mode 0777)" in err
    assert _files(d) == before
