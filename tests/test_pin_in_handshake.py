"""Pinned bootstrap is decided inside the (D)TLS handshake, before our
certificate (or any password) goes out -- and a CA pin is not met by a
forged leaf that merely names the pinned CA as its issuer and sends the
(public) CA certificate after it. Impostor servers record what they get."""

import datetime
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers_client import RecordingTls
from helpers_dtls import LossyRelay, Pki, ServerThread

from est_lite.errors import LocalProtocolError, SecurityError
from est_lite_cpython.dtls import fingerprint
from est_lite_cpython.dtls_client import ClientContext, DtlsClient, check_pin
from est_lite_cpython.transport_coaps import CoapsTransport
from est_lite_cpython.transport_https import TlsTransport


def der(c):
    return c.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pki():
    p = Pki()
    root = p.ca.root.cert
    evil = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    forged = (
        x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=localhost"))
        .issuer_name(root.subject).public_key(evil.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), critical=False)
        .sign(evil, hashes.SHA256())  # names the real root as issuer, signed by the impostor
    )
    p.forged = SimpleNamespace(cert=forged, key=evil)
    return p


def test_check_pin_rules(pki):
    root, leaf = pki.ca.root.cert, pki.server.cert
    assert check_pin(fingerprint(root), [leaf, root]) is None
    assert check_pin(fingerprint(leaf), [leaf]) is None
    assert "not signed" in check_pin(fingerprint(root), [pki.forged.cert, root])
    assert "does not contain the pinned" in check_pin(fingerprint(root), [leaf])
    assert check_pin(fingerprint(root), []) == "the server sent no certificate"
    assert "pin callback failed" in check_pin(lambda ch: 1 / 0, [leaf])
    pytest.raises(LocalProtocolError, DtlsClient, "127.0.0.1", 1, pin=b"short", connect=False)


# -- DTLS --------------------------------------------------------------------------------------


def _dtls_server(pki, ident):
    view = SimpleNamespace(server=ident, ca=pki.ca)
    return ServerThread(view, chain=[pki.ca.root.cert])


def _recording_relay(port):
    up = []

    def keep(direction, i, data):
        if direction == "up":
            up.append(bytes(data))
        return False

    return LossyRelay(("127.0.0.1", port), keep), up


def _sent_cert(up, cert):
    return any(der(cert) in d for d in up)


@pytest.mark.parametrize("how", ["DtlsClient", "ClientContext", "CoapsTransport"])
def test_dtls_forged_chain_refused_before_the_client_certificate(pki, how):
    imp = _dtls_server(pki, pki.forged)
    relay, up = _recording_relay(imp.port)
    pin = fingerprint(pki.ca.root.cert)
    kw = dict(cert=pki.client.cert, key=pki.client.key)
    try:
        with pytest.raises(SecurityError, match="not signed by"):
            if how == "DtlsClient":
                DtlsClient("127.0.0.1", relay.port, pin=pin, timeout=5, **kw)
            elif how == "ClientContext":
                ctx = ClientContext(pinned=True, **kw)
                DtlsClient("127.0.0.1", relay.port, pin=pin, timeout=5, context=ctx)
            else:
                CoapsTransport("127.0.0.1", relay.port, pin=pin, timeout=5, **kw).connect()
        assert up and not _sent_cert(up, pki.client.cert)
        assert imp.stats()["handshakes"] == 0
    finally:
        relay.close()
        imp.stop()


@pytest.mark.parametrize("pin_of", ["root", "leaf", "callable"])
def test_dtls_genuine_server_with_pin(pki, pin_of):
    srv = _dtls_server(pki, pki.server)
    relay, up = _recording_relay(srv.port)
    pin = {"root": fingerprint(pki.ca.root.cert), "leaf": fingerprint(pki.server.cert),
           "callable": lambda chain: chain[0] == pki.server.cert}[pin_of]
    try:
        # no trust anchors and a name the certificate does not cover: the pin decides
        with DtlsClient("127.0.0.1", relay.port, pin=pin, server_name="whatever", timeout=5,
                        cert=pki.client.cert, key=pki.client.key) as c:
            c.send(b"x")
            assert c.recv(5) == b"echo x"
        assert _sent_cert(up, pki.client.cert)  # control: the recorder does see it when it goes out
    finally:
        relay.close()
        srv.stop()


