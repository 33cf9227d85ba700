"""PoP linking (tls-unique on TLS 1.2, RFC 9266 tls-exporter on TLS 1.3),
manual approval with `est-lite ca approve/reject`, revocation and CRL."""

import os
import subprocess
import sys

from cryptography import x509
from helpers_server import (
    PASSWORD,
    USER,
    b64s,
    issue_cert,
    make_csr,
    pyopenssl_request,
    stdlib_pop_request,
    write_identity,
)

from est_lite_cpython.service import AuthContext, EstService

CLI = [sys.executable, "-m", "est_lite_cpython.cli"]


def cli(srv, *args):
    r = subprocess.run(CLI + ["ca", *args, "--config", srv.config_path], capture_output=True, text=True, timeout=60)
    return r


def basic_header():
    import base64

    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()}


# ------------------------------------------------------------------ PoP


def test_pop_tls12_tls_unique_accepted_wrong_and_missing_rejected(est_server):
    srv = est_server
    path = srv.path("simpleenroll", "pop")
    r = stdlib_pop_request(srv, path, lambda b: make_csr("pop-ok", challenge=b64s(b))[1])
    assert r.status == 200, r.text
    n = srv.ca.store.count_certificates()
    r = stdlib_pop_request(srv, path, lambda b: make_csr("pop-bad", challenge=b64s(b"\0" * len(b)))[1])
    assert r.status == 403 and "PoP linking failed" in r.text and "tls-unique" in r.text
    r = stdlib_pop_request(srv, path, lambda b: make_csr("pop-none")[1])
    assert r.status == 403 and "requires PoP linking" in r.text
    # a binding copied from another connection is rejected too
    old = []
    stdlib_pop_request(srv, srv.path("cacerts"), lambda b: old.append(b) or make_csr("x")[1])
    r = stdlib_pop_request(srv, path, lambda b: make_csr("pop-replay", challenge=b64s(old[0]))[1])
    assert r.status == 403
    assert srv.ca.store.count_certificates() == n


def test_pop_tls13_exporter_accepted_wrong_rejected(est_server):
    srv = est_server
    path = srv.path("simpleenroll", "pop")
    r = pyopenssl_request(srv, "POST", path, lambda b: make_csr("pop13", challenge=b64s(b))[1], headers=basic_header())
    assert r.status == 200, r.text
    n = srv.ca.store.count_certificates()
    r = pyopenssl_request(srv, "POST", path, lambda b: make_csr("pop13-bad", challenge=b64s(bytes(32)))[1],
                          headers=basic_header())
    assert r.status == 403 and "tls-exporter" in r.text
    r = pyopenssl_request(srv, "POST", path, lambda b: make_csr("pop13-none")[1], headers=basic_header())
    assert r.status == 403
    # TLS 1.2 over pyOpenSSL: tls-unique = client Finished
    r = pyopenssl_request(srv, "POST", path, lambda b: make_csr("pop12", challenge=b64s(b))[1], headers=basic_header(),
                          version="1.2")
    assert r.status == 200, r.text
    assert srv.ca.store.count_certificates() == n + 1


def test_pop_if_present_default_profile(est_server):
    """Default label: PoP optional, but a challengePassword must match."""
    srv = est_server
    path = srv.path("simpleenroll")
    assert stdlib_pop_request(srv, path, lambda b: make_csr("opt-none")[1]).status == 200
    assert stdlib_pop_request(srv, path, lambda b: make_csr("opt-ok", challenge=b64s(b))[1]).status == 200
    r = stdlib_pop_request(srv, path, lambda b: make_csr("opt-bad", challenge="not-the-binding")[1])
    assert r.status == 403 and "PoP linking failed" in r.text


def test_pop_exempt_idevid_trust(est_server):
    """pop_exempt_trust: a device with a vendor IDevID that cannot compute a
    binding (MicroPython) enrolls without challengePassword."""
    srv = est_server
    k, c = issue_cert(srv.vendor["cert"], srv.vendor["key"], "mp-device")
    cp, kp = write_identity(srv.tmp, "mp", k, c)
    r = srv.request("POST", srv.path("simpleenroll", "pop"), make_csr("mp-device")[1], cert=cp, key=kp)
    assert r.status == 200, r.text
    # a password client on the same label is not exempt
    r = srv.request("POST", srv.path("simpleenroll", "pop"), make_csr("pw-device")[1], auth=(USER, PASSWORD))
    assert r.status == 403


