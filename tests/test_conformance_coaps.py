"""RFC 9148 (EST-coaps) conformance: the normative statements of
docs/conformance-coaps.md that no other test file shows, one test each
(the table names the test of every row). Server and proxy rows run against
the reference server over a real DTLS session; client rows drive the
core's CoapOperation with crafted answers (no socket)."""

import datetime
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7 as cpkcs7
from cryptography.x509.oid import NameOID

from est_lite import cbor, coap
from est_lite import client as C
from est_lite import numbers as N
from est_lite.errors import EstError, LocalProtocolError, RemoteProtocolError, ServerError
from est_lite_cpython import dtls as d
from helpers_coaps import CoapsSession, EstBothServer, RawCoap, make_csr, operational_device, opt_uint

GET, POST = N.GET, N.POST

EXTRA = """
[profiles.noattrs]
csrattrs = []
reenroll = false
client_cert_trust = ["ca", "idevid"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("conf-coaps"), extra_toml=EXTRA)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dev(srv):
    return operational_device(srv, "conf-dev-1")


# ---------------------------------------------------------------- server


def test_att_without_attributes_is_4_04(srv, dev):
    # RFC 9148 §4.5: "4.04 is used when the resource is not available for
    # the client" (EST's 204/404 for csrattrs). An empty 2.05 carrying
    # Content-Format 285 is not a valid application/csrattrs (a DER SEQUENCE).
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(GET, raw.path("att", "noattrs"))
        assert r.code == N.NOT_FOUND, N.code_str(r.code)
        assert opt_uint(r, N.CONTENT_FORMAT) is None  # a diagnostic payload has none
        assert b"no CSR attributes" in bytes(r.payload)
        # a label with attributes still answers 2.05 + 285
        r = raw.request(GET, raw.path("att"))
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_CSRATTRS and len(r.payload) > 2
        # the core client reads 4.04 on /att as "no attributes", with the text
        ev = CoapsSession(dc).csrattrs("noattrs")
        assert ev.attrs is None and ev.der == b"" and "no CSR attributes" in ev.diagnostic


def test_discovery_always_lists_crts_sen_sren(srv, dev):
    # RFC 9148 §4.1: the crts, sen and sren links "MUST be returned if the
    # server supports resource discovery"; the others only if implemented.
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r, payload = raw.get_all([".well-known", "core"], options=[(N.URI_QUERY, b"rt=ace.est*")])
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_LINK_FORMAT
        links = payload.decode().split(",")
        for label in ("", "noattrs/", "basiconly/", "strict/"):
            for short in ("crts", "sen", "sren"):
                want = '</.well-known/est/%s%s>;rt="ace.est.%s";ct="281 287"' % (label, short, short)
                assert want in links, want
        # optional functions only where implemented: strict has serverkeygen = false
        assert '</.well-known/est/strict/skg>;rt="ace.est.skg";ct=62' not in links
        assert '</.well-known/est/skg>;rt="ace.est.skg";ct=62' in links
        assert '</.well-known/est/skc>;rt="ace.est.skc";ct=62' in links
        assert '</.well-known/est/att>;rt="ace.est.att";ct=285' in links
        # the listed sren of a label that does not renew exists: 4.03, not 4.04
        _, csr = make_csr("conf-dev-1")
        r = raw.request(POST, raw.path("sren", "noattrs"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.FORBIDDEN, N.code_str(r.code)


def test_uri_host_and_uri_port_are_accepted(srv, dev):
    # RFC 9148 §4.4: Uri-Host and Uri-Port (critical options) may be sent;
    # omitted they are the destination address and port. Not 4.02.
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(GET, raw.path("crts"),
                        options=[(N.URI_HOST, b"127.0.0.1"), (N.URI_PORT, coap.uint_encode(srv.coaps_port))])
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS


def test_block2_crts_in_small_blocks_with_size2_and_etag(srv, dev):
    # RFC 9148 §4.6 / RFC 7959: the server MUST implement Block2; a GET of
    # /crts in 16-byte blocks is the same representation as the whole.
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        whole = bytes(raw.request(GET, raw.path("crts")).payload)
        got = []
        etags = set()
        num = 0
        while True:
            r = raw.request(GET, raw.path("crts"), block2=(num, 0, 0))
            assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS
            bnum, more, szx = coap.block_decode(coap.opt(r, N.BLOCK2))
            assert (bnum, szx) == (num, 0)
            if num == 0:
                assert opt_uint(r, N.SIZE2) == len(whole)
            # every block carries the same ETag (RFC 7959 §2.4), so a client
            # can tell blocks of another representation apart
            etags.add(bytes(coap.opt(r, N.ETAG)))
            got.append(bytes(r.payload))
            if not more:
                break
            num += 1
        assert b"".join(got) == whole and num == (len(whole) - 1) // 16
        assert len(etags) == 1 and 1 <= len(etags.pop()) <= 8


def test_serverkeygen_ignores_the_csr_signature(srv, dev):
    # RFC 9148 §4.8 (as RFC 7030 §4.4.1): "the server MUST ignore the public
    # key values and signature in the CSR"
    _, csr = make_csr("conf-skg-badsig")
    bad = csr[:-1] + bytes([csr[-1] ^ 1])
    assert not x509.load_der_x509_csr(bad).is_signature_valid
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(POST, raw.path("skg"), bad, content_format=N.CF_PKCS10)
        assert r.code == N.CHANGED, (N.code_str(r.code), bytes(r.payload))
        (kcf, key), (ccf, p7) = cbor.decode_multipart(bytes(r.payload))
        assert (kcf, ccf) == (N.CF_PKCS8, N.CF_PKCS7_CERTS)
        k = serialization.load_der_private_key(bytes(key), None)
        cert = cpkcs7.load_der_pkcs7_certificates(bytes(p7))[0]
        assert cert.public_key() == k.public_key()
        assert cert.subject.rfc4514_string() == "CN=conf-skg-badsig"
        # simpleenroll still checks it (the signature is the proof of possession there)
        r = raw.request(POST, raw.path("sen"), bad, content_format=N.CF_PKCS10)
        assert r.code == N.BAD_REQUEST and b"signature" in bytes(r.payload)


# ---------------------------------------------------------------- DTLS (RFC 9148 §3, §9; RFC 7925)


def test_dtls_suites_are_ecdhe_ecdsa_aead_only(srv, dev):
    # §3: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 is mandatory; §9: no _EXPORT_ or
    # _DES_ suites; certificate authentication only (no PSK, no anonymous).
    with srv.dtls_client(dev, ciphers=[d.SUITE_CCM8]) as dc:
        assert dc.cipher == d.SUITE_CCM8
        assert CoapsSession(dc).cacerts().certs
    ctxs = list(srv.coaps.dtls._contexts.values())
    assert ctxs
    from OpenSSL import SSL

    for ctx in ctxs:
        # OpenSSL also lists its TLS 1.3 suites, which DTLS 1.2 (the only
        # version the context allows) never negotiates
        offered = [c for c in SSL.Connection(ctx).get_cipher_list() if not c.startswith("TLS_")]
        assert offered == [d.SUITE_CCM8, d.SUITE_GCM], offered
        assert not [c for c in offered if "PSK" in c or "DES" in c or "EXP" in c or "RSA" in c or "NULL" in c]


def test_dtls_server_prefers_ccm8_to_the_clients_order(srv, dev):
    # §3's mandatory suite, and 8 bytes shorter per record than GCM's tag:
    # the server's order decides (OP_CIPHER_SERVER_PREFERENCE), a client
    # offering GCM first gets CCM_8; one offering GCM alone still gets GCM
    with srv.dtls_client(dev, ciphers=[d.SUITE_GCM, d.SUITE_CCM8]) as dc:
        assert dc.cipher == d.SUITE_CCM8
        assert CoapsSession(dc).cacerts().certs
    with srv.dtls_client(dev, ciphers=[d.SUITE_GCM]) as dc:
        assert dc.cipher == d.SUITE_GCM


@pytest.mark.parametrize("suite", ["PSK-AES128-CCM8", "ECDHE-PSK-AES128-CBC-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"])
def test_dtls_psk_or_rsa_only_clients_get_no_session(srv, dev, suite):
    # the client's OpenSSL builds the context: the refusal is the server's
    # (no shared suite: a handshake failure), not a local configuration error
    d.base_context(False, [suite])
    with pytest.raises(EstError) as e:
        srv.dtls_client(dev, ciphers=[suite], timeout=5).close()
    assert not isinstance(e.value, LocalProtocolError), e.value


# ---------------------------------------------------------------- client (core CoapOperation)


def _run(op, *answers):
    """Send the operation's request(s) and feed piggybacked answers built
    by answers[i](request) -> (code, options, payload); returns the event."""
    for make in answers:
        req = coap.decode(bytes(op.send(0.0)))
        code, opts, payload = make(req)
        op.receive_data(coap.Message(N.ACK, code, req.mid, req.token, opts, payload).encode(), 0.0)
        ev = op.next_event()
        if ev is not C.NEED_DATA:
            return ev
    return op.next_event()


def _cert_and_key(cn="conf-client"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    p8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    return cert, p8


def _uint(n, v):
    return (n, coap.uint_encode(v))


def test_client_takes_skg_parts_in_either_order():
    # RFC 9148 §4.8: the two representations "do not need to be in a
    # specific order, since each representation is preceded by its
    # Content-Format ID"
    cert, p8 = _cert_and_key()
    cder = cert.public_bytes(serialization.Encoding.DER)
    p7 = cpkcs7.serialize_certificates([cert], serialization.Encoding.DER)
    _, csr = make_csr("conf-client")
    for parts in ([(N.CF_PKCS8, p8), (N.CF_PKCS7_CERTS, p7)], [(N.CF_PKCS7_CERTS, p7), (N.CF_PKCS8, p8)],
                  [(N.CF_PKIX_CERT, cder), (N.CF_PKCS8, p8)]):
        body = _multipart(parts)
        op = C.CoapOperation(N.OP_SERVERKEYGEN, body=csr, token=b"\x01\x02", mid=7)
        ev = _run(op, lambda req: (N.CHANGED, [_uint(N.CONTENT_FORMAT, N.CF_MULTIPART_CORE)], body))
        assert ev.key_der == p8 and ev.key_type == N.CF_PKCS8 and ev.cert == cder, parts[0][0]


def _multipart(parts):
    from est_lite_cpython.codec_server import encode_multipart

    return encode_multipart(parts)


def test_client_takes_2_04_and_2_05_and_content_format_287():
    # §4.5: 2.05 answers GET, 2.04 answers POST. The client takes either
    # success code for either method (RFC 8075 maps both to HTTP 200), and
    # a single certificate as 287 where it asked for it (§4.3)
    cert, _ = _cert_and_key()
    cder = cert.public_bytes(serialization.Encoding.DER)
    p7 = cpkcs7.serialize_certificates([cert], serialization.Encoding.DER)
    _, csr = make_csr("conf-client")
    for code in (N.CONTENT, N.CHANGED):
        op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, token=b"\x05", mid=1, accept=N.CF_PKIX_CERT)
        seen = []

        def answer(req, code=code):
            seen.append(req)
            return code, [_uint(N.CONTENT_FORMAT, N.CF_PKIX_CERT)], cder

        ev = _run(op, answer)
        assert ev.cert == cder
        assert opt_uint(seen[0], N.ACCEPT) == N.CF_PKIX_CERT and seen[0].type == N.CON
        assert opt_uint(seen[0], N.CONTENT_FORMAT) == N.CF_PKCS10
        op = C.CoapOperation(N.OP_CACERTS, token=b"\x06", mid=2)
        ev = _run(op, lambda req, code=code: (code, [_uint(N.CONTENT_FORMAT, N.CF_PKCS7_CERTS)], p7))
        assert ev.certs == [cder]


def test_client_5_03_max_age_and_its_default():
    # §4.7: 5.03 + Max-Age: the client waits Max-Age and resends; no
    # Max-Age is the CoAP default of 60 s (RFC 7252 §5.10.5)
    _, csr = make_csr("conf-client")
    for opts, want in (([_uint(N.MAX_AGE, 17)], 17), ([], 60)):
        op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, token=b"\x07", mid=3)
        ev = _run(op, lambda req, opts=opts: (N.SERVICE_UNAVAILABLE, opts, b"waiting for approval"))
        assert type(ev).__name__ == "RetryAfter" and ev.seconds == want and ev.diagnostic == "waiting for approval"


def test_client_att_4_04_is_no_attributes_and_other_errors_raise():
    # Table 3: /att 4.04 = not available; any other 4.xx/5.xx is a failure
    op = C.CoapOperation(N.OP_CSRATTRS, token=b"\x08", mid=4)
    ev = _run(op, lambda req: (N.NOT_FOUND, [], b"no CSR attributes for this label"))
    assert ev.attrs is None and ev.diagnostic == "no CSR attributes for this label"
    op = C.CoapOperation(N.OP_CACERTS, token=b"\x09", mid=5)
    with pytest.raises(ServerError) as e:
        _run(op, lambda req: (N.NOT_FOUND, [], b"no such label"))
    assert e.value.coap_code == N.NOT_FOUND


def test_client_refuses_a_content_format_the_operation_cannot_carry():
    # §4.3: the Content-Format determines the EST message; a /crts answer in
    # 285 (or a skg answer that is not 62) is refused, not misparsed
    op = C.CoapOperation(N.OP_CACERTS, token=b"\x0a", mid=6)
    with pytest.raises(RemoteProtocolError):
        _run(op, lambda req: (N.CONTENT, [_uint(N.CONTENT_FORMAT, N.CF_CSRATTRS)], b"0\x00"))
    _, csr = make_csr("conf-client")
    op = C.CoapOperation(N.OP_SERVERKEYGEN, body=csr, token=b"\x0b", mid=7)
    with pytest.raises(RemoteProtocolError):
        _run(op, lambda req: (N.CHANGED, [_uint(N.CONTENT_FORMAT, N.CF_PKCS7_CERTS)], b"0\x00"))


def test_client_refuses_blocks_of_two_representations():
    # RFC 7959 §2.4: blocks of one transfer come from one representation;
    # an ETag that changes between blocks (the CA certificates changed and
    # the server rendered the answer again) is refused, not spliced
    cert, _ = _cert_and_key()
    p7 = cpkcs7.serialize_certificates([cert], serialization.Encoding.DER)
    other = cpkcs7.serialize_certificates([_cert_and_key("conf-other")[0]], serialization.Encoding.DER)

    def blocks(etags, bodies):
        def make(i):
            def answer(req):
                num = coap.block_decode(coap.opt(req, N.BLOCK2))[0] if coap.opt(req, N.BLOCK2) else 0
                assert num == i
                body = bodies[i]
                more = (i + 1) * 64 < len(body)
                opts = [_uint(N.CONTENT_FORMAT, N.CF_PKCS7_CERTS), (N.BLOCK2, coap.block_encode(i, more, 2))]
                if etags[i] is not None:
                    opts.append((N.ETAG, etags[i]))
                return N.CONTENT, opts, body[i * 64:(i + 1) * 64]
            return answer
        return [make(i) for i in range(len(bodies))]

    n = (len(p7) + 63) // 64
    assert n >= 2
    op = C.CoapOperation(N.OP_CACERTS, token=b"\x0c", mid=8)
    ev = _run(op, *blocks([b"\x01\x02\x03\x04"] * n, [p7] * n))
    assert ev.certs == [cert.public_bytes(serialization.Encoding.DER)]
    op = C.CoapOperation(N.OP_CACERTS, token=b"\x0d", mid=9)  # no ETag at all: as before
    assert _run(op, *blocks([None] * n, [p7] * n)).certs
    op = C.CoapOperation(N.OP_CACERTS, token=b"\x0e", mid=10)
    with pytest.raises(RemoteProtocolError, match="ETag"):
        _run(op, *blocks([b"\x01\x02\x03\x04"] + [b"\x09\x09\x09\x09"] * (n - 1), [p7] + [other] * (n - 1)))


class _SlowService:
    """The server's EstService with a slow simpleenroll (a CA that takes
    its time): enough for aiocoap's empty-ACK delay (0.1 s) to pass."""

    def __init__(self, service, delay):
        self._s = service
        self._delay = delay

    def __getattr__(self, name):
        return getattr(self._s, name)

    def simpleenroll(self, *a):
        import time

        time.sleep(self._delay)
        return self._s.simpleenroll(*a)