def test_dtls_trust_mode_checks_the_name_in_the_handshake(pki):
    srv = _dtls_server(pki, pki.server)
    relay, up = _recording_relay(srv.port)
    try:
        with pytest.raises(SecurityError, match="evil.example"):
            DtlsClient("127.0.0.1", relay.port, [pki.ca.root.cert], server_name="evil.example", timeout=5,
                       cert=pki.client.cert, key=pki.client.key)
        assert up and not _sent_cert(up, pki.client.cert)
    finally:
        relay.close()
        srv.stop()


# -- TLS ---------------------------------------------------------------------------------------


def TlsImpostor(pki, ident, version):
    """A recording TLS server presenting `ident` + the root at one TLS
    version; asks for (and records) a client certificate and the request."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    v = SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.use_certificate(ident.cert)
    ctx.use_privatekey(ident.key)
    ctx.add_extra_chain_cert(pki.ca.root.cert)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: True)
    return RecordingTls(ctx)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_forged_chain_refused_before_the_client_certificate(pki, version):
    imp = TlsImpostor(pki, pki.forged, version)
    try:
        t = TlsTransport("localhost", imp.port, pin=fingerprint(pki.ca.root.cert), cert=pki.client.cert,
                         key=pki.client.key, timeout=5, tls_version=version)
        with pytest.raises(SecurityError, match="not signed by"):
            t.connect()
        # anonymous bootstrap (pending_ok): the pinned CA is in the chain, so
        # the chain must verify -- it is not left to the /cacerts answer
        t = TlsTransport("localhost", imp.port, pin=fingerprint(pki.ca.root.cert), timeout=5, tls_version=version,
                         pending_ok=True)
        with pytest.raises(SecurityError, match="not signed by"):
            t.connect()
        assert imp.connections and all(r["client_cert"] is None and r["data"] == b"" for r in imp.connections)
    finally:
        imp.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tls_genuine_server_with_a_ca_pin(pki, version):
    imp = TlsImpostor(pki, pki.server, version)
    try:
        t = TlsTransport("localhost", imp.port, pin=fingerprint(pki.ca.root.cert), cert=pki.client.cert,
                         key=pki.client.key, timeout=5, tls_version=version)
        t.connect()
        t.write(b"GET / HTTP/1.1\r\n\r\n")
        t.close()
        imp.stop()
        assert imp.connections[0]["client_cert"] == der(pki.client.cert)  # control: the recorder sees it
    finally:
        imp.close()


def test_est_client_over_https_sends_no_password_to_a_forged_chain(pki):
    from est_lite_cpython.client import EstClient

    imp = TlsImpostor(pki, pki.forged, "1.3")
    try:
        c = EstClient("https://localhost:%d" % imp.port, pin=fingerprint(pki.ca.root.cert), cert=pki.client.cert,
                      key=pki.client.key, user="dev", password="secret", deadline=None, timeout=5)
        with pytest.raises(SecurityError, match="not signed by"):
            c.cacerts()
        assert all(r["client_cert"] is None and r["data"] == b"" for r in imp.connections)
    finally:
        imp.close()


# -- the MicroPython port: est_lite_mp.client._MpCoaps (CoAPs) and est_lite_mp.https.TlsStream ------------
# (both decide in Mbed TLS's verify callback through est_lite_mp.certs.PinCheck)

MP_HEAD = """
import sys
sys.path[:0] = %r
def rd(n):
    if n is None:
        return None
    f = open(n, "rb")
    d = f.read()
    f.close()
    return d
