"""An attacker's review of who can get a certificate through the proxy / RA
(proxy.py) and the EST-coaps front end: each test is one attack, made with
an independent client where possible (hand-made CoAP over the CPython DTLS
client, stdlib ssl for HTTPS), and checks that nothing reached the upstream
(or that the upstream issued nothing). docs/proxy.md, "Attacks tried"."""

import base64
import datetime
import logging
import os
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est_lite import coap
from est_lite import numbers as N
from est_lite.errors import SecurityError, ServerError, TransportError
from helpers_coaps import CoapsSession, Device, RawCoap, idevid_device, issue_cert, make_csr, point
from helpers_proxy import ProxyHarness, https_post
from helpers_server import PASSWORD, USER, EstTestServer, Response, make_vendor_ca, write_identity

# upstream labels the proxy forwards to (the RA is trusted there by "ca")
UP_TOML = """
[profiles.a]
auth = ["cert"]
ra_trust = ["ca"]

[profiles.b]
auth = ["cert"]
"""

# the proxy: label "a" trusts only the vendor's IDevIDs, "b" only another
# manufacturer's ("otherv"); "popreq" requires PoP on every transport;
# (forwarded to the upstream's "a", which trusts the RA to have checked
# PoP); "manual" (PROXY_TOML) forwards to the upstream's manual approval
PX_TOML = """
upstream_crl = "upstream-crl.pem"
labels = { popreq = "a", ghost = "nosuch" }

[trust.otherv]
certs = ["otherv.pem"]

[profiles.a]
auth = ["cert"]
client_cert_trust = ["idevid"]

[profiles.b]
auth = ["cert"]
client_cert_trust = ["otherv"]

[profiles.ghost]
auth = ["cert"]

[profiles.popreq]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
pop = "required"
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    s = EstTestServer(tmp_path_factory.mktemp("authz-up"), extra_toml=UP_TOML)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def otherv(tmp_path_factory):
    return make_vendor_ca(str(tmp_path_factory.mktemp("authz-otherv")), "Other Vendor CA")


def write_crl(up, path):
    with open(path, "wb") as f:
        f.write(up.ca.crl().public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def px(up, otherv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authz-px")
    with open(os.path.join(str(tmp), "otherv.pem"), "wb") as f:
        f.write(otherv["cert"].public_bytes(serialization.Encoding.PEM))
    write_crl(up, os.path.join(str(tmp), "upstream-crl.pem"))
    p = ProxyHarness(tmp, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                     vendor_pem=os.path.join(up.tmp, "vendor.pem"), extra_toml=PX_TOML)
    yield p
    p.stop()


def forwarded(px):
    return px.upstream_stats["requests"]


def dtls(px, up, device, **kw):
    return px.dtls_client(device, [up.ca.root], **kw)


def self_signed(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Device(key, cert)


def upstream_device(up, cn, *, sans=()):
    """A device holding an operational certificate the upstream issued (trust "ca" at the proxy)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = up.ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), days=30,
                           sans=[x509.DNSName(s) for s in sans])
    return Device(key, cert)


def refused_in_handshake(px, up, device):
    with pytest.raises((SecurityError, TransportError)):
        with dtls(px, up, device, timeout=5):
            pass


# ---------------------------------------------------------------- who may enroll at all


def test_no_client_certificate_gets_no_dtls_session_at_the_proxy(up, px):
    from est_lite_cpython.dtls_client import DtlsClient

    n = forwarded(px)
    with pytest.raises((SecurityError, TransportError)):
        with DtlsClient("127.0.0.1", px.coaps_port, [up.ca.root], timeout=5):
            pass
    assert forwarded(px) == n


def test_self_signed_certificate_is_refused_over_coaps_and_https(up, px, tmp_path):
    n = forwarded(px)
    dev = self_signed("px-selfsigned")
    refused_in_handshake(px, up, dev)
    files = write_identity(str(tmp_path), "selfsigned", dev.key, dev.cert)
    try:
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-selfsigned")[1], cert_files=files)
    except (ssl.SSLError, OSError):
        pass  # refused in the TLS handshake: as good
    else:
        assert r.status in (401, 403) and r.header("content-type").startswith("text/plain"), (r.status, r.text)
    assert forwarded(px) == n


