"""Time walkthrough (brief AM): what the clients do when the device's clock
is wrong or a certificate has expired, on CPython (API and CLI) and on the
MicroPython unix port (.mpy, tests/mp_scripts/client_run.py with its
`clock` setting standing in for a board without a battery-backed clock).
No test sleeps: clocks are injected (`now=`, the CA's clock, a fake `time`
module on MicroPython)."""

import datetime
import os
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_client import RecordingTls, load_cert, root_der
from helpers_coaps import EstBothServer, idevid_device
from helpers_pki import Issued, TestPki, _name
from helpers_server import PASSWORD, USER
from test_client_runtime_mp import _w, coaps_cfg, https_cfg, mplib, run  # noqa: F401 - mplib is a fixture

from est_lite.errors import SecurityError, ServerError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore

COLD_BOOT = 946684805  # 2000-01-01 00:00:05 UTC: an ESP32/RP2040 after a cold boot
DAY = 86400


@pytest.fixture
def srv(tmp_path):
    s = EstBothServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _future_dated_tls_server():
    """A TLS server for localhost whose certificate becomes valid tomorrow
    (what a device whose clock is behind sees), and the root it chains to."""
    from OpenSSL import SSL

    pki = TestPki()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(pki.root.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(pki.root.key, hashes.SHA256()))
    iss = Issued(cert, key)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(iss.cert)
    ctx.use_privatekey(iss.key)
    return RecordingTls(ctx), pki.root_der


class _ColdBootTime:
    """Stands in for the `time` module of est_lite_mp.certs: the calendar
    clock reads 2000-01-01."""

    def __getattr__(self, name):
        return getattr(time, name)

    def gmtime(self, *a):
        return time.gmtime(*a) if a else time.gmtime(COLD_BOOT)


def test_unset_clock_is_named_when_the_handshake_refuses_a_date(tmp_path, mplib, monkeypatch):  # noqa: F811
    # Mbed TLS and OpenSSL check the server certificate's dates against the
    # device clock: after a cold boot (2000) every server certificate is
    # "not valid yet". The error must say that the clock is not set.
    tls, root = _future_dated_tls_server()
    try:
        server = "https://localhost:%d" % tls.port
        # MicroPython: the handshake refusal carries the clock note
        cfg = dict(server=server, trust=[_w(tmp_path, "root.der", root)], steps=["cacerts"], deadline=None,
                   clock=COLD_BOOT)
        rc, out = run(mplib, tmp_path, cfg)
        assert rc == 1 and "ERROR SecurityError" in out and "in the future" in out, out
        assert "clock reads 2000-01-01, not set: set it (NTP, RTC) first" in out, out
        # the same client with a set clock: the refusal only
        del cfg["clock"]
        rc, out = run(mplib, tmp_path, cfg)
        assert rc == 1 and "ERROR SecurityError" in out and "clock reads" not in out, out
        # CPython (the same EstClient class): OpenSSL's own words plus the note
        from est_lite_mp import certs

        monkeypatch.setattr(certs, "time", _ColdBootTime())
        c = EstClient(server, trust=[root], deadline=None)
        with pytest.raises(SecurityError) as ei:
            c.cacerts()
        assert "not yet valid" in str(ei.value) and "clock reads 2000-01-01, not set" in str(ei.value)
    finally:
        tls.close()