def test_slow_enrollment_is_an_empty_ack_then_a_separate_2_04(srv, dev):
    # §4.7 (RFC 7252 §5.2.2): a slow server acknowledges the CON request with
    # an empty ACK and sends the answer later as a CON 2.04, which the client
    # acknowledges; the core client takes it
    from est_lite_cpython.coaps_server import EstCoapsServer

    slow = EstCoapsServer.from_config(_SlowService(srv.service, 1.0), srv.config, port=0, workers=2)
    port = slow.start()
    try:
        _, csr = make_csr("conf-slow-1")
        with srv.dtls_client(dev, port=port) as dc:
            msg = coap.request(POST, [".well-known", "est", "sen"], b"\x51", 0x5151, content_format=N.CF_PKCS10,
                               payload=csr)
            dc.send(msg.encode())
            first = coap.decode(dc.recv(timeout=10))
            assert (first.type, first.code, first.mid, bytes(first.token)) == (N.ACK, N.EMPTY, 0x5151, b"")
            sep = coap.decode(dc.recv(timeout=10))
            assert sep.type == N.CON and sep.code == N.CHANGED and bytes(sep.token) == b"\x51"
            assert opt_uint(sep, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS
            dc.send(coap.Message(N.ACK, N.EMPTY, sep.mid).encode())
            key, csr2 = make_csr("conf-slow-2")
            ev = CoapsSession(dc).enroll(csr2)
            assert x509.load_der_x509_certificate(ev.cert).subject.rfc4514_string() == "CN=conf-slow-2"
    finally:
        slow.stop()


# ---------------------------------------------------------------- Registrar (RFC 9148 §5)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    import os

    from helpers_proxy import ProxyHarness
    from helpers_server import EstTestServer

    up = EstTestServer(tmp_path_factory.mktemp("conf-upstream"), extra_toml=EXTRA)
    try:
        px = ProxyHarness(tmp_path_factory.mktemp("conf-proxy"), up, up.url.replace("127.0.0.1", "localhost"),
                          upstream_root_pem=up.root_pem, vendor_pem=os.path.join(up.tmp, "vendor.pem"),
                          extra_toml='[profiles.noattrs]\nauth = ["cert"]\nclient_cert_trust = ["ca", "idevid"]\n')
    except BaseException:
        up.stop()
        raise
    yield up, px
    px.stop()
    up.stop()


def test_registrar_converts_to_287_and_serves_discovery(proxied):
    # §5: the Registrar maps Table 1's paths and the Content-Formats to
    # HTTP and back, including "a conversion from CoAP Content-Format 287 to
    # HTTP MIME type application/pkcs7-mime" (upstream answers are PKCS#7)
    from helpers_coaps import idevid_device

    up, px = proxied
    dev = idevid_device(up, "conf-px-1")
    with px.dtls_client(dev, [up.ca.root]) as dc:
        raw = RawCoap(dc)
        key, csr = make_csr("conf-px-1")
        r = raw.request(POST, raw.path("sen"), csr, content_format=N.CF_PKCS10, accept=N.CF_PKIX_CERT)
        assert r.code == N.CHANGED and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKIX_CERT
        c = x509.load_der_x509_certificate(bytes(r.payload))
        assert c.public_key() == key.public_key() and c.issuer == up.ca.issuer.subject
        r = raw.request(GET, raw.path("crts"), accept=N.CF_PKIX_CERT)
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKIX_CERT
        assert x509.load_der_x509_certificate(bytes(r.payload)) == up.ca.root
        r = raw.request(POST, raw.path("skc"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.CHANGED and opt_uint(r, N.CONTENT_FORMAT) == N.CF_MULTIPART_CORE
        # §4.8 through the Registrar: the CSR's signature is ignored there too
        bad = csr[:-1] + bytes([csr[-1] ^ 1])
        r = raw.request(POST, raw.path("skc"), bad, content_format=N.CF_PKCS10)
        assert r.code == N.CHANGED, (N.code_str(r.code), bytes(r.payload))
        # §4.5 through the Registrar: the upstream's 204 on csrattrs is 4.04
        r = raw.request(GET, raw.path("att", "noattrs"))
        assert r.code == N.NOT_FOUND and b"no CSR attributes" in bytes(r.payload), (N.code_str(r.code), r.payload)
        r, payload = raw.get_all([".well-known", "core"], options=[(N.URI_QUERY, b"rt=ace.est*")])
        links = payload.decode().split(",")
        for short in ("crts", "sen", "sren"):
            assert '</.well-known/est/%s>;rt="ace.est.%s";ct="281 287"' % (short, short) in links


def test_client_block1_restarts_in_the_smaller_blocks_a_4_13_asks_for():
    # §4.6: clients MUST implement Block1 when requests exceed the path MTU;
    # RFC 7959 §2.9.3: a 4.13 carrying a smaller Block1 size on the first
    # block means "start over in these blocks". Size1 rides on block 0.
    cert, _ = _cert_and_key()
    cder = cert.public_bytes(serialization.Encoding.DER)
    _, csr = make_csr("conf-client-b1", sans=["a%d.example.com" % i for i in range(8)])
    assert len(csr) > 256
    seen = []

    def upload(req):
        seen.append(req)
        b1 = coap.opt(req, N.BLOCK1)
        num, more, szx = coap.block_decode(b1)
        if len(seen) == 1:
            assert (num, more, szx) == (0, 1, 4) and opt_uint(req, N.SIZE1) == len(csr)
            return N.REQUEST_ENTITY_TOO_LARGE, [(N.BLOCK1, coap.block_encode(0, 0, 2))], b""
        assert szx == 2 and num == len(seen) - 2
        if more:
            return N.CONTINUE, [(N.BLOCK1, coap.block_encode(num, 1, 2))], b""
        return N.CHANGED, [(N.BLOCK1, coap.block_encode(num, 0, 2)), _uint(N.CONTENT_FORMAT, N.CF_PKIX_CERT)], cder

    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, token=b"\x0f", mid=11, szx=4)
    ev = _run(op, *[upload] * 40)
    assert ev.cert == cder
    assert b"".join(bytes(r.payload) for r in seen[1:]) == csr
    assert opt_uint(seen[1], N.SIZE1) == len(csr)


def _client_hello_fields(datagram):
    """(cipher suite numbers, {extension type: data}) of a DTLS 1.2
    ClientHello in one record (header 13 bytes, handshake header 12)."""
    b = bytes(datagram)
    assert b[0] == 22 and b[13] == 1  # handshake record, ClientHello
    p = 25 + 2 + 32
    p += 1 + b[p]  # session id
    p += 1 + b[p]  # cookie
    n = int.from_bytes(b[p:p + 2], "big")
    suites = [int.from_bytes(b[i:i + 2], "big") for i in range(p + 2, p + 2 + n, 2)]
    p += 2 + n
    p += 1 + b[p]  # compression methods
    end = p + 2 + int.from_bytes(b[p:p + 2], "big")
    p += 2
    ext = {}
    while p < end:
        t, ln = int.from_bytes(b[p:p + 2], "big"), int.from_bytes(b[p + 2:p + 4], "big")
        ext[t] = b[p + 4:p + 4 + ln]
        p += 4 + ln
    return suites, ext


def test_client_hello_offers_ccm8_p256_uncompressed_points_and_ems(srv, dev):
    # §3: "DTLS 1.2 implementations MUST use the Supported Elliptic Curves
    # and Supported Point Formats Extensions"; "Uncompressed point format
    # MUST also be supported"; secp256r1 MUST be supported; CCM_8 (0xC0AE) is
    # the mandatory suite; the extended master secret makes tls-unique safe
    # for PoP linking (§9.1, 3SHAKE)
    import socket
    import threading

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)
    port = s.getsockname()[1]

    def connect():
        try:
            srv.dtls_client(dev, port=port, timeout=1).close()
        except EstError:
            pass  # nobody answers: the client gives up

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    try:
        hello, _ = s.recvfrom(4096)
    finally:
        s.close()
        t.join(30)
    suites, ext = _client_hello_fields(hello)
    assert suites[0] == 0xC0AE and 0xC02B in suites  # CCM_8 first, then ECDHE-ECDSA-AES128-GCM-SHA256
    assert all(x in (0xC0AE, 0xC02B, 0x00FF) for x in suites), [hex(x) for x in suites]  # 0xFF: SCSV
    groups = [int.from_bytes(ext[10][i:i + 2], "big") for i in range(2, len(ext[10]), 2)]
    assert 23 in groups  # secp256r1
    assert 0 in ext[11][1:]  # ec_point_formats: uncompressed
    assert 23 in ext  # extended_master_secret


def test_label_is_one_segment_and_never_an_operation_name(srv, dev):
    # §4.1 (RFC 7030 §3.2.2): /.well-known/est/ArbitraryLabel/<short-est>;
    # a label is one path segment and not an operation name (of either form)
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        for path in ([".well-known", "est", "sen", "crts"], [".well-known", "est", "cacerts", "crts"],
                     [".well-known", "est", "coapsonly", "x", "crts"], [".well-known", "est", "nosuch", "crts"]):
            r = raw.request(GET, path)
            assert r.code == N.NOT_FOUND, (path, N.code_str(r.code))
        r = raw.request(GET, [".well-known", "est", "coapsonly", "crts"])
        assert r.code == N.CONTENT
        # RFC 9148 defines no query on the EST resources: one is ignored
        r = raw.request(GET, raw.path("crts"), options=[(N.URI_QUERY, b"x=1")])
        assert r.code == N.CONTENT and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS


def test_enrollment_answer_is_2_04_without_location(srv, dev):
    # §4.5: 2.04 Changed, not 2.01 Created: nothing is created at a new URI,
    # so no Location-Path / Location-Query (RFC 7252 §5.8.2, §5.10.7)
    _, csr = make_csr("conf-loc-1")
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(POST, raw.path("sen"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.CHANGED
        assert coap.opt(r, N.LOCATION_PATH) is None and coap.opt(r, N.LOCATION_QUERY) is None
    # the client refuses to build such a path
    for label in ("sen", "CRTS", "simpleenroll", "a/b", ".."):
        with pytest.raises(LocalProtocolError):
            C.CoapOperation(N.OP_CACERTS, label=label)
    assert N.coap_path(N.OP_CACERTS, "coapsonly") == [".well-known", "est", "coapsonly", "crts"]


def test_pinned_bootstrap_revalidates_the_server_under_the_served_cas(srv, dev, tmp_path):
    # §9.1: "A client that interleaves EST-coaps /crts request with other
    # requests in the same DTLS connection SHOULD revalidate the server
    # certificate chain against the updated Explicit TA ... If the server
    # certificate chain does not authenticate against the database, the
    # client SHOULD close the connection without completing the rest"
    from helpers_coaps import idevid_device
    from helpers_proxy import issue

    from est_lite.errors import SecurityError
    from est_lite_cpython.client import EstClient
    from est_lite_cpython.coaps_server import EstCoapsServer
    from est_lite_cpython.credstore import CredStore
    from est_lite_cpython.dtls import fingerprint
    from cryptography.x509.oid import ExtendedKeyUsageOID

    idev = idevid_device(srv, "conf-pin-1")

    def client(port, leaf):
        return EstClient("coaps://127.0.0.1:%d" % port, pin=fingerprint(leaf),
                         cert=idev.cert.public_bytes(serialization.Encoding.DER),
                         key=idev.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))

    # the server's certificate comes from another CA than the one /crts serves
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    ca = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key, leaf = issue(ca, ca_key, "foreign-est", ips=["127.0.0.1"], ekus=[ExtendedKeyUsageOID.SERVER_AUTH])
    other = EstCoapsServer(srv.service, leaf, key, host="127.0.0.1", port=0)
    port = other.start()
    try:
        before = srv.issued_count()
        c = client(port, leaf)
        with pytest.raises(SecurityError, match="does not verify against the CA certificates it served"):
            c.provision(CredStore(str(tmp_path / "a")), cn="conf-pin-1")
        assert srv.issued_count() == before  # nothing enrolled on the pinned session
        assert c.trust is None and not c.bootstrapped
        assert not os.path.exists(tmp_path / "a") or not os.listdir(tmp_path / "a")
    finally:
        other.stop()
    # the reference server's certificate is under the CA it serves: one session, enrolled
    with open(srv.ca.server_cert_file, "rb") as f:
        good = x509.load_pem_x509_certificate(f.read())
    c = client(srv.coaps_port, good)
    r = c.provision(CredStore(str(tmp_path / "b")), cn="conf-pin-2")
    assert c.bootstrapped and x509.load_der_x509_certificate(r.cert).subject.rfc4514_string() == "CN=conf-pin-2"
