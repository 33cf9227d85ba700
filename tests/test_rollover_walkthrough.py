"""Brief AU: the root CA key update (est-lite ca rollover, the clients'
rule in est_lite_mp.rollover.follow) walked as an operator and attacked
through the /cacerts answer. Each case failed on the code before its fix."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from test_client_rollover import (DER, FOLLOW_MP, Rollover, _mp, _name, _provision, cert, follow, mplib,  # noqa: F401
                                  needs_mp, rolled)


def _no_cert_sign(subject, pub, issuer, signer):
    """CA:TRUE but keyUsage digitalSignature only (no keyCertSign)."""
    import datetime

    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=300))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .sign(signer, hashes.SHA256()))


def _hostile_links():
    """(name, anchors, /cacerts answer) where a key the CA never made a CA
    would become a trust anchor if the link were not checked as a CA
    certificate (RFC 5280 §6.1.4 (k), (n))."""
    r = Rollover()
    dev = ec.generate_private_key(ec.SECP256R1())  # e.g. an RA's or a device's key, certified by the old root
    # a leaf of the old root (a CA without intermediate issues from the root
    # key) and a "root" of the leaf's name and key, self-signed by its holder
    leaf = cert(_name("ra.example"), dev.public_key(), r.name, r.old_key, ca=False, days=300)
    fake = cert(_name("ra.example"), dev.public_key(), _name("ra.example"), dev)
    # CA:TRUE but no keyCertSign in the link
    k2 = ec.generate_private_key(ec.SECP256R1())
    nocs = _no_cert_sign(r.name, k2.public_key(), r.name, r.old_key)
    root2 = cert(r.name, k2.public_key(), r.name, k2)
    # a proper NewWithOld, but NewWithNew is not a CA
    nonca_new = cert(r.name, r.new_key.public_key(), r.name, r.new_key, ca=False)
    return r, [
        ("leaf_as_new_with_old", [fake, leaf]),
        ("link_without_keyCertSign", [root2, nocs]),
        ("new_with_new_not_a_ca", [nonca_new, x509.load_der_x509_certificate(r.new_with_old)]),
    ]


@pytest.mark.parametrize("with_hook", [True, False])
def test_only_a_ca_certificate_vouches_for_a_new_root(with_hook):
    r, cases = _hostile_links()
    kw = {} if with_hook else {"hook": None}
    for name, certs in cases:
        anchors = [r.old]
        out, note = follow(anchors, [c.public_bytes(DER) for c in certs] + [r.old], **kw)
        assert out is anchors, name
        assert "not trusted" in note, (name, note)


def test_the_notes_name_the_right_certificate():
    """A genuine rollover's note says nothing of its NewWithOld (a
    self-issued certificate of a new key, but no root); a root of another
    name vouched under the old name is refused as unvouched."""
    r = Rollover()
    for got in (r.bag(), [r.new_with_old, r.new, r.old_with_new, r.old]):  # a PKCS#7 SET: any order
        out, note = follow([r.old], got)
        assert "now trusting" in note and "not trusted" not in note, note
    k = ec.generate_private_key(ec.SECP256R1())
    other = cert(_name("Other"), k.public_key(), _name("Other"), k).public_bytes(DER)
    link = cert(r.name, k.public_key(), r.name, r.old_key).public_bytes(DER)
    out, note = follow([r.old], [other, link, r.old])
    assert out == [r.old] and "CN=Other key" in note and "(NewWithOld)" in note, note


def test_only_ca_certificates_chaining_through_ca_certificates_are_kept():
    """After a genuine rollover the answer also holds a leaf of the new root
    and a "CA" signed by that leaf's key: neither is stored."""
    r = Rollover()
    k = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(_name("srv"), k.public_key(), r.name, r.new_key, ca=False, days=300)
    under_leaf = cert(_name("sub"), ec.generate_private_key(ec.SECP256R1()).public_key(), _name("srv"), k, days=300)
    good = cert(_name("issuing"), ec.generate_private_key(ec.SECP256R1()).public_key(), r.name, r.new_key, days=300)
    got = [leaf.public_bytes(DER), under_leaf.public_bytes(DER), good.public_bytes(DER)] + r.bag()
    out, note = follow([r.old], got)
    assert "now trusting" in note
    assert got[2] in out and r.new in out
    assert got[0] not in out and got[1] not in out


@needs_mp
def test_only_a_ca_certificate_vouches_under_micropython(mplib, tmp_path):
    r, cases = _hostile_links()
    paths = {}

    def w(name, data):
        p = str(tmp_path / name)
        with open(p, "wb") as f:
            f.write(data)
        paths[name] = p
        return p

    w("old", r.old)
    lines = []
    for name, certs in cases:
        got = [w("%s_%d" % (name, i), c.public_bytes(DER)) for i, c in enumerate(certs)]
        lines += [paths["old"], " ".join(got + [paths["old"]])]
    # and a genuine rollover still followed, NewWithOld first: no note on it
    for k in ("new", "new_with_old", "old_with_new"):
        w(k, getattr(r, k))
    lines += [paths["old"], " ".join(paths[k] for k in ("new_with_old", "new", "old_with_new", "old"))]
    script = tmp_path / "follow_mp.py"
    script.write_text(FOLLOW_MP)
    rc, out = _mp(mplib, tmp_path, [w("cfg", "\n".join(lines).encode()), str(mplib / "p256_table.bin")], str(script))
    res = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert rc == 0 and len(res) == 4, out
    for (name, _), ln in zip(cases, res):
        assert ln.startswith("RESULT same a new root") and "not trusted" in ln, (name, ln)
    assert res[3].startswith("RESULT 0,100,101,102 CA root key update: now trusting"), res[3]
    assert "not trusted" not in res[3], res[3]



def test_cli_cacerts_refresh_keeps_the_roots_a_replayed_answer_drops(rolled, tmp_path, capsys):
    """`est-lite cacerts --out DIR` on a store that followed a rollover,
    then an answer without the new root (a replayed pre-rollover answer, or
    an RA that dropped it): the stored roots and links still within their
    dates stay (before: the store took the answer as it was, the new root
    was lost and the device needed a new first contact at the old root's end)."""
    from est_lite_cpython.cli import main
    from est_lite_cpython.credstore import CredStore

    srv = rolled()
    out_dir = str(tmp_path / "dev")
    _provision(srv, "https", CredStore(out_dir))
    srv = rolled(roll=True)
    r = rolled.state["roll"]
    url = "https://localhost:%d" % srv.port
    assert main(["cacerts", "--server", url, "--out", out_dir]) == 0
    assert "now trusting" in capsys.readouterr().err
    followed = CredStore(out_dir).load().ca
    assert r.new in followed and r.new_with_old in followed
    for replay in ([r.old], [r.old_with_new]):  # before the rollover / a root-less answer
        rolled.state["bag"] = replay
        srv.service._cacerts.clear()
        assert main(["cacerts", "--server", url, "--out", out_dir]) == 0, capsys.readouterr().err
        now = CredStore(out_dir).load().ca
        assert set(now) == set(followed), replay
        capsys.readouterr()
