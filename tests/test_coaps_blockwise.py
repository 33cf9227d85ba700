"""Block-wise transfers (RFC 7959, RFC 9148 Appendix B) on the EST-coaps
server: SZX 2 (64 bytes) and 6 (1024 bytes) both ways, Size1/Size2, limits,
out-of-order and orphan blocks, the session MTU, and lost datagrams."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from est_lite import coap
from est_lite import numbers as N
from helpers_coaps import CoapsSession, EstBothServer, RawCoap, der, make_csr, operational_device, opt_uint, point
from helpers_dtls import LossyRelay


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps-bw"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dev(srv):
    return operational_device(srv, "bw-device")


def big_csr(cn="bw-big", n_names=40):
    """A CSR of well over 1024 bytes (many subjectAltNames), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("host-%02d.a-rather-long-subdomain-name.example.com" % i) for i in range(n_names)]
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, der(b.sign(key, hashes.SHA256()))


def delta(before, after, k):
    return after.get(k, 0) - before.get(k, 0)


@pytest.mark.parametrize("szx", [2, 6])
def test_block1_and_block2_both_ways(srv, dev, szx):
    size = 16 << szx
    key, csr = big_csr("bw-%d" % szx, n_names=40)
    assert len(csr) > 2 * 1024
    relay = LossyRelay(("127.0.0.1", srv.coaps_port))
    try:
        before = srv.coaps_stats()
        with srv.dtls_client(dev, port=relay.port) as dc:
            s = CoapsSession(dc)
            ev = s.enroll(csr, szx=szx, public_key=point(key))
            cert = x509.load_der_x509_certificate(ev.cert)
            assert len(ev.cert) > 1024  # the answer needed Block2 at both sizes
            assert cert.public_key() == key.public_key()
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert len(san) == 40
            ca = s.cacerts(szx=szx)
            assert x509.load_der_x509_certificate(ca.certs[0]) == srv.ca.root
        after = srv.coaps_stats()
        blocks_up = -(-len(csr) // size)
        assert delta(before, after, "block1_continue") == blocks_up - 1
        p7_len = len(ev.cert) + 60  # certs-only PKCS#7 around it
        assert delta(before, after, "block2_followups") >= -(-p7_len // size) - 1
        # every application datagram fits a block plus CoAP and DTLS headers
        assert max(relay.sizes["up"][3:]) <= size + 100
        if szx == 2:
            assert max(relay.sizes["down"][3:]) <= size + 100
    finally:
        relay.close()


def test_block2_of_a_post_answer_follows_rfc9148_appendix_b(srv, dev):
    """Follow-up requests carry only Block2 (no payload, no Block1, no
    Content-Format), and find the answer by session and path."""
    key, csr = make_csr("bw-appb")
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), csr, content_format=N.CF_PKCS10, block2=(0, 0, 2))
        assert r.code == N.CHANGED
        num, more, szx = coap.block_decode(coap.opt(r, N.BLOCK2))
        assert (num, more, szx) == (0, 1, 2) and len(r.payload) == 64
        total = opt_uint(r, N.SIZE2)
        body = [bytes(r.payload)]
        while more:
            r = raw.request(N.POST, raw.path("sen"), block2=(num + 1, 0, 2))
            assert r.code == N.CHANGED and opt_uint(r, N.CONTENT_FORMAT) == N.CF_PKCS7_CERTS
            num, more, _ = coap.block_decode(coap.opt(r, N.BLOCK2))
            body.append(bytes(r.payload))
        p7 = b"".join(body)
        assert len(p7) == total
        from cryptography.hazmat.primitives.serialization import pkcs7

        assert pkcs7.load_der_pkcs7_certificates(p7)[0].public_key() == key.public_key()
        # the transfer is over: asking again for a block is 4.08
        r = raw.request(N.POST, raw.path("sen"), block2=(1, 0, 2))
        assert r.code == N.REQUEST_ENTITY_INCOMPLETE and bytes(r.payload)
        # the client may ask for smaller blocks than the first one
        r = raw.request(N.GET, raw.path("crts"), block2=(0, 0, 3))
        p7 = [bytes(r.payload)]
        r = raw.request(N.GET, raw.path("crts"), block2=(2, 0, 2))  # bytes 128..191 at 64-byte blocks
        assert bytes(r.payload) and coap.block_decode(coap.opt(r, N.BLOCK2))[2] == 2
        full = CoapsSession(dc).cacerts()
        del full, p7