def test_pinned_first_contact_checks_the_dates_when_the_clock_is_set(tmp_path, mplib, monkeypatch):  # noqa: F811
    # a pin stands in for trust anchors, not for the validity period: an
    # expired server certificate was accepted by a pinned first contact on
    # both ports (the handshake completed and the request went out). With a
    # set clock it is refused in the handshake; with an unset one the pin
    # alone decides (the dates are unknown), as for the issued certificate.
    import hashlib

    from helpers_dtls import Pki, ServerThread
    from OpenSSL import SSL

    pki = TestPki()
    expired = pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"], server=True, expired=True)
    pin = hashlib.sha256(expired.cert_der).hexdigest()
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(expired.cert)
    ctx.use_privatekey(expired.key)
    tls = RecordingTls(ctx)
    try:
        server = "https://localhost:%d" % tls.port
        c = EstClient(server, pin="sha256:" + pin, deadline=None, timeout=5)
        with pytest.raises(SecurityError, match="depth 0 .* is expired by this machine's clock"):
            c.cacerts()
        cfg = dict(server=server, pin=pin, steps=["cacerts"], deadline=None, timeout=5)
        rc, out = run(mplib, tmp_path, cfg)
        assert rc == 1 and "ERROR SecurityError" in out and "is expired by this device's clock" in out, out
        assert not [r for r in tls.connections if r["handshake"]]  # refused inside the handshake
        # a board after a cold boot: the pin decides, the handshake completes
        rc, out = run(mplib, tmp_path, dict(cfg, clock=COLD_BOOT))
        assert rc == 1 and "SecurityError" not in out, out
        from est_lite_mp import certs

        monkeypatch.setattr(certs, "time", _ColdBootTime())
        with pytest.raises(Exception) as ei:
            EstClient(server, pin="sha256:" + pin, deadline=None, timeout=5).cacerts()
        assert not isinstance(ei.value, SecurityError), ei.value
        assert len([r for r in tls.connections if r["handshake"]]) == 2
    finally:
        tls.close()
    # CoAPs (the device pins the server certificate there): the same refusal
    monkeypatch.undo()
    dpki = Pki()
    dpki.server = dpki.ca.issue("est-lite test server", dns=["localhost"], ips=["127.0.0.1"], server=True,
                                expired=True)
    st = ServerThread(dpki)
    try:
        cfg = dict(server="coaps://127.0.0.1:%d" % st.port, pin=hashlib.sha256(dpki.server.cert_der).hexdigest(),
                   cert=_w(tmp_path, "dev.der", dpki.client.cert_der), key=_w(tmp_path, "dev.key", dpki.client.key_der),
                   steps=["cacerts"], deadline=None, timeout=5)
        rc, out = run(mplib, tmp_path, cfg)
        assert rc == 1 and "ERROR SecurityError" in out and "is expired by this device's clock" in out, out
        assert "before our certificate was sent" in out, out
    finally:
        st.stop()


def test_unset_clock_first_enrollment_then_renewal_asks_for_the_time(srv, tmp_path, mplib):  # noqa: F811
    # Where TLS does not check dates (the unix port's Mbed TLS has the host's
    # clock; a pinned bootstrap), a device whose clock reads 2000 enrolls:
    # the issued certificate's dates are not checked against an unset clock.
    # A renewal cannot tell whether it is due and says so; nothing is sent.
    cfg = https_cfg(srv, tmp_path, steps=["provision", "renew"], clock=COLD_BOOT)
    rc, out = run(mplib, tmp_path, cfg)
    assert "OK provision gen=1" in out, out
    assert rc == 1 and "ERROR LocalProtocolError: renewal needs the time" in out, out
    assert CredStore(os.path.join(str(tmp_path), "store")).load().gen == 1
    # a threshold of the whole lifetime or more is due whatever the time
    # (est-lite reenroll renews with threshold=inf): no clock needed
    rc, out = run(mplib, tmp_path, dict(server=cfg["server"], trust=cfg["trust"], steps=["renew"], clock=COLD_BOOT,
                                        threshold=10 ** 9))
    assert rc == 0 and "OK renew gen=2" in out, out


def test_unset_clock_cli_reenroll(srv, tmp_path, monkeypatch):
    # est-lite reenroll on a gateway whose clock is not set (1970 before
    # NTP): it always renews, so it needs no clock (it failed with "renewal
    # needs the time: ... pass now=", which the command has no option for)
    from est_lite_mp import certs

    from est_lite_cpython import cli

    out = str(tmp_path / "gw")
    c = EstClient("https://localhost:%d" % srv.port, trust=root_der(srv), user=USER, password=PASSWORD)
    try:
        c.provision(CredStore(out), cn="gw-cold")
    finally:
        c.close()
    monkeypatch.setattr(certs, "time", _ColdBootTime())
    assert cli.main(["reenroll", "--server", "https://localhost:%d" % srv.port, "--out", out]) == 0
    assert CredStore(out).load().gen == 2


