"""Lifetimes on the EST-coaps server and the proxy/RA (brief AO).

1. A device whose certificate of this CA is only outside its dates gets,
   over CoAPs as over HTTPS, an answer naming the reason (4.03 "client
   certificate ... expired on ...") on every request of the session,
   instead of a bare fatal DTLS alert; nothing is issued; a certificate
   of an untrusted CA still fails the handshake.
2. The proxy's own credentials: `est-lite proxy` refuses to start with an
   expired RA or TLS/DTLS server certificate (one line: the file and the
   `est-lite ca issue` command, run here as printed), warns 30 days ahead
   and for a stale upstream CRL; while running, an upstream refusal of an
   expired RA certificate reaches the device as 503 / 5.03 "the RA cannot
   reach its CA", not as the device's own refusal.

No test sleeps: expired certificates are issued with past dates, the
service's clock is injected where the policy clock matters."""

import datetime
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_client import root_der
from helpers_coaps import CoapsSession, Device, idevid_device
from helpers_pki import _name
from helpers_server import issue_cert, make_csr, make_vendor_ca
from test_client_runtime_mp import coaps_cfg, mplib, run  # noqa: F401 - mplib is a fixture
from test_time_walkthrough import DAY, srv  # noqa: F401 - srv is a fixture (an EstBothServer)

from est_lite.errors import EstError, SecurityError, ServerError, TransportError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore


def _cert_of(srv, cn, nb_days, na_days, key=None, nb=None, na=None):
    """A certificate of the server's CA valid from now + nb_days to now +
    na_days (or the datetimes nb, na)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(srv.ca.issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(nb or now + datetime.timedelta(days=nb_days))
            .not_valid_after(na or now + datetime.timedelta(days=na_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(srv.ca._key, hashes.SHA256()))
    return Device(key, cert)


def _every_request_refused(srv, dev, match):
    before = srv.issued_count()
    with srv.dtls_client(dev, timeout=5) as dc:  # the handshake completes
        s = CoapsSession(dc)
        calls = [("cacerts", lambda: s.cacerts()), ("csrattrs", lambda: s.csrattrs()),
                 ("enroll", lambda: s.enroll(make_csr(dev.cn, dev.key)[1])),
                 ("reenroll", lambda: s.reenroll(make_csr(dev.cn, dev.key)[1])),
                 ("serverkeygen", lambda: s.serverkeygen(make_csr(dev.cn)[1]))]
        for what, call in calls:
            with pytest.raises(EstError) as ei:
                call()
            assert "4.03" in str(ei.value) and match in str(ei.value), (what, str(ei.value))
    assert srv.issued_count() == before


def test_coaps_expired_client_certificate_gets_403_naming_expiry(srv):
    # fails on the previous code: the handshake ended with a fatal alert
    dev = _cert_of(srv, "expired-dev", -100, -10)
    _every_request_refused(srv, dev, "client certificate CN=expired-dev expired on")


def test_coaps_not_yet_valid_client_certificate_gets_403(srv):
    dev = _cert_of(srv, "future-dev", 2, 30)
    _every_request_refused(srv, dev, "client certificate CN=future-dev is not valid before")


def test_coaps_out_of_date_refused_even_if_the_policy_clock_disagrees(srv):
    # the handshake (this host's clock) saw an expired certificate; the
    # service, whose clock reads a second before its notAfter, would accept
    # it: still refused, with the handshake's reason (fail closed)
    nb = srv.ca.issuer.not_valid_before_utc
    na = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(seconds=2)
    assert na > nb + datetime.timedelta(seconds=2)
    dev = _cert_of(srv, "clock-dev", 0, 0, nb=nb, na=na)
    srv.service.authenticator.clock = lambda: na.timestamp() - 1
    _every_request_refused(srv, dev, "certificate has expired")


def test_coaps_untrusted_ca_and_bad_signature_still_fail_the_handshake(srv, tmp_path):
    before = srv.issued_count()
    other = make_vendor_ca(str(tmp_path), "Rogue Vendor")
    k, c = issue_cert(other["cert"], other["key"], "rogue")
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(k, c), timeout=5)
    # expired AND from an untrusted CA: the dates do not open the door
    k, c = issue_cert(other["cert"], other["key"], "rogue-old", days=-1, not_before_days=-10)
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(k, c), timeout=5)
    # expired, this CA's name as issuer but signed by another key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    forged = (x509.CertificateBuilder().subject_name(_name("forged")).issuer_name(srv.ca.issuer.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
              .sign(other["key"], hashes.SHA256()))
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(key, forged), timeout=5)
    assert srv.issued_count() == before


def test_coaps_expired_and_revoked_is_still_refused_in_the_handshake(srv):
    dev = _cert_of(srv, "old-revoked", -100, -10)
    # (a revoked certificate is refused whatever its dates: the alert says certificate_revoked)
    srv.ca.store.add_certificate(dev.cert, label="")
    srv.ca.revoke(dev.cert.serial_number)
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(dev, timeout=5)


def _expired_store(srv, path, cn):
    from cryptography.hazmat.primitives import serialization

    dev = _cert_of(srv, cn, -100, -10)
    store = CredStore(path)
    store.save(key=dev.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
               cert=dev.cert.public_bytes(serialization.Encoding.DER), ca=[root_der(srv)])
    return store


def test_cpython_client_over_coaps_renewal_names_the_expiry(srv, tmp_path):
    store = _expired_store(srv, str(tmp_path / "gw"), "gw-old")
    old = store.load()
    before = srv.issued_count()
    c = EstClient("coaps://127.0.0.1:%d" % srv.coaps_port, trust=root_der(srv), deadline=None)
    try:
        with pytest.raises(ServerError) as ei:
            c.renew_if_needed(store)
    finally:
        c.close()
    assert "4.03" in str(ei.value) and "client certificate CN=gw-old expired on" in str(ei.value), str(ei.value)
    assert store.load().cert == old.cert and srv.issued_count() == before


def test_micropython_client_over_coaps_renewal_names_the_expiry(srv, tmp_path, mplib):  # noqa: F811
    dev = idevid_device(srv)
    store = _expired_store(srv, os.path.join(str(tmp_path), "store"), "mp-dev")
    first = store.load()
    before = srv.issued_count()
    base = coaps_cfg(srv, tmp_path, dev)
    rc, out = run(mplib, tmp_path, dict(server=base["server"], trust=base["trust"], steps=["renew"]))
    assert rc == 1 and "4.03" in out and "client certificate CN=mp-dev expired on" in out, out
    assert "fatal alert" not in out, out
    assert CredStore(os.path.join(str(tmp_path), "store")).load().cert == first.cert
    assert srv.issued_count() == before


# ------------------------------------------------------------------ 2. the proxy's own credentials


@pytest.fixture
def up(tmp_path):
    from helpers_server import EstTestServer

    s = EstTestServer(tmp_path / "up")
    try:
        yield s
    finally:
        s.stop()


def _ra_files(up, tmp, *, nb_days=-100, na_days=-10):
    """An RA identity (clientAuth + id-kp-cmcRA) of the upstream's CA with the given dates, as ra.crt / ra.key."""
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from helpers_proxy import CMC_RA
    from helpers_server import write_identity

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("est-proxy-ra")).issuer_name(up.ca.issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=nb_days))
            .not_valid_after(now + datetime.timedelta(days=na_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA]), critical=False)
            .sign(up.ca._key, hashes.SHA256()))
    up.ca.store.add_certificate(cert, label="", requester="test: RA")
    return write_identity(str(tmp), "ra", key, cert)


def _harness(up, tmp, **kw):
    from helpers_proxy import ProxyHarness

    return ProxyHarness(tmp, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                        vendor_pem=os.path.join(up.tmp, "vendor.pem"), **kw)