pin = bytes.fromhex("%s")
"""

MP_COAPS = """
from est_lite_mp.client import _MpCoaps
t = _MpCoaps("127.0.0.1", %d, None, pin, "localhost", rd(%r), rd(%r), 5)
try:
    t.connect()
    t.send(b"hi")
    b = bytearray(64)
    n = t.recv_into(b, 3)
    print("ACCEPTED", bytes(b[:n]))
except Exception as e:
    print("REFUSED", type(e).__name__, e)
t.close()
"""

MP_TLS = """
from est_lite_mp.https import TlsStream
t = TlsStream("localhost", %d, None, pin, "localhost", rd(%r), rd(%r), 5, %r)
try:
    t.connect()
    t.write(b"GET / HTTP/1.1\\r\\n\\r\\n")
    print("ACCEPTED pending=%%s" %% t.pending)
except Exception as e:
    print("REFUSED", type(e).__name__, e)
t.close()
"""

MP_EST = """
from est_lite_mp.client import EstClient
c = EstClient("https://localhost:%d", pin=pin, cert=rd(%r), key=rd(%r), user="dev", password="secret",
              deadline=None, timeout=5)
try:
    c.cacerts()
    print("ACCEPTED")
except Exception as e:
    print("REFUSED", type(e).__name__, e)
