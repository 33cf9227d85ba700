"""Test helpers for the reference EST server: a fresh CA and a started server
in a temporary directory, CSR builders, and small HTTPS clients (stdlib ssl
for TLS 1.2 tls-unique, pyOpenSSL for the TLS 1.3 exporter)."""

import base64
import datetime
import os
import socket
import ssl
import struct
import textwrap
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import AttributeOID, NameOID

USER, PASSWORD = "alice", "s3cret"

BASE_CONFIG = """
[server]
listen = "127.0.0.1"
port = 0
workers = 8
io_timeout_s = 5
request_timeout_s = 10

[trust.idevid]
certs = ["vendor.pem"]

[profiles.default]
validity_days = 90
key_types = ["ec:P-256", "ec:P-384", "rsa:2048"]
client_cert_trust = ["ca", "idevid"]

[profiles.pop]
pop = "required"
client_cert_trust = ["ca", "idevid"]
pop_exempt_trust = ["idevid"]

[profiles.manual]
manual_approval = true
retry_after = 7

[profiles.strict]
validity_days = 30
key_types = ["ec:P-256"]
subject_required = ["CN", "O"]
san = "require"
san_types = ["dns"]
san_dns_suffixes = [".example.com"]
eku = ["clientAuth", "serverAuth"]
auth = ["basic"]
csrattrs = ["challengePassword", "ecPublicKey:P-256", "ecdsa-with-SHA256", "extensionRequest:macAddress"]
serverkeygen = false

[profiles.certonly]
auth = ["cert"]
client_cert_trust = ["idevid"]
csrattrs_auth = true
"""


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def der(obj):
    return obj.public_bytes(serialization.Encoding.DER)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(cn="device-1", key=None, *, sans=(), challenge=None, org=None, sign_key=None, serial=None):
    """(key, DER CSR). sans: DNS names (str) or x509.GeneralName."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(s) if isinstance(s, str) else s for s in sans]), critical=False)
    if challenge is not None:
        b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode() if isinstance(challenge, str) else challenge)
    sk = sign_key or key
    alg = None if isinstance(sk, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    csr = b.sign(sk, alg)
    return key, der(csr)


def make_vendor_ca(tmp, name="Vendor IDevID CA"):
    """A separate 'manufacturer' CA and one device certificate from it.
    Returns dict with ca_cert, ca_key, paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    k = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .sign(k, hashes.SHA256()))
    with open(os.path.join(tmp, "vendor.pem"), "wb") as f:
        f.write(pem(c))
    return {"cert": c, "key": k}


