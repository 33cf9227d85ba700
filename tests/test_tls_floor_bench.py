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


def test_server_bench_load_generator_speaks_the_tls_version_asked(tmp_path):
    """bench/server.py --tls 1.2 (a MicroPython device's TLS) really makes
    the load generator's handshakes TLS 1.2, and the default TLS 1.3: seen by
    a stdlib TLS server that records what each connection negotiated."""
    import os
    import socket
    import ssl
    import sys
    import threading

    from helpers_server import issue_cert, make_vendor_ca, write_identity

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from server import https_enroller

    ca = make_vendor_ca(str(tmp_path), "bench test root")
    k, c = issue_cert(ca["cert"], ca["key"], "localhost", sans=("localhost",))
    cert, key = write_identity(str(tmp_path), "srv", k, c)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(10)
    seen = []

    def serve(n):
        for _ in range(n):
            conn, _ = ls.accept()
            with sctx.wrap_socket(conn, server_side=True) as t:
                seen.append(t.version())
                t.recv(4096)
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    th = threading.Thread(target=serve, args=(2,), daemon=True)
    th.start()
    root = os.path.join(str(tmp_path), "vendor.pem")
    try:
        assert https_enroller(ls.getsockname()[1], root, tls="1.2", timeout=10)(b"csr")
        assert https_enroller(ls.getsockname()[1], root, timeout=10)(b"csr")
        th.join(10)
    finally:
        ls.close()
    assert seen == ["TLSv1.2", "TLSv1.3"]
    out = last_json(["bench/server.py", "--transport", "https", "--seconds", "0.4", "--concurrency", "2",
                     "--tls", "1.2"])
    assert out["client_tls"] == "TLS 1.2" and "stdlib ssl, TLS 1.2" in out["server"]
    assert out["errors"] == {"2": 0} and out["enrollments_per_s"]["2"] > 0
