"""`[server] processes = 2`: `est-lite serve` runs a second HTTPS process on
the same TCP port (SO_REUSEPORT, one event loop each). Enrollments on many
connections all complete and land in the one store, and an HTTP Digest
nonce issued by one process is accepted on connections the kernel hands
to the other (the processes share the nonce key)."""

import base64
import socket
import ssl
import subprocess
import sys

from helpers_server import PASSWORD, USER, Response, make_csr
from test_coaps_cli import stop, wait_file


def _post(port, root, path, body, authz=None):
    ctx = ssl.create_default_context(cafile=root)
    data = base64.encodebytes(body)
    head = "POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/pkcs10\r\n" \
           "Content-Length: %d\r\n%s\r\n" % (path, len(data), "Authorization: %s\r\n" % authz if authz else "")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(head.encode() + data)
            return Response.read(t)


def test_serve_with_two_https_processes_shares_store_and_digest_nonces(tmp_path):
    from est_lite_cpython.auth import PasswordFile, digest_response, parse_auth_params
    from est_lite_cpython.ca import LocalCA, init_ca
    from est_lite_cpython.config import load_config

    data = tmp_path / "data"
    init_ca(str(data))
    cfg = tmp_path / "server.toml"
    cfg.write_text('[ca]\ndata_dir = "data"\n[server]\nport = 0\nprocesses = 2\n'
                   '[profiles.default]\nauth = ["digest"]\n')
    conf = load_config(str(cfg))
    assert conf.processes == 2
    PasswordFile(conf.password_file, iterations=1000).set_password(USER, PASSWORD, conf.realm)
    pf = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", str(cfg),
                             "--port-file", str(pf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = wait_file(pf, proc, timeout=60)
        kids = open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).read().split()
        workers = [k for k in kids if b"spawn_main" in open("/proc/%s/cmdline" % k, "rb").read()]
        assert len(workers) == 1  # the second HTTPS process (besides multiprocessing's resource tracker)
        root = str(data / "root.pem")
        path = "/.well-known/est/simpleenroll"
        r = _post(port, root, path, make_csr("challenge-me")[1])
        assert r.status == 401
        chal = [v for v in r.headers_all("www-authenticate") if v.startswith("Digest ")][0]
        params = parse_auth_params(chal[len("Digest "):])
        serials = set()
        for i in range(1, 13):  # new connections: the kernel spreads them over both processes
            r = _post(port, root, path, make_csr("two-https-%d" % i)[1],
                      digest_response(params, USER, PASSWORD, "POST", path, nc=i))
            assert r.status == 200, r.text
            serials.add(r.certs()[0].serial_number)
        ca = LocalCA(str(data))
        try:
            assert len(serials) == 12 and all(ca.store.has_serial(s) for s in serials)
        finally:
            ca.store.close()
    finally:
        stop(proc)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]


def test_config_rejects_zero_processes(tmp_path):
    import pytest

    from est_lite_cpython.config import ConfigError, load_config

    p = tmp_path / "c.toml"
    p.write_text("[server]\nprocesses = 0\n")
    with pytest.raises(ConfigError):
        load_config(str(p))
