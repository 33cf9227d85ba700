"""Test helpers for the EST proxy / RA: identities issued by the upstream's
CA (the RA certificate with id-kp-cmcRA, the proxy's TLS certificate), and a
started proxy (HTTPS and CoAPs front ends) in front of an upstream."""

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import textwrap

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers_server import Response, write_identity

CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")


def issue(issuer_cert, issuer_key, cn, *, ekus=(), dns=(), ips=(), days=90):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(issuer_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, b.sign(issuer_key, hashes.SHA256())


def ra_identity(up, tmp, *, cmc_ra=True, cn="est-lite RA"):
    """RA certificate from the upstream's CA: clientAuth + id-kp-cmcRA."""
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([CMC_RA] if cmc_ra else [])
    key, cert = issue(up.ca.issuer, up.ca._key, cn, ekus=ekus)
    if up.ca.store is not None:
        up.ca.store.add_certificate(cert, label="", requester="test: RA")
    return write_identity(str(tmp), "ra", key, cert)


def proxy_tls_identity(up, tmp):
    key, cert = issue(up.ca.issuer, up.ca._key, "est-lite proxy", ekus=[ExtendedKeyUsageOID.SERVER_AUTH],
                      dns=["localhost"], ips=["127.0.0.1", "::1"])
    chain = [up.ca.issuer] if up.ca.issuer != up.ca.root else []
    return write_identity(str(tmp), "proxy-tls", key, cert, chain)


PROXY_TOML = """
[ca]
data_dir = "proxydata"

[server]
listen = "127.0.0.1"
port = 0
workers = 4
tls_cert = "proxy-tls.crt"
tls_key = "proxy-tls.key"

[coaps]
port = 0

[trust.idevid]
certs = ["vendor.pem"]

[profiles.default]
auth = ["cert", "basic"]
client_cert_trust = ["ca", "idevid"]
pop_exempt_transports = ["coaps"]

[profiles.manual]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]

[profiles.strict]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]

[profiles.certonly]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]

[proxy]
upstream = "%(upstream)s"
upstream_ca = "upstream-root.pem"
upstream_server_name = "localhost"
ra_cert = "ra.crt"
ra_key = "ra.key"
reenroll_as = "%(reenroll_as)s"
timeout_s = 10
"""


def write_proxy_dir(up, d, reenroll_as="simpleenroll"):
    """A directory for `est-lite proxy --config d/proxy.toml` in front of the
    test server `up`: the RA and TLS identities, the upstream's root and
    the vendor root, and PROXY_TOML naming `up` (as localhost)."""
    import shutil

    d.mkdir()
    ra_identity(up, d)
    proxy_tls_identity(up, d)
    for k in ("ra.key", "proxy-tls.key"):
        os.chmod(str(d / k), 0o600)  # as `est-lite ca issue` makes them (the proxy warns about others)
    shutil.copy(up.root_pem, d / "upstream-root.pem")
    shutil.copy(os.path.join(up.tmp, "vendor.pem"), d / "vendor.pem")
    (d / "proxy.toml").write_text(PROXY_TOML % {"upstream": up.url.replace("127.0.0.1", "localhost"),
                                                "reenroll_as": reenroll_as})
    return d / "proxy.toml"


class ProxyHarness:
    """A proxy (ProxyService behind EstHttpsServer and EstCoapsServer) in
    tmp, in front of `upstream_url`; `up` provides the CA for the proxy's
    identities (an EstTestServer, or an object with .ca and .vendor)."""

    def __init__(self, tmp, up, upstream_url, *, upstream_root_pem, vendor_pem, reenroll_as="simpleenroll",
                 extra_toml="", ra=None, https=True, coaps=True):
        from est_lite_cpython.auth import PasswordFile
        from est_lite_cpython.coaps_server import EstCoapsServer
        from est_lite_cpython.https_server import EstHttpsServer
        from est_lite_cpython.proxy import load_proxy_config, proxy_from_config

        self.tmp = str(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        if ra is None:
            ra_identity(up, tmp)
        proxy_tls_identity(up, tmp)
        with open(upstream_root_pem, "rb") as f, open(os.path.join(self.tmp, "upstream-root.pem"), "wb") as g:
            g.write(f.read())
        with open(vendor_pem, "rb") as f, open(os.path.join(self.tmp, "vendor.pem"), "wb") as g:
            g.write(f.read())
        text = PROXY_TOML % {"upstream": upstream_url, "reenroll_as": reenroll_as} + textwrap.dedent(extra_toml)
        self.config_path = os.path.join(self.tmp, "proxy.toml")
        with open(self.config_path, "w") as f:
            f.write(text)
        self.config, self.pconfig = load_proxy_config(self.config_path)
        os.makedirs(self.config.data_dir, exist_ok=True)
        PasswordFile(self.config.password_file, iterations=1000).set_password("dave", "devpass", self.config.realm)
        self.service = proxy_from_config(self.config, self.pconfig)
        self.service.prefetch()
        self.https = self.coaps = None
        try:
            if https:
                self.https = EstHttpsServer.from_config(self.service, self.config, port=0)
                self.port = self.https.start()
            if coaps:
                self.coaps = EstCoapsServer.from_config(self.service, self.config, port=0)
                self.coaps_port = self.coaps.start()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.coaps is not None:
            self.coaps.stop()
        if self.https is not None:
            self.https.stop()

    @property
    def upstream_stats(self):
        return dict(self.service.upstream.stats)

    def dtls_client(self, device, trust, **kw):
        from est_lite_cpython.dtls_client import DtlsClient

        kw.setdefault("timeout", 10)
        return DtlsClient("127.0.0.1", self.coaps_port, trust, cert=device.cert, key=device.key, **kw)


def https_post(px, up, path, body, *, cert_files=None, auth=None, content_type="application/pkcs10"):
    """A stdlib-ssl HTTPS client of the proxy's HTTPS front end: POST body
    (base64) with the client certificate files or HTTP Basic (user, pw);
    content_type None sends no Content-Type. Returns a Response."""
    c = ssl.create_default_context(cafile=up.root_pem)
    if cert_files:
        c.load_cert_chain(*cert_files)
    with socket.create_connection(("127.0.0.1", px.port), timeout=10) as s:
        with c.wrap_socket(s, server_hostname="localhost") as t:
            b = base64.encodebytes(body)
            h = "POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" % path
            if content_type:
                h += "Content-Type: %s\r\n" % content_type
            h += "Content-Length: %d\r\n" % len(b)
            if auth:
                h += "Authorization: Basic %s\r\n" % base64.b64encode(("%s:%s" % auth).encode()).decode()
            t.sendall((h + "\r\n").encode() + b)
            return Response.read(t)