def test_certificate_trusted_only_for_another_label(up, px, otherv):
    """An "otherv" device is trusted on label b only; on label a (and the
    default label, and spelled every other way) it is refused, nothing forwarded."""
    k, c = issue_cert(otherv["cert"], otherv["key"], "px-otherv-1")
    dev = Device(k, c)
    key, csr = make_csr("px-otherv-1")
    with dtls(px, up, dev) as dc:
        s = CoapsSession(dc)
        n = forwarded(px)
        for label in ("a", None):
            with pytest.raises(ServerError) as e:
                s.enroll(csr, label)
            assert e.value.coap_code in (N.FORBIDDEN, N.UNAUTHORIZED) and "trusted" in e.value.diagnostic
        assert forwarded(px) == n
        # control: its own label
        got = x509.load_der_x509_certificate(s.enroll(csr, "b", public_key=point(key)).cert)
        assert got.public_key() == key.public_key()


def test_label_confusion_in_uri_path(up, px, otherv):
    """A device trusted for label b only, asking for label a's resources
    spelled in other ways: '..' segments, empty segments, percent-encoding
    (CoAP Uri-Path is not percent-decoded), upper case, a label equal to an
    operation name, Uri-Host / Uri-Port naming another server. Each answer
    is an error with a diagnostic; nothing is forwarded."""
    k, c = issue_cert(otherv["cert"], otherv["key"], "px-otherv-2")
    _, csr = make_csr("px-otherv-2")
    paths = [
        [".well-known", "est", "b", "..", "a", "sen"],
        [".well-known", "est", "b", "..", "sen"],
        [".well-known", "est", "..", "a", "sen"],
        [".well-known", "est", "", "sen"],
        [".well-known", "est", "b", "", "sen"],
        [".well-known", "est", "%61", "sen"],
        [".well-known", "est", "A", "sen"],
        [".well-known", "est", "a", "SEN"],
        [".well-known", "est", "sen", "sen"],
        [".well-known", "est", "SEN", "sen"],
        [".well-known", "est", "b/../a", "sen"],
        [".well-known", "est", "a", "simpleenroll"],
        [".well-known", "EST", "a", "sen"],
    ]
    with dtls(px, up, Device(k, c)) as dc:
        raw = RawCoap(dc)
        n = forwarded(px)
        for p in paths:
            r = raw.request(N.POST, p, csr, content_format=N.CF_PKCS10)
            assert r.code in (N.BAD_REQUEST, N.UNAUTHORIZED, N.FORBIDDEN, N.NOT_FOUND), (p, hex(r.code))
            assert bytes(r.payload), p  # a readable diagnostic
        # Uri-Host / Uri-Port (options 3, 7) do not select another server or label
        r = raw.request(N.POST, raw.path("sen", "a"), csr, content_format=N.CF_PKCS10,
                        options=[(3, b"upstream.example"), (7, coap.uint_encode(8443))])
        assert r.code == N.FORBIDDEN and bytes(r.payload)
        assert forwarded(px) == n
        # control: label b is its label
        r = raw.request(N.POST, raw.path("sen", "b"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.CHANGED
        assert forwarded(px) == n + 1


def test_expired_device_certificate_is_refused(up, px, tmp_path):
    k, c = issue_cert(up.vendor["cert"], up.vendor["key"], "px-expired", days=-1, not_before_days=-30)
    n = forwarded(px)
    # over CoAPs the handshake completes so that the device learns why; the
    # request is refused at the proxy (4.03 naming the expiry), never forwarded
    with dtls(px, up, Device(k, c), timeout=5) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), make_csr("px-expired")[1], content_format=N.CF_PKCS10)
        assert r.code == N.FORBIDDEN and "expired on" in bytes(r.payload).decode(), (hex(r.code), bytes(r.payload))
    files = write_identity(str(tmp_path), "expired", k, c)
    try:
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-expired")[1], cert_files=files)
    except (ssl.SSLError, OSError):
        pass
    else:
        assert r.status in (401, 403) and "expired" in r.text, (r.status, r.text)
    assert forwarded(px) == n