def test_pop_service_level_transport_exemption_and_no_binding(est_server_factory):
    """Transport-agnostic policy: a coaps context without binding is exempted
    or rejected explicitly by the profile."""
    srv = est_server_factory(extra_toml="""
[profiles.coapsok]
pop = "required"
pop_exempt_transports = ["coaps"]
client_cert_trust = ["idevid"]
""")
    svc = srv.service
    k, c = issue_cert(srv.vendor["cert"], srv.vendor["key"], "dev-coaps")
    _, csr = make_csr("dev-coaps")
    ctx = AuthContext("coaps", peer_chain=[c])
    p7 = svc.simpleenroll("coapsok", csr, ctx)
    assert p7[:1] == b"\x30"
    import pytest
    from est_lite.errors import SecurityError

    # label "pop" exempts only IDevIDs: an operational certificate over a
    # transport without binding is rejected with a reason, 4.03
    k2, c2 = issue_cert(srv.ca.issuer, srv.ca._key, "op-dev")
    with pytest.raises(SecurityError) as ei:
        svc.simpleenroll("pop", make_csr("op-dev")[1], AuthContext("coaps", peer_chain=[c2]))
    assert "no channel binding" in str(ei.value) and ei.value.coap_code == 0x83
    del k, k2


# ------------------------------------------------------------------ manual approval


