"""bench/tls_floor.py runs and reports the bare pyOpenSSL server's CPU per
connection in the JSON shape docs/server.md quotes (a short smoke run, not
a measurement), and bench/server.py --io/--https-processes reach the
config the server runs with."""

from test_coaps_bench import last_json


def test_tls_floor_bench_reports_its_json():
    out = last_json(["bench/tls_floor.py", "--seconds", "0.4", "--concurrency", "2"])
    assert out["concurrency"] == 2 and out["runs"] == 3
    assert out["bare_tls_server_cpu_ms"] > 0 and out["crypto_floor_ms"] > 0 and out["connections_per_s"] > 0
    assert out["bare_floor_ratio"] == round(out["crypto_floor_ms"] / out["bare_tls_server_cpu_ms"], 3)


def test_server_bench_io_and_processes_options():
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2",
                     "--io", "threads", "--workers", "4", "--https-processes", "2"])
    assert out["server"].startswith("est-lite serve: 2 processes on one TCP port (SO_REUSEPORT), each 4 worker threads")
    assert out["errors"] == {"2": 0} and out["enrollments_per_s"]["2"] > 0
