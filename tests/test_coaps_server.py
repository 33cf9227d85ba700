"""EST-coaps (RFC 9148) on the reference server: every operation with the
core's CoapOperation over the CPython DtlsClient, content formats and
Accept, discovery, per-label policy, PoP over DTLS, manual approval, and the
error answers. Results are checked with cryptography and against the CA's
store."""

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est_lite import cbor, coap
from est_lite import numbers as N
from est_lite.errors import ServerError
from est_lite_cpython import dtls as d
from helpers_coaps import (
    CoapsSession,
    EstBothServer,
    RawCoap,
    der,
    idevid_device,
    make_csr,
    operational_device,
    opt_uint,
    point,
)

GET, POST = N.GET, N.POST


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dev(srv):
    return operational_device(srv, "device-op-1")


def cert_of(ev_cert):
    return x509.load_der_x509_certificate(ev_cert)


def test_all_operations_on_one_session(srv, dev):
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        s = CoapsSession(dc)
        ca = s.cacerts()
        assert [cert_of(c) for c in ca.certs] == srv.ca.ca_certs(None)
        att = s.csrattrs()
        assert att.der == srv.service.csrattrs_provider.get("", srv.config.profile(""), None)
        key, csr = make_csr("coaps-enroll-1")
        ev = s.enroll(csr, public_key=point(key))
        cert = cert_of(ev.cert)
        cert.verify_directly_issued_by(srv.ca.issuer)
        assert cert.public_key() == key.public_key()
        assert cert.subject.rfc4514_string() == "CN=coaps-enroll-1"
        assert srv.ca.store.has_serial(cert.serial_number)
        # serverkeygen: a fresh key and a certificate for it
        ev = s.serverkeygen(csr)
        assert ev.key_type == N.CF_PKCS8
        k = serialization.load_der_private_key(ev.key_der, None)
        c = cert_of(ev.cert)
        assert c.public_key() == k.public_key() and c.public_key() != key.public_key()
        c.verify_directly_issued_by(srv.ca.issuer)
        # /skc: the certificate as application/pkix-cert inside the multipart
        ev = s.serverkeygen(csr, skc=True)
        assert cert_of(ev.cert).public_key() == serialization.load_der_private_key(ev.key_der, None).public_key()
    assert srv.issued_count() == before + 3
    st = srv.coaps_stats()
    assert st["dtls_handshakes"] >= 1 and st["enrolled"] >= 1 and st["serverkeygen"] >= 2


def test_reenroll_with_the_issued_certificate(srv, dev):
    key, csr = make_csr("coaps-renew-1")
    with srv.dtls_client(dev) as dc:
        first = cert_of(CoapsSession(dc).enroll(csr, public_key=point(key)).cert)
    # the device now authenticates with its new certificate and renews it
    from helpers_coaps import Device

    newkey, csr2 = make_csr("coaps-renew-1")
    with srv.dtls_client(Device(key, first)) as dc:
        ev = CoapsSession(dc).reenroll(csr2, public_key=point(newkey))
    renewed = cert_of(ev.cert)
    assert renewed.subject == first.subject and renewed.serial_number != first.serial_number
    assert renewed.public_key() == newkey.public_key()
    # a renewal that changes the subject is refused (4.00), nothing issued
    before = srv.issued_count()
    _, csr3 = make_csr("someone-else")
    with srv.dtls_client(Device(newkey, renewed)) as dc:
        with pytest.raises(ServerError) as e:
            CoapsSession(dc).reenroll(csr3)
    assert e.value.coap_code == N.BAD_REQUEST and "subject" in e.value.diagnostic
    assert srv.issued_count() == before


def test_reenroll_needs_a_certificate_of_a_reenroll_trust_set(srv):
    # an IDevID authenticates enrollment, but is not renewable (reenroll_trust = ["ca"])
    idev = idevid_device(srv, "dev-idevid-renew")
    _, csr = make_csr("dev-idevid-renew")
    with srv.dtls_client(idev) as dc:
        s = CoapsSession(dc)
        assert s.enroll(csr).cert
        with pytest.raises(ServerError) as e:
            s.reenroll(csr)
    assert e.value.coap_code in (N.FORBIDDEN, N.UNAUTHORIZED)


