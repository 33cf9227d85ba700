"""Hypothesis fuzzing of the ASN.1 readers: whatever the bytes, only
EstError subclasses escape, deep nesting is an error (not RecursionError),
and huge length claims never allocate."""

import base64
import pathlib
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from est_lite import csrattrs, der, pkcs7
from est_lite.errors import EstError
from est_lite_cpython import codec_server as W

VECTORS = pathlib.Path(__file__).parent / "vectors"
CACERTS = base64.b64decode((VECTORS / "rfc7030_a1_cacerts.b64").read_text())
ENROLL = base64.b64decode((VECTORS / "rfc7030_a3_simpleenroll_response.b64").read_text())
CSRATTRS = [
    base64.b64decode("MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJBgcrBgEBAQEWBggqhkjOPQQDAw=="),
    base64.b64decode("MGgwZgYJKoZIhvcNAQkOMVkwVzBVBgNVHREBAf8ESzBJoEcGCCsGAQUFBwgKoDsWOXJmYzg5OTQrZmQ3MzlmYzIzYzM0NDAx"
                     "MTIyMzM0NDU1MDAwMDAwMDArQGFjcC5leGFtcGxlLmNvbQ=="),
    W.csrattrs_encode([
        csrattrs.CHALLENGE_PASSWORD,
        W.csrattrs_template(
            subject=[("2.5.4.3", None), ("2.5.4.11", der.utf8("u"))],
            key_alg="1.2.840.10045.2.1",
            key_params="1.2.840.10045.3.1.7",
            extensions=[("2.5.29.17", False, der.seq(der.tlv(0x82, b"a"))), ("2.5.29.37", False, None)],
        ),
    ]),
]
CERT = bytes(pkcs7.certificates(ENROLL)[0])

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_est_errors(fn, data):
    try:
        fn(data)
    except EstError:
        pass


def _walk_all(data):
    # read_tlv/iter_tlv over every element reachable, the way a parser would
    mv = memoryview(data)
    W.der_check(mv)
    stack = [(0, len(mv), 0)]
    while stack:
        s, e, depth = stack.pop()
        for t, a, b in der.iter_tlv(mv, s, e):
            if t & 0x20 and depth < 20:
                stack.append((a, b, depth + 1))
            elif t == der.OID:
                der.oid_str(mv[a:b])
            elif t == der.INTEGER:
                der.read_int(mv, a, b, max_bytes=1 << 20)
            elif t == der.BIT_STRING:
                der.read_bit_string(mv, a, b)


def _mutate(seed, ops):
    buf = bytearray(seed)
    for kind, pos, val in ops:
        if not buf:
            buf.append(val)
            continue
        i = pos % len(buf)
        if kind == 0:
            buf[i] = val
        elif kind == 1:
            del buf[i]
        elif kind == 2:
            buf.insert(i, val)
        elif kind == 3:
            buf[i] ^= 1 << (val & 7)
        else:
            del buf[i:]
    return bytes(buf)


ops = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    _only_est_errors(lambda d: der.read_tlv(d), data)
    _only_est_errors(_walk_all, data)
    _only_est_errors(pkcs7.certificates, data)
    _only_est_errors(csrattrs.decode, data)
    _only_est_errors(pkcs7.cert_tbs_fields, data)


@FUZZ
@given(ops)
def test_mutated_pkcs7(o):
    data = _mutate(ENROLL, o)
    try:
        for c in pkcs7.certificates(data):
            f = pkcs7.cert_tbs_fields(c)
            list(pkcs7.cert_extensions(f))
    except EstError:
        pass


@FUZZ
@given(ops)
def test_mutated_cacerts(o):
    _only_est_errors(pkcs7.certificates, _mutate(CACERTS, o))


@FUZZ
@given(ops)
def test_mutated_certificate(o):
    data = _mutate(CERT, o)
    try:
        list(pkcs7.cert_extensions(pkcs7.cert_tbs_fields(data)))
    except EstError:
        pass
    _only_est_errors(_walk_all, data)


@FUZZ
@given(st.sampled_from(CSRATTRS), ops)
def test_mutated_csrattrs(seed, o):
    data = _mutate(seed, o)
    try:
        a = csrattrs.decode(data)
    except EstError:
        return
    # the queries never fail on anything decode() accepted
    a.wants_challenge_password, a.key_curve, a.hash_alg, a.extension_oids, len(a)


@FUZZ
@given(st.integers(1, 5000))
def test_deep_nesting_is_an_error_not_recursion(depth):
    inner = b"\x05\x00"
    parts = []
    total = len(inner)
    for _ in range(depth):
        h = der.header(0x30, total)
        parts.append(h)
        total += len(h)
    data = b"".join(reversed(parts)) + inner
    for fn in (W.der_check, csrattrs.decode, pkcs7.certificates, pkcs7.cert_tbs_fields):
        try:
            fn(data)
        except EstError:
            pass
    if depth > der.MAX_DEPTH:
        try:
            W.der_check(data)
        except EstError as e:
            assert "max_depth" in str(e)
        else:
            raise AssertionError("deep nesting accepted")


@FUZZ
@given(st.integers(0x80, 0xFFFFFFFF), st.sampled_from([0x30, 0x04, 0xA0, 0x31]))
def test_huge_length_claims_do_not_allocate(n, tag):
    data = der.header(tag, n) if n < 0x1000000 else bytes((tag, 0x84)) + n.to_bytes(4, "big")
    data += b"\x30\x03\x02\x01\x01"
    tracemalloc.start()
    try:
        for fn in (der.read_tlv, W.der_check, csrattrs.decode, pkcs7.certificates, pkcs7.cert_tbs_fields):
            try:
                fn(data)
            except EstError:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_deep_recursion_in_csrattrs_template_is_bounded():
    # a template attribute nesting SEQUENCEs far deeper than the interpreter stack
    deep = b"\x05\x00"
    for _ in range(3000):
        deep = der.seq(deep)
    data = W.csrattrs_encode([(csrattrs.CSR_TEMPLATE, [deep])])
    a = csrattrs.decode(data, max_size=1 << 20)
    assert a.template is None and a.unparsed
