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


def _tls_server(tmp_path, name, n, client_certs=False):
    """A stdlib TLS server on 127.0.0.1 for n connections with a certificate
    for `name` from a fresh root; records each connection's TLS version (or
    the handshake error). Returns (port, root file, seen list, thread, listener)."""
    import os
    import socket
    import ssl
    import threading

    from helpers_server import issue_cert, make_vendor_ca, write_identity

    ca = make_vendor_ca(str(tmp_path), "bench test root")
    k, c = issue_cert(ca["cert"], ca["key"], name, sans=(name,))
    cert, key = write_identity(str(tmp_path), "srv", k, c)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    if client_certs:  # ask for one issued by the same root; record its CN
        sctx.verify_mode = ssl.CERT_REQUIRED
        sctx.load_verify_locations(os.path.join(str(tmp_path), "vendor.pem"))
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(10)
    seen = []

    def serve():
        for _ in range(n):
            conn, _ = ls.accept()
            try:
                with sctx.wrap_socket(conn, server_side=True) as t:
                    seen.append(dict(x[0] for x in t.getpeercert()["subject"])["commonName"] if client_certs
                                else t.version())
                    t.recv(4096)
                    t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError) as e:
                seen.append(type(e).__name__)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return ls.getsockname()[1], os.path.join(str(tmp_path), "vendor.pem"), seen, th, ls, ca


def _bench_module():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import server

    return server


def test_server_bench_split_cpus():
    """--split-cpus: the server process really runs on the first CPU only
    (its affinity read while it runs) and the JSON says where each ran."""
    import os
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:  # a one-CPU machine: a usage error, not a run that shares the CPU anyway
        p = subprocess.run([sys.executable, "bench/server.py", "--split-cpus"], capture_output=True, text=True,
                           cwd=os.path.join(os.path.dirname(__file__), ".."), timeout=60)
        assert p.returncode == 2 and "--split-cpus needs" in p.stderr
        return
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2",
                     "--split-cpus"])
    assert out["server_cpus"] == out["server_cpus_seen"] == cpus[:1]
    assert out["load_generator_cpus"] == cpus[1:] and out["cpus_shared_with_load_generator"] is False
    assert out["errors"] == {"2": 0} and out["enrollments_per_s"]["2"] > 0
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2",
                     "--shared-cpus"])
    assert out["server_cpus_seen"] == cpus and out["server_cpus"] is None
    assert out["cpus_shared_with_load_generator"] is True
    # --transport https splits by default (the floor is one core's)
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2"])
    assert out["server_cpus"] == out["server_cpus_seen"] == cpus[:1] and out["load_generator_cpus"] == cpus[1:]


def test_server_bench_floor_runs_on_the_server_cpu(monkeypatch):
    """With --split-cpus the crypto floor is measured on the server's CPU
    (the one its CPU time per enrollment comes from), and this process's
    CPU set is given back afterwards, also when the measurement fails."""
    import os

    bench = _bench_module()
    cpus = sorted(os.sched_getaffinity(0))
    seen = []

    def fake(auth, n=400, touch_mb=0):
        seen.append(sorted(os.sched_getaffinity(0)))
        if auth == "boom":
            raise RuntimeError("boom")
        return 0.001

    monkeypatch.setattr(bench, "crypto_floor_on_one_cpu", fake)
    monkeypatch.setattr(bench, "SERVER_CPUS", {cpus[-1]})
    assert bench.crypto_floor("basic", 10) == 0.001
    try:
        bench.crypto_floor("boom", 10)
    except RuntimeError:
        pass
    assert seen == [[cpus[-1]], [cpus[-1]]]
    assert sorted(os.sched_getaffinity(0)) == cpus
    monkeypatch.setattr(bench, "SERVER_CPUS", None)
    bench.crypto_floor("basic", 10)
    assert seen[-1] == cpus


def test_server_bench_load_generator_speaks_the_tls_version_asked(tmp_path):
    """bench/server.py --tls 1.2 (a MicroPython device's TLS) really makes
    the load generator's handshakes TLS 1.2, and the default TLS 1.3, with
    both load generators (pyOpenSSL, the default, and stdlib ssl): seen by a
    stdlib TLS server that records what each connection negotiated."""
    bench = _bench_module()
    port, root, seen, th, ls, _ = _tls_server(tmp_path, "localhost", 4)
    try:
        for make in (bench.https_enroller_openssl, bench.https_enroller):
            assert make(port, root, tls="1.2", timeout=10)(b"csr")
            assert make(port, root, timeout=10)(b"csr")
        th.join(10)
    finally:
        ls.close()
    assert seen == ["TLSv1.2", "TLSv1.3"] * 2
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2",
                     "--tls", "1.2"])
    assert out["client"] == "pyopenssl" and out["client_tls"] == "TLS 1.2"
    assert "load: pyOpenSSL (OpenSSL " in out["server"] and "), TLS 1.2 in " in out["server"]
    assert out["errors"] == {"2": 0} and out["enrollments_per_s"]["2"] > 0


def test_pyopenssl_load_generator_checks_the_server(tmp_path):
    """The default (pyOpenSSL) load generator verifies the server as the
    stdlib one does: a certificate for another name, or a root it was not
    given, fails the handshake instead of enrolling."""
    from OpenSSL import SSL

    bench = _bench_module()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    port, root, seen, th, ls, _ = _tls_server(tmp_path / "a", "otherhost", 2)
    other = _tls_server(tmp_path / "b", "localhost", 0)[1]  # another root, same shape
    try:
        for trust in (root, other):
            try:
                bench.https_enroller_openssl(port, trust, timeout=10)(b"csr")
            except SSL.Error as e:
                assert "certificate verify failed" in str(e)
            else:
                raise AssertionError("enrolled against a server it must not trust (%s)" % trust)
        th.join(10)
    finally:
        ls.close()
    assert len(seen) == 2 and "TLSv1.3" not in seen  # neither handshake completed on the server


def test_pyopenssl_load_generator_presents_its_identities_in_turn(tmp_path):
    """--idevids: identities=[...] makes each connection present the next
    client certificate (a fleet, each device its own IDevID), as a TLS
    server requiring client certificates sees them."""
    from helpers_server import issue_cert

    bench = _bench_module()
    port, root, seen, th, ls, ca = _tls_server(tmp_path, "localhost", 4, client_certs=True)
    ids = [tuple(reversed(issue_cert(ca["cert"], ca["key"], "fleet-device-%d" % i))) for i in range(3)]
    try:
        one = bench.https_enroller_openssl(port, root, timeout=10, identities=ids)
        for _ in range(4):
            assert one(b"csr")
        th.join(10)
    finally:
        ls.close()
    assert seen == ["fleet-device-0", "fleet-device-1", "fleet-device-2", "fleet-device-0"]
