"""A tiny test PKI on `cryptography`: P-256 CA, intermediate, server and
client certificates, in the forms the DTLS tests need (cryptography objects,
DER, PEM).

    pki = TestPki()                      # root CA "est-lite test root"
    srv = pki.issue("server", dns=["localhost"], ips=["127.0.0.1"], server=True)
    cli = pki.issue("device-1", client=True)
    srv.cert, srv.key, srv.cert_der, srv.key_der   # cryptography objects / DER

Everything is made in memory and is fast (P-256 keys).
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Issued:
    """A certificate with its private key and the chain up to (excluding) the root."""

    def __init__(self, cert, key, chain=()):
        self.cert = cert
        self.key = key
        self.chain = list(chain)  # issuers above cert, nearest first, root excluded

    @property
    def cert_der(self):
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_der(self):
        # SEC1 "EC PRIVATE KEY" DER: what Mbed TLS (MicroPython `tls`) parses.
        return self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    @property
    def key_pem(self):
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def fingerprint(self):
        return self.cert.fingerprint(hashes.SHA256())


class TestPki:
    __test__ = False  # not a pytest class

    def __init__(self, name="est-lite test root", days=30):
        self.days = days
        key = ec.generate_private_key(ec.SECP256R1())
        self.root = Issued(self._build(_name(name), key, _name(name), key, ca=True, path_len=1), key)

    def _build(self, subject, subject_key, issuer, issuer_key, ca=False, path_len=None, dns=(), ips=(),
               server=False, client=False, not_after=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            ekus = []
            if server:
                ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
            if client:
                ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
            if ekus:
                b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def intermediate(self, name="est-lite test intermediate"):
        """A sub-CA under the root; issue() on the returned TestPki-like object
        signs with it."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(_name(name), key, self.root.cert.subject, self.root.key, ca=True, path_len=0)
        sub = TestPki.__new__(TestPki)
        sub.days = self.days
        sub.root = Issued(cert, key, [self.root.cert])
        sub.anchor = self.root
        return sub

    def issue(self, cn, dns=(), ips=(), server=False, client=False, expired=False):
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = None
        if expired:
            not_after = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        cert = self._build(_name(cn), key, self.root.cert.subject, self.root.key, dns=dns, ips=ips, server=server,
                           client=client, not_after=not_after)
        # chain: the issuing CA (if it is an intermediate) and its own chain, root excluded
        chain = []
        if getattr(self, "anchor", None) is not None:
            chain = [self.root.cert]
        return Issued(cert, key, chain)

    @property
    def root_der(self):
        return self.root.cert_der
