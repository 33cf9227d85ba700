"""Credential store for CPython: the portable est_lite_mp.credstore format
(a device and a gateway read each other's stores) with files created 0600
in a 0700 directory, fsync of every file before the commit rename and of the
directory after it.

    from est_lite_cpython.credstore import CredStore, StoreError
    s = CredStore("/var/lib/est/dev-1")
    c = s.load()                  # Creds(key, cert, ca, gen) or None; StoreError if corrupt
    s.save(key=der, cert=der, ca=[der, ...])
"""

import os

from est_lite_mp.credstore import Creds, StoreError, split_der  # noqa: F401 - re-exported
from est_lite_mp.credstore import CredStore as _PortableStore


class CredStore(_PortableStore):
    def _mkdir(self):
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _write(self, name, data):
        p = self._p(name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file existed with other bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_dir(self):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pem_files(self, creds=None):
        """{"key.pem": bytes, "cert.pem": bytes, "ca.pem": bytes} for the
        committed credentials (for tools that want PEM)."""
        import base64

        c = creds or self.load()
        out = {}
        if c is None:
            return out

        def pem(kind, der):
            b = base64.encodebytes(der).replace(b"\n", b"")
            lines = [b[i:i + 64] for i in range(0, len(b), 64)]
            return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (kind, b"\n".join(lines), kind)

        if c.key is not None:
            out["key.pem"] = pem(b"PRIVATE KEY" if _is_pkcs8(c.key) else b"EC PRIVATE KEY", c.key)
        if c.cert is not None:
            out["cert.pem"] = pem(b"CERTIFICATE", c.cert)
        if c.ca:
            out["ca.pem"] = b"".join(pem(b"CERTIFICATE", x) for x in c.ca)
        return out


def _is_pkcs8(der):
    # PKCS#8 PrivateKeyInfo: SEQUENCE { INTEGER 0, SEQUENCE AlgorithmIdentifier, ... };
    # SEC1 ECPrivateKey: SEQUENCE { INTEGER 1, OCTET STRING, ... }
    from est_lite import der as D
    from est_lite.errors import EstError

    try:
        s, e = D.read(der, 0, D.SEQUENCE)
        a, b = D.read(der, s, D.INTEGER, e)
        return D.read_int(der, a, b) == 0
    except EstError:
        return False
