"""The proxy / RA must not fail open (docs/proxy.md, "Attacks tried"):
the binding of a request waiting for the upstream's manual approval to the
device that sent it lives in a SQLite state file (a restart, or a flood of
other pending requests, must not hand the approved certificate or a
server-generated key to a device replaying the CSR), and an upstream CRL
file past its nextUpdate is not silently trusted. The upstream, the proxy
harness and the helpers are those of test_authz_attacks."""

import logging
import os
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from est_lite import numbers as N
from est_lite.errors import LocalProtocolError
from est_lite_cpython.config import ConfigError
from est_lite_cpython.proxy import ProxyConfig
from helpers_coaps import CoapsSession, idevid_device, make_csr
from helpers_proxy import ProxyHarness, https_post
from helpers_server import write_identity
from test_authz_attacks import dtls, forwarded, up, upstream_device, write_crl  # noqa: F401

SEN = "/.well-known/est/manual/simpleenroll"
SKG = "/.well-known/est/manual/serverkeygen"


def harness(up, tmp, extra_toml="", **kw):
    kw.setdefault("coaps", False)
    return ProxyHarness(tmp, up, up.url.replace("127.0.0.1", "localhost"), upstream_root_pem=up.root_pem,
                        vendor_pem=os.path.join(up.tmp, "vendor.pem"), extra_toml=extra_toml, **kw)


def stopped(px):
    px.stop()
    close = getattr(px.service.ca, "close", None)  # (none before the state file: the old code's failures show)
    if close is not None:
        close()


def device_files(up, tmp, cn):
    dev = idevid_device(up, cn)
    return write_identity(str(tmp), cn, dev.key, dev.cert)


def approve_last(up):
    pending = up.ca.store.list_requests("pending")
    up.ca.store.decide(pending[-1]["id"], True)


# ---------------------------------------------------------------- the approval binding survives a restart


@pytest.mark.parametrize("path", [SEN, SKG])
def test_a_restart_does_not_hand_an_approved_request_to_another_device(up, tmp_path, path):
    """The owner's request is pending upstream; the proxy restarts (a new
    UpstreamCA on the same state file: the default
    <data_dir>/proxy-state.sqlite); the thief's replay is still refused,
    also once the upstream approved it, and the owner collects it."""
    owner = device_files(up, tmp_path, "st-owner")
    thief = device_files(up, tmp_path, "st-thief")
    _, csr = make_csr("st-owner-%s" % path[-4:])
    px = harness(up, tmp_path)
    try:
        r = https_post(px, up, path, csr, cert_files=owner)
        assert r.status == 202, (r.status, r.text)
        r = https_post(px, up, path, csr, cert_files=thief)
        assert r.status == 403 and "another client" in r.text, (r.status, r.text)
    finally:
        stopped(px)
    px = harness(up, tmp_path, ra=True)  # the same RA identity, the same state file
    try:
        n = forwarded(px)
        r = https_post(px, up, path, csr, cert_files=thief)
        assert r.status == 403 and "another client" in r.text, (r.status, r.text)
        assert os.path.exists(os.path.join(str(tmp_path), "proxydata", "proxy-state.sqlite"))
        assert len(px.service.ca.pending_owners()) == 1
        approve_last(up)
        r = https_post(px, up, path, csr, cert_files=thief)
        assert r.status == 403 and "another client" in r.text, (r.status, r.text)
        assert forwarded(px) == n
        r = https_post(px, up, path, csr, cert_files=owner)
        assert r.status == 200, (r.status, r.text)
        assert forwarded(px) == n + 1
        assert px.service.ca.pending_owners() == []
    finally:
        stopped(px)