def issue_cert(issuer_cert, issuer_key, cn, *, days=365, not_before_days=-1, key=None, sans=()):
    """A leaf certificate signed by issuer (for IDevIDs and expired certs)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(issuer_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=not_before_days))
         .not_valid_after(now + datetime.timedelta(days=days)))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return key, b.sign(issuer_key, hashes.SHA256())


class TrustStub:
    """What DefaultAuthenticator reads of one [trust.NAME] set."""

    def __init__(self, certs, crls=()):
        self.certs = list(certs)
        self.crls = list(crls)


class ConfigStub:
    """A config with only trust sets: ConfigStub(idevid=TrustStub([...]))."""

    def __init__(self, **trust):
        self.trust = trust


def write_identity(tmp, name, key, cert, chain=()):
    """Write key and cert(+chain) PEM files; returns (cert_path, key_path)."""
    cp, kp = os.path.join(tmp, name + ".crt"), os.path.join(tmp, name + ".key")
    with open(cp, "wb") as f:
        f.write(pem(cert))
        for c in chain:
            f.write(pem(c))
    with open(kp, "wb") as f:
        f.write(key_pem(key))
    return cp, kp


class EstTestServer:
    """A fresh CA in tmp, the BASE_CONFIG (plus `extra_toml`), user alice, a
    vendor CA 'idevid', and a started EstHttpsServer on an ephemeral port."""

    def __init__(self, tmp, extra_toml="", intermediate=False, config_text=None, **server_kw):
        from est_lite_cpython.auth import PasswordFile
        from est_lite_cpython.ca import init_ca
        from est_lite_cpython.config import load_config
        from est_lite_cpython.https_server import server_from_config

        self.tmp = str(tmp)
        self.data_dir = os.path.join(self.tmp, "ca")
        init_ca(self.data_dir, intermediate=intermediate)
        self.vendor = make_vendor_ca(self.tmp)
        text = (config_text if config_text is not None else BASE_CONFIG) + textwrap.dedent(extra_toml)
        self.config_path = os.path.join(self.tmp, "server.toml")
        with open(self.config_path, "w") as f:
            f.write('[ca]\ndata_dir = "ca"\n' + text)
        self.config = load_config(self.config_path)
        PasswordFile(self.config.password_file, iterations=1000).set_password(USER, PASSWORD, self.config.realm)
        self.server = server_from_config(self.config, **server_kw)
        self.service = self.server.service
        self.ca = self.service.ca
        self.root_pem = os.path.join(self.data_dir, "root.pem")
        self.port = self.server.start()
        self.url = self.server.url

    def stop(self):
        self.server.stop()
        self.ca.store.close()

    def path(self, op, label=None):
        return "/.well-known/est/%s%s" % (label + "/" if label else "", op)

    def tls_client_context(self, cert=None, key=None, version=None):
        c = ssl.create_default_context(cafile=self.root_pem)
        if version == "1.2":
            c.maximum_version = ssl.TLSVersion.TLSv1_2
        elif version == "1.3":
            c.minimum_version = ssl.TLSVersion.TLSv1_3
        if cert:
            c.load_cert_chain(cert, key)
        return c

    def request(self, method, path, body=None, *, headers=None, cert=None, key=None, version=None,
                auth=None, b64=True, raw_body=None):
        """One request on a new stdlib-ssl connection. auth=(user, pw) for
        Basic. body: DER (sent base64) unless b64=False. Returns Response."""
        ctx = self.tls_client_context(cert, key, version)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                data = raw_body if raw_body is not None else (
                    b"" if body is None else (base64.encodebytes(body) if b64 else body))
                h = {"Host": "localhost", "Connection": "close"}
                if body is not None or raw_body is not None:
                    h["Content-Type"] = "application/pkcs10"
                    h["Content-Length"] = str(len(data))
                if auth:
                    h["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
                h.update(headers or {})
                head = "%s %s HTTP/1.1\r\n%s\r\n" % (method, path, "".join("%s: %s\r\n" % kv for kv in h.items()))
                t.sendall(head.encode() + data)
                return Response.read(t)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (lowercase name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def headers_all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def der(self):
        return base64.b64decode(b"".join(self.body.split()))

    def certs(self):
        from cryptography.hazmat.primitives.serialization import pkcs7

        return pkcs7.load_der_pkcs7_certificates(self.der())

    @classmethod
    def parse(cls, data):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        n = None
        for k, v in headers:
            if k == "content-length":
                n = int(v)
        body = rest if n is None else rest[:n]
        return cls(status, headers, body)

    @classmethod
    def read(cls, sock):
        chunks = []
        while True:
            try:
                d = sock.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not d:
                break
            chunks.append(d)
        return cls.parse(b"".join(chunks))


def parse_multipart(resp):
    """{content-type: DER} from a multipart/mixed serverkeygen response."""
    ct = resp.header("content-type")
    boundary = ct.split("boundary=")[1].strip().strip('"').encode()
    out = {}
    for part in resp.body.split(b"--" + boundary):
        part = part.strip(b"\r\n")
        if not part or part == b"--":
            continue
        head, _, body = part.partition(b"\r\n\r\n")
        h = {}
        for ln in head.decode().split("\r\n"):
            k, _, v = ln.partition(":")
            h[k.strip().lower()] = v.strip()
        out[h["content-type"]] = base64.b64decode(b"".join(body.split()))
    return out


def pyopenssl_request(srv, method, path, make_body, *, cert=None, key=None, version="1.3", headers=None):
    """Request over pyOpenSSL so the client can compute the TLS 1.3 exporter
    (or tls-unique on 1.2). make_body(binding_bytes) -> DER body."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    v = SSL.TLS1_3_VERSION if version == "1.3" else SSL.TLS1_2_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.load_verify_locations(srv.root_pem)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    if cert:
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel timeout bounds reads
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    c = SSL.Connection(ctx, s)
    c.set_tlsext_host_name(b"localhost")
    c.set_connect_state()
    c.do_handshake()
    if version == "1.3":
        binding = c.export_keying_material(b"EXPORTER-Channel-Binding", 32)
    else:
        binding = c.get_finished()  # client's Finished = tls-unique of a full handshake
    body = base64.encodebytes(make_body(binding))
    h = {"Host": "localhost", "Connection": "close", "Content-Length": str(len(body))}
    h.update(headers or {})
    head = "%s %s HTTP/1.1\r\n%s\r\n" % (method, path, "".join("%s: %s\r\n" % kv for kv in h.items()))
    c.sendall(head.encode() + body)
    chunks = []
    while True:
        try:
            d = c.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break
        if not d:
            break
        chunks.append(d)
    c.close()
    s.close()
    return Response.parse(b"".join(chunks))


def stdlib_pop_request(srv, path, make_body, *, cert=None, key=None, auth=(USER, PASSWORD)):
    """TLS 1.2 over stdlib ssl: tls-unique from get_channel_binding."""
    ctx = srv.tls_client_context(cert, key, "1.2")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            binding = t.get_channel_binding("tls-unique")
            body = base64.encodebytes(make_body(binding))
            h = {"Host": "localhost", "Connection": "close", "Content-Length": str(len(body))}
            if auth:
                h["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode()
            head = "POST %s HTTP/1.1\r\n%s\r\n" % (path, "".join("%s: %s\r\n" % kv for kv in h.items()))
            t.sendall(head.encode() + body)
            return Response.read(t)


def b64s(b):
    return base64.b64encode(b).decode()


def wait_for(fn, timeout=5.0):
    """Poll fn() every 20 ms until it is true or timeout seconds have
    passed; its last value (checked once more at the deadline)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return True
        time.sleep(0.02)
    return bool(fn())
