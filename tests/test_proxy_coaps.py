"""The proxy / RA in front of our own HTTPS server: devices speak EST-coaps
(CPython client, and the MicroPython unix port) or EST over HTTPS to the
proxy; the proxy authenticates them and forwards as an RA (TLS client
certificate with id-kp-cmcRA); answers, retry-after and errors are mapped
back (RFC 9148 §5)."""

import json
import os
import pathlib
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from est_lite import numbers as N
from est_lite.errors import ServerError
from helpers_coaps import CoapsSession, Device, RawCoap, idevid_device, make_csr, opt_uint, point
from helpers_mp import MICROPYTHON as MP
from helpers_mp import MPY_CROSS, compile_packages
from helpers_proxy import ProxyHarness, https_post
from helpers_server import EstTestServer

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    s = EstTestServer(tmp_path_factory.mktemp("upstream"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def px(up, tmp_path_factory):
    p = ProxyHarness(tmp_path_factory.mktemp("proxy"), up, up.url.replace("127.0.0.1", "localhost"),
                     upstream_root_pem=up.root_pem, vendor_pem=os.path.join(up.tmp, "vendor.pem"))
    yield p
    p.stop()


def cert(der):
    return x509.load_der_x509_certificate(der)


def requester_of(up, c):
    from est_lite_cpython.store import serial_hex

    r = up.ca.store._db().execute("SELECT requester FROM certs WHERE serial=?", (serial_hex(c.serial_number),))
    row = r.fetchone()
    return row[0] if row else None


def test_coaps_device_enrolls_through_the_proxy(up, px):
    dev = idevid_device(up, "px-dev-1")
    with px.dtls_client(dev, [up.ca.root]) as dc:
        s = CoapsSession(dc)
        assert [cert(c) for c in s.cacerts().certs] == up.ca.ca_certs(None)
        att = s.csrattrs()
        assert att.der == up.service.csrattrs("", None)
        key, csr = make_csr("px-dev-1")
        c1 = cert(s.enroll(csr, public_key=point(key)).cert)
        c1.verify_directly_issued_by(up.ca.issuer)
        assert c1.public_key() == key.public_key()
        assert up.ca.store.has_serial(c1.serial_number)  # issued upstream
        assert "est-lite RA" in (requester_of(up, c1) or "")  # for the RA's identity
        ev = s.serverkeygen(csr)
        k = serialization.load_der_private_key(ev.key_der, None)
        assert cert(ev.cert).public_key() == k.public_key()
        ev = s.serverkeygen(csr, skc=True)
        assert cert(ev.cert).public_key() == serialization.load_der_private_key(ev.key_der, None).public_key()
    # the device renews with its new (upstream-issued) certificate through the proxy
    key2, csr2 = make_csr("px-dev-1")
    with px.dtls_client(Device(key, c1), [up.ca.root]) as dc:
        c2 = cert(CoapsSession(dc).reenroll(csr2, public_key=point(key2)).cert)
    assert c2.subject == c1.subject and c2.public_key() == key2.public_key()
    # and the proxy enforced the renewal rule itself: another subject is 4.00, nothing forwarded
    n = px.upstream_stats["requests"]
    with px.dtls_client(Device(key2, c2), [up.ca.root]) as dc:
        with pytest.raises(ServerError) as e:
            CoapsSession(dc).reenroll(make_csr("not-me")[1])
    assert e.value.coap_code == N.BAD_REQUEST
    assert px.upstream_stats["requests"] == n


def test_upstream_manual_approval_is_503_with_max_age(up, px):
    dev = idevid_device(up, "px-dev-approve")
    key, csr = make_csr("px-dev-approve")
    with px.dtls_client(dev, [up.ca.root]) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen", "manual"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.SERVICE_UNAVAILABLE and opt_uint(r, N.MAX_AGE) == 7  # upstream Retry-After: 7
        ev = CoapsSession(dc).enroll(csr, "manual")
        assert type(ev).__name__ == "RetryAfter" and ev.seconds == 7
    pending = up.ca.store.list_requests("pending")
    assert pending
    up.ca.store.decide(pending[-1]["id"], True)
    with px.dtls_client(dev, [up.ca.root]) as dc:
        c = cert(CoapsSession(dc).enroll(csr, "manual", public_key=point(key)).cert)
    assert c.public_key() == key.public_key()


def test_upstream_errors_are_mapped_back(up, px, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    dev = idevid_device(up, "px-dev-err")
    with px.dtls_client(dev, [up.ca.root]) as dc:
        s = CoapsSession(dc)
        # the proxy allows RSA-3072, the upstream does not: upstream 400 -> 4.00
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("px-dev-err", key=rsa.generate_private_key(65537, 3072))[1])
        assert e.value.coap_code == N.BAD_REQUEST
        assert "upstream" in e.value.diagnostic and "400" in e.value.diagnostic
        # upstream "strict" takes HTTP Basic only, the RA comes with a certificate: 401 -> 4.01
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("px-dev-err")[1], "strict")
        assert e.value.coap_code == N.UNAUTHORIZED and "401" in e.value.diagnostic
        # upstream "certonly" trusts only the vendor CA, not the RA: 403 -> 4.03
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("px-dev-err")[1], "certonly")
        assert e.value.coap_code == N.FORBIDDEN and "403" in e.value.diagnostic
        # a label the proxy does not have: 4.04 from the proxy, nothing forwarded
        n = px.upstream_stats["requests"]
        with pytest.raises(ServerError) as e:
            s.cacerts("nosuch")
        assert e.value.coap_code == N.NOT_FOUND and px.upstream_stats["requests"] == n