def test_the_requester_is_named_by_its_certificate_not_by_the_connection(up, tmp_path):
    """Two sessions of one device (a new DTLS session, a new TLS connection,
    a restart) are one requester; its stored name is stable text holding
    the certificate's SHA-256."""
    dev = idevid_device(up, "st-name")
    files = write_identity(str(tmp_path), "st-name", dev.key, dev.cert)
    _, csr = make_csr("st-name")
    px = harness(up, tmp_path, coaps=True)
    try:
        with dtls(px, up, dev) as dc:
            ev = CoapsSession(dc).op(N.OP_SIMPLEENROLL, "manual", csr)
            assert type(ev).__name__ == "RetryAfter"
        r = https_post(px, up, SEN, csr, cert_files=files)  # another transport, another connection
        assert r.status == 202, (r.status, r.text)
        [(_, requester, _)] = px.service.ca.pending_owners()
        import hashlib

        fp = hashlib.sha256(dev.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        assert requester == "cert:CN=st-name sha256=%s" % fp
    finally:
        stopped(px)


# ---------------------------------------------------------------- bounds instead of eviction


def test_pending_bounds_refuse_before_forwarding(up, tmp_path, caplog):
    """A device cannot push other devices' bindings out by submitting many
    requests (the old map forgot the oldest): beyond
    max_pending_per_requester of its own, or max_pending_owners in all, a
    new request is refused with 503 / 5.03 and never reaches the upstream;
    a request already bound is still asked for (polling)."""
    px = harness(up, tmp_path, "max_pending_per_requester = 2\nmax_pending_owners = 3\n", coaps=True)
    try:
        a = device_files(up, tmp_path, "st-bound-a")
        b = device_files(up, tmp_path, "st-bound-b")
        csrs = [make_csr("st-bound-a%d" % i)[1] for i in range(3)]
        for csr in csrs[:2]:
            assert https_post(px, up, SEN, csr, cert_files=a).status == 202
        n = forwarded(px)
        r = https_post(px, up, SEN, csrs[2], cert_files=a)
        assert r.status == 503, (r.status, r.text)
        assert ("too many requests of this client are waiting for the upstream's approval (2); collect or wait "
                "for them first") in r.text
        assert forwarded(px) == n
        assert https_post(px, up, SEN, csrs[0], cert_files=a).status == 202  # polling its own: forwarded
        assert forwarded(px) == n + 1
        csr_b = make_csr("st-bound-b")[1]
        assert https_post(px, up, SEN, csr_b, cert_files=b).status == 202
        n = forwarded(px)
        c = idevid_device(up, "st-bound-c")  # over CoAPs: 5.03 with the reason
        csr_c = make_csr("st-bound-c")[1]
        with dtls(px, up, c) as dc:
            ev = CoapsSession(dc).op(N.OP_SIMPLEENROLL, "manual", csr_c)
        assert type(ev).__name__ == "RetryAfter", ev
        assert "too many requests of this proxy's clients are waiting for the upstream's approval (3)" \
            in ev.diagnostic
        assert forwarded(px) == n
        assert len(px.service.ca.pending_owners()) == 3
        # b collects its approved request: its binding goes, there is room again
        approve_last(up)
        assert https_post(px, up, SEN, csr_b, cert_files=b).status == 200
        assert len(px.service.ca.pending_owners()) == 2
        with dtls(px, up, c) as dc:
            ev = CoapsSession(dc).op(N.OP_SIMPLEENROLL, "manual", csr_c)
        assert type(ev).__name__ == "RetryAfter" and "is waiting for approval" in ev.diagnostic, ev.diagnostic
        assert forwarded(px) == n + 2
    finally:
        stopped(px)


def test_bounds_are_counted_in_the_state_file_across_restarts(up, tmp_path):
    px = harness(up, tmp_path, "max_pending_per_requester = 1\n")
    a = device_files(up, tmp_path, "st-bound-r")
    try:
        assert https_post(px, up, SEN, make_csr("st-bound-r1")[1], cert_files=a).status == 202
    finally:
        stopped(px)
    px = harness(up, tmp_path, "max_pending_per_requester = 1\n", ra=True)
    try:
        n = forwarded(px)
        assert https_post(px, up, SEN, make_csr("st-bound-r2")[1], cert_files=a).status == 503
        assert forwarded(px) == n
    finally:
        stopped(px)


def test_a_binding_expires_after_pending_owner_ttl(up, tmp_path):
    """Entries older than pending_owner_ttl_s go (lazily): from then on the
    upstream's operator is the only check, as documented."""
    now = [1_000_000.0]
    px = harness(up, tmp_path, "pending_owner_ttl_s = 100\n")
    px.service.ca.wall_clock = lambda: now[0]
    owner = device_files(up, tmp_path, "st-ttl-owner")
    thief = device_files(up, tmp_path, "st-ttl-thief")
    _, csr = make_csr("st-ttl")
    try:
        assert https_post(px, up, SEN, csr, cert_files=owner).status == 202
        now[0] += 99
        n = forwarded(px)
        r = https_post(px, up, SEN, csr, cert_files=thief)
        assert r.status == 403 and "another client" in r.text
        assert forwarded(px) == n
        now[0] += 2  # 101 s after the owner's request
        r = https_post(px, up, SEN, csr, cert_files=thief)
        assert r.status == 202, (r.status, r.text)
        assert forwarded(px) == n + 1
        [(_, requester, created)] = px.service.ca.pending_owners()
        assert "st-ttl-thief" in requester and created == now[0]
    finally:
        stopped(px)


def test_a_request_the_upstream_refused_is_unbound(up, tmp_path):
    """A final 4xx from the upstream (the operator rejected the request)
    removes the binding; a request still pending keeps it."""
    px = harness(up, tmp_path)
    owner = device_files(up, tmp_path, "st-rej")
    _, csr = make_csr("st-rej")
    try:
        assert https_post(px, up, SEN, csr, cert_files=owner).status == 202
        pending = up.ca.store.list_requests("pending")
        up.ca.store.decide(pending[-1]["id"], False, "no")
        assert len(px.service.ca.pending_owners()) == 1
        r = https_post(px, up, SEN, csr, cert_files=owner)
        assert r.status == 403 and "rejected" in r.text, (r.status, r.text)
        assert px.service.ca.pending_owners() == []
    finally:
        stopped(px)


class _StubUpstream:
    def path(self, op, label):
        return "/.well-known/est/%s%s" % (label + "/" if label else "", N.HTTP_NAMES[op])


def _csr(cn):
    return x509.load_der_x509_csr(make_csr(cn)[1])


def test_library_bindings_bounds_expiry_and_uncertain_answers():
    """UpstreamCA without a state file (in memory): the bounds count what
    expired entries left, a refused request never calls the upstream, an
    answer that may have left the request pending upstream (no answer, 5xx)
    or a 401 (about the RA's credentials) keeps the binding, a final 4xx
    removes it."""
    from est_lite.errors import LimitError
    from est_lite_cpython.proxy import UpstreamCA, UpstreamError
    from est_lite_cpython.service import PendingApproval

    now = [5000.0]
    ca = UpstreamCA(_StubUpstream(), max_pending_per_requester=2, max_pending_owners=3, pending_owner_ttl=60,
                    wall_clock=lambda: now[0])
    assert ca.state_path is None
    calls = []

    def pending():
        calls.append(1)
        raise PendingApproval("waiting", 30)

    csrs = {}

    def call(ca, cn, who, fn=pending):
        csr = csrs.setdefault(cn, _csr(cn))  # one key per name: the same request when asked again
        return ca.owned_call(N.OP_SIMPLEENROLL, "manual", csr, who, fn)

    for cn, who in (("l1", "a"), ("l2", "a"), ("l3", "b")):
        with pytest.raises(PendingApproval):
            call(ca, cn, who)
    with pytest.raises(LimitError) as e:
        call(ca, "l4", "a")
    assert (e.value.http_status, e.value.coap_code) == (503, 0xA3) and "(2)" in e.value.msg
    with pytest.raises(LimitError) as e:
        call(ca, "l5", "c")
    assert (e.value.http_status, e.value.coap_code) == (503, 0xA3) and "(3)" in e.value.msg
    assert len(calls) == 3
    now[0] += 61  # all expired: room again
    with pytest.raises(PendingApproval):
        call(ca, "l5", "c")
    assert [r for _, r, _ in ca.pending_owners()] == ["c"]

    def no_answer():
        raise UpstreamError("cannot reach the upstream", 502, 0xA2)

    def refused():
        raise UpstreamError("upstream EST server answered 400", 400, 0x80, 400)

    def ra_refused():
        raise UpstreamError("upstream EST server answered 401", 502, 0xA2, 401)

    with pytest.raises(UpstreamError):
        call(ca, "l6", "d", no_answer)
    with pytest.raises(UpstreamError):
        call(ca, "l6", "d", ra_refused)
    with pytest.raises(UpstreamError):
        call(ca, "l7", "d", refused)
    assert sorted(r for _, r, _ in ca.pending_owners()) == ["c", "d"]  # l6 kept, l7 gone
    assert call(ca, "l6", "d", lambda: "issued") == "issued"
    assert [r for _, r, _ in ca.pending_owners()] == ["c"]
    ca.close()


# ---------------------------------------------------------------- the state file


def test_state_file_is_private_and_its_directory_is_made(up, tmp_path):
    px = harness(up, tmp_path, 'state = "var/lib/proxy/state.sqlite"\n')
    try:
        path = os.path.join(str(tmp_path), "var", "lib", "proxy", "state.sqlite")
        assert px.service.ca.state_path == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert https_post(px, up, SEN, make_csr("st-mode")[1],
                          cert_files=device_files(up, tmp_path, "st-mode")).status == 202
        for p in (path, path + "-wal"):
            if os.path.exists(p):
                assert stat.S_IMODE(os.stat(p).st_mode) & 0o077 == 0, p
    finally:
        stopped(px)


def test_a_corrupt_state_file_stops_the_start_naming_it(up, tmp_path):
    px = harness(up, tmp_path)  # writes the identities and the config
    stopped(px)
    state = os.path.join(str(tmp_path), "proxydata", "proxy-state.sqlite")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(state + suffix):
            os.remove(state + suffix)
    with open(state, "wb") as f:
        f.write(os.urandom(3000))
    with pytest.raises(LocalProtocolError, match="proxy state file .*proxy-state.sqlite cannot be used"):
        harness(up, tmp_path, ra=True)
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config",
                        os.path.join(str(tmp_path), "proxy.toml"), "--no-coaps", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "est-lite: error: proxy state file %s cannot be used" % state in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------- stale upstream CRLs


DAY = 86400.0


def crl_px(up, tmp_path, extra=""):
    write_crl(up, os.path.join(str(tmp_path), "upstream-crl.pem"))
    return harness(up, tmp_path, 'upstream_crl = "upstream-crl.pem"\n' + extra)


def stale_warnings(caplog, path):
    return [r for r in caplog.records if r.levelno == logging.WARNING and path in r.getMessage()
            and "out of date" in r.getMessage()]


def test_a_stale_upstream_crl_refuses_the_upstreams_devices(up, tmp_path, caplog):
    """The CRL file is 8 days old (est-lite ca crl: nextUpdate 7 days): a
    revocation newer than it would not be seen. Refused with 503 (the file
    and its nextUpdate named) and one WARNING for the file, not one per
    request; nothing forwarded. A device listed in it is still "revoked"
    (403), and devices of other CAs are not concerned."""
    caplog.set_level(logging.WARNING, logger="est_lite.proxy")
    px = crl_px(up, tmp_path)
    crl_file = os.path.join(str(tmp_path), "upstream-crl.pem")
    nu = x509.load_pem_x509_crl(open(crl_file, "rb").read()).next_update_utc
    try:
        dev = write_identity(str(tmp_path), "st-crl", *_dev(up, "st-crl"))
        assert https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-crl")[1], cert_files=dev).status == 200
        assert stale_warnings(caplog, crl_file) == []
        px.service.ca.wall_clock = lambda: nu.timestamp() + DAY
        n = forwarded(px)
        for _ in range(3):
            r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-crl")[1], cert_files=dev)
            assert r.status == 503, (r.status, r.text)
            assert ("the upstream CRL upstream-crl.pem is out of date (nextUpdate %s); revocation cannot be "
                    "checked - update the file" % nu.strftime("%Y-%m-%d %H:%M:%SZ")) in r.text, r.text
        assert forwarded(px) == n
        assert len(stale_warnings(caplog, crl_file)) == 1
        # an IDevID (vendor CA: no upstream CRL covers it) still enrolls
        idev = device_files(up, tmp_path, "st-crl-idevid")
        assert https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-crl-i")[1],
                          cert_files=idev).status == 200
    finally:
        stopped(px)


