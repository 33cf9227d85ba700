"""Root CA key update (RFC 4210 §4.4, RFC 7030 §4.1.3): `est-lite ca
rollover` / ca.rollover_ca, the four certificates it makes, /cacerts and
the TLS chains after it, old- and new-generation certificates at the
server, and a rollover that fails half-way. `cryptography` and `openssl
verify` are the independent judges of the certificates."""

import base64
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers_coaps import EstBothServer
from helpers_server import PASSWORD, USER, Response, make_csr

from est_lite.errors import LocalProtocolError
from est_lite_cpython import ca as CA
from est_lite_cpython.ca import LocalCA, init_ca, pin_of, rollover_ca

OPENSSL = shutil.which("openssl")


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _der(c):
    return c.public_bytes(serialization.Encoding.DER)


def _pub_der(k):
    return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ski(c):
    return c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(c):
    return c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def _bc(c):
    return c.extensions.get_extension_for_class(x509.BasicConstraints)


def _signed_by(cert, issuer):
    """cert's signature verifies under issuer's key and names it (cryptography)."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - InvalidSignature / ValueError: not signed by it
        return False


def _leaf(ca, cn, days=30):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, ca.issue_raw(key.public_key(), _name(cn), sans=[x509.DNSName(cn + ".example")], days=days)


def _read_pems(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


@pytest.fixture(params=[False, True], ids=["root-issues", "intermediate"])
def rolled(request, tmp_path):
    """(old LocalCA snapshot: root, issuer, an old leaf), the new LocalCA."""
    d = str(tmp_path / "ca")
    old = init_ca(d, intermediate=request.param, now=time.time() - 30 * 86400)  # a CA made a month ago
    old_root, old_issuer = old.root, old.issuer
    old_leaf = _leaf(old, "old-leaf")[1]
    with open(os.path.join(d, "root.key"), "rb") as f:
        old_root_key = f.read()
    old.store.close()
    new = rollover_ca(d)
    yield dict(dir=d, old_root=old_root, old_issuer=old_issuer, old_leaf=old_leaf, old_root_key=old_root_key,
               intermediate=request.param), new
    new.store.close()


# ---------------------------------------------------------------- the certificates (RFC 4210 §4.4)


def test_the_four_certificates_are_what_rfc4210_says(rolled):
    o, ca = rolled
    d = o["dir"]
    oldwithold = o["old_root"]
    newwithnew = ca.root
    nwo = _read_pems(os.path.join(d, "root-new-with-old.pem"))[0]
    own = _read_pems(os.path.join(d, "root-old-with-new.pem"))[0]
    assert _read_pems(os.path.join(d, "root-old.pem"))[0] == oldwithold
    name = oldwithold.subject
    old_pub, new_pub = _pub_der(oldwithold.public_key()), _pub_der(newwithnew.public_key())
    assert old_pub != new_pub
    # every one carries the CA's unchanged name as subject and issuer
    for c in (newwithnew, nwo, own):
        assert c.subject == name and c.issuer == name
        assert _bc(c).critical and _bc(c).value.ca
        assert _bc(c).value.path_length == _bc(oldwithold).value.path_length
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign and ku.crl_sign
    # NewWithNew: the new key, self-signed, a later notAfter
    assert _signed_by(newwithnew, newwithnew) and not _signed_by(newwithnew, oldwithold)
    assert _ski(newwithnew) == _aki(newwithnew) != _ski(oldwithold)
    assert newwithnew.not_valid_after_utc > oldwithold.not_valid_after_utc
    # NewWithOld: the new key signed by the old one, AKI = the old key's id, not past the old root
    assert _pub_der(nwo.public_key()) == new_pub
    assert _signed_by(nwo, oldwithold) and not _signed_by(nwo, newwithnew)
    assert _ski(nwo) == _ski(newwithnew) and _aki(nwo) == _ski(oldwithold)
    assert nwo.not_valid_after_utc <= oldwithold.not_valid_after_utc
    assert nwo.not_valid_before_utc == newwithnew.not_valid_before_utc
    # OldWithNew: the old key signed by the new one, the old root's dates
    assert _pub_der(own.public_key()) == old_pub
    assert _signed_by(own, newwithnew) and not _signed_by(own, oldwithold)
    assert _ski(own) == _ski(oldwithold) and _aki(own) == _ski(newwithnew)
    assert (own.not_valid_before_utc, own.not_valid_after_utc) == (oldwithold.not_valid_before_utc,
                                                                   oldwithold.not_valid_after_utc)
    # the old root's key is kept 0600 beside it, the new one replaced root.key
    with open(os.path.join(d, "root-old.key"), "rb") as f:
        assert f.read() == o["old_root_key"]
    for k in ("root-old.key", "root.key", "server.key"):
        assert os.stat(os.path.join(d, k)).st_mode & 0o077 == 0, k
    newkey = CA.load_pem_file(os.path.join(d, "root.key"), "key")
    assert _pub_der(newkey.public_key()) == new_pub
    assert not os.path.exists(os.path.join(d, "rollover.new")) and not os.path.exists(os.path.join(d, "rollover.journal"))


def test_intermediate_keeps_its_key_under_the_new_root(rolled):
    o, ca = rolled
    if not o["intermediate"]:
        assert ca.issuer is ca.root and not os.path.exists(os.path.join(o["dir"], "intermediate-old.pem"))
        return
    old_int = o["old_issuer"]
    assert _read_pems(os.path.join(o["dir"], "intermediate-old.pem"))[0] == old_int
    assert ca.issuer.subject == old_int.subject and ca.issuer != old_int
    assert _pub_der(ca.issuer.public_key()) == _pub_der(old_int.public_key())
    assert _signed_by(ca.issuer, ca.root) and not _signed_by(ca.issuer, o["old_root"])
    # so every leaf issued before verifies on the new path as it is
    assert _signed_by(o["old_leaf"], ca.issuer)


def test_cacerts_contents_and_order(rolled):
    o, ca = rolled
    certs = ca.ca_certs(None)
    nwo, oldwithold, own = certs[-3:]
    head = certs[:-3]
    assert head == ca.chain and head[-1] == ca.root and head[0] == ca.issuer  # issuing CA first, then its root
    assert oldwithold == o["old_root"]
    assert _signed_by(nwo, oldwithold) and _pub_der(nwo.public_key()) == _pub_der(ca.root.public_key())
    assert _signed_by(own, ca.root) and _pub_der(own.public_key()) == _pub_der(oldwithold.public_key())


def test_old_generation_disappears_when_the_old_root_expires(rolled):
    o, ca = rolled
    end = o["old_root"].not_valid_after_utc.timestamp()
    ca.clock = lambda: end - 1
    assert len(ca.ca_certs(None)) == len(ca.chain) + 3 and ca.ca_certs_until == int(end)
    ca.clock = lambda: end + 1
    assert ca.ca_certs(None) == ca.chain and ca.ca_certs_until is None


def test_no_rollover_nothing_changes(tmp_path):
    ca = init_ca(str(tmp_path / "a"), intermediate=True)
    try:
        assert ca.ca_certs(None) == ca.chain == [ca.issuer, ca.root]
        assert ca.old_root is None and ca.ca_certs_until is None
        assert len(_read_pems(ca.server_cert_file)) == 2
    finally:
        ca.store.close()


def _verify_links(path):
    """Each certificate of path (leaf first) is signed by the next one."""
    return all(_signed_by(path[i], path[i + 1]) for i in range(len(path) - 1))


def test_cross_generation_paths_link_by_link(rolled):
    """cryptography's path builder (x509.verification) counts the self-issued
    NewWithOld against the old root's pathLenConstraint 0, which RFC 5280
    6.1.4 (l) exempts (OpenSSL and Mbed TLS follow the RFC): so the paths
    are checked signature by signature here and by `openssl verify` below."""
    o, ca = rolled
    nwo, oldwithold, own = ca.rollover_certs
    new_leaf = _leaf(ca, "new-leaf")[1]
    if o["intermediate"]:
        # an old leaf under NewWithNew alone: its intermediate key is certified by the new root
        assert _verify_links([o["old_leaf"], ca.issuer, ca.root])
        # a new leaf under OldWithOld alone: new intermediate <- NewWithOld <- OldWithOld
        assert _verify_links([new_leaf, ca.issuer, nwo, oldwithold])
    else:
        assert _verify_links([o["old_leaf"], own, ca.root])
        assert not _signed_by(o["old_leaf"], ca.root)
        assert _verify_links([new_leaf, nwo, oldwithold])
        assert not _signed_by(new_leaf, oldwithold)


def _openssl_verify(tmp, anchor, untrusted, leaf):
    a, u, lf = (os.path.join(str(tmp), n) for n in ("anchor.pem", "untrusted.pem", "leaf.pem"))
    for p, data in ((a, _pem(anchor)), (u, _pem(*untrusted)), (lf, _pem(leaf))):
        with open(p, "wb") as f:
            f.write(data)
    r = subprocess.run([OPENSSL, "verify", "-CAfile", a, "-untrusted", u, lf], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")
def test_openssl_verifies_both_generations_under_either_root(rolled, tmp_path):
    o, ca = rolled
    nwo, oldwithold, own = ca.rollover_certs
    new_leaf = _leaf(ca, "new-leaf")[1]
    mid = [ca.issuer] if o["intermediate"] else []
    # the chain the TLS server presents (server.pem after the leaf) serves both anchors
    server = _read_pems(ca.server_cert_file)
    assert server[1:] == mid + [nwo, oldwithold, own, ca.root]
    for anchor in (oldwithold, ca.root):
        rc, out = _openssl_verify(tmp_path, anchor, server[1:], server[0])
        assert rc == 0, out
        rc, out = _openssl_verify(tmp_path, anchor, mid + [nwo], new_leaf)
        assert rc == 0, out
    # an old-generation leaf under the new root alone
    rc, out = _openssl_verify(tmp_path, ca.root, mid or [own], o["old_leaf"])
    assert rc == 0, out
    # and the judge can say no: the new leaf without NewWithOld under the old root
    rc, out = _openssl_verify(tmp_path, oldwithold, mid + [own], new_leaf)
    assert rc != 0, out


# ---------------------------------------------------------------- the command's refusals and its failure half-way


def test_twice_or_without_a_ca_is_one_clear_error(rolled, tmp_path):
    o, ca = rolled
    with pytest.raises(LocalProtocolError, match="already rolled over.*--force"):
        rollover_ca(o["dir"])
    with pytest.raises(LocalProtocolError, match="no CA in"):
        rollover_ca(str(tmp_path / "nothing"))
    # --force: the current root becomes the previous one, the oldest generation goes
    ca2 = rollover_ca(o["dir"], force=True)
    try:
        assert ca2.old_root == ca.root and ca2.root != ca.root
        assert o["old_root"] not in ca2.ca_certs(None)
    finally:
        ca2.store.close()


def test_expired_root_is_refused(tmp_path):
    d = str(tmp_path / "a")
    ca = init_ca(d, validity_days=1)
    ca.store.close()
    end = ca.root.not_valid_after_utc.timestamp()
    with pytest.raises(LocalProtocolError, match="expired.*ca init --force"):
        rollover_ca(d, now=end + 10)
    assert not os.path.exists(os.path.join(d, "root-old.pem"))


def _snapshot(d):
    out = {}
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not n.startswith("ca.db"):
            with open(p, "rb") as f:
                out[n] = f.read()
    return out


@pytest.mark.parametrize("intermediate", [False, True])
def test_failure_before_the_commit_leaves_the_old_ca(tmp_path, monkeypatch, intermediate):
    d = str(tmp_path / "a")
    ca = init_ca(d, intermediate=intermediate)
    ca.store.close()
    before = _snapshot(d)

    def boom(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalCA, "issue_raw", boom)  # the TLS certificate, after the new CA files are staged
    with pytest.raises(OSError, match="No space"):
        rollover_ca(d)
    monkeypatch.undo()
    assert _snapshot(d) == before and not os.path.exists(os.path.join(d, "rollover.new"))
    again = LocalCA(d)
    try:
        assert again.root == ca.root and again.old_root is None
        leaf = _leaf(again, "after-failure")[1]
        assert _signed_by(leaf, again.issuer)
    finally:
        again.store.close()
    rollover_ca(d).store.close()  # and the next attempt works


def test_failure_after_the_commit_is_finished_by_the_next_open(tmp_path, monkeypatch):
    d = str(tmp_path / "a")
    init_ca(d).store.close()
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the journal (1), two of the staged files (2, 3), then a crash
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(CA.os, "replace", flaky)
    with pytest.raises(OSError):
        rollover_ca(d)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(d, "rollover.journal"))
    ca = LocalCA(d)  # finishes the renames
    try:
        assert not os.path.exists(os.path.join(d, "rollover.journal"))
        assert ca.old_root is not None and _pub_der(ca._key.public_key()) == _pub_der(ca.root.public_key())
        nwo, oldwithold, own = ca.rollover_certs
        assert _signed_by(nwo, oldwithold) and _signed_by(own, ca.root)
        server = _read_pems(ca.server_cert_file)
        assert _signed_by(server[0], ca.root)
        key = CA.load_pem_file(ca.server_key_file, "key")
        assert _pub_der(key.public_key()) == _pub_der(server[0].public_key())
    finally:
        ca.store.close()