def test_accept_pkix_cert_and_content_formats(srv, dev):
    key, csr = make_csr("coaps-287")
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(GET, raw.path("crts"))
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS
        r = raw.request(GET, raw.path("crts"), accept=N.CF_PKIX_CERT)
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKIX_CERT
        assert x509.load_der_x509_certificate(bytes(r.payload)) == srv.ca.root
        r = raw.request(GET, raw.path("att"))
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_CSRATTRS
        r = raw.request(POST, raw.path("sen"), csr, content_format=N.CF_PKCS10, accept=N.CF_PKIX_CERT)
        assert r.code == N.CHANGED and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKIX_CERT
        assert x509.load_der_x509_certificate(bytes(r.payload)).public_key() == key.public_key()
        r = raw.request(POST, raw.path("skg"), csr, content_format=N.CF_PKCS10, accept=N.CF_MULTIPART_CORE)
        assert r.code == N.CHANGED and opt_uint(r, N.CONTENT_FORMAT) == N.CF_MULTIPART_CORE
        parts = cbor.decode_multipart(bytes(r.payload))
        assert [p[0] for p in parts] == [N.CF_PKCS8, N.CF_PKCS7_CERTS]
        r = raw.request(POST, raw.path("skc"), csr, content_format=N.CF_PKCS10)
        parts = cbor.decode_multipart(bytes(r.payload))
        assert [p[0] for p in parts] == [N.CF_PKCS8, N.CF_PKIX_CERT]
        x509.load_der_x509_certificate(bytes(parts[1][1]))
        # the CoapOperation with Accept 287 picks the single certificate
        ev = CoapsSession(dc).enroll(csr, accept=N.CF_PKIX_CERT, public_key=point(key))
        assert cert_of(ev.cert).public_key() == key.public_key()


def test_not_acceptable_and_unsupported_content_format(srv, dev):
    _, csr = make_csr("coaps-cf")
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        for path, code, kw in [
            ("crts", GET, dict(accept=N.CF_CSRATTRS)),
            ("att", GET, dict(accept=N.CF_PKCS7_CERTS)),
            ("sen", POST, dict(accept=N.CF_CSRATTRS, content_format=N.CF_PKCS10, payload=csr)),
            ("skg", POST, dict(accept=N.CF_PKCS7_CERTS, content_format=N.CF_PKCS10, payload=csr)),
        ]:
            r = raw.request(code, raw.path(path), **kw)
            assert r.code == N.NOT_ACCEPTABLE, (path, r)
            assert b"content format" in bytes(r.payload)
        for cf in (None, N.CF_OCTET_STREAM, N.CF_PKCS7_CERTS, N.CF_TEXT_PLAIN):
            r = raw.request(POST, raw.path("sen"), csr, content_format=cf)
            assert r.code == N.UNSUPPORTED_CONTENT_FORMAT, (cf, r)
            assert b"286" in bytes(r.payload)
    assert srv.issued_count() == before


def test_error_codes_with_diagnostics(srv, dev):
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        cases = [
            (GET, raw.path("sen"), b"", {}, N.METHOD_NOT_ALLOWED),
            (POST, raw.path("crts"), b"", {}, N.METHOD_NOT_ALLOWED),
            (GET, raw.path("crts", "nosuchlabel"), b"", {}, N.NOT_FOUND),
            (GET, raw.path("cacerts"), b"", {}, N.NOT_FOUND),  # HTTPS long name
            (GET, raw.path("frobnicate"), b"", {}, N.NOT_FOUND),
            (GET, [".well-known", "est"], b"", {}, N.NOT_FOUND),
            (POST, raw.path("cmc"), b"0\x00", dict(content_format=N.CF_PKCS10), N.NOT_IMPLEMENTED),
            (POST, raw.path("sen"), b"not a csr", dict(content_format=N.CF_PKCS10), N.BAD_REQUEST),
            (POST, raw.path("sen"), b"0\x03\x02\x01\x00", dict(content_format=N.CF_PKCS10), N.BAD_REQUEST),
            (POST, raw.path("sen"), b"", dict(content_format=N.CF_PKCS10), N.BAD_REQUEST),
        ]
        for code, path, payload, kw, want in cases:
            r = raw.request(code, path, payload, **kw)
            assert r.code == want, (path, N.code_str(r.code), bytes(r.payload))
            assert 0 < len(r.payload) <= 120  # a short diagnostic for a person
            bytes(r.payload).decode("utf-8")
        r = raw.request(GET, raw.path("cacerts"))
        assert b"crts" in bytes(r.payload)
    assert srv.issued_count() == before


