"""The CA store: unique serials and no lost records under concurrency, also
across processes and after a kill -9 of the server mid-enrollment."""

import base64
import multiprocessing
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers_server import BASE_CONFIG, PASSWORD, USER, Response, make_csr, make_vendor_ca

from est_lite.errors import LocalProtocolError
from est_lite_cpython.ca import LocalCA, init_ca
from est_lite_cpython.store import Store, serial_hex


def test_serial_hex_forms():
    assert serial_hex(255) == "ff"
    assert serial_hex("00:FF") == "ff"
    assert serial_hex("0xff") == "ff"
    with pytest.raises(LocalProtocolError):
        serial_hex("zz")


def test_store_basics(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    st = ca.store
    assert st.integrity_check() == "ok"
    with pytest.raises(LocalProtocolError) as ei:
        st.revoke(12345)
    assert "no certificate with serial 3039" in str(ei.value)
    rid = st.add_request("fp1", label="", op="simpleenroll", subject="CN=a", csr_der=b"\x30\x00")
    assert st.add_request("fp1", label="", op="simpleenroll", subject="CN=a", csr_der=b"\x30\x00") == rid
    assert st.decide(rid, False, "no")["status"] == "rejected"
    with pytest.raises(LocalProtocolError):
        st.decide(rid, True)
    with pytest.raises(LocalProtocolError):
        st.decide(999, True)
    # WAL mode is on
    assert st._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_store_removed_or_replaced_under_a_running_ca_writes_nothing(tmp_path, how):
    """ca.db deleted, or a backup copied over it, while a server has it
    open: SQLite would go on writing into the unlinked file (certificates
    issued, then lost at the next start; was: enrollments answered 200).
    Every write is refused with the reason instead: nothing issued, revoked
    or decided, and no path of the server in the text a client may see."""
    from est_lite_cpython.store import StoreError

    ca = init_ca(str(tmp_path / "ca"))
    key = make_csr()[0].public_key()
    first = ca.issue_raw(key, x509.Name([]), days=1)
    rid = ca.store.add_request("fp1", label="", op="simpleenroll", subject="CN=a", csr_der=b"\x30\x00")
    db = ca.store.path
    if how == "removed":
        os.unlink(db)
    else:
        other = Store(str(tmp_path / "other.db"))
        other.close()
        os.replace(str(tmp_path / "other.db"), db)
    for write in (lambda: ca.issue_raw(key, x509.Name([]), days=1),  # the issuance insert (autocommit path)
                  lambda: ca.store.revoke(first.serial_number),      # a write transaction
                  lambda: ca.store.decide(rid, True)):
        with pytest.raises(StoreError) as ei:
            write()
        msg = str(ei.value)
        assert "ca.db was removed or replaced while this server ran: nothing was written" in msg, msg
        assert "est-lite ca restore BACKUP --data-dir DIR --force" in msg and str(tmp_path) not in msg, msg
    ca.store.close()


def test_concurrent_threads_unique_serials(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    key = make_csr()[0].public_key()
    out = []
    lock = threading.Lock()

    def work():
        mine = [ca.issue_raw(key, x509.Name([]), days=1) for _ in range(50)]
        with lock:
            out.extend(mine)

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    serials = [c.serial_number for c in out]
    assert len(set(serials)) == 400
    stored = set(ca.store.all_serials())
    assert {serial_hex(s) for s in serials} <= stored
    assert len(stored) == 401  # + the TLS server certificate


def _issue_in_process(data_dir, n, q):
    ca = LocalCA(data_dir)
    key = make_csr()[0].public_key()
    q.put([serial_hex(ca.issue_raw(key, x509.Name([]), days=1).serial_number) for _ in range(n)])


def test_concurrent_processes_no_lost_records(tmp_path):
    d = str(tmp_path / "ca")
    init_ca(d)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_issue_in_process, args=(d, 60, q)) for _ in range(3)]
    for p in ps:
        p.start()
    got = []
    for _ in ps:
        got.extend(q.get(timeout=120))
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    st = Store(os.path.join(d, "ca.db"))
    stored = st.all_serials()
    assert len(got) == 180 == len(set(got))
    assert set(got) <= set(stored) and len(stored) == len(set(stored)) == 181


