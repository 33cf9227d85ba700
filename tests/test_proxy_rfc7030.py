"""The proxy against another RFC 7030 server: a small independent one on the
stdlib (http.server + ssl) that requires a TLS client certificate with
id-kp-cmcRA, answers base64 in one long line with a bare
`application/pkcs7-mime`, gives 202 + Retry-After with no body and no
Content-Length, lets the RA renew on the device's behalf (simplereenroll
passed through), and answers any status a label asks for - each mapped back
to the CoAP device per RFC 9148 §5."""

import base64
import datetime
import http.server
import os
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from est_lite import numbers as N
from est_lite.errors import ServerError
from helpers_coaps import CoapsSession, Device, RawCoap, idevid_device, make_csr, opt_uint, point
from helpers_proxy import CMC_RA, ProxyHarness, issue
from helpers_server import make_vendor_ca, pem, write_identity

STATUSES = (400, 401, 403, 404, 405, 406, 408, 413, 415, 418, 500, 501, 502, 503, 504, 505)


class StubCA:
    def __init__(self):
        self._key = ec.generate_private_key(ec.SECP256R1())
        n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stub RFC 7030 CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.root = self.issuer = (
            x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256()))
        self.store = None

    def sign_csr(self, csr):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.root.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=7))
                .sign(self._key, hashes.SHA256()))