def test_labels_and_per_label_policy(srv, dev):
    with srv.dtls_client(dev) as dc:
        s = CoapsSession(dc)
        # basiconly: HTTP Basic only, no renewal -> a certificate cannot
        # authenticate over CoAP, not even for crts (4.01)
        for fn in (s.cacerts, s.csrattrs):
            with pytest.raises(ServerError) as e:
                fn("basiconly")
            assert e.value.coap_code == N.UNAUTHORIZED
        # strict: enrollment by HTTP Basic only (4.01 over CoAP); our
        # certificate may renew there, so it may read crts
        assert s.cacerts("strict").certs
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("x", org="Example")[1], "strict")
        assert e.value.coap_code == N.UNAUTHORIZED
        assert "HTTP Basic" in e.value.diagnostic
        # certonly trusts only the vendor CA: the operational certificate is refused
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("y")[1], "certonly")
        assert e.value.coap_code in (N.FORBIDDEN, N.UNAUTHORIZED)
        # the coapsonly label is fine
        key, csr = make_csr("label-dev")
        ev = s.enroll(csr, "coapsonly", public_key=point(key))
        assert cert_of(ev.cert).public_key() == key.public_key()
    idev = idevid_device(srv, "vendor-dev-9")
    with srv.dtls_client(idev) as dc:
        key, csr = make_csr("vendor-dev-9")
        ev = CoapsSession(dc).enroll(csr, "certonly", public_key=point(key))
        assert cert_of(ev.cert).subject.rfc4514_string() == "CN=vendor-dev-9"


def test_pop_linking_with_tls_unique_over_dtls(srv, dev):
    # label "pop": pop = "required"; the CPython client negotiates the
    # extended master secret, so tls-unique is available on both ends
    with srv.dtls_client(dev) as dc:
        assert dc.tls_unique
        s = CoapsSession(dc)
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("pop-dev")[1], "pop")
        assert e.value.coap_code == N.FORBIDDEN and "PoP" in e.value.diagnostic
        wrong = base64.b64encode(b"\x00" * 12).decode()
        with pytest.raises(ServerError) as e:
            s.enroll(make_csr("pop-dev", challenge=wrong)[1], "pop")
        assert e.value.coap_code == N.FORBIDDEN
        key, csr = make_csr("pop-dev", challenge=base64.b64encode(dc.tls_unique).decode())
        ev = s.enroll(csr, "pop", public_key=point(key))
        assert cert_of(ev.cert).public_key() == key.public_key()
    # the binding of another session does not work
    with srv.dtls_client(dev) as dc2:
        with pytest.raises(ServerError):
            CoapsSession(dc2).enroll(csr, "pop")