c.close()
"""


def _mp_run(pki, tmp_path, pin_cert, body, *args, creds=True):
    import os
    import shutil
    import subprocess

    mp = shutil.which("micropython")
    assert mp, "micropython is part of the dev setup"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = k = None
    if creds:
        c, k = str(tmp_path / "c.der"), str(tmp_path / "k.der")
        (tmp_path / "c.der").write_bytes(der(pki.client.cert))
        (tmp_path / "k.der").write_bytes(pki.client.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    script = (MP_HEAD % ([root, os.path.join(root, "ports", "micropython")], fingerprint(pin_cert).hex())
              + body % (args[:1] + (c, k) + args[1:]))
    (tmp_path / "s.py").write_text(script)
    r = subprocess.run([mp, "-X", "heapsize=256K", str(tmp_path / "s.py")], capture_output=True, text=True,
                       timeout=60)
    return r.stdout + r.stderr


def _mp_pinned(pki, ident, tmp_path, pin_cert=None):
    """_MpCoaps with a pin against a DTLS server presenting `ident` + the
    root, through a relay recording what the device sends."""
    srv = _dtls_server(pki, ident)
    relay, up = _recording_relay(srv.port)
    try:
        out = _mp_run(pki, tmp_path, pin_cert or pki.ca.root.cert, MP_COAPS, relay.port)
        return out, _sent_cert(up, pki.client.cert), up
    finally:
        relay.close()
        srv.stop()


@pytest.mark.parametrize("pin_of", ["root", "leaf"])
def test_micropython_ca_pin_genuine_server(pki, tmp_path, pin_of):
    pin_cert = pki.ca.root.cert if pin_of == "root" else pki.server.cert
    out, sent, _ = _mp_pinned(pki, pki.server, tmp_path, pin_cert)
    assert "ACCEPTED b'echo hi'" in out, out
    assert sent  # control: the recorder does see the device certificate when it goes out


def test_micropython_ca_pin_forged_chain_refused(pki, tmp_path):
    out, sent, up = _mp_pinned(pki, pki.forged, tmp_path)
    assert "REFUSED SecurityError" in out and "not signed by" in out and "CN=localhost (depth 0)" in out, out
    assert up and not sent  # refused in the handshake, before the device certificate went out


def test_micropython_pin_not_in_the_chain_refused(pki, tmp_path):
    out, sent, up = _mp_pinned(pki, pki.server, tmp_path, pki.client.cert)
    assert "REFUSED SecurityError" in out and "does not contain the pinned" in out, out
    assert up and not sent


def _mp_tls(pki, ident, tmp_path, creds, pending_ok=False, pin_cert=None):
    imp = TlsImpostor(pki, ident, "1.2")
    try:
        out = _mp_run(pki, tmp_path, pin_cert or pki.ca.root.cert, MP_TLS, imp.port, pending_ok, creds=creds)
        imp.stop()
        return out, imp.connections
    finally:
        imp.close()


@pytest.mark.parametrize("creds", [True, False])
def test_micropython_tls_forged_chain_refused(pki, tmp_path, creds):
    # with a client certificate, and anonymous (the HTTPS bootstrap: pending_ok) -- the pinned CA is in
    # the chain, so the chain must verify; it is not left to the /cacerts answer
    out, recs = _mp_tls(pki, pki.forged, tmp_path, creds, pending_ok=not creds)
    assert "REFUSED SecurityError" in out and "not signed by" in out, out
    assert recs and all(r["client_cert"] is None and r["data"] == b"" for r in recs)


@pytest.mark.parametrize("creds", [True, False])
def test_micropython_tls_genuine_server_with_a_ca_pin(pki, tmp_path, creds):
    out, recs = _mp_tls(pki, pki.server, tmp_path, creds, pending_ok=not creds)
    assert "ACCEPTED pending=False" in out, out
    assert recs[0]["client_cert"] == (der(pki.client.cert) if creds else None)
    assert recs[0]["data"].startswith(b"GET / ")


def test_micropython_tls_pin_not_in_chain_is_pending_only_when_anonymous(pki, tmp_path):
    out, recs = _mp_tls(pki, pki.server, tmp_path, False, pending_ok=True, pin_cert=pki.client.cert)
    assert "ACCEPTED pending=True" in out, out  # EstClient then checks the chain against /cacerts
    out, recs = _mp_tls(pki, pki.server, tmp_path, True, pin_cert=pki.client.cert)
    assert "REFUSED SecurityError" in out and "does not contain the pinned" in out, out
    assert all(r["client_cert"] is None and r["data"] == b"" for r in recs)


def test_micropython_est_client_sends_no_password_to_a_forged_chain(pki, tmp_path):
    imp = TlsImpostor(pki, pki.forged, "1.2")
    try:
        out = _mp_run(pki, tmp_path, pki.ca.root.cert, MP_EST, imp.port)
        assert "REFUSED SecurityError" in out and "not signed by" in out, out
        assert imp.connections and all(r["client_cert"] is None and r["data"] == b"" for r in imp.connections)
    finally:
        imp.close()


def _crl(pki, revoked=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca.root.cert.subject)
         .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=1)))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                      .revocation_date(now - datetime.timedelta(minutes=1)).build())
    return b.sign(pki.ca.root.key, hashes.SHA256())


@pytest.mark.parametrize("how", ["DtlsClient", "CoapsTransport"])
def test_dtls_crls_checked_in_the_handshake(pki, how):
    srv = _dtls_server(pki, pki.server)
    relay, up = _recording_relay(srv.port)
    kw = dict(cert=pki.client.cert, key=pki.client.key, timeout=5)
    try:
        with pytest.raises(SecurityError, match="revoked"):
            if how == "DtlsClient":
                DtlsClient("127.0.0.1", relay.port, [pki.ca.root.cert], server_name="localhost",
                           crls=[_crl(pki, [pki.server.cert])], **kw)
            else:
                CoapsTransport("127.0.0.1", relay.port, trust=[pki.ca.root.cert], server_name="localhost",
                               crls=[_crl(pki, [pki.server.cert])], **kw).connect()
        assert up and not _sent_cert(up, pki.client.cert)
        # control: a CRL that does not list the server certificate
        c = DtlsClient("127.0.0.1", relay.port, [pki.ca.root.cert], server_name="localhost", crls=[_crl(pki)], **kw)
        c.close()
        assert _sent_cert(up, pki.client.cert)
        ctx = ClientContext([pki.ca.root.cert], crls=[_crl(pki)])
        pytest.raises(LocalProtocolError, DtlsClient, "127.0.0.1", 1, context=ctx, crls=[_crl(pki)], connect=False)
        pytest.raises(LocalProtocolError, ClientContext, pinned=True, crls=[_crl(pki)])
    finally:
        relay.close()
        srv.stop()
