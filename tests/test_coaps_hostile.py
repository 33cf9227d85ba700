"""Hostile traffic against the EST-coaps server: garbage datagrams,
ClientHello floods without cookies, unauthenticated clients, garbage and
bad requests inside a session, transfer-state floods, session exhaustion.
Each time: the right error or silence, no state for the unverified, nothing
issued, and the server keeps serving a legitimate device."""

import os
import random
import socket
import struct
import time

import pytest
from cryptography import x509

from est_lite import numbers as N
from est_lite.errors import EstError, SecurityError, TransportError
from helpers_coaps import (
    CoapsSession,
    Device,
    EstBothServer,
    RawCoap,
    issue_cert,
    make_csr,
    operational_device,
    point,
)
from helpers_server import make_vendor_ca


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps-hostile"), coaps_options=dict(max_sessions=8))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dev(srv):
    return operational_device(srv, "good-device")


def sessions(srv):
    return srv.coaps_stats()["dtls_sessions"]


def still_serves(srv, dev, cn):
    key, csr = make_csr(cn)
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        ev = CoapsSession(dc).enroll(csr, public_key=point(key))
    assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()
    assert srv.issued_count() == before + 1


def wait_sessions(srv, n, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and sessions(srv) != n:
        time.sleep(0.02)
    return sessions(srv)


def client_hello(cookie=b"", rnd=None, seq=0):
    """A structurally valid DTLS 1.2 ClientHello datagram (no cookie)."""
    rnd = rnd or os.urandom(32)
    suites = (0xC0AE, 0xC02B)
    ext = b"\x00\x0a\x00\x04\x00\x02\x00\x17"
    body = (b"\xfe\xfd" + rnd + b"\x00" + bytes([len(cookie)]) + cookie + struct.pack("!H", 2 * len(suites))
            + b"".join(struct.pack("!H", s) for s in suites) + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    ln = len(body).to_bytes(3, "big")
    hs = b"\x01" + ln + b"\x00\x00" + b"\x00\x00\x00" + ln + body
    return b"\x16\xfe\xff" + b"\x00\x00" + seq.to_bytes(6, "big") + struct.pack("!H", len(hs)) + hs


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def drain(socks, wait=0.3):
    got = []
    end = time.monotonic() + wait
    for s in socks:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            while True:
                got.append(s.recv(4096))
                s.settimeout(0.02)
        except OSError:
            pass
    return got


def test_garbage_datagrams_get_silence_and_leave_no_state(srv, dev):
    rng = random.Random(7)
    socks = [udp() for _ in range(4)]
    try:
        before = srv.coaps_stats()
        for i in range(600):
            n = rng.choice([0, 1, 12, 13, 14, 60, 200, 1200, 3000, 5000])
            data = bytes(rng.getrandbits(8) for _ in range(n))
            if i % 3 == 0 and n >= 13:  # DTLS-looking headers: handshake / app data / alert, epochs 0 and 1
                data = bytes([rng.choice([20, 21, 22, 23])]) + b"\xfe\xfd" + bytes([0, rng.choice([0, 1])]) + data[5:]
            socks[i % 4].sendto(data, ("127.0.0.1", srv.coaps_port))
        replies = drain(socks)
        after = srv.coaps_stats()
    finally:
        for s in socks:
            s.close()
    assert replies == [] or all(r[0] == 22 for r in replies)  # at most HelloVerifyRequests
    assert sessions(srv) == 0
    assert after["dtls_handshakes"] == before.get("dtls_handshakes", 0)
    assert after["dtls_ignored"] > before.get("dtls_ignored", 0)
    still_serves(srv, dev, "after-garbage")


def test_clienthello_flood_without_cookies_keeps_no_state(srv, dev):
    socks = [udp() for _ in range(16)]
    try:
        before = srv.coaps_stats()
        for i in range(800):
            socks[i % 16].sendto(client_hello(seq=i), ("127.0.0.1", srv.coaps_port))
        assert sessions(srv) == 0
        # a legitimate device is served during the flood
        still_serves(srv, dev, "during-flood")
        replies = drain(socks, 0.5)
        after = srv.coaps_stats()
    finally:
        for s in socks:
            s.close()
    hvr = [r for r in replies if r[0] == 22 and r[13] == 3]
    assert len(hvr) == len(replies) and len(replies) > 0
    assert max(len(r) for r in replies) < len(client_hello())  # no amplification
    # (the kernel may drop part of the flood when the socket buffer is full)
    assert after["dtls_hello_verify_sent"] - before.get("dtls_hello_verify_sent", 0) >= 100
    assert after["dtls_handshakes"] - before.get("dtls_handshakes", 0) == 1  # only the legitimate device
    assert wait_sessions(srv, 0) == 0


def test_unauthenticated_clients_get_no_session_and_nothing_issued(srv, dev, tmp_path):
    from est_lite_cpython.dtls_client import DtlsClient

    before = srv.issued_count()
    # no client certificate
    with pytest.raises((SecurityError, TransportError)):
        DtlsClient("127.0.0.1", srv.coaps_port, [srv.ca.root], timeout=5)
    # a certificate from a CA the server does not know
    other = make_vendor_ca(str(tmp_path), "Rogue Vendor")
    k, c = issue_cert(other["cert"], other["key"], "rogue")
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(Device(k, c), timeout=5)
    # an expired certificate of the right CA: the handshake completes (so that
    # the device learns why), and every request gets 4.03 naming the expiry
    k, c = issue_cert(srv.ca.issuer, srv.ca._key, "expired", days=-1, not_before_days=-10)
    with srv.dtls_client(Device(k, c), timeout=5) as dc:
        with pytest.raises(EstError, match="4.03.*client certificate CN=expired expired on"):
            CoapsSession(dc).cacerts()
    assert wait_sessions(srv, 0) == 0
    assert srv.issued_count() == before
    assert srv.coaps_stats()["dtls_handshake_failures"] >= 2
    still_serves(srv, dev, "after-strangers")


def test_garbage_and_bad_requests_inside_a_session(srv, dev):
    rng = random.Random(11)
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        for _ in range(200):
            dc.send(bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 4, 5, 20, 300]))))
        # whatever came back: RSTs or error answers, never a success (aiocoap
        # also answers requests with RFC 8974 extended tokens, which the core
        # codec, holding to RFC 7252's 0-8 bytes, does not decode)
        for _ in range(400):
            data = dc.recv(timeout=0.05)
            if data is None:
                break
            assert data[1] == 0 or data[1] >= 0x80, data.hex()
        raw = RawCoap(dc)
        # an unknown critical option: 4.02
        for num in (9, 1, 5, 2049):  # OSCORE, If-Match, If-None-Match, an unknown critical one
            r = raw.request(N.GET, raw.path("crts"), options=[(num, b"x")])
            assert r.code == N.BAD_OPTION and b"critical option" in bytes(r.payload), num
        r = raw.request(N.GET, raw.path("crts"), options=[(N.PROXY_URI, b"coap://example/")])
        assert r.code == N.PROXYING_NOT_SUPPORTED
        r = raw.request(N.GET, raw.path("crts"), options=[(2048, b"x")])  # unknown elective: ignored
        assert r.code == N.CONTENT
        # CoAP with a wrong Content-Format and oversized bodies
        r = raw.request(N.POST, raw.path("sen"), b"\x30" * 900, content_format=N.CF_OCTET_STREAM)
        assert r.code == N.UNSUPPORTED_CONTENT_FORMAT
        r = raw.request(N.POST, raw.path("sen"), b"\x30\x82\xff\xff" + b"\x00" * 800, content_format=N.CF_PKCS10)
        assert r.code in (N.REQUEST_ENTITY_TOO_LARGE, N.BAD_REQUEST)
        r = raw.request(N.POST, raw.path("sen"), b"x" * 16, content_format=N.CF_PKCS10, block1=(0, 1, 0),
                        size1=10 ** 6)
        assert r.code == N.REQUEST_ENTITY_TOO_LARGE
        # the session still works
        key, csr = make_csr("inside-garbage")
        ev = CoapsSession(dc).enroll(csr, public_key=point(key))
        assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()
    assert srv.issued_count() == before + 1