def test_running_proxy_with_expired_ra_certificate_answers_503_not_403(up, tmp_path):
    # fails on the previous code: the upstream's 403 about the RA's own
    # certificate reached the device as 4.03 / 403, as if it were refused
    from helpers_proxy import https_post

    from est_lite import numbers as N

    d = tmp_path / "px"
    d.mkdir()
    _ra_files(up, d)
    px = _harness(up, d, ra=True)
    try:
        before = up.ca.store.count_certificates()
        dev = idevid_device(up, "px-dev")
        with px.dtls_client(dev, [up.ca.root]) as dc:
            ev = CoapsSession(dc).op(N.OP_SIMPLEENROLL, None, make_csr("px-dev", dev.key)[1])
        assert type(ev).__name__ == "RetryAfter", ev  # 5.03
        assert "the RA cannot reach its CA" in ev.diagnostic and "RA certificate" in ev.diagnostic, ev.diagnostic
        assert "expired on" in ev.diagnostic, ev.diagnostic
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-dev-2")[1], auth=("dave", "devpass"))
        assert r.status == 503 and "the RA cannot reach its CA" in r.text, (r.status, r.text)
        assert up.ca.store.count_certificates() == before
    finally:
        px.stop()
        px.service.ca.close()


def _proxy_cli(config, *extra):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", str(config)] + list(extra),
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def test_proxy_start_refuses_expired_ra_certificate_and_the_printed_renewal_works(up, tmp_path):
    # fails on the previous code: the proxy started (cacerts needs no
    # client certificate upstream) and every enrollment failed later
    import shlex
    import shutil
    import subprocess
    import sys

    from helpers_proxy import write_proxy_dir

    d = tmp_path / "px"
    cfg = write_proxy_dir(up, d)
    _ra_files(up, d)  # replaces ra.crt / ra.key with an expired pair
    rc, so, se = _proxy_cli(cfg, "--port", "0", "--coaps-port", "0")
    lines = se.strip().splitlines()
    assert rc == 1 and len(lines) == 1, se
    assert lines[0].startswith("est-lite: error: the proxy's RA certificate %s expired on" % (d / "ra.crt")), se
    assert "est-lite ca issue --data-dir UPSTREAM-DATA-DIR --cn est-proxy-ra --eku clientAuth,cmcRA" in se, se
    # the command as printed, on the upstream's data directory, then the copies it names
    cmd = se.split("on the upstream CA's host: ", 1)[1].split("; then", 1)[0]
    argv = shlex.split(cmd.replace("UPSTREAM-DATA-DIR", shlex.quote(up.data_dir)))
    assert argv[:3] == ["est-lite", "ca", "issue"], argv
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli"] + argv[1:], cwd=str(d), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    shutil.copy(d / "ra-new.pem", d / "ra.crt")
    shutil.copy(d / "ra-new.key", d / "ra.key")
    from est_lite_cpython.cli_proxy import check_proxy_lifetimes
    from est_lite_cpython.proxy import load_proxy_config

    c, pc = load_proxy_config(str(cfg))
    warnings, error = check_proxy_lifetimes(c, pc)
    # (the test TLS certificate is a 30-day one: its warning stays)
    assert error is None and [w for w in warnings if "RA certificate" in w] == [], (warnings, error)
    # and the renewed RA works: an enrollment through a proxy on these files
    from helpers_proxy import https_post

    d2 = tmp_path / "px2"
    d2.mkdir()
    shutil.copy(d / "ra.crt", d2 / "ra.crt")
    shutil.copy(d / "ra.key", d2 / "ra.key")
    px = _harness(up, d2, ra=True, coaps=False)
    try:
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-renewed")[1], auth=("dave", "devpass"))
        assert r.status == 200, (r.status, r.text)
    finally:
        px.stop()
        px.service.ca.close()


