"""RA support in the EST service (RFC 7030 §3.7): a client whose TLS
certificate carries id-kp-cmcRA and chains to a configured `ra_trust` set
requests for devices -- simplereenroll against the device's certificate
found in the store, no PoP check (the RA checked the device's binding on
its own link). Then the proxy with its default reenroll_as =
"simplereenroll" in front of our own server, PoP-linked CSRs included."""

import base64
import os

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from est_lite import numbers as N
from est_lite.errors import ServerError
from est_lite_cpython.config import ConfigError, ServerConfig
from helpers_coaps import CoapsSession, Device, idevid_device, point
from helpers_proxy import CMC_RA, ProxyHarness, issue
from helpers_server import BASE_CONFIG, PASSWORD, USER, EstTestServer, make_csr, write_identity

# every profile trusts RAs issued by this server's CA, except "nora"
RA_CONFIG = BASE_CONFIG.replace("[server]\n", "[server]\nra_trust = [\"ca\"]\n", 1) + """
[profiles.nora]
auth = ["cert"]
ra_trust = []
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    s = EstTestServer(tmp_path_factory.mktemp("ra-up"), config_text=RA_CONFIG)
    yield s
    s.stop()


def ident(up, tmp, name, *, issuer=None, ekus=(ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA), cn=None):
    """(cert_path, key_path) of a client identity issued by our CA (or the vendor's)."""
    if issuer is None:
        key, cert = issue(up.ca.issuer, up.ca._key, cn or name, ekus=list(ekus))
        up.ca.store.add_certificate(cert, label="", requester="test")
    else:
        key, cert = issue(issuer["cert"], issuer["key"], cn or name, ekus=list(ekus))
    return write_identity(str(tmp), name, key, cert)


def enroll_device(up, cn, label=None):
    key, csr = make_csr(cn)
    r = up.request("POST", up.path("simpleenroll", label), csr, auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    return key, r.certs()[0]


def post(up, op, csr, files, label=None):
    return up.request("POST", up.path(op, label), csr, cert=files[0], key=files[1])


def test_ra_reenrolls_a_device_by_the_certificate_in_the_store(up, tmp_path):
    ra = ident(up, tmp_path, "ra-1")
    _, c1 = enroll_device(up, "ra-dev-1")
    key2, csr2 = make_csr("ra-dev-1")
    r = post(up, "simplereenroll", csr2, ra)
    assert r.status == 200, r.text
    c2 = r.certs()[0]
    assert c2.subject == c1.subject and c2.public_key() == key2.public_key() and c2.serial_number != c1.serial_number
    row = up.ca.store._db().execute("SELECT requester FROM certs WHERE subject=? ORDER BY rowid DESC LIMIT 1",
                                    (c2.subject.rfc4514_string(),)).fetchone()
    assert row[0].startswith("ra:CN=ra-1")
    # the subject must have a current certificate here
    r = post(up, "simplereenroll", make_csr("never-enrolled")[1], ra)
    assert r.status == 403 and "nothing to renew" in r.text
    # the SANs must be kept, as for a device's own renewal
    r = post(up, "simplereenroll", make_csr("ra-dev-1", sans=["x.example.com"])[1], ra)
    assert r.status == 400 and "subjectAltName" in r.text
    # the current (newest) certificate revoked: refused, although c1, the
    # older one, is still valid -- it must not stand in for the revoked c2
    n = up.ca.store.count_certificates()
    up.ca.store.revoke(c2.serial_number)
    r = post(up, "simplereenroll", make_csr("ra-dev-1")[1], ra)
    assert r.status == 403 and "is revoked" in r.text and ("serial %X" % c2.serial_number) in r.text, r.text
    assert up.ca.store.count_certificates() == n  # nothing issued
    # every certificate of the subject revoked: refused
    up.ca.store.revoke(c1.serial_number)
    r = post(up, "simplereenroll", make_csr("ra-dev-1")[1], ra)
    assert r.status == 403 and "is revoked" in r.text


def test_ra_reenroll_refuses_an_expired_current_certificate(up, tmp_path):
    """The newest certificate of the subject has expired (the store's clock
    moved past it): 403 naming the date, nothing issued."""
    ra = ident(up, tmp_path, "ra-exp")
    _, c1 = enroll_device(up, "ra-dev-exp")
    n = up.ca.store.count_certificates()
    clock = up.ca.store.clock
    up.ca.store.clock = lambda: c1.not_valid_after_utc.timestamp() + 1
    try:
        r = post(up, "simplereenroll", make_csr("ra-dev-exp")[1], ra)
    finally:
        up.ca.store.clock = clock
    assert r.status == 403 and "expired on %s" % c1.not_valid_after_utc.strftime("%Y-%m-%d") in r.text, r.text
    assert up.ca.store.count_certificates() == n


def test_ra_requests_skip_pop_but_devices_do_not(up, tmp_path):
    ra = ident(up, tmp_path, "ra-2")
    dev = ident(up, tmp_path, "dev-2", ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    # the "pop" label requires PoP; the device's binding was on the RA's device link
    _, csr = make_csr("pop-dev-2", challenge=base64.b64encode(b"\x01" * 12).decode())
    r = post(up, "simpleenroll", csr, ra, "pop")
    assert r.status == 200, r.text
    r = post(up, "simpleenroll", csr, dev, "pop")
    assert r.status == 403 and "PoP" in r.text
    _, bare = make_csr("pop-dev-3")
    assert post(up, "simpleenroll", bare, ra, "pop").status == 200
    assert post(up, "simpleenroll", bare, dev, "pop").status == 403


def test_who_cannot_reenroll_for_someone_else(up, tmp_path):
    _, victim = enroll_device(up, "victim-1")
    csr = make_csr("victim-1")[1]
    no_eku = ident(up, tmp_path, "ra-no-eku", ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    dev = ident(up, tmp_path, "dev-3", ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    ra = ident(up, tmp_path, "ra-3")
    n = up.ca.store.count_certificates()
    # an RA certificate without id-kp-cmcRA is just a client: the subject must be its own
    r = post(up, "simplereenroll", csr, no_eku)
    assert r.status == 400 and "keep the subject" in r.text
    # id-kp-cmcRA from a CA outside ra_trust (the vendor's): not an RA, and not trusted for renewal
    vendor = {"cert": up.vendor["cert"], "key": up.vendor["key"]}
    foreign = ident(up, tmp_path, "ra-foreign", issuer=vendor)
    r = post(up, "simplereenroll", csr, foreign)
    assert r.status in (401, 403) and "trusted" in r.text
    # a device (no RA) renewing someone else's subject
    r = post(up, "simplereenroll", csr, dev)
    assert r.status == 400 and "keep the subject" in r.text
    # a label whose profile trusts no RA: the RA certificate is a device's there
    r = post(up, "simplereenroll", csr, ra, "nora")
    assert r.status == 400 and "keep the subject" in r.text
    assert up.ca.store.count_certificates() == n
    assert post(up, "simplereenroll", csr, ra).status == 200  # control: the same RA where RAs are trusted


def test_ra_trust_config():
    cfg = ServerConfig({"server": {"ra_trust": ["ca"]}, "profiles": {"default": {}, "x": {"ra_trust": []}}})
    assert cfg.profile("").ra_trust == ("ca",) and cfg.profile("x").ra_trust == ()
    assert ServerConfig({}).profile("").ra_trust == ()
    with pytest.raises(ConfigError, match="nope"):
        ServerConfig({"profiles": {"default": {"ra_trust": ["nope"]}}})
    with pytest.raises(ConfigError, match="nope"):
        ServerConfig({"server": {"ra_trust": ["nope"]}})


# -- the proxy in front of our server, reenroll_as = "simplereenroll" (its default) --------------


@pytest.fixture(scope="module")
def px(up, tmp_path_factory):
    p = ProxyHarness(tmp_path_factory.mktemp("ra-proxy"), up, up.url.replace("127.0.0.1", "localhost"),
                     upstream_root_pem=up.root_pem, vendor_pem=os.path.join(up.tmp, "vendor.pem"),
                     reenroll_as="simplereenroll")
    yield p
    p.stop()


def test_proxy_passes_simplereenroll_and_pop_linked_csrs(up, px, monkeypatch):
    calls = []
    orig = up.service.simplereenroll

    def spy(label, der, ctx):
        calls.append(ctx.peer_chain[0].subject.rfc4514_string())
        return orig(label, der, ctx)

    monkeypatch.setattr(up.service, "simplereenroll", spy)
    dev = idevid_device(up, "px-ra-dev")
    with px.dtls_client(dev, [up.ca.root]) as dc:
        # PoP-linked: the device's own DTLS binding; the proxy checks it, the upstream trusts the RA
        key, csr = make_csr("px-ra-dev", challenge=base64.b64encode(dc.tls_unique).decode())
        c1 = x509.load_der_x509_certificate(CoapsSession(dc).enroll(csr, public_key=point(key)).cert)
    assert c1.public_key() == key.public_key()
    with px.dtls_client(dev, [up.ca.root]) as dc:
        # a binding of another session is refused by the proxy, nothing forwarded
        n = px.upstream_stats["requests"]
        _, bad = make_csr("px-ra-dev", challenge=base64.b64encode(b"\x00" * 12).decode())
        with pytest.raises(ServerError) as e:
            CoapsSession(dc).enroll(bad)
        assert e.value.coap_code == N.FORBIDDEN and px.upstream_stats["requests"] == n
    key2, csr2 = make_csr("px-ra-dev")
    with px.dtls_client(Device(key, c1), [up.ca.root]) as dc:
        c2 = x509.load_der_x509_certificate(CoapsSession(dc).reenroll(csr2, public_key=point(key2)).cert)
    assert c2.subject == c1.subject and c2.public_key() == key2.public_key()
    assert calls == ["CN=est-lite RA"]  # the upstream served simplereenroll, for the RA
    # another device cannot renew px-ra-dev's subject through the proxy
    other = idevid_device(up, "px-ra-other")
    with px.dtls_client(other, [up.ca.root]) as dc:
        with pytest.raises(ServerError) as e:
            CoapsSession(dc).reenroll(make_csr("px-ra-dev")[1])
    assert e.value.coap_code in (N.BAD_REQUEST, N.FORBIDDEN, N.UNAUTHORIZED)
    assert calls == ["CN=est-lite RA"]


def test_example_config_commented_coaps_and_ra_sections_are_valid(tmp_path):
    # uncomment [coaps], the RA keys and [profiles.ra] of examples/server.toml: they must load
    import re
    import tomllib

    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "examples", "server.toml")).read()
    out, on = [], False
    for line in text.splitlines():
        if re.match(r"# \[(coaps|profiles\.ra)\]", line):
            on = True
        elif not line.startswith("# ") or line.startswith("# /"):
            on = False
        if on or line.startswith("# ra_trust"):
            line = line[2:]
        out.append(line)
    data = tomllib.loads("\n".join(out))
    assert "coaps" in data and "ra" in data["profiles"]
    data["profiles"]["ra"]["ra_trust"] = ["ca"]  # [trust.ra] needs a file
    cfg = ServerConfig(data, base_dir=str(tmp_path))
    assert cfg.coaps_enabled and cfg.coaps_port == 5684 and cfg.coaps_workers == 0
    assert cfg.profile("ra").ra_trust == ("ca",) and cfg.profile("ra").pop == "required"
    assert cfg.profile("").ra_trust == ()