def test_transfer_state_is_bounded_per_session(srv, dev):
    res = srv.coaps.resource
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        for label in ["", "strict", "pop", "manual", "coapsonly", "mp", "certonly", "basiconly"]:
            for name in ("sen", "sren", "skg", "skc"):
                r = raw.request(N.POST, raw.path(name, label or None), b"\x30" * 64, content_format=N.CF_PKCS10,
                                block1=(0, 1, 2))
                assert r.code in (N.CONTINUE, N.UNAUTHORIZED, N.FORBIDDEN), r

        async def count():
            return len(res._transfers)

        held = srv.coaps.call(count())
    assert 1 <= held <= res.max_transfers_per_session


def test_session_limit_refuses_new_clients_but_keeps_existing_ones(srv, dev):
    from est_lite_cpython.dtls_client import DtlsClient

    clients = []
    try:
        for i in range(srv.coaps.dtls.max_sessions):
            clients.append(srv.dtls_client(dev))
        with pytest.raises(TransportError):
            DtlsClient("127.0.0.1", srv.coaps_port, [srv.ca.root], cert=dev.cert, key=dev.key, timeout=1.5)
        assert srv.coaps_stats()["dtls_refused_full"] >= 1
        # the established ones are still served
        key, csr = make_csr("limit-dev")
        ev = CoapsSession(clients[0]).enroll(csr, public_key=point(key))
        assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()
    finally:
        for c in clients:
            c.close()
    assert wait_sessions(srv, 0) == 0
    still_serves(srv, dev, "after-limit")