def test_proxy_start_checks_warn_and_refuse(up, tmp_path):
    from helpers_proxy import write_proxy_dir

    from est_lite_cpython.cli_proxy import check_proxy_lifetimes
    from est_lite_cpython.proxy import load_proxy_config

    d = tmp_path / "px"
    cfg = write_proxy_dir(up, d)
    c, pc = load_proxy_config(str(cfg))
    now = time.time()
    # the test TLS/DTLS server certificate and RA certificate are 90-day ones
    # (helpers_proxy.issue): 80 days on, two warnings
    assert check_proxy_lifetimes(c, pc, now=now - 20 * DAY)[1] is not None  # before their notBefore
    assert check_proxy_lifetimes(c, pc, now=now + 20 * DAY) == ([], None)  # more than 30 days left
    w, e = check_proxy_lifetimes(c, pc, now=now + 80 * DAY)
    assert e is None and len(w) == 2, w
    assert "RA certificate %s expires on" % pc.ra_cert in w[0] and "renew it before then" in w[0], w
    assert "TLS/DTLS server certificate %s expires on" % c.tls_cert in w[1] and "--eku serverAuth" in w[1], w
    assert "--dns localhost" in w[1] and "--ip 127.0.0.1" in w[1], w
    # the TLS certificate expired (the RA's is checked first: make it longer-lived)
    _ra_files(up, d, nb_days=-1, na_days=365)
    w, e = check_proxy_lifetimes(c, pc, now=now + 100 * DAY)
    assert e is not None and e.startswith("the proxy's TLS/DTLS server certificate %s expired on" % c.tls_cert), e
    assert "devices refuse the handshake" in e, e
    # a clock before the RA certificate
    w, e = check_proxy_lifetimes(c, pc, now=now - 10 * DAY)
    assert e is not None and "valid only from" in e and "set the clock" in e, e
    # an upstream CRL past its nextUpdate: a warning
    from cryptography.hazmat.primitives import serialization

    t = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(up.ca.issuer.subject)
           .last_update(t - datetime.timedelta(days=2)).next_update(t - datetime.timedelta(days=1))
           .sign(up.ca._key, hashes.SHA256()))
    (d / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    pc.upstream_crl = [str(d / "crl.pem")]
    w, e = check_proxy_lifetimes(c, pc, now=now)
    w = [x for x in w if "CRL" in x]
    assert e is None and len(w) == 1 and "the upstream CRL %s is past its nextUpdate" % (d / "crl.pem") in w[0], w
    assert "devices of its CA get 5.03" in w[0], w


# ------------------------------------------------------------------ 3. the RA's label


def test_ra_from_ca_issue_renews_devices_on_another_label(tmp_path):
    # the RA certificate `est-lite ca issue` makes is recorded on the default
    # label; the proxy never renews it itself (it is not an EST client of its
    # own identity). The upstream's renewal-on-its-label rule is about the
    # device's certificate: a device of label certonly renews through the
    # proxy on certonly with that RA.
    import shutil
    import subprocess
    import sys

    from helpers_proxy import https_post
    from helpers_server import EstTestServer, write_identity
    from test_ra_service import RA_CONFIG

    up = EstTestServer(tmp_path / "up", config_text=RA_CONFIG)
    px = None
    try:
        d = tmp_path / "px"
        d.mkdir()
        p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "ca", "issue", "--data-dir", up.data_dir,
                            "--cn", "est-proxy-ra", "--eku", "clientAuth,cmcRA", "--out", str(d / "ra")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        shutil.copy(d / "ra.pem", d / "ra.crt")
        ra = x509.load_pem_x509_certificate((d / "ra.crt").read_bytes())
        assert up.ca.store.certificate_label(ra.serial_number) == ""
        px = _harness(up, d, ra=True, coaps=False, reenroll_as="simplereenroll")
        # the device's certificate, issued upstream on certonly (IDevID authentication)
        dev = idevid_device(up, "lbl-dev")
        files = write_identity(str(tmp_path), "idevid", dev.key, dev.cert)
        key1, csr1 = make_csr("lbl-dev")
        r = up.request("POST", up.path("simpleenroll", "certonly"), csr1, cert=files[0], key=files[1])
        assert r.status == 200, r.text
        c1 = r.certs()[0]
        cur = write_identity(str(tmp_path), "op", key1, c1)
        key2, csr2 = make_csr("lbl-dev")
        r = https_post(px, up, "/.well-known/est/certonly/simplereenroll", csr2, cert_files=cur)
        assert r.status == 200, (r.status, r.text)
        c2 = r.certs()[0]
        assert c2.subject == c1.subject and c2.public_key() == key2.public_key()
        assert up.ca.store.certificate_label(c2.serial_number) == "certonly"
    finally:
        if px is not None:
            px.stop()
            px.service.ca.close()
        up.stop()