def test_issued_certificate_outside_its_dates_names_the_clock(srv, tmp_path, mplib):  # noqa: F811
    now = time.time()
    c = EstClient("https://localhost:%d" % srv.port, trust=root_der(srv), user=USER, password=PASSWORD)
    try:
        # a device clock two minutes behind the server's: within the 5 min tolerance
        r = c.provision(CredStore(str(tmp_path / "behind-2min")), cn="skew-1", now=now - 120)
        assert r.gen == 1
        # an hour behind: the fresh certificate is "not valid yet", and the error says by which clock
        with pytest.raises(SecurityError) as ei:
            c.provision(CredStore(str(tmp_path / "behind-1h")), cn="skew-2", now=now - 3600)
        assert "not valid yet by this device's clock" in str(ei.value) and "the clock reads" in str(ei.value)
        # 200 days ahead: "expired", with both dates and the clock
        with pytest.raises(SecurityError) as ei:
            c.provision(CredStore(str(tmp_path / "ahead")), cn="skew-3", now=now + 200 * DAY)
        msg = str(ei.value)
        assert "expired by this device's clock" in msg and "the clock reads %s" % time.strftime(
            "%Y-%m-%d", time.gmtime(now + 200 * DAY)) in msg, msg
    finally:
        c.close()
    for d in ("behind-1h", "ahead"):
        assert CredStore(str(tmp_path / d)).load() is None  # nothing stored
    # a renewal with a clock 200 days ahead: due, re-enrolled, the new
    # certificate refused by that clock with the same words; the pair in force stays
    store = CredStore(str(tmp_path / "behind-2min"))
    c = EstClient("https://localhost:%d" % srv.port, trust=root_der(srv))
    try:
        with pytest.raises(SecurityError, match="expired by this device's clock"):
            c.renew_if_needed(store, now=now + 200 * DAY)
    finally:
        c.close()
    assert store.load().gen == 1
    # MicroPython: the same check, the same words
    cfg = https_cfg(srv, tmp_path, steps=["provision"], now=int(now + 200 * DAY))
    rc, out = run(mplib, tmp_path, cfg)
    assert rc == 1 and "ERROR SecurityError: the issued certificate is expired by this device's clock" in out, out
    assert "the clock reads %s" % time.strftime("%Y-%m-%d", time.gmtime(now + 200 * DAY)) in out, out


def _expired_store(srv, path, cn="gw-old"):
    """A store whose certificate (from the server's CA, 90 days of validity)
    expired 10 days ago: a device that was off for longer than its
    certificate's lifetime."""
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(srv.ca.issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=100)).not_valid_after(now - datetime.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(srv.ca._key, hashes.SHA256()))
    store = CredStore(path)
    store.save(key=key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
               cert=cert.public_bytes(serialization.Encoding.DER), ca=[root_der(srv)])
    return store


def _cli(*args):
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli"] + list(args), capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, EST_PASSWORD=""))
    return p.returncode, p.stdout, p.stderr


def test_expired_certificate_way_back_cli_and_api(srv, tmp_path):
    # the device was off longer than its certificate's lifetime
    out = str(tmp_path / "gw")
    store = _expired_store(srv, out)
    old = store.load()
    server = "https://localhost:%d" % srv.port
    # API: the server refuses the renewal and says why; nothing replaced
    c = EstClient(server, trust=root_der(srv))
    try:
        with pytest.raises(ServerError) as ei:
            c.renew_if_needed(store)
    finally:
        c.close()
    assert ei.value.http_status == 403 and "expired on" in str(ei.value)
    assert "provision() again with the first-contact credentials" in str(ei.value)
    assert store.load().gen == 1 and store.load().cert == old.cert
    # CLI reenroll: the refusal and the way back in one line
    rc, so, se = _cli("reenroll", "--server", server, "--out", out)
    assert rc == 1 and "expired on" in se and "enroll again with the first-contact credentials" in se, se
    assert "--replace" in se and "provision()" not in se and len(se.strip().splitlines()) == 1, se
    # CLI enroll into it without --replace: refused, and not with "renew it with reenroll"
    rc, so, se = _cli("enroll", "--server", server, "--user", USER, "--password", PASSWORD, "--cn", "gw-old",
                      "--out", out)
    assert rc == 1 and "expired on" in se and "reenroll" not in se and "--replace" in se, se
    assert store.load().cert == old.cert
    # the way back: a new first contact into the same store
    rc, so, se = _cli("enroll", "--server", server, "--user", USER, "--password", PASSWORD, "--cn", "gw-old",
                      "--out", out, "--replace")
    assert rc == 0, se
    got = store.load()
    assert got.gen == 2 and load_cert(got.cert).not_valid_after_utc.timestamp() > time.time() + 80 * DAY
    # and renewal works again from there
    rc, so, se = _cli("reenroll", "--server", server, "--out", out)
    assert rc == 0 and store.load().gen == 3, se


