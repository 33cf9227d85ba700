"""`est-lite serve` under a low open-file limit (ulimit -n 64, set with
resource.setrlimit in the server's process: no root needed) and more
connections than that.

The promises: the HTTPS server holds at most what the limit leaves (the
rest waits in the listen backlog), says so once, keeps descriptors for the
store and the CoAPs server (EST-coaps enrollments go on during the flood),
does not spin on EMFILE from accept() (CPU time checked with a wide margin:
a spinning loop takes all of the wall time), and serves again once the
connections close. Before: each new thread's SQLite connection failed
("unable to open database file"), so every CoAPs handshake was refused
with a traceback in the log, and the event loop logged "accept failed"
ten times a second."""

import os
import resource
import socket
import subprocess
import sys
import time

import pytest
from helpers_client import der

from est_lite.csr import CsrBuilder
from est_lite_cpython.client import EstClient
from est_lite_cpython.crypto import P256Key

LIMIT = 64


def _limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _cpu(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _wait_file(path, proc):
    while not (os.path.exists(path) and os.path.getsize(path)):
        assert proc.poll() is None, "the server exited"
        time.sleep(0.05)
    return int(open(path).read())


def _read(p):
    with open(p, "rb") as f:
        return f.read()


@pytest.fixture
def data(tmp_path):
    d = str(tmp_path / "ca")
    run = ["est-lite"]
    subprocess.run(run + ["ca", "init", "--data-dir", d], check=True, capture_output=True)
    subprocess.run(run + ["ca", "issue", "--data-dir", d, "--cn", "dev-fd", "--eku", "clientAuth", "--out",
                          str(tmp_path / "dev")], check=True, capture_output=True)
    return d


def _pem_to_der(pem):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY" in pem:
        k = serialization.load_pem_private_key(pem, None)
        return k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return der(x509.load_pem_x509_certificate(pem))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the server's CPU time from /proc")
@pytest.mark.parametrize("io", ["loop", "threads"])
def test_serve_under_ulimit_n_64(data, tmp_path, io):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[server]\nio = "%s"\nworkers = 96\n[ca]\ndata_dir = "%s"\n' % (io, data))
    pf, cpf, logf = str(tmp_path / "port"), str(tmp_path / "cport"), str(tmp_path / "log")
    with open(logf, "w") as log:
        srv = subprocess.Popen(["est-lite", "serve", "--config", str(cfg), "--port", "0", "--port-file", pf,
                                "--coaps-port", "0", "--coaps-port-file", cpf, "-v"], stdout=log,
                               stderr=subprocess.STDOUT, preexec_fn=_limit)
    socks = []
    try:
        port, cport = _wait_file(pf, srv), _wait_file(cpf, srv)
        trust = [_pem_to_der(_read(os.path.join(data, "root.pem")))]
        for _ in range(2 * LIMIT):  # each waits in a slot (until its 10 s I/O timeout) or in the backlog
            socks.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)
        c0, t0 = _cpu(srv.pid), time.monotonic()
        # EST-coaps goes on during the flood
        c = EstClient("coaps://127.0.0.1:%d" % cport, trust=trust, cert=_pem_to_der(_read(str(tmp_path / "dev.pem"))),
                      key=_pem_to_der(_read(str(tmp_path / "dev.key"))), deadline=20)
        try:
            assert c.cacerts()
            k = P256Key.generate()
            assert c.enroll(CsrBuilder().subject(cn="fd-flood").sign(k), k.public_key).cert
        finally:
            c.close()
        time.sleep(2)
        busy = _cpu(srv.pid) - c0
        wall = time.monotonic() - t0
        assert busy < 0.5 * wall, (busy, wall)  # not spinning on EMFILE (a spin takes ~all of it)
        assert srv.poll() is None
        for s in socks:
            s.close()
        socks = []
        # serving HTTPS again once the connections are gone
        c = EstClient("https://localhost:%d" % port, trust=trust, deadline=30)
        try:
            assert c.cacerts()
        finally:
            c.close()
    finally:
        for s in socks:
            s.close()
        srv.terminate()
        srv.wait(timeout=20)
    text = open(logf).read()
    assert "Traceback" not in text and "unable to open database" not in text, text[-3000:]
    assert text.count("the open-file limit (ulimit -n) is 64") == 1, text[-3000:]
    assert text.count("accept failed") <= 1, text[-3000:]


EMFILE_SERVER = r"""
import logging, os, sys
sys.path.insert(0, sys.argv[2])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from helpers_server import EstTestServer
srv = EstTestServer(sys.argv[1])
assert srv.request("GET", srv.path("cacerts")).status == 200  # the loop runs (its poller made) before the fds go
fill = []
try:
    while True:  # every descriptor taken by something else than the server's connections
        fill.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
print(srv.port, flush=True)
sys.stdin.readline()  # the test has connected and waited
for fd in fill:
    os.close(fd)
print("freed", flush=True)
sys.stdin.readline()
srv.stop()
"""


def test_accept_emfile_is_said_once_and_recovers(tmp_path):
    # the descriptors are taken by something else (the limit leaves none):
    # accept() fails with EMFILE for as long as that lasts
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, str(tmp_path), here], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit)
    try:
        port = int(p.stdout.readline())
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        time.sleep(0.2)
        c0, t0 = _cpu(p.pid), time.monotonic()
        time.sleep(2)
        assert _cpu(p.pid) - c0 < 0.5 * (time.monotonic() - t0)
        for s in socks:
            s.close()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "freed"
        trust = [_pem_to_der(_read(os.path.join(str(tmp_path), "ca", "root.pem")))]
        c = EstClient("https://localhost:%d" % port, trust=trust, deadline=30)
        try:
            assert c.cacerts()
        finally:
            c.close()
        p.stdin.write("\n")
        p.stdin.flush()
        err = p.communicate(timeout=30)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert err.count("accept failed") == 1 and "Too many open files" in err, err[-3000:]
    assert err.count("accepting connections again") == 1, err[-3000:]


START_WITHOUT_FDS = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from helpers_server import EstTestServer
srv = EstTestServer(sys.argv[1])
srv.server.stop()
fill = []
try:
    while True:
        fill.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for _ in range(3):  # three left: the listening socket and the wake-up socket pair, none for the loop's poller
    os.close(fill.pop())
try:
    srv.server.start()
except OSError as e:
    print("refused", e.errno)
else:
    print("started")
"""


def test_start_with_no_descriptor_left_fails_at_start(tmp_path):
    # the event loop's poller was made in its thread: with no descriptor
    # left, start() returned a port and the loop thread died (a traceback on
    # stderr, a server that never answered)
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run([sys.executable, "-c", START_WITHOUT_FDS, str(tmp_path), here], capture_output=True,
                       text=True, timeout=60, preexec_fn=_limit)
    assert p.stdout.strip() == "refused 24", (p.stdout, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