def test_a_device_listed_in_a_stale_crl_is_still_revoked(up, tmp_path):
    key, cert = _dev(up, "st-crl-rev")
    up.ca.revoke(cert.serial_number, "keyCompromise")
    px = crl_px(up, tmp_path)
    try:
        px.service.ca.wall_clock = lambda: 4e9
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-crl-rev")[1],
                       cert_files=write_identity(str(tmp_path), "st-crl-rev", key, cert))
        assert r.status == 403 and "revoked" in r.text, (r.status, r.text)
    finally:
        stopped(px)


def test_a_stale_crl_answers_5_03_with_the_reason_over_coaps(up, tmp_path, caplog):
    """Over CoAPs the device learns why too: the DTLS handshake's
    revocation hook asks only whether the certificate is listed (a device
    refused in the handshake would see an alert and no reason); every
    operation is then answered 5.03 with the text. Nothing forwarded."""
    caplog.set_level(logging.WARNING)
    write_crl(up, os.path.join(str(tmp_path), "upstream-crl.pem"))
    px = harness(up, tmp_path, 'upstream_crl = "upstream-crl.pem"\n', coaps=True)
    try:
        dev = upstream_device(up, "st-crl-coaps")
        px.service.ca.wall_clock = lambda: 4e9
        n = forwarded(px)
        with dtls(px, up, dev) as dc:
            for op, body in ((N.OP_SIMPLEENROLL, make_csr("st-crl-coaps")[1]), (N.OP_CSRATTRS, b"")):
                ev = CoapsSession(dc).op(op, None, body)
                assert type(ev).__name__ == "RetryAfter", ev  # 5.03
                assert "the upstream CRL upstream-crl.pem is out of date" in ev.diagnostic, ev.diagnostic
        assert forwarded(px) == n
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert len(stale_warnings(caplog, os.path.join(str(tmp_path), "upstream-crl.pem"))) == 1
    finally:
        stopped(px)