def test_device_revoked_upstream_is_refused_by_the_proxy(up, px, tmp_path):
    """A device certificate the upstream issued and then revoked: the proxy
    (trust set "ca") must not keep enrolling it as the RA. The upstream's
    CRL (`upstream_crl`, re-read when the file changes) reaches the proxy's
    handshake and its per-request check."""
    dev = upstream_device(up, "px-revoked")
    with dtls(px, up, dev) as dc:  # control: accepted before the revocation
        key, csr = make_csr("px-revoked-2")
        CoapsSession(dc).enroll(csr, public_key=point(key))
    up.ca.revoke(dev.cert.serial_number, "keyCompromise")
    write_crl(up, os.path.join(px.tmp, "upstream-crl.pem"))
    n = forwarded(px)
    refused_in_handshake(px, up, dev)
    files = write_identity(str(tmp_path), "revoked", dev.key, dev.cert)
    r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-revoked-3")[1], cert_files=files)
    assert r.status == 403 and "revoked" in r.text, (r.status, r.text)
    r = https_post(px, up, "/.well-known/est/simplereenroll", make_csr("px-revoked")[1], cert_files=files)
    assert r.status == 403 and "revoked" in r.text, (r.status, r.text)
    assert forwarded(px) == n


# ---------------------------------------------------------------- renewal


def test_reenroll_with_a_changed_san_is_refused_at_the_proxy(up, px):
    dev = upstream_device(up, "px-san-dev", sans=["dev.example.com"])
    with dtls(px, up, dev) as dc:
        s = CoapsSession(dc)
        n = forwarded(px)
        for sans in ((), ("other.example.com",), ("dev.example.com", "victim.example.com")):
            with pytest.raises(ServerError) as e:
                s.reenroll(make_csr("px-san-dev", sans=sans)[1])
            assert e.value.coap_code == N.BAD_REQUEST and "subjectAltName" in e.value.diagnostic
        assert forwarded(px) == n
        key, csr = make_csr("px-san-dev", sans=("dev.example.com",))
        got = x509.load_der_x509_certificate(s.reenroll(csr, public_key=point(key)).cert)  # control
        assert got.subject == dev.cert.subject


def test_idevid_cannot_renew_where_only_operational_certificates_may(up, px):
    """The proxy's profiles renew only "ca" (upstream-issued) certificates
    (reenroll_trust default): a manufacturer certificate with the same
    subject as an operational one cannot renew it."""
    victim = upstream_device(up, "px-renew-victim")
    idev = Device(*issue_cert(up.vendor["cert"], up.vendor["key"], "px-renew-victim"))
    del victim
    with dtls(px, up, idev) as dc:
        n = forwarded(px)
        with pytest.raises(ServerError) as e:
            CoapsSession(dc).reenroll(make_csr("px-renew-victim")[1])
        assert e.value.coap_code in (N.FORBIDDEN, N.UNAUTHORIZED) and "trusted" in e.value.diagnostic
        assert forwarded(px) == n


# ---------------------------------------------------------------- credentials and PoP


def test_device_cannot_pass_credentials_through_to_the_upstream(up, px):
    """The upstream's password (alice) means nothing at the proxy: the proxy
    authenticates with its own password file and sends upstream only its RA
    certificate, never the device's Authorization header."""
    n = forwarded(px)
    r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("px-smuggle")[1], auth=(USER, PASSWORD))
    assert r.status == 401 and r.header("content-type").startswith("text/plain")
    assert forwarded(px) == n


def test_required_pop_cannot_be_skipped_or_borrowed_through_the_proxy(up, px):
    dev = idevid_device(up, "px-pop-dev")
    with dtls(px, up, dev) as first:
        borrowed = base64.b64encode(first.tls_unique).decode()
        with dtls(px, up, dev) as dc:
            s = CoapsSession(dc)
            n = forwarded(px)
            with pytest.raises(ServerError) as e:  # no challengePassword at all
                s.enroll(make_csr("px-pop-dev")[1], "popreq")
            assert e.value.coap_code == N.FORBIDDEN and "PoP" in e.value.diagnostic
            with pytest.raises(ServerError) as e:  # another (live) session's binding
                s.enroll(make_csr("px-pop-dev", challenge=borrowed)[1], "popreq")
            assert e.value.coap_code == N.FORBIDDEN and "PoP" in e.value.diagnostic
            assert forwarded(px) == n
            key, csr = make_csr("px-pop-dev", challenge=base64.b64encode(dc.tls_unique).decode())
            got = x509.load_der_x509_certificate(s.enroll(csr, "popreq", public_key=point(key)).cert)
            assert got.public_key() == key.public_key()