def test_expired_certificate_way_back_micropython_coaps(srv, tmp_path, mplib):  # noqa: F811
    # a device (IDevID, CoAPs) whose operational certificate expired while it
    # was off: the renewal is refused (4.03, naming the expiry), the store
    # keeps the old pair, and provision() with the IDevID again commits a
    # new generation in the same store
    dev = idevid_device(srv)
    _expired_store(srv, os.path.join(str(tmp_path), "store"), cn="mp-dev")
    first = CredStore(os.path.join(str(tmp_path), "store")).load()
    base = coaps_cfg(srv, tmp_path, dev)
    rc, out = run(mplib, tmp_path, dict(server=base["server"], trust=base["trust"], steps=["renew"]))
    # the reference CoAPs server completes the handshake with an expired
    # client certificate and answers 4.03 with the reason; the device adds
    # the way back
    assert rc == 1 and "ERROR ServerError" in out and "4.03" in out and "expired on" in out, out
    assert "the certificate being renewed expired on" in out and "first-contact credentials" in out, out
    assert CredStore(os.path.join(str(tmp_path), "store")).load().cert == first.cert
    # the CLI over CoAPs: the refusal and the way back, in its own terms
    rc, so, se = _cli("reenroll", "--server", base["server"], "--out", os.path.join(str(tmp_path), "store"))
    assert rc == 1 and "4.03: client certificate CN=mp-dev expired on" in se and "has expired" in se \
        and "--replace" in se, se
    assert "provision()" not in se and len(se.strip().splitlines()) == 1, se
    rc, out = run(mplib, tmp_path, coaps_cfg(srv, tmp_path, dev, steps=["provision", "load"]))
    assert rc == 0 and "OK load gen=2" in out, out
    got = CredStore(os.path.join(str(tmp_path), "store")).load()
    assert load_cert(got.cert).not_valid_after_utc.timestamp() > time.time() + 80 * DAY


def test_rekeyed_ca_old_trust_says_so_and_the_way_back(srv, tmp_path):
    # the gateway holds the old CA; the server now presents a chain from a
    # new root (CA re-keyed). The refusal names that case (OpenSSL alone
    # says "unable to get local issuer certificate"); the documented way
    # back, a new pinned first contact into the same store, works.
    from helpers_server import EstTestServer

    from est_lite_cpython.dtls import fingerprint

    store = CredStore(str(tmp_path / "gw"))
    c = EstClient("https://localhost:%d" % srv.port, trust=root_der(srv), user=USER, password=PASSWORD)
    try:
        c.provision(store, cn="gw-rekey")
    finally:
        c.close()
    (tmp_path / "new").mkdir()
    new = EstTestServer(tmp_path / "new")
    try:
        for server in ("https://localhost:%d" % new.port, "coaps://127.0.0.1:%d" % srv.coaps_port):
            if server.startswith("coaps"):
                # the CoAPs side of the old server, trusted with the new root: the same refusal over DTLS
                c = EstClient(server, trust=root_der(new), deadline=None)
            else:
                # as the gateway loop in the docs: made with the (old) pin, renewal trusts the store's CA
                c = EstClient(server, pin="sha256:" + fingerprint(srv.ca.root).hex(), deadline=None)
            try:
                with pytest.raises(SecurityError) as ei:
                    if server.startswith("coaps"):
                        c.cacerts()
                    else:
                        c.renew_if_needed(store, threshold=float("inf"))
            finally:
                c.close()
            assert "unable to get local issuer certificate" in str(ei.value), ei.value
            assert "the CA was re-keyed" in str(ei.value), ei.value
        assert store.load().gen == 1 and store.load().ca == [root_der(srv)]
        # the way back: the new root's pin and the first-contact credentials, same store
        c = EstClient("https://localhost:%d" % new.port, pin="sha256:" + fingerprint(new.ca.root).hex(), user=USER,
                      password=PASSWORD)
        try:
            r = c.provision(store, cn="gw-rekey")
        finally:
            c.close()
        got = store.load()
        assert r.gen == got.gen == 2 and got.ca == [root_der(new)]
        c = EstClient("https://localhost:%d" % new.port, pin="sha256:" + fingerprint(new.ca.root).hex())
        try:
            assert c.renew_if_needed(store, threshold=float("inf")).gen == 3
        finally:
            c.close()
    finally:
        new.stop()