def test_upstream_crl_stale_use_allows_with_one_warning(up, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="est_lite.proxy")
    px = crl_px(up, tmp_path, 'upstream_crl_stale = "use"\n')
    crl_file = os.path.join(str(tmp_path), "upstream-crl.pem")
    try:
        px.service.ca.wall_clock = lambda: 4e9
        dev = write_identity(str(tmp_path), "st-use", *_dev(up, "st-use"))
        for _ in range(2):
            r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-use")[1], cert_files=dev)
            assert r.status == 200, (r.status, r.text)
        [w] = stale_warnings(caplog, crl_file)
        assert "still used" in w.getMessage()
    finally:
        stopped(px)


def test_a_replaced_crl_file_is_picked_up(up, tmp_path, caplog):
    """The operator copies a fresh CRL over the stale one: accepted again at
    once (the file's mtime changed), and a later staleness of the new file
    warns again."""
    caplog.set_level(logging.WARNING, logger="est_lite.proxy")
    px = crl_px(up, tmp_path)
    crl_file = os.path.join(str(tmp_path), "upstream-crl.pem")
    try:
        t0 = x509.load_pem_x509_crl(open(crl_file, "rb").read()).next_update_utc.timestamp()
        px.service.ca.wall_clock = lambda: t0 + DAY
        dev = write_identity(str(tmp_path), "st-repl", *_dev(up, "st-repl"))
        post = lambda: https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-repl")[1],  # noqa: E731
                                  cert_files=dev).status
        assert post() == 503
        st = os.stat(crl_file)
        with open(crl_file, "wb") as f:
            f.write(up.ca.crl(next_update_days=30).public_bytes(serialization.Encoding.PEM))
        os.utime(crl_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert post() == 200
        assert len(stale_warnings(caplog, crl_file)) == 1
        px.service.ca.wall_clock = lambda: t0 + 40 * DAY
        assert post() == 503
        assert len(stale_warnings(caplog, crl_file)) == 2
    finally:
        stopped(px)


def test_a_crl_without_next_update_is_never_stale(up, tmp_path):
    px = crl_px(up, tmp_path)
    crl_file = os.path.join(str(tmp_path), "upstream-crl.pem")
    try:
        with open(crl_file, "wb") as f:
            f.write(_crl_without_next_update(up))
        assert x509.load_der_x509_crl(open(crl_file, "rb").read()).next_update_utc is None
        px.service.ca.wall_clock = lambda: 4e9
        dev = write_identity(str(tmp_path), "st-nonu", *_dev(up, "st-nonu"))
        r = https_post(px, up, "/.well-known/est/simpleenroll", make_csr("st-nonu")[1], cert_files=dev)
        assert r.status == 200, (r.status, r.text)
        assert px.service.ca.load_crls(strict=True)[0].next_update_utc is None  # it was read, not skipped
    finally:
        stopped(px)


def _dev(up, cn):
    d = upstream_device(up, cn)
    return d.key, d.cert


def _tlv_split(der, off=0):
    """[(start, end)] of the TLVs inside the SEQUENCE at der[off:]."""
    def head(o):
        n = der[o + 1]
        if n < 0x80:
            return o + 2, n
        k = n & 0x7F
        return o + 2 + k, int.from_bytes(der[o + 2:o + 2 + k], "big")

    start, length = head(off)
    out, o = [], start
    while o < start + length:
        s, n = head(o)
        out.append((o, s + n))
        o = s + n
    return out


def _tlv(tag, body):
    n = len(body)
    ln = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + ln + body


def _crl_without_next_update(up):
    """The upstream CA's CRL with nextUpdate left out (it is OPTIONAL in
    TBSCertList, RFC 5280 §5.1), signed again; cryptography's builder always
    writes one."""
    from cryptography.hazmat.primitives.asymmetric import ec

    crl = up.ca.crl()
    tbs = crl.tbs_certlist_bytes
    parts = [tbs[s:e] for s, e in _tlv_split(tbs)]
    # version, signature, issuer, thisUpdate, nextUpdate, ...
    assert parts[0][0] == 0x02 and parts[4][0] in (0x17, 0x18)
    new_tbs = _tlv(0x30, b"".join(parts[:4] + parts[5:]))
    key = up.ca._key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    der = crl.public_bytes(serialization.Encoding.DER)
    alg = [der[s:e] for s, e in _tlv_split(der)][1]
    return _tlv(0x30, new_tbs + alg + _tlv(0x03, b"\x00" + sig))


# ---------------------------------------------------------------- settings


BASE = {"upstream": "https://ca.example", "ra_cert": "ra.pem", "ra_key": "ra.key"}


def test_new_proxy_settings_defaults_and_paths(tmp_path):
    c = ProxyConfig(dict(BASE), base_dir=str(tmp_path))
    assert (c.state, c.max_pending_per_requester, c.max_pending_owners, c.pending_owner_ttl_s,
            c.upstream_crl_stale) == (None, 16, 100000, 30 * DAY, "refuse")
    c = ProxyConfig(dict(BASE, state="st/x.sqlite", max_pending_per_requester=4, max_pending_owners=50,
                         pending_owner_ttl_s=3600, upstream_crl_stale="use"), base_dir=str(tmp_path))
    assert c.state == os.path.join(str(tmp_path), "st", "x.sqlite")
    assert (c.max_pending_per_requester, c.max_pending_owners, c.pending_owner_ttl_s, c.upstream_crl_stale) == (
        4, 50, 3600.0, "use")


@pytest.mark.parametrize("key,value,text", [
    ("upstream_crl_stale", "ignore", "proxy.upstream_crl_stale must be \"refuse\""),
    ("upstream_crl_stale", True, "proxy.upstream_crl_stale must be str"),
    ("max_pending_per_requester", 0, "proxy.max_pending_per_requester must be a whole number >= 1"),
    ("max_pending_per_requester", True, "proxy.max_pending_per_requester must be a whole number >= 1"),
    ("max_pending_per_requester", "16", "proxy.max_pending_per_requester must be int"),
    ("max_pending_owners", -5, "proxy.max_pending_owners must be a whole number >= 1"),
    ("pending_owner_ttl_s", 0, "proxy.pending_owner_ttl_s must be a number of seconds > 0"),
    ("pending_owner_ttl_s", float("nan"), "proxy.pending_owner_ttl_s must be a number of seconds > 0"),
    ("pending_owner_ttl_s", "30d", "proxy.pending_owner_ttl_s must be"),
    ("state", "", "proxy.state must be a file name"),
    ("state", 5, "proxy.state must be str"),
])
def test_new_proxy_settings_are_checked(key, value, text):
    with pytest.raises(ConfigError) as e:
        ProxyConfig(dict(BASE, **{key: value}))
    assert text in e.value.msg, e.value.msg
