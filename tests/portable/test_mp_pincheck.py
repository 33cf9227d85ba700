# micropython-heapsize: 192K
# est_lite_mp.certs.PinCheck: the pinned-bootstrap decision the MicroPython
# transports make in the (D)TLS verify callback. Mbed TLS calls it top of
# the chain first, down to the leaf at depth 0; the certificates arrive as
# memoryviews into its own buffer.
import hashlib

from _util import raises

import client_vectors as V
from est_lite.errors import LocalProtocolError
from est_lite_mp import crypto
from est_lite_mp.certs import PinCheck


def fp(der):
    return hashlib.sha256(der).digest()


def walk(pc, top_first):
    n = len(top_first)
    return [pc(memoryview(c), n - 1 - i) for i, c in enumerate(top_first)]


def forged_leaf():
    # names the test CA as its issuer, but its signature does not verify with the CA's key
    b = bytearray(V.LEAF)
    i = bytes(b).find(b"device-1")
    assert i > 0
    b[i + 7] = ord("X")
    return bytes(b)


def test_ca_pin_genuine_chain():
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.CA, V.LEAF]) == [True, True]
    assert pc.hit and pc.why is None


def test_ca_pin_forged_leaf_refused():
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.CA, forged_leaf()]) == [True, False]
    assert pc.hit
    assert "not signed by" in pc.why, pc.why
    assert "CN=device-X (depth 0)" in pc.why and "CN=est-lite test CA (depth 1)" in pc.why, pc.why
    assert fp(V.CA).hex() in pc.why


def test_leaf_pin_needs_no_signature_check():
    def no_verify(*a):
        raise AssertionError("a leaf pin checks no signature")

    pc = PinCheck(fp(V.LEAF), no_verify)
    assert walk(pc, [V.CA, V.LEAF]) == [True, True] and pc.why is None
    # the leaf pin holds whatever is above it
    pc = PinCheck(fp(forged_leaf()), no_verify)
    assert walk(pc, [V.LEAF, forged_leaf()]) == [True, True] and pc.why is None
    assert walk(pc, [forged_leaf()]) == [True]


def test_pin_not_in_chain():
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.LEAF]) == [False]
    assert not pc.hit and "does not contain the pinned" in pc.why
    # a chain above the leaf that never matches: only depth 0 says no
    pc = PinCheck(b"\x01" * 32, crypto.verify)
    assert walk(pc, [V.CA, V.LEAF]) == [True, False] and not pc.hit


def test_a_new_handshake_starts_over():
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.CA, forged_leaf()]) == [True, False]
    assert walk(pc, [V.CA, V.LEAF]) == [True, True] and pc.why is None
    assert walk(pc, [V.LEAF]) == [False] and not pc.hit
    assert walk(pc, [V.CA, V.LEAF]) == [True, True] and pc.why is None


def test_the_match_closest_to_the_leaf_counts():
    # a failed link above a second copy of the pinned certificate does not count (as on CPython)
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.CA, V.LEAF, V.CA, V.LEAF]) == [True, True, True, True] and pc.why is None
    assert walk(pc, [V.CA, V.CA, forged_leaf()]) == [True, True, False]


def test_malformed_certificate_below_the_pin():
    pc = PinCheck(fp(V.CA), crypto.verify)
    assert walk(pc, [V.CA, b"\x30\x03\x02\x01\x00"]) == [True, False]
    assert "depth 0" in pc.why, pc.why
    # a malformed pinned certificate (its hash matches, its fields do not parse)
    junk = b"\x30\x03\x02\x01\x00"
    pc = PinCheck(fp(junk), crypto.verify)
    assert walk(pc, [junk, V.LEAF]) == [True, False] and "depth 1" in pc.why


def test_limits_and_arguments():
    pc = PinCheck(fp(V.CA), crypto.verify, max_below=0)
    assert walk(pc, [V.CA, V.LEAF]) == [True, False] and "max_below" in pc.why
    assert walk(pc, [V.CA]) == [True]  # the pinned certificate itself at depth 0
    for bad in (b"short", "ab" * 32, None):
        raises(LocalProtocolError, PinCheck, bad, crypto.verify)


def test_default_verify_is_the_ports():
    pc = PinCheck(fp(V.CA), None)
    assert walk(pc, [V.CA, V.LEAF]) == [True, True]
    assert walk(pc, [V.CA, forged_leaf()]) == [True, False]


def test_fresh_check_has_no_verdict():
    # the transports read hit / why also when the handshake failed before
    # Mbed TLS showed any certificate (connection closed, no common suite)
    pc = PinCheck(fp(V.CA), None)
    assert pc.hit is False and pc.why is None
