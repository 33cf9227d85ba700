"""`est-lite demo`: the README's first command. Runs as the user would
(a subprocess in an empty directory), checks what it prints against the
certificates, and that it leaves nothing behind."""

import pathlib as _pl
import sys as _sys
import os
import re
import subprocess
import sys

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout


def test_demo_enrolls_a_board_and_a_device_and_cleans_up(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "demo"], capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path), env=env)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "MicroPython board demo-board-1: EST-coaps" in out
    assert "CPython device demo-gateway-1: EST over HTTPS" in out
    subjects = re.findall(r"^  subject   (.*)$", out, re.M)
    issuers = re.findall(r"^  issuer    (.*)$", out, re.M)
    fps = re.findall(r"^  sha256    ([0-9a-f:]{95})$", out, re.M)
    assert subjects == ["CN=demo-board-1", "CN=demo-gateway-1"]
    assert issuers == ["CN=est-lite Root CA,O=est-lite"] * 2
    assert len(set(fps)) == 2
    assert re.search(r"^  valid     \d{4}-\d\d-\d\d \d\d:\d\d:\d\d -> \d{4}-.* UTC$", out, re.M)
    assert "issued 2 certificates" in out and "cleaning up" in out
    # the temporary work directory is gone
    assert not [n for n in os.listdir(tmp_path) if n.startswith("est-lite-demo-")]


def test_demo_keep(tmp_path):
    from hil.demo import run_demo

    import io

    keep = str(tmp_path / "keep")
    out = io.StringIO()
    res = run_demo(out=out, keep=keep, micropython=False)
    assert res["device"]["subject"] == "CN=demo-gateway-1"
    assert "board" not in res
    from est_lite_cpython.credstore import CredStore

    c = CredStore(os.path.join(keep, "gateway", "est")).load()
    import hashlib

    assert hashlib.sha256(c.cert).hexdigest() == res["device"]["sha256"]
    assert "kept in %s" % keep in out.getvalue()
    assert "issued 1 certificate (plus" in out.getvalue()  # one device without MicroPython: singular
