"""HttpOperation (the portable client core) against the reference EST server
(est_lite_cpython.https_server) over real TLS on 127.0.0.1, driven by a tiny
blocking port written here: every operation, the automatic Digest answer to
a 401 (on a kept-alive or a new connection), preemptive Basic, csrattrs of a
label, and 202 + Retry-After through manual approval, with retry_delay."""

import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers_server import PASSWORD, USER, write_identity

from est_lite import client as C
from est_lite import numbers as N
from est_lite.csr import CsrBuilder
from est_lite.errors import ServerError
from est_lite_cpython.crypto import P256Key


class Port:
    """A blocking TLS connection that follows need_new_connection."""

    def __init__(self, srv, cert=None, key=None):
        self.srv = srv
        self.cert, self.key = cert, key  # client certificate files, or None
        self.sock = None
        self.connections = 0

    def _connect(self):
        self.close()
        ctx = self.srv.tls_client_context(self.cert, self.key)
        raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.connections += 1

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def run(self, op):
        for _ in range(4):
            if self.sock is None or op.need_new_connection:
                self._connect()
            req = op.send()
            if req is None:
                break
            self.sock.sendall(req)
            ev = op.next_event()
            while ev is C.NEED_DATA and op.state == C.AWAIT_RESPONSE:
                op.receive_data(self.sock.recv(4096))
                ev = op.next_event()
            if ev is not C.NEED_DATA:
                return ev
        raise AssertionError("no result")


def csr(cn):
    key = P256Key.generate()
    return key, CsrBuilder().subject(cn=cn).sign(key)


def check(srv, ev, key):
    cert = x509.load_der_x509_certificate(ev.cert)
    cert.verify_directly_issued_by(srv.ca.issuer)
    pub = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert pub == key.public_key
    return cert


def test_all_operations_against_the_reference_server(est_server):
    srv = est_server
    port = Port(srv)
    try:
        ev = port.run(C.HttpOperation(N.OP_CACERTS, host="localhost"))
        assert [x509.load_der_x509_certificate(c) for c in ev.certs] == [srv.ca.root]
        ev = port.run(C.HttpOperation(N.OP_CSRATTRS, "strict", host="localhost"))
        assert isinstance(ev, C.CsrAttrs) and ev.attrs is not None and ev.attrs.wants_challenge_password
        creds = (USER, PASSWORD)
        key, der = csr("client-core-1")
        op = C.HttpOperation(N.OP_SIMPLEENROLL, host="localhost", body=der, auth=creds, cnonce=os.urandom(8),
                             public_key=key.public_key)
        ev = port.run(op)
        assert isinstance(ev, C.Enrolled) and op.response.status == 200
        cert = check(srv, ev, key)
        assert port.connections == 1  # the 401 and the answer on one kept-alive connection
        # re-enroll authenticated by the certificate being renewed
        port.close()
        port = Port(srv, *write_identity(srv.tmp, "client-core", key.key, cert))
        key2, der2 = csr("client-core-1")
        ev = port.run(C.HttpOperation(N.OP_SIMPLEREENROLL, host="localhost", body=der2, public_key=key2.public_key))
        assert x509.load_der_x509_certificate(ev.cert).subject == cert.subject
        check(srv, ev, key2)
        ev = port.run(C.HttpOperation(N.OP_SERVERKEYGEN, host="localhost", body=der2, auth=creds,
                                      preemptive_basic=True))
        assert isinstance(ev, C.ServerKeyGen) and ev.key_type == N.CF_PKCS8
        check(srv, ev, P256Key.load_der(ev.key_der))
    finally:
        port.close()


def test_wrong_password_and_no_credentials(est_server):
    port = Port(est_server)
    try:
        _, der = csr("client-core-2")
        ev = port.run(C.HttpOperation(N.OP_SIMPLEENROLL, host="localhost", body=der))
        assert isinstance(ev, C.AuthRequired) and ev.challenges
        op = C.HttpOperation(N.OP_SIMPLEENROLL, host="localhost", body=der, auth=(USER, "wrong"), cnonce="abcdef")
        try:
            port.run(op)
            raise AssertionError("no error")
        except ServerError as e:
            assert e.http_status == 401 and e.diagnostic
    finally:
        port.close()


def test_manual_approval_retry_after(est_server):
    srv = est_server
    port = Port(srv)
    try:
        key, der = csr("client-core-wait")

        def op():
            return C.HttpOperation(N.OP_SIMPLEENROLL, "manual", host="localhost", body=der,
                                   auth=(USER, PASSWORD), preemptive_basic=True)

        ev = port.run(op())
        assert isinstance(ev, C.RetryAfter) and ev.seconds == 7
        when = C.retry_delay(ev.seconds, 0, 1000.0, 1100.0, 0.5)
        assert 1007 < when <= 1007 + 7 * 0.25
        rid = srv.ca.store.list_requests("pending")[0]["id"]
        srv.ca.store.decide(rid, True)
        ev = port.run(op())
        check(srv, ev, key)
    finally:
        port.close()