# ---------------------------------------------------------------- serverkeygen


def test_serverkeygen_key_is_never_logged_or_written_and_not_served_to_another_session(up, px, caplog):
    dev = idevid_device(up, "px-skg-dev")
    other = idevid_device(up, "px-skg-other")
    before = {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
              for d, _, fs in os.walk(px.tmp) for f in fs}
    caplog.set_level(logging.DEBUG)
    _, csr = make_csr("px-skg-dev")
    with dtls(px, up, dev) as dc:
        raw = RawCoap(dc)
        # the answer in 16-byte blocks: block 0 only, the rest stays with this session
        r0 = raw.request(N.POST, raw.path("skg"), csr, content_format=N.CF_PKCS10, block2=(0, 0, 0))
        assert r0.code == N.CHANGED and coap.opt(r0, 23) is not None
        with dtls(px, up, other) as dc2:
            raw2 = RawCoap(dc2)
            r1 = raw2.request(N.POST, raw2.path("skg"), b"", block2=(1, 0, 0))
            assert r1.code == N.REQUEST_ENTITY_INCOMPLETE and b"unknown or expired" in bytes(r1.payload)
        ev = CoapsSession(dc).serverkeygen(csr)
    key = serialization.load_der_private_key(ev.key_der, None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    needles = [ev.key_der, scalar, scalar.hex().encode(), base64.b64encode(ev.key_der),
               base64.b64encode(ev.key_der)[:40], ev.key_der.hex().encode()]
    text = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert caplog.records  # something was logged at DEBUG, so the scan means something
    for nd in needles:
        assert nd not in text
    for d, _, fs in os.walk(px.tmp):
        for f in fs:
            p = os.path.join(d, f)
            if before.get(p) == os.path.getsize(p):
                continue
            with open(p, "rb") as fh:
                data = fh.read()
            for nd in needles:
                assert nd not in data, p


# ---------------------------------------------------------------- manual approval


def _der_len(n):
    return bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")


def _tlv(tag, body):
    return bytes([tag]) + _der_len(len(body)) + body


def malleated(csr_der):
    """The same P-256 CSR with signature (r, n - s): still valid, other DER."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    csr = x509.load_der_x509_csr(csr_der)
    r, s_ = decode_dss_signature(csr.signature)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    sig = encode_dss_signature(r, order - s_)
    alg = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    out = _tlv(0x30, csr.tbs_certrequest_bytes + alg + _tlv(0x03, b"\x00" + sig))
    c2 = x509.load_der_x509_csr(out)
    assert c2.is_signature_valid and out != csr_der
    return out


def test_approved_request_is_collected_only_by_the_device_that_asked(up, px):
    """Upstream manual approval sees only the RA: the proxy remembers which
    device submitted a pending request and gives the certificate (or, for
    serverkeygen, a private key) to no other device that replays the CSR."""
    owner = idevid_device(up, "px-appr-owner")
    thief = idevid_device(up, "px-appr-thief")
    key, csr = make_csr("px-appr-owner")
    for op in (N.OP_SIMPLEENROLL, N.OP_SERVERKEYGEN):
        with dtls(px, up, owner) as dc:
            ev = CoapsSession(dc).op(op, "manual", csr)
            assert type(ev).__name__ == "RetryAfter"
        pending = up.ca.store.list_requests("pending")
        up.ca.store.decide(pending[-1]["id"], True)
        with dtls(px, up, thief) as dc:
            n = forwarded(px)
            # the CSR as sent, and the same CSR with its ECDSA signature's s
            # replaced by n - s (valid too, other bytes: what an upstream keys
            # its requests by is the same)
            for replay in (csr, malleated(csr)):
                with pytest.raises(ServerError) as e:
                    CoapsSession(dc).op(op, "manual", replay)
                assert e.value.coap_code == N.FORBIDDEN and "another client" in e.value.diagnostic
            assert forwarded(px) == n
        with dtls(px, up, owner) as dc:  # control: the owner collects
            ev = CoapsSession(dc).op(op, "manual", csr, public_key=point(key) if op == N.OP_SIMPLEENROLL else None)
            assert ev.cert


# ---------------------------------------------------------------- unauthenticated load on the upstream


def https_get(px, up, path):
    """GET without any credentials (stdlib ssl, no client certificate)."""
    c = ssl.create_default_context(cafile=up.root_pem)
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as s:
        with c.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
            return Response.read(t)


def test_anonymous_csrattrs_do_not_each_cost_an_upstream_request(up, px, monkeypatch):
    """/csrattrs needs no authentication (RFC 7030 §4.5): each anonymous
    request used to open a TLS connection to the upstream with the RA's
    certificate (a peer with no credentials made the RA work for it, and
    tied up a worker per request while the upstream was slow). The
    upstream's answer is the same for every device (it sees the RA), so it
    is cached like /cacerts."""
    now = [1000.0]
    monkeypatch.setattr(px.service.ca, "clock", lambda: now[0])
    first = https_get(px, up, "/.well-known/est/csrattrs")
    assert first.status in (200, 204)
    n = forwarded(px)
    for _ in range(5):
        r = https_get(px, up, "/.well-known/est/csrattrs")
        assert (r.status, r.body) == (first.status, first.body)
    assert forwarded(px) == n
    now[0] += px.service.ca.cacerts_ttl + 1  # stale: fetched again, once
    for _ in range(3):
        assert https_get(px, up, "/.well-known/est/csrattrs").status == first.status
    assert forwarded(px) == n + 1


def test_anonymous_requests_for_a_failing_upstream_label_are_held_back(up, px, monkeypatch):
    """A proxy label whose upstream label is missing (a configuration
    slip): anonymous /cacerts requests for it each went upstream. A failure
    is now remembered for upstream_error_hold seconds."""
    now = [5000.0]
    monkeypatch.setattr(px.service.ca, "clock", lambda: now[0])
    r = https_get(px, up, "/.well-known/est/ghost/cacerts")
    assert r.status == 404 and "upstream" in r.text
    n = forwarded(px)
    for _ in range(5):
        r = https_get(px, up, "/.well-known/est/ghost/cacerts")
        assert r.status == 404 and "upstream" in r.text
        r = https_get(px, up, "/.well-known/est/ghost/csrattrs")
        assert r.status in (204, 404)
    assert forwarded(px) <= n + 1
    now[0] += px.service.ca.upstream_error_hold + 1
    https_get(px, up, "/.well-known/est/ghost/cacerts")
    assert forwarded(px) >= n + 1


# ---------------------------------------------------------------- unauthenticated DTLS handshakes


def _half_open(pki, port, src):
    """A ClientHello, the cookie round trip, the ClientHello with the
    cookie, then silence (never a certificate): the server keeps a
    handshaking session until handshake_timeout. Returns the socket."""
    from OpenSSL import SSL

    from est_lite_cpython import dtls as d

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(5)
    ctx = d.base_context(False, d.CLIENT_SUITES, pki.client.cert, pki.client.key)
    conn = d.new_connection(ctx, 1200)
    conn.set_connect_state()
    for i in range(2):
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass
        for dg in d.drain_bio(conn, 1200):
            s.sendto(dg, ("127.0.0.1", port))
        if i == 0:
            conn.bio_write(s.recv(4096))  # the HelloVerifyRequest (always sent: the server is not full)
    return s


def test_half_open_handshakes_from_one_host_cannot_fill_the_server():
    """An unauthenticated host (it only needs its real address for the
    cookie) opened handshakes from many ports and went silent: they filled
    max_sessions for handshake_timeout, and every other device was refused
    (refused_full) for as long as the attacker renewed them. Now one host
    (an IPv4 address, an IPv6 /64) holds at most max_handshakes_per_host
    handshaking sessions."""
    from est_lite_cpython.dtls_client import DtlsClient
    from helpers_dtls import Pki, ServerThread

    pki = Pki()
    srv = ServerThread(pki, max_sessions=4, handshake_timeout=30.0, max_handshakes_per_host=2)
    socks = []
    try:
        for _ in range(4):  # from 127.0.0.2, another host than the device's 127.0.0.1
            socks.append(_half_open(pki, srv.port, "127.0.0.2"))
        for _ in range(250):
            if srv.stats()["refused_host_handshakes"] + srv.session_count() >= 4:
                break
            time.sleep(0.02)
        assert srv.session_count() == 2 and srv.stats()["refused_host_handshakes"] == 2
        with DtlsClient("127.0.0.1", srv.port, [pki.ca.root.cert], cert=pki.client.cert, key=pki.client.key,
                        timeout=5) as c:
            c.send(b"hi")
            assert c.recv(5) == b"echo hi"
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_host_key_groups_ipv6_by_prefix_and_unmaps_ipv4():
    from est_lite_cpython.dtls_server import host_key

    assert host_key(("192.0.2.1", 5684)) == host_key(("192.0.2.1", 1))
    assert host_key(("192.0.2.1", 1)) != host_key(("192.0.2.2", 1))
    assert host_key(("::ffff:192.0.2.1", 1, 0, 0)) == host_key(("192.0.2.1", 1))
    assert host_key(("::ffff:192.0.2.1", 1, 0, 0)) != host_key(("::ffff:192.0.2.2", 1, 0, 0))
    assert host_key(("2001:db8:1:2::1", 1, 0, 0)) == host_key(("2001:db8:1:2:ffff::9", 7, 0, 0))
    assert host_key(("2001:db8:1:2::1", 1, 0, 0)) != host_key(("2001:db8:1:3::1", 1, 0, 0))


# ---------------------------------------------------------------- RA powers and paths


def test_a_csr_cannot_ask_for_ra_or_ca_powers(up, px, tmp_path):
    """A device's CSR asking (extensionRequest) for id-kp-cmcRA, CA:TRUE and
    keyCertSign goes upstream through the RA unchanged (it is signed), but
    the issued certificate carries only the profile's extensions; used at
    the upstream on a label that trusts RAs, it is a device, not an RA."""
    from helpers_proxy import CMC_RA

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "px-wannabe-ra")]))
           .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                        data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                        crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
           .sign(key, hashes.SHA256()))
    with dtls(px, up, idevid_device(up, "px-wannabe-ra")) as dc:
        got = x509.load_der_x509_certificate(CoapsSession(dc).enroll(csr.public_bytes(serialization.Encoding.DER),
                                                                     "a", public_key=point(key)).cert)
    ekus = got.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert CMC_RA not in ekus
    assert got.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not got.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    # at the upstream's label a (ra_trust = ["ca"]) it cannot renew someone else's subject
    victim = upstream_device(up, "px-ra-victim")
    files = write_identity(str(tmp_path), "wannabe", key, got)
    r = up.request("POST", up.path("simplereenroll", "a"), make_csr("px-ra-victim")[1], cert=files[0], key=files[1])
    assert r.status == 400 and "keep the subject" in r.text
    assert victim.cert.subject.rfc4514_string() == "CN=px-ra-victim"


def test_label_confusion_in_https_paths_through_the_proxy(up, px, otherv, tmp_path):
    """The HTTPS front end of the proxy: a device trusted for label b only,
    with label a spelled in other ways (dot segments, percent-encoding,
    empty segments, absolute-form target, a label equal to an operation
    name): never a 2xx, always a text/plain reason, nothing forwarded."""
    k, c = issue_cert(otherv["cert"], otherv["key"], "px-otherv-3")
    files = write_identity(str(tmp_path), "otherv3", k, c)
    _, csr = make_csr("px-otherv-3")
    paths = [
        "/.well-known/est/b/../a/simpleenroll",
        "/.well-known/est/b/%2e%2e/a/simpleenroll",
        "/.well-known/est/%61/simpleenroll",
        "/.well-known/est/b%2F..%2Fa/simpleenroll",
        "/.well-known/est//a/simpleenroll",
        "//.well-known/est/a/simpleenroll",
        "/.well-known/est/a/SimpleEnroll",
        "/.well-known/est/simpleenroll/simpleenroll",
        "/.well-known/est/a/simpleenroll?label=b",
        "https://localhost/.well-known/est/a/simpleenroll",
        "/.well-known/est/a/simpleenroll/",
        "/.well-known/est/a/sen",
    ]
    n = forwarded(px)
    for p in paths:
        r = https_post(px, up, p, csr, cert_files=files)
        assert r.status in (400, 401, 403, 404), (p, r.status)
        assert r.header("content-type").startswith("text/plain") and r.text.strip(), p
    assert forwarded(px) == n
    assert https_post(px, up, "/.well-known/est/b/simpleenroll", csr, cert_files=files).status == 200  # control


def test_proxy_label_map_is_checked_when_the_config_is_read():
    """[proxy] labels: both sides must be labels (one segment, no '/', '%',
    '..', not an operation name) - a mapped value is put into the upstream's
    URL path."""
    from est_lite_cpython.config import ConfigError
    from est_lite_cpython.proxy import ProxyConfig

    base = {"upstream": "https://up.example:8443", "ra_cert": "ra.pem", "ra_key": "ra.key"}
    assert ProxyConfig(dict(base, labels={"a": "b", "c": ""})).labels == {"a": "b", "c": ""}
    for bad in ({"a": "../x"}, {"a": "b/c"}, {"a": "%2e%2e"}, {"a": "simpleenroll"}, {"..": "a"}, {"a": 3}):
        with pytest.raises(ConfigError, match="labels"):
            ProxyConfig(dict(base, labels=bad))


def test_upstream_gives_an_approved_serverkeygen_only_to_its_requester(up, tmp_path):
    """At the reference server itself (no proxy): alice (HTTP Basic) asks
    for a server-generated key on the manual-approval label; once approved,
    a device with another identity replaying the same CSR must not collect
    the private key made for alice's request."""
    key, csr = make_csr("skg-approval-owner")
    r = up.request("POST", up.path("serverkeygen", "manual"), csr, auth=(USER, PASSWORD))
    assert r.status == 202
    up.ca.store.decide(up.ca.store.list_requests("pending")[-1]["id"], True)
    thief = upstream_device(up, "skg-approval-thief")
    files = write_identity(str(tmp_path), "thief", thief.key, thief.cert)
    r = up.request("POST", up.path("serverkeygen", "manual"), csr, cert=files[0], key=files[1])
    assert r.status == 403 and "submitted by another client" in r.text, (r.status, r.text)
    # alice, who asked, collects it (a certificate and a PKCS#8 key)
    r = up.request("POST", up.path("serverkeygen", "manual"), csr, auth=(USER, PASSWORD))
    assert r.status == 200 and r.header("content-type").startswith("multipart/mixed"), (r.status, r.text)


def test_an_issued_manual_request_is_not_handed_to_another_identity(up, tmp_path):
    """The same at the reference server for an enrollment that was approved
    and issued: asking again with the same CSR gives the same certificate to
    its submitter (RFC 7030 §4.2.3), and 403 to anyone else."""
    key, csr = make_csr("enroll-approval-owner")
    r = up.request("POST", up.path("simpleenroll", "manual"), csr, auth=(USER, PASSWORD))
    assert r.status == 202
    up.ca.store.decide(up.ca.store.list_requests("pending")[-1]["id"], True)
    r = up.request("POST", up.path("simpleenroll", "manual"), csr, auth=(USER, PASSWORD))
    assert r.status == 200
    cert = r.certs()[0]
    thief = upstream_device(up, "enroll-approval-thief")
    files = write_identity(str(tmp_path), "thief", thief.key, thief.cert)
    r = up.request("POST", up.path("simpleenroll", "manual"), csr, cert=files[0], key=files[1])
    assert r.status == 403 and "submitted by another client" in r.text, (r.status, r.text)
    r = up.request("POST", up.path("simpleenroll", "manual"), csr, auth=(USER, PASSWORD))
    assert r.status == 200 and r.certs()[0] == cert


def test_nothing_a_device_sends_becomes_an_upstream_header(up, px, monkeypatch):
    """The upstream request is built by the proxy from (operation, label,
    CSR) only: CoAP options (Uri-Query, unknown elective options carrying
    header-like bytes) and HTTPS request headers of the device never reach
    it, so a device cannot add anything an upstream would take from an RA."""
    import est_lite_cpython.proxy as P

    sent = []
    real = P.http1.build_request

    def spy(*a, **kw):
        req = real(*a, **kw)
        sent.append(bytes(req))
        return req

    monkeypatch.setattr(P.http1, "build_request", spy)
    evil = b"x\r\nX-EST-RA: yes\r\nAuthorization: Basic YWxpY2U6czNjcmV0"
    dev = idevid_device(up, "px-hdr-dev")
    key, csr = make_csr("px-hdr-dev")
    with dtls(px, up, dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), csr, content_format=N.CF_PKCS10,
                        options=[(15, evil), (2048, evil), (65000, evil)])
        assert r.code == N.CHANGED
        # Proxy-Uri / Proxy-Scheme: not a forward proxy (5.05), nothing forwarded
        n = forwarded(px)
        r = raw.request(N.POST, raw.path("sen"), csr, content_format=N.CF_PKCS10,
                        options=[(35, b"https://localhost/.well-known/est/a/simpleenroll")])
        assert r.code == 0xA5 and bytes(r.payload)
        assert forwarded(px) == n
    c = ssl.create_default_context(cafile=up.root_pem)
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as s:
        with c.wrap_socket(s, server_hostname="localhost") as t:
            b = base64.encodebytes(make_csr("px-hdr-dev2")[1])
            t.sendall(("POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                       "Content-Type: application/pkcs10\r\nX-EST-RA: yes\r\nX-Forwarded-Client-Cert: by=ra\r\n"
                       "Authorization: Basic %s\r\nContent-Length: %d\r\n\r\n"
                       % (base64.b64encode(b"dave:devpass").decode(), len(b))).encode() + b)
            assert Response.read(t).status == 200
    assert len(sent) == 2
    for req in sent:
        head = req.split(b"\r\n\r\n", 1)[0].lower()
        assert b"x-est-ra" not in head and b"x-forwarded" not in head and b"authorization" not in head
        names = sorted(line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:])
        assert names == [b"connection", b"content-length", b"content-transfer-encoding", b"content-type", b"host",
                         b"user-agent"], names