class Stub:
    """The stub RFC 7030 server (its own CA, HTTPS with client certificates)."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.ca = StubCA()
        self.vendor = make_vendor_ca(self.tmp, "Stub Vendor")
        self.root_pem = os.path.join(self.tmp, "stub-root.pem")
        with open(self.root_pem, "wb") as f:
            f.write(pem(self.ca.root))
        k, c = issue(self.ca.issuer, self.ca._key, "localhost", dns=["localhost"], ips=["127.0.0.1"])
        cert_file, key_file = write_identity(self.tmp, "stub-tls", k, c)
        self.log = []  # (method, path, ra_ok)
        self.pending = {}  # subject -> times asked
        stub = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _ra(self):
                der = self.connection.getpeercert(binary_form=True)
                if not der:
                    return False
                c = x509.load_der_x509_certificate(der)
                try:
                    return CMC_RA in c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                except x509.ExtensionNotFound:
                    return False

            def _send(self, status, body=b"", ctype=None, extra=(), length=True):
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for k, v in extra:
                    self.send_header(k, v)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def _route(self):
                ra = self._ra()
                stub.log.append((self.command, self.path, ra))
                if not ra:
                    return self._send(403, b"RA certificate required\n", "text/plain")
                parts = self.path.split("/")  # '', '.well-known', 'est', [label], op
                label = parts[3] if len(parts) == 5 else ""
                op = parts[-1]
                if label.startswith("s") and label[1:].isdigit():
                    st = int(label[1:])
                    return self._send(st, ("stub says %d\n" % st).encode(), "text/plain")
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if op == "cacerts":
                    p7 = pkcs7.serialize_certificates([stub.ca.root], serialization.Encoding.DER)
                    return self._send(200, base64.b64encode(p7), "application/pkcs7-mime")
                if op == "csrattrs":
                    return self._send(204)
                csr = x509.load_der_x509_csr(base64.b64decode(body))
                cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
                if cn.startswith("slow") and stub.pending.get(cn, 0) == 0:
                    stub.pending[cn] = 1
                    # 202 with Retry-After and neither body nor Content-Length
                    return self._send(202, extra=[("Retry-After", "3")], length=False)
                cert = stub.ca.sign_csr(csr)
                if op in ("simpleenroll", "simplereenroll"):
                    p7 = pkcs7.serialize_certificates([cert], serialization.Encoding.DER)
                    return self._send(200, base64.b64encode(p7), "application/pkcs7-mime; smime-type=certs-only")
                if op == "serverkeygen":
                    k = ec.generate_private_key(ec.SECP256R1())
                    cert = stub.ca.sign_csr(x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
                                            .sign(k, hashes.SHA256()))
                    p8 = k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
                    p7 = pkcs7.serialize_certificates([cert], serialization.Encoding.DER)
                    b = b"stubboundary"
                    mp = (b"--" + b + b"\r\nContent-Type: application/pkcs8\r\n\r\n" + base64.encodebytes(p8)
                          + b"--" + b + b"\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\n\r\n"
                          + base64.encodebytes(p7) + b"--" + b + b"--\r\n")
                    return self._send(200, mp, "multipart/mixed; boundary=stubboundary")
                return self._send(404, b"no\n", "text/plain")

            do_GET = do_POST = _route

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(self.root_pem)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = "https://localhost:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


STATUS_TOML = "".join('\n[profiles.s%d]\nauth = ["cert"]\nclient_cert_trust = ["ca", "idevid"]\n' % s for s in STATUSES)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    s = Stub(tmp_path_factory.mktemp("stub"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def px(stub, tmp_path_factory):
    p = ProxyHarness(tmp_path_factory.mktemp("proxy-stub"), stub, stub.url, upstream_root_pem=stub.root_pem,
                     vendor_pem=os.path.join(stub.tmp, "vendor.pem"), reenroll_as="simplereenroll",
                     extra_toml=STATUS_TOML, https=False)
    yield p
    p.stop()


def test_all_operations_against_the_stub(stub, px):
    dev = idevid_device(stub, "stub-dev")
    with px.dtls_client(dev, [stub.ca.root]) as dc:
        s = CoapsSession(dc)
        assert [x509.load_der_x509_certificate(c) for c in s.cacerts().certs] == [stub.ca.root]
        assert s.csrattrs().attrs is None  # 204: no attributes
        key, csr = make_csr("stub-dev")
        c1 = x509.load_der_x509_certificate(s.enroll(csr, public_key=point(key)).cert)
        c1.verify_directly_issued_by(stub.ca.root)
        ev = s.serverkeygen(csr)
        assert x509.load_der_x509_certificate(ev.cert).public_key() == serialization.load_der_private_key(
            ev.key_der, None).public_key()
    key2, csr2 = make_csr("stub-dev")
    with px.dtls_client(Device(key, c1), [stub.ca.root]) as dc:
        c2 = x509.load_der_x509_certificate(CoapsSession(dc).reenroll(csr2, public_key=point(key2)).cert)
    assert c2.public_key() == key2.public_key()
    # every request reached the stub as the RA; simplereenroll was passed through as such
    assert all(ra for _, _, ra in stub.log)
    assert ("POST", "/.well-known/est/simplereenroll", True) in stub.log


def test_202_without_body_then_certificate(stub, px):
    dev = idevid_device(stub, "slow-dev")
    key, csr = make_csr("slow-dev")
    with px.dtls_client(dev, [stub.ca.root]) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen"), csr, content_format=N.CF_PKCS10)
        assert r.code == N.SERVICE_UNAVAILABLE and opt_uint(r, N.MAX_AGE) == 3
        ev = CoapsSession(dc).enroll(csr, public_key=point(key))
    assert x509.load_der_x509_certificate(ev.cert).public_key() == key.public_key()


@pytest.mark.parametrize("status", STATUSES)
def test_http_status_maps_to_coap_code(stub, px, status):
    from est_lite_cpython.proxy import coap_code_for_http

    want = {400: 0x80, 401: 0x81, 403: 0x83, 404: 0x84, 405: 0x85, 406: 0x86, 408: 0x88, 413: 0x8D, 415: 0x8F,
            418: 0x80, 500: 0xA0, 501: 0xA1, 502: 0xA2, 503: 0xA3, 504: 0xA4, 505: 0xA2}[status]
    assert coap_code_for_http(status) == want
    dev = idevid_device(stub, "status-dev")
    with px.dtls_client(dev, [stub.ca.root]) as dc:
        raw = RawCoap(dc)
        r = raw.request(N.POST, raw.path("sen", "s%d" % status), make_csr("status-dev")[1],
                        content_format=N.CF_PKCS10)
        assert r.code == want
        assert ("stub says %d" % status).encode() in bytes(r.payload)
        if status == 503:  # no Retry-After: 5.03 without Max-Age (the client's default 60 s applies)
            assert opt_uint(r, N.MAX_AGE) is None
            assert CoapsSession(dc).enroll(make_csr("status-dev")[1], "s503").seconds == 60
        else:
            with pytest.raises(ServerError) as e:
                CoapsSession(dc).enroll(make_csr("status-dev")[1], "s%d" % status)
            assert e.value.coap_code == want


def test_ra_certificate_without_cmc_ra_is_refused_at_load(stub, tmp_path):
    from est_lite.errors import LocalProtocolError
    from est_lite_cpython.proxy import Upstream

    k, c = issue(stub.ca.issuer, stub.ca._key, "not an RA")
    cert_file, key_file = write_identity(str(tmp_path), "notra", k, c)
    with pytest.raises(LocalProtocolError) as e:
        Upstream(stub.url, ca_file=stub.root_pem, ra_cert=cert_file, ra_key=key_file)
    assert "cmcRA" in str(e.value)
