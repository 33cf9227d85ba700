"""The EST-coaps benchmarks run and report what the README quotes:
bench/wire.py's last line (coaps_bytes, https_bytes, coaps_datagrams,
ratio; the size target holds), and bench/server.py --transport coaps printing
the same JSON shape as the HTTPS run (short runs: a smoke test, not a
measurement)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def last_json(args, timeout=180):
    p = subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_wire_bytes_target():
    out = last_json(["bench/wire.py"])
    for k in ("coaps_bytes", "https_bytes", "coaps_datagrams", "ratio"):
        assert k in out
    assert out["ratio"] == round(out["coaps_bytes"] / out["https_bytes"], 3)
    assert out["ratio"] <= 0.80, out
    assert out["coaps"]["cipher"] == "ECDHE-ECDSA-AES128-CCM8"
    assert out["coaps_datagrams"] <= 16


def test_server_bench_coaps_has_the_https_shape():
    args = ["bench/server.py", "--seconds", "0.4", "--concurrency", "1", "--auth", "cert"]
    coaps = last_json(args + ["--transport", "coaps"])
    https = last_json(args + ["--transport", "https"])
    assert set(coaps) == set(https)
    assert coaps["transport"] == "coaps" and https["transport"] == "https"
    assert coaps["enrollments_per_s"]["1"] > 0 and coaps["errors"]["1"] == 0
    # a fleet by default: both load generators present distinct IDevIDs (--idevids)
    assert coaps["client_identities"] == https["client_identities"] == 6000