# ------------------------------------------------------------------ kill -9


def _enroll(port, root, der):
    ctx = ssl.create_default_context(cafile=root)
    body = base64.encodebytes(der)
    auth = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Authorization: Basic " + auth + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return Response.read(t)


def _start_server(cfg, pf):
    if os.path.exists(pf):
        os.unlink(pf)
    p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", cfg, "--port", "0",
                          "--port-file", pf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(400):
        if os.path.exists(pf) and open(pf).read().strip():
            return p, int(open(pf).read())
        if p.poll() is not None:
            raise AssertionError(p.stderr.read().decode())
        time.sleep(0.025)
    p.kill()
    raise AssertionError("server did not start")


def test_kill9_during_concurrent_enrollments(tmp_path):
    from est_lite_cpython.auth import PasswordFile

    tmp = str(tmp_path)
    d = os.path.join(tmp, "ca")
    init_ca(d)
    make_vendor_ca(tmp)
    cfg = os.path.join(tmp, "server.toml")
    with open(cfg, "w") as f:
        f.write('[ca]\ndata_dir = "ca"\n' + BASE_CONFIG)
    PasswordFile(os.path.join(d, "passwords"), iterations=1000).set_password(USER, PASSWORD)
    root = os.path.join(d, "root.pem")
    csrs = [make_csr("k9-%d" % i)[1] for i in range(64)]
    proc, port = _start_server(cfg, os.path.join(tmp, "port"))
    received = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i):
        j = 0
        while not stop.is_set():
            try:
                r = _enroll(port, root, csrs[(i * 8 + j) % len(csrs)])
            except (OSError, ssl.SSLError, ValueError, IndexError):
                continue  # the server died mid-request: nothing received
            j += 1
            if r.status == 200:
                with lock:
                    received.append(r.certs()[0])

    ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 60
    while len(received) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-flight: 8 clients are enrolling right now
    proc.wait(10)
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join(30)
    assert len(received) >= 60
    # reopen: consistent, unique serials, every received certificate stored bit for bit
    st = Store(os.path.join(d, "ca.db"))
    assert st.integrity_check() == "ok"
    serials = st.all_serials()
    assert len(serials) == len(set(serials))
    got = [serial_hex(c.serial_number) for c in received]
    assert len(got) == len(set(got))
    for c in received:
        assert st.get_certificate(c.serial_number) == c.public_bytes(serialization.Encoding.DER)
    st.close()
    # the server starts again on the same store and keeps issuing unique serials
    proc, port = _start_server(cfg, os.path.join(tmp, "port"))
    try:
        r = _enroll(port, root, make_csr("after-crash")[1])
        assert r.status == 200, r.text
    finally:
        proc.terminate()
        proc.wait(10)
    st = Store(os.path.join(d, "ca.db"))
    assert st.count_certificates() == len(serials) + 1
    assert serial_hex(r.certs()[0].serial_number) not in serials


def test_example_config_loads_and_rejects_typos(tmp_path):
    from est_lite_cpython.config import ConfigError, ServerConfig, load_config

    here = os.path.dirname(os.path.abspath(__file__))
    cfg = load_config(os.path.join(here, "..", "examples", "server.toml"))
    assert cfg.profile(None).auth == ("basic", "digest", "cert")
    for bad, word in (({"profiles": {"default": {"validty_days": 3}}}, "unknown key"),
                      ({"profiles": {"default": {"auth": []}}}, "at least one method"),
                      ({"profiles": {"default": {"key_types": ["ec:P-999"]}}}, "not one of"),
                      ({"profiles": {"cacerts": {}}}, "operation name"),
                      ({"profiles": {"default": {"client_cert_trust": ["nope"]}}}, "not defined"),
                      ({"profiles": {"default": {"csrattrs": ["ecPublicKey:P-7"]}}}, "curve")):
        with pytest.raises(ConfigError) as ei:
            ServerConfig(bad, base_dir=str(tmp_path), data_dir=str(tmp_path))
        assert word in str(ei.value)
