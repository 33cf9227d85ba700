"""Secure-element backend shape for the CPython port.

The Signer interface (used by est_lite.csr and the transports):

    signer.public_key        65 bytes, 0x04 || X || Y
    signer.sign(message)     DER ECDSA-SHA256 signature (the signer hashes)

A secure element (ATECC608-class, a TPM, a PKCS#11 token) keeps the private
key inside and signs 32-byte digests. `ElementSigner(public_key,
sign_digest)` (shared with the MicroPython port, est_lite_mp.secure_element)
wraps such a function into a Signer: the key never enters Python.

`SimulatedSecureElement` is a SIMULATION for tests. It is not a secure
element and protects nothing: it runs a child Python process that generates
its key inside and answers only two requests, like the chip's GenKey and
Sign commands: the public key, and raw r||s for a digest. The parent never
holds the private key, so a test that passes with it shows the code path
needs nothing but public_key and sign.
"""

import subprocess
import sys
import threading

from est_lite.errors import LocalProtocolError, TransportError
from est_lite_mp.secure_element import ElementSigner

__all__ = ["ElementSigner", "SimulatedSecureElement"]

# The "element": reads hex commands on stdin, answers on stdout, exits on EOF.
_CHILD = r"""
import sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
key = ec.generate_private_key(ec.SECP256R1())
n = key.public_key().public_numbers()
pub = (b"\x04" + n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")).hex()
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "PUB":
        out = pub
    elif cmd == "SIGN":
        try:
            digest = bytes.fromhex(arg)
            if len(digest) != 32:
                raise ValueError
            r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
            out = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
        except ValueError:
            out = "ERR"
    else:
        out = "ERR"
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
"""


class SimulatedSecureElement:
    """SIMULATED secure element: key generated and kept in a child process.
    Exposes public_key, sign_digest(digest) -> raw r||s, sign(message)
    (a Signer), close(); also a context manager."""

    def __init__(self, timeout=10.0):
        self._timeout = timeout
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.public_key = bytes.fromhex(self._request("PUB"))
        self._signer = ElementSigner(self.public_key, self.sign_digest)

    def _request(self, line):
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise TransportError("simulated secure element is not running")
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            out = proc.stdout.readline().strip()
        if not out or out == "ERR":
            raise TransportError("simulated secure element refused %r" % line.split(" ")[0])
        return out

    def sign_digest(self, digest):
        """Raw r||s (64 bytes) over a 32-byte digest, signed in the child."""
        if len(digest) != 32:
            raise LocalProtocolError("the element signs 32-byte SHA-256 digests")
        return bytes.fromhex(self._request("SIGN " + bytes(digest).hex()))

    def sign(self, message):
        """DER ECDSA-SHA256 signature of message (Signer interface)."""
        return self._signer.sign(message)

    def close(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stdin.close()
            try:
                proc.wait(self._timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