def test_manual_approval_approve_then_same_request_returns_cert(est_server):
    srv = est_server
    key, csr = make_csr("waiting-1")
    path = srv.path("simpleenroll", "manual")
    r = srv.request("POST", path, csr, auth=(USER, PASSWORD))
    assert r.status == 202 and r.header("retry-after") == "7" and r.header("content-length")
    assert "waiting for approval" in r.text
    r = srv.request("POST", path, csr, auth=(USER, PASSWORD))
    assert r.status == 202
    n = srv.ca.store.count_certificates()
    out = cli(srv, "requests", "--status", "pending")
    assert out.returncode == 0 and "waiting-1" in out.stdout
    rid = out.stdout.split()[0]
    out = cli(srv, "approve", rid)
    assert out.returncode == 0, out.stderr
    r = srv.request("POST", path, csr, auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    (cert,) = r.certs()
    assert cert.subject.rfc4514_string() == "CN=waiting-1"
    # asked again: the same certificate, nothing new issued
    r2 = srv.request("POST", path, csr, auth=(USER, PASSWORD))
    assert r2.status == 200 and r2.certs()[0].serial_number == cert.serial_number
    assert srv.ca.store.count_certificates() == n + 1
    assert srv.ca.store.get_request(int(rid))["status"] == "issued"
    del key


def test_manual_approval_reject(est_server):
    srv = est_server
    _, csr = make_csr("waiting-2")
    path = srv.path("simpleenroll", "manual")
    assert srv.request("POST", path, csr, auth=(USER, PASSWORD)).status == 202
    rid = cli(srv, "requests").stdout.split()[0]
    out = cli(srv, "reject", rid, "--reason", "unknown device")
    assert out.returncode == 0, out.stderr
    r = srv.request("POST", path, csr, auth=(USER, PASSWORD))
    assert r.status == 403 and "rejected: unknown device" in r.text
    # deciding twice is an error with a readable message
    out = cli(srv, "approve", rid)
    assert out.returncode != 0 and "already rejected" in out.stderr


def test_manual_approval_unauthenticated_creates_no_request(est_server):
    srv = est_server
    r = srv.request("POST", srv.path("simpleenroll", "manual"), make_csr("anon")[1])
    assert r.status == 401
    assert srv.ca.store.list_requests() == []


# ------------------------------------------------------------------ revocation


def test_revoke_blocks_client_cert_and_appears_in_crl(est_server):
    srv = est_server
    key, csr = make_csr("to-revoke")
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD))
    (cert,) = r.certs()
    cp, kp = write_identity(srv.tmp, "rv", key, cert)
    assert srv.request("POST", srv.path("simplereenroll"), make_csr("to-revoke")[1], cert=cp, key=kp).status == 200
    out = cli(srv, "revoke", "%x" % cert.serial_number, "--reason", "keyCompromise")
    assert out.returncode == 0, out.stderr
    n = srv.ca.store.count_certificates()
    for op in ("simplereenroll", "simpleenroll"):
        r = srv.request("POST", srv.path(op), make_csr("to-revoke")[1], cert=cp, key=kp)
        assert r.status == 403 and "revoked" in r.text
    # even with a valid password, a revoked certificate presented is refused
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("x")[1], cert=cp, key=kp, auth=(USER, PASSWORD))
    assert r.status == 403
    assert srv.ca.store.count_certificates() == n
    # CRL (written by revoke and by `ca crl`) lists it, signed by the CA
    crl_path = os.path.join(srv.tmp, "crl.der")
    assert cli(srv, "crl", "--out", crl_path, "--der").returncode == 0
    crl = x509.load_der_x509_crl(open(crl_path, "rb").read())
    assert crl.is_signature_valid(srv.ca.issuer.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    r = subprocess.run(["openssl", "crl", "-in", os.path.join(srv.data_dir, "crl.pem"), "-noout", "-text"],
                       capture_output=True, text=True, timeout=30)
    assert ("%X" % cert.serial_number)[-8:] in r.stdout.upper().replace(":", "")


def test_vendor_crl_revokes_idevid(est_server_factory, tmp_path):
    """[trust.NAME] crls = [...]: an IDevID revoked by its vendor is refused."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    from helpers_server import make_vendor_ca

    vend = make_vendor_ca(str(tmp_path), name="Vendor2")
    k, c = issue_cert(vend["cert"], vend["key"], "idev-revoked")
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(vend["cert"].subject).last_update(now)
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                    .revocation_date(now).build())
           .sign(vend["key"], hashes.SHA256()))
    (tmp_path / "v2.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    srv = est_server_factory(extra_toml="""
[trust.v2]
certs = ["%s"]
crls = ["%s"]

[profiles.v2]
auth = ["cert"]
client_cert_trust = ["v2"]
""" % (tmp_path / "vendor.pem", tmp_path / "v2.crl"))
    cp, kp = write_identity(str(tmp_path), "idr", k, c)
    r = srv.request("POST", srv.path("simpleenroll", "v2"), make_csr("x")[1], cert=cp, key=kp)
    assert r.status == 403 and "revoked by" in r.text
    k2, c2 = issue_cert(vend["cert"], vend["key"], "idev-good")
    cp2, kp2 = write_identity(str(tmp_path), "idg", k2, c2)
    r = srv.request("POST", srv.path("simpleenroll", "v2"), make_csr("x")[1], cert=cp2, key=kp2)
    assert r.status == 200, r.text


def test_expired_and_not_yet_valid_client_cert(est_server):
    srv = est_server
    for days, nb, word in ((-1, -10, "expired"), (10, 2, "not valid before")):
        k, c = issue_cert(srv.ca.issuer, srv.ca._key, "old-dev", days=days, not_before_days=nb)
        srv.ca.store.add_certificate(c)
        cp, kp = write_identity(srv.tmp, "old", k, c)
        n = srv.ca.store.count_certificates()
        r = srv.request("POST", srv.path("simplereenroll"), make_csr("old-dev")[1], cert=cp, key=kp)
        assert r.status == 403 and word in r.text, r.text
        assert srv.ca.store.count_certificates() == n


def test_service_is_usable_without_https(est_server):
    """The same EstService object answers an in-process front end."""
    svc = est_server.service
    assert isinstance(svc, EstService)
    ctx = AuthContext("coaps", http_user=None)
    assert svc.cacerts(None, ctx)[:1] == b"\x30"
    import pytest

    from est_lite_cpython.auth import AuthenticationRequired

    with pytest.raises(AuthenticationRequired) as ei:
        svc.simpleenroll(None, make_csr()[1], ctx)
    assert ei.value.coap_code == 0x81 and ei.value.http_status == 401