def test_a_server_certificate_of_the_upstream_ca_is_not_a_device_certificate(up, px):
    """The proxy's own TLS certificate (the upstream's CA, serverAuth only):
    whoever has such a key (any TLS server the CA certified) is not a
    device - the handshake checks the client purpose of the EKU."""
    from helpers_proxy import issue

    k, c = issue(up.ca.issuer, up.ca._key, "some-web-server", ekus=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    n = forwarded(px)
    refused_in_handshake(px, up, Device(k, c))
    assert forwarded(px) == n


def test_an_upstream_crl_the_upstream_ca_did_not_sign_stops_the_start(up, tmp_path):
    """A CRL file signed by someone else (or garbage) is refused at start,
    with the file named: a forged CRL could neither revoke nor hide."""
    import datetime as dt

    from est_lite.errors import LocalProtocolError

    other = make_vendor_ca(str(tmp_path), "Forger CA")
    now = dt.datetime.now(dt.timezone.utc)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(up.ca.issuer.subject).last_update(now)
              .next_update(now + dt.timedelta(days=1)).sign(other["key"], hashes.SHA256()))
    with open(os.path.join(str(tmp_path), "upstream-crl.pem"), "wb") as f:
        f.write(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(LocalProtocolError, match="upstream-crl.pem.*not signed"):
        ProxyHarness(tmp_path, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                     vendor_pem=os.path.join(up.tmp, "vendor.pem"), extra_toml='upstream_crl = "upstream-crl.pem"\n',
                     https=False, coaps=False)
    with open(os.path.join(str(tmp_path), "upstream-crl.pem"), "wb") as f:
        f.write(b"not a CRL")
    with pytest.raises(LocalProtocolError, match="upstream-crl.pem"):
        ProxyHarness(tmp_path, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                     vendor_pem=os.path.join(up.tmp, "vendor.pem"), extra_toml='upstream_crl = "upstream-crl.pem"\n',
                     https=False, coaps=False)