def test_size1_over_the_limit_is_refused_before_any_block(srv, dev):
    _, csr = make_csr("bw-size1")
    limit = srv.config.profile("").max_csr_bytes
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), csr[:64], content_format=N.CF_PKCS10, block1=(0, 1, 2),
                        size1=limit + 1)
        assert r.code == N.REQUEST_ENTITY_TOO_LARGE
        assert opt_uint(r, N.SIZE1) == limit
        assert b"exceeds" in bytes(r.payload)
        # a single datagram over the limit (no blocks): 4.13 too
        r = raw.request(N.POST, raw.path("sen"), b"0" * 1000, content_format=N.CF_PKCS10)
        assert r.code in (N.REQUEST_ENTITY_TOO_LARGE, N.BAD_REQUEST)
    assert srv.issued_count() == before


def test_upload_growing_past_the_limit_is_cut_off(srv, dev):
    limit = srv.config.profile("").max_csr_bytes
    before = srv.issued_count()
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        chunk = b"\x30" * 1024
        got = None
        for i in range(limit // 1024 + 2):
            r = raw.request(N.POST, raw.path("sen"), chunk, content_format=N.CF_PKCS10, block1=(i, 1, 6))
            if r.code != N.CONTINUE:
                got = r
                break
            assert coap.block_decode(coap.opt(r, N.BLOCK1)) == (i, 1, 6)
        assert got is not None and got.code == N.REQUEST_ENTITY_TOO_LARGE
        assert opt_uint(got, N.SIZE1) == limit
        # the upload state is gone: the next block is 4.08
        r = raw.request(N.POST, raw.path("sen"), chunk, content_format=N.CF_PKCS10, block1=(i + 1, 0, 6))
        assert r.code == N.REQUEST_ENTITY_INCOMPLETE
    assert srv.issued_count() == before


def test_out_of_order_and_orphan_blocks(srv, dev):
    _, csr = make_csr("bw-order")
    with srv.dtls_client(dev) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), csr[64:128], content_format=N.CF_PKCS10, block1=(1, 1, 2))
        assert r.code == N.REQUEST_ENTITY_INCOMPLETE and b"block 0" in bytes(r.payload)
        r = raw.request(N.POST, raw.path("sen"), csr[:64], content_format=N.CF_PKCS10, block1=(0, 1, 2))
        assert r.code == N.CONTINUE
        r = raw.request(N.POST, raw.path("sen"), csr[128:192], content_format=N.CF_PKCS10, block1=(2, 1, 2))
        assert r.code == N.REQUEST_ENTITY_INCOMPLETE
        r = raw.request(N.POST, raw.path("skg"), block2=(3, 0, 2))
        assert r.code == N.REQUEST_ENTITY_INCOMPLETE
        # SZX 7 is reserved
        r = raw.request(N.POST, raw.path("sen"), csr[:64], content_format=N.CF_PKCS10,
                        options=[(N.BLOCK1, bytes([0x0F]))])
        assert r.code in (N.BAD_REQUEST, N.BAD_OPTION)
        # and a complete upload in order works on the same session
        r = None
        for i in range(0, len(csr), 64):
            last = i + 64 >= len(csr)
            r = raw.request(N.POST, raw.path("sen"), csr[i:i + 64], content_format=N.CF_PKCS10,
                            block1=(i // 64, 0 if last else 1, 2))
        assert r.code == N.CHANGED and coap.block_decode(coap.opt(r, N.BLOCK1))[1] == 0


def test_small_mtu_session_gets_small_blocks(tmp_path):
    s = EstBothServer(tmp_path, coaps_options=dict(mtu=300))
    relay = LossyRelay(("127.0.0.1", s.coaps_port))
    try:
        dev = operational_device(s, "bw-mtu")
        key, csr = make_csr("bw-mtu")
        with s.dtls_client(dev, port=relay.port, mtu=300) as dc:
            sess = CoapsSession(dc)
            ev = sess.enroll(csr, public_key=point(key))
            assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()
            assert sess.cacerts().certs
        assert max(relay.sizes["down"]) <= 300 and max(relay.sizes["up"]) <= 300
        assert s.coaps_stats()["block2_followups"] >= 3
    finally:
        relay.close()
        s.stop()


def test_lost_datagrams_during_block_transfers(srv, dev):
    """Every 4th application datagram in each direction is lost; CoAP
    retransmission and the server's deduplication still give one certificate."""
    def drop(direction, i, data):
        return i >= 4 and i % 4 == 0 and data[0] == 23  # application data records only

    relay = LossyRelay(("127.0.0.1", srv.coaps_port), drop=drop)
    before = srv.issued_count()
    try:
        key, csr = make_csr("bw-lossy")
        with srv.dtls_client(dev, port=relay.port) as dc:
            ev = CoapsSession(dc, ack_timeout=0.25).enroll(csr, szx=2, public_key=point(key), timeout=60)
        assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()
        assert relay.dropped["up"] + relay.dropped["down"] >= 2
    finally:
        relay.close()
    assert srv.issued_count() == before + 1