def test_device_on_a_trust_set_crl_is_refused_in_the_handshake(srv):
    """A [trust.NAME] CRL is checked by the DTLS handshake (and by the
    policy): a revoked IDevID gets no session and nothing is issued."""
    import datetime

    from cryptography.hazmat.primitives import hashes

    from helpers_coaps import idevid_device

    good = idevid_device(srv, "vendor-good")
    bad = idevid_device(srv, "vendor-revoked")
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(srv.vendor["cert"].subject)
           .last_update(now - datetime.timedelta(minutes=1)).next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(bad.cert.serial_number)
                                    .revocation_date(now - datetime.timedelta(minutes=1)).build())
           .sign(srv.vendor["key"], hashes.SHA256()))
    crls = srv.config.trust["idevid"].crls
    crls.append(crl)
    try:
        before = srv.issued_count()
        with pytest.raises((SecurityError, TransportError)):
            srv.dtls_client(bad, timeout=5)
        with srv.dtls_client(good) as dc:  # the same vendor's other devices are fine
            key, csr = make_csr("vendor-good")
            assert CoapsSession(dc).enroll(csr, public_key=point(key)).cert
        assert srv.issued_count() == before + 1
    finally:
        crls.remove(crl)


def test_late_duplicate_clienthello_keeps_the_session(srv, dev):
    """A network that duplicates datagrams may deliver the ClientHello that
    carried the cookie again after the handshake: the established session
    must survive it (RFC 6347 §4.2.8; found by the HIL fleet simulator)."""
    from est_lite_cpython import dtls as d
    from est_lite_cpython.dtls_client import DtlsClient

    class Recording(DtlsClient):
        sent = None

        def _send_pending(self):
            for dg in d.drain_bio(self._conn, self.mtu):
                (self.sent if self.sent is not None else []).append(dg)
                self._sock.send(dg)

    c = Recording("127.0.0.1", srv.coaps_port, [srv.ca.root], cert=dev.cert, key=dev.key, timeout=10, connect=False)
    c.sent = []
    c.handshake()
    try:
        hellos = [dg for dg in c.sent if dg[0] == 22 and dg[13] == 1]
        assert len(hellos) == 2  # without and with the cookie
        before = srv.coaps_stats()["dtls_handshakes"]
        c._sock.send(hellos[-1])  # the duplicate, late
        time.sleep(0.2)
        assert CoapsSession(c).cacerts().certs  # the session still works
        assert srv.coaps_stats()["dtls_handshakes"] == before
    finally:
        c.close()