def test_untrusted_devices_are_stopped_at_the_proxy(up, px, tmp_path):
    from est_lite.errors import SecurityError, TransportError
    from helpers_coaps import issue_cert
    from helpers_server import make_vendor_ca

    n = px.upstream_stats["requests"]
    other = make_vendor_ca(str(tmp_path), "Rogue")
    k, c = issue_cert(other["cert"], other["key"], "rogue")
    with pytest.raises((SecurityError, TransportError)):
        px.dtls_client(Device(k, c), [up.ca.root], timeout=5)
    assert px.upstream_stats["requests"] == n


def test_upstream_down_is_502(up, tmp_path):
    # a proxy pointing at a closed port: the device gets 5.02 Bad Gateway
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    p = ProxyHarness(tmp_path, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                     vendor_pem=os.path.join(up.tmp, "vendor.pem"), https=False)
    try:
        p.service.upstream.port = dead
        dev = idevid_device(up, "px-dev-down")
        with p.dtls_client(dev, [up.ca.root]) as dc:
            with pytest.raises(ServerError) as e:
                CoapsSession(dc).enroll(make_csr("px-dev-down")[1])
        assert e.value.coap_code == N.BAD_GATEWAY and "upstream" in e.value.diagnostic
    finally:
        p.stop()


def test_https_devices_through_the_proxy(up, px):
    """HTTPS-to-HTTPS RA: a device with a password of the proxy's own
    password file enrolls; with its new certificate it re-enrolls."""
    ctx = ssl.create_default_context(cafile=up.root_pem)
    key, csr = make_csr("px-https-dev")

    def post(path, body, cert_files=None, auth=None):
        return https_post(px, up, path, body, cert_files=cert_files, auth=auth, content_type=None)

    del ctx
    r = post("/.well-known/est/simpleenroll", csr)
    assert r.status == 401
    r = post("/.well-known/est/simpleenroll", csr, auth=("dave", "wrong"))
    assert r.status == 401
    r = post("/.well-known/est/simpleenroll", csr, auth=("dave", "devpass"))
    assert r.status == 200, r.text
    c1 = r.certs()[0]
    assert c1.public_key() == key.public_key() and up.ca.store.has_serial(c1.serial_number)
    from helpers_server import write_identity

    files = write_identity(px.tmp, "https-dev", key, c1)
    key2, csr2 = make_csr("px-https-dev")
    r = post("/.well-known/est/simplereenroll", csr2, cert_files=files)
    assert r.status == 200, r.text
    c2 = r.certs()[0]
    assert c2.subject == c1.subject and c2.public_key() == key2.public_key()
    # upstream 202 comes back as 202 + Retry-After
    k3, csr3 = make_csr("px-https-manual")
    r = post("/.well-known/est/manual/simpleenroll", csr3, cert_files=files)
    assert r.status == 202 and r.header("retry-after") == "7"




@pytest.mark.skipif(MP is None or MPY_CROSS is None, reason="micropython/mpy-cross not installed")
def test_micropython_device_through_the_proxy(up, px, tmp_path):
    from test_coaps_micropython import HEAP, SCRIPT
    from helpers_coaps import der, key_der

    lib = compile_packages(tmp_path / "lib")
    dev = idevid_device(up, "px-mp-dev")
    (tmp_path / "ca.der").write_bytes(der(up.ca.root))
    (tmp_path / "dev.der").write_bytes(der(dev.cert))
    (tmp_path / "dev.key").write_bytes(key_der(dev.key))
    cfg = dict(path=[str(lib)], host="127.0.0.1", port=px.coaps_port, ca=str(tmp_path / "ca.der"),
               cert=str(tmp_path / "dev.der"), key=str(tmp_path / "dev.key"), out=str(tmp_path),
               ops=["crts", "att", "sen", "sren", "skg"], cn="px-mp-dev")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([MP, "-X", "heapsize=" + HEAP, str(SCRIPT), str(tmp_path / "cfg.json")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, MICROPYPATH=""))
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
    assert res and res["ok"], proc.stdout + proc.stderr
    sen = cert((tmp_path / "sen.der").read_bytes())
    sren = cert((tmp_path / "sren.der").read_bytes())
    for c in (sen, sren):
        c.verify_directly_issued_by(up.ca.issuer)
        assert up.ca.store.has_serial(c.serial_number)
    assert sren.subject == sen.subject and sren.serial_number != sen.serial_number
