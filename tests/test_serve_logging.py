"""`est-lite serve -v` logs every request and every certificate issued,
whichever of its processes served it. Before, the worker processes of
`[server] processes = N` (spawned, with no logging set up) dropped their
INFO lines: with 2 processes about half the requests left no line. And no
line said which certificate was issued to whom: `issued serial ...: CN=...,
until ..., label '...', to user:alice` now does (the audit trail that
`ca list` holds, in the log)."""

import os
import subprocess
import time

from helpers_server import PASSWORD, USER

from est_lite_cpython.auth import PasswordFile
from est_lite_cpython.ca import init_ca


def _wait_file(path, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        assert proc.poll() is None, "serve exited"
        time.sleep(0.05)
    raise AssertionError("no port file")


def test_every_process_logs_its_requests_and_issuance(tmp_path):
    data = str(tmp_path / "ca")
    init_ca(data).store.close()
    PasswordFile(os.path.join(data, "passwords")).set_password(USER, PASSWORD)
    cfg = tmp_path / "s.toml"
    cfg.write_text('[ca]\ndata_dir = "%s"\n[server]\nprocesses = 2\n' % data)
    pf, logf = str(tmp_path / "port"), str(tmp_path / "log")
    with open(logf, "w") as log:
        srv = subprocess.Popen(["est-lite", "serve", "--config", str(cfg), "--port", "0", "--port-file", pf, "-v"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        port = _wait_file(pf, srv)
        url = "https://localhost:%d" % port
        root = os.path.join(data, "root.pem")
        n = 16  # SO_REUSEPORT spreads connections over the 2 processes: all 16 on one has odds 2**-15
        for _ in range(n):
            p = subprocess.run(["est-lite", "cacerts", "--server", url, "--trust", root], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 0, p.stderr
        for i in range(3):
            p = subprocess.run(["est-lite", "enroll", "--server", url, "--trust", root, "--user", USER, "--cn",
                                "logged-%d" % i, "--out", str(tmp_path / ("d%d" % i))], capture_output=True,
                               text=True, timeout=60, env=dict(os.environ, EST_PASSWORD=PASSWORD))
            assert p.returncode == 0, p.stderr
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    text = open(logf).read()
    # each enroll asks /cacerts once too
    assert text.count("GET /.well-known/est/cacerts -> ok") == n + 3, text[-3000:]
    assert text.count("POST /.well-known/est/simpleenroll -> ok") == 3, text[-3000:]
    issued = [ln for ln in text.splitlines() if " INFO issued serial " in ln]
    assert len(issued) == 3, text[-3000:]
    for i, ln in enumerate(sorted(issued, key=lambda x: x.split("CN=")[1])):
        assert "CN=logged-%d, until " % i in ln and "to user:%s" % USER in ln, ln
    assert PASSWORD not in text
