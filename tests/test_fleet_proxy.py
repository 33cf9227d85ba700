"""A fleet through the proxy/RA (`est-lite fleet --via-proxy`): the
upstream `est-lite serve` and an `est-lite proxy` in their own processes
(the proxy's RA certificate from `est-lite ca issue --eku
clientAuth,cmcRA`), devices enrolling through the proxy at 10% loss."""

import pathlib as _pl
import sys as _sys

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil.fleet import FleetConfig, run_fleet  # noqa: E402


def _check(rep, n):
    assert rep["failures"] == 0, rep["failures_by_cause"]
    assert rep["ok"] == n and rep["via_proxy"]
    px = rep["proxy"]
    assert px["alive"]
    up = px["upstream"]
    # every device's certificate is in the upstream store, requested by
    # the RA, and chains to the upstream CA
    assert up["in_store"] == n and up["not_in_store"] == up["requester_not_ra"] == up["not_chained"] == 0, up
    # upstream store: the server's TLS certificate, the RA's and the
    # proxy's from `ca issue`, then one per device; more only for a device
    # that started over (tests/test_fleet.py's bound)
    tries = sum(int(k) * v for k, v in rep["attempts"].items())
    assert 3 + n <= rep["server_issued"] <= 3 + tries, (rep["server_issued"], rep["attempts"])
    assert n <= up["by_ra"] <= tries
    # the proxy's own count of its upstream requests (said when it stops):
    # the devices' simpleenroll requests, and its /cacerts
    fw = px["forwarded"]
    assert fw is not None and fw["requests"] >= n + 1 and fw["failed"] == 0, fw
    # the proxy's threads and fds come back to where they were
    res = px["resources"]
    assert res["fds"]["end"] <= res["fds"]["start"] + 2, res
    assert res["threads"]["end"] <= res["threads"]["start"] + 16, res


def test_a_fleet_through_the_proxy_over_coaps_at_ten_percent_loss(tmp_path):
    cfg = FleetConfig(devices=24, transport="coaps", loss=0.1, concurrency=8, seed=5, ack_timeout=1.0,
                      via_proxy=True)
    rep = run_fleet(cfg, progress=False, workdir=str(tmp_path))
    _check(rep, 24)
    assert rep["link"]["up"]["dropped"] + rep["link"]["down"]["dropped"] > 0


def test_a_fleet_through_the_proxy_over_https(tmp_path):
    rep = run_fleet(FleetConfig(devices=12, transport="https", concurrency=6, via_proxy=True), progress=False,
                    workdir=str(tmp_path))
    _check(rep, 12)


def test_via_proxy_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="mp-boards"):
        FleetConfig(devices=2, mp_boards=1, via_proxy=True)
    with pytest.raises(ValueError, match="in-process"):
        FleetConfig(devices=2, in_process=True, via_proxy=True)


def _tls_stub(tmp_path, answer, gap):
    """A TLS server on loopback that reads one request and sends `answer`
    one byte every `gap` seconds. Returns (port, CA file, thread)."""
    import datetime
    import socket
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cf, kf = tmp_path / "stub.pem", tmp_path / "stub.key"
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cf), str(kf))
    ls = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        c, _ = ls.accept()
        with ctx.wrap_socket(c, server_side=True) as t:
            t.recv(65536)
            for i in range(len(answer)):
                if stop.wait(gap):
                    break
                try:
                    t.sendall(answer[i:i + 1])
                except OSError:
                    break
        ls.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return ls.getsockname()[1], str(cf), th, stop


def test_an_upstream_answering_a_byte_at_a_time_is_a_timeout(tmp_path):
    """timeout_s bounds the whole upstream exchange: before, it bounded
    each read only, and an upstream whose answer came a few bytes at a
    time (here one every 0.2 s, 40 bytes: 8 s in all) held the device's
    request and a proxy worker past timeout_s (1 s): the proxy waited for
    the whole answer and passed it on."""
    from est_lite import numbers as N
    from est_lite_cpython.proxy import Upstream, UpstreamError

    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    port, ca, th, stop = _tls_stub(tmp_path, answer, 0.2)
    try:
        up = Upstream("https://localhost:%d" % port, ca_file=ca, timeout=1.0)
        with pytest.raises(UpstreamError) as e:
            up.exchange(N.OP_CSRATTRS, None)
        assert e.value.http_status == 504 and "did not answer within 1 s" in str(e.value)
        assert up.stats["errors"] == 1
    finally:
        stop.set()
        th.join(10)


def test_a_session_waiting_for_a_slow_upstream_is_not_idle(tmp_path, monkeypatch):
    """Found by the fleet through a slowed upstream (12 s per request, the
    proxy's 4 CoAPs workers, 32 devices): sessions whose request waited
    for a worker and the upstream longer than [coaps] idle_timeout_s were
    closed as idle ('the server closed the DTLS session': 23 of 48 devices
    failed, and the upstream had issued certificates no device got). A
    session is not idle while a request of it is being answered; idle
    counts from the answer. Here: idle_timeout 1 s, the answer takes 2.5 s."""
    import os
    import time

    sys_path = str(_pl.Path(__file__).resolve().parent)
    if sys_path not in _sys.path:
        _sys.path.insert(0, sys_path)
    from helpers_coaps import CoapsSession, idevid_device
    from helpers_proxy import ProxyHarness
    from helpers_server import EstTestServer

    up = EstTestServer(tmp_path / "up")
    try:
        px = ProxyHarness(tmp_path / "px", up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                          vendor_pem=os.path.join(up.tmp, "vendor.pem"), https=False)
        try:
            d = px.coaps.dtls
            d.idle_timeout, d._sweep_interval = 1.0, 0.1
            slow = px.service.cacerts

            def cacerts(label, ctx):
                time.sleep(2.5)
                return slow(label, ctx)

            monkeypatch.setattr(px.service, "cacerts", cacerts)
            dev = idevid_device(up, "slow-dev")
            with px.dtls_client(dev, [up.ca.root]) as dc:
                certs = CoapsSession(dc).cacerts().certs
            assert certs and d.stats["idle_evictions"] == 0
        finally:
            px.stop()
    finally:
        up.stop()