def test_manual_approval_503_then_certificate(srv, dev):
    key, csr = make_csr("approve-me")
    with srv.dtls_client(dev) as dc:
        s = CoapsSession(dc)
        ev = s.enroll(csr, "manual", public_key=point(key))
        assert type(ev).__name__ == "RetryAfter" and ev.seconds == 7
        raw = RawCoap(dc)
        r = raw.request(POST, raw.path("sen", "manual"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.SERVICE_UNAVAILABLE and opt_uint(r, N.MAX_AGE) == 7
        assert b"waiting for approval" in bytes(r.payload)
    pending = srv.ca.store.list_requests("pending")
    assert len(pending) == 1
    srv.ca.store.decide(pending[0]["id"], True)
    with srv.dtls_client(dev) as dc:  # a later retry, on a new session
        ev = CoapsSession(dc).enroll(csr, "manual", public_key=point(key))
    c = cert_of(ev.cert)
    assert c.public_key() == key.public_key()
    with srv.dtls_client(dev) as dc:  # and again: the same certificate
        assert cert_of(CoapsSession(dc).enroll(csr, "manual").cert) == c


def test_discovery_lists_the_est_resources(srv, dev):
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r, payload = raw.get_all([".well-known", "core"])
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_LINK_FORMAT
        text = payload.decode()
        assert '</.well-known/est/crts>;rt="ace.est.crts";ct="281 287"' in text
        assert '</.well-known/est/sen>;rt="ace.est.sen";ct="281 287"' in text
        assert '</.well-known/est/att>;rt="ace.est.att";ct=285' in text
        assert '</.well-known/est/skg>;rt="ace.est.skg";ct=62' in text
        assert '</.well-known/est/manual/sren>;rt="ace.est.sren"' in text
        # strict has serverkeygen = false: no skg/skc links there
        assert "/strict/skg" not in text and "/strict/sen" in text
        r = raw.request(GET, [".well-known", "core"], options=[(N.URI_QUERY, b"rt=ace.est.sen")])
        links = bytes(r.payload).decode().split(",")
        assert links and all('rt="ace.est.sen"' in x for x in links)
        assert "</.well-known/est/sen>;rt=\"ace.est.sen\";ct=\"281 287\"" in links
        r, payload = raw.get_all([".well-known", "core"], options=[(N.URI_QUERY, b"rt=ace.est*")])
        assert payload.decode() == text
        r = raw.request(GET, [".well-known", "core"], options=[(N.URI_QUERY, b"rt=core.rd")])
        assert bytes(r.payload) == b""


def test_crts_287_refused_when_the_chain_has_two_certificates(tmp_path):
    s = EstBothServer(tmp_path, intermediate=True)
    try:
        dev = operational_device(s)
        with s.dtls_client(dev) as dc:
            raw = RawCoap(dc)
            r = raw.request(GET, raw.path("crts"), accept=N.CF_PKIX_CERT)
            assert r.code == N.NOT_ACCEPTABLE and b"281" in bytes(r.payload)
            ev = CoapsSession(dc).cacerts()
            assert sorted(c.serial_number for c in map(cert_of, ev.certs)) == sorted(
                c.serial_number for c in s.ca.ca_certs(None))
            # the issuing CA's certificate reached the client in the handshake
            assert [c.subject for c in dc.peer_chain][1:] == [s.ca.issuer.subject]
    finally:
        s.stop()


def test_gcm_and_ccm8_sessions(srv, dev):
    for suite in (d.SUITE_CCM8, d.SUITE_GCM):
        with srv.dtls_client(dev, ciphers=[suite]) as dc:
            assert dc.cipher == suite
            assert CoapsSession(dc).cacerts().certs


def test_revoked_device_is_refused_in_the_handshake(srv):
    from est_lite.errors import SecurityError, TransportError

    dev = operational_device(srv, "to-be-revoked")
    with srv.dtls_client(dev) as dc:
        assert CoapsSession(dc).cacerts().certs
    srv.ca.revoke(dev.cert.serial_number, "keyCompromise")
    with pytest.raises((SecurityError, TransportError)):
        srv.dtls_client(dev, timeout=5)


def test_issued_certificate_fields_follow_the_profile(srv, dev):
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fields-dev")]))
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("fields.example")]), critical=False)
    from cryptography.hazmat.primitives import hashes

    csr = der(b.sign(key, hashes.SHA256()))
    with srv.dtls_client(dev) as dc:
        c = cert_of(CoapsSession(dc).enroll(csr, public_key=point(key)).cert)
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fields.example"]
    life = c.not_valid_after_utc - c.not_valid_before_utc
    assert 89 <= life.days <= 91  # validity_days = 90 in the test config


def test_piggybacked_answers_and_duplicate_requests(srv, dev):
    """A retransmitted POST (same message id) gets the same answer and does
    not issue twice (aiocoap's deduplication per session)."""
    _, csr = make_csr("dup-dev")
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        msg = coap.request(POST, [".well-known", "est", "sen"], b"\x42\x42", 0x4242, content_format=N.CF_PKCS10,
                           payload=csr)
        answers = []
        for _ in range(3):
            dc.send(msg.encode())
            data = dc.recv(timeout=5)
            answers.append(coap.decode(data))
    assert all(a.code == N.CHANGED and a.type == 2 and a.mid == 0x4242 for a in answers)
    assert len({bytes(a.payload) for a in answers}) == 1
    assert srv.issued_count() == before + 1
