"""The portable core's HTTP codec (est_lite.http1) and CSR builder
(est_lite.csr) over stdlib ssl against the reference server: every
operation, Basic and Digest, client certificates, PoP with tls-unique."""

import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from helpers_server import PASSWORD, USER, write_identity

from est_lite import http1, numbers
from est_lite.csr import CsrBuilder
from est_lite_cpython.crypto import P256Key


def exchange(srv, request, *, cert=None, key=None, version=None, before_send=None):
    """Send request bytes on a new connection, parse with the core's
    ResponseParser. before_send(sslsock) may build the request instead."""
    ctx = srv.tls_client_context(cert, key, version)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            if before_send is not None:
                request = before_send(t)
            t.sendall(request)
            p = http1.ResponseParser(max_body=65536, method=request.split(b" ", 1)[0].decode())
            while True:
                ev = p.next_event()
                if ev is not http1.NEED_DATA:
                    return ev
                p.receive_data(t.recv(65536))


def core_csr(cn, signer=None, **kw):
    signer = signer or P256Key.generate()
    b = CsrBuilder().subject(cn=cn)
    if kw.get("dns"):
        b = b.san(dns=kw["dns"])
    if kw.get("cp") is not None:
        b = b.challenge_password(kw["cp"])
    return signer, b.sign(signer)


def certs_of(resp):
    return pkcs7.load_der_pkcs7_certificates(http1.decode_b64_body(resp.body, 65536))


def test_core_cacerts_and_csrattrs(est_server):
    srv = est_server
    r = exchange(srv, http1.build_est_request(numbers.OP_CACERTS, "localhost", keep_alive=False))
    assert r.status == 200
    assert certs_of(r) == [srv.ca.root]
    r = exchange(srv, http1.build_est_request(numbers.OP_CSRATTRS, "localhost", label="strict", keep_alive=False))
    assert r.status == 200 and r.header("content-type") == numbers.MT_CSRATTRS
    from est_lite import csrattrs

    attrs = csrattrs.decode(http1.decode_b64_body(r.body))
    assert attrs is not None


def test_core_simpleenroll_basic_and_digest(est_server):
    srv = est_server
    signer, der = core_csr("core-basic")
    req = http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der,
                                  authorization=http1.basic_auth(USER, PASSWORD), keep_alive=False)
    r = exchange(srv, req)
    assert r.status == 200, bytes(r.body)
    (cert,) = certs_of(r)
    cert.verify_directly_issued_by(srv.ca.issuer)
    assert cert.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint) == signer.public_key
    # Digest: probe, answer the challenge
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, keep_alive=False))
    assert r.status == 401
    ch = http1.pick_digest(http1.parse_challenges([v for k, v in r.headers if k == "www-authenticate"]))
    assert ch["algorithm"] == "SHA-256"
    path = numbers.https_path(numbers.OP_SIMPLEENROLL)
    auth = http1.digest_auth(ch, "POST", path, USER, PASSWORD, os.urandom(8))
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, authorization=auth,
                                              keep_alive=False))
    assert r.status == 200, bytes(r.body)
    auth = http1.digest_auth(ch, "POST", path, USER, "wrong", os.urandom(8))
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, authorization=auth,
                                              keep_alive=False))
    assert r.status == 401 and b"wrong user name or password" in bytes(r.body)


def test_core_reenroll_with_client_cert_and_serverkeygen(est_server):
    srv = est_server
    signer, der = core_csr("core-re", dns=["core-re.example.com"])
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der,
                                              authorization=http1.basic_auth(USER, PASSWORD), keep_alive=False))
    (cert,) = certs_of(r)
    cp, kp = write_identity(srv.tmp, "core", signer.key, cert)
    _, der2 = core_csr("core-re", dns=["core-re.example.com"])
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL + 1, "localhost", der2, keep_alive=False),
                 cert=cp, key=kp)
    assert r.status == 200, bytes(r.body)
    (new,) = certs_of(r)
    assert new.subject == cert.subject and new.serial_number != cert.serial_number
    # serverkeygen, parsed by the core's multipart splitter
    r = exchange(srv, http1.build_est_request(numbers.OP_SERVERKEYGEN, "localhost", der2, keep_alive=False),
                 cert=cp, key=kp)
    assert r.status == 200
    mt = http1.parse_media_type(r.header("content-type"))
    key_der, kt, certs_der = http1.split_serverkeygen(r.body, mt[1]["boundary"])
    assert kt == numbers.MT_PKCS8
    key = P256Key.load_der(key_der)
    (c,) = pkcs7.load_der_pkcs7_certificates(certs_der)
    assert c.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint) == key.public_key


def test_core_pop_tls_unique(est_server):
    srv = est_server
    signer = P256Key.generate()

    def build(t):
        tu = t.get_channel_binding("tls-unique")
        der = CsrBuilder().subject(cn="core-pop").challenge_password(tu).sign(signer)
        return http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, label="pop",
                                       authorization=http1.basic_auth(USER, PASSWORD), keep_alive=False)

    r = exchange(srv, None, version="1.2", before_send=build)
    assert r.status == 200, bytes(r.body)
    assert certs_of(r)[0].subject == x509.Name.from_rfc4514_string("CN=core-pop")
    # a binding of another connection fails
    der = CsrBuilder().subject(cn="core-pop").challenge_password(b"\x01" * 12).sign(signer)
    r = exchange(srv, http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, label="pop",
                                              authorization=http1.basic_auth(USER, PASSWORD), keep_alive=False),
                 version="1.2")
    assert r.status == 403


def test_core_manual_approval_retry_after(est_server):
    srv = est_server
    _, der = core_csr("core-wait")
    req = http1.build_est_request(numbers.OP_SIMPLEENROLL, "localhost", der, label="manual",
                                  authorization=http1.basic_auth(USER, PASSWORD), keep_alive=False)
    r = exchange(srv, req)
    assert r.status == 202 and r.retry_after == 7
    rid = srv.ca.store.list_requests("pending")[0]["id"]
    srv.ca.store.decide(rid, True)
    r = exchange(srv, req)
    assert r.status == 200
