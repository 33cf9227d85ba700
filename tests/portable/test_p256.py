# micropython-heapsize: 128K
# Portable tests for est_lite_mp.p256 (the pure-Python P-256), run under
# CPython (pytest) and the MicroPython unix port (the table module alone
# takes 33 KB of heap when imported from source).
import hashlib

from _util import raises, unhex

from est_lite.errors import LocalProtocolError
from est_lite_mp import p256

P = p256.P
N = p256.N
G = (p256.GX, p256.GY)

# RFC 6979 A.2.5 (ECDSA, 256 bits, P-256)
X = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
UX = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
UY = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
VECTORS = (
    (
        b"sample",
        0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
        0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
        0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
    ),
    (
        b"test",
        0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
        0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
        0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
    ),
)

# 2G (SEC 2 / well-known)
G2 = (
    0x7CF27B188D034F7E8A52380304B51AC3C08969E277F21B35A60B48FC47669978,
    0x07775510DB8ED040293D9AC69F7430DBBA7DADE63CE982299E04B79D227873D1,
)


def _aff(j):
    return p256.to_affine(*j)


def _sha(m):
    return hashlib.sha256(m).digest()


def test_base_point_on_curve_and_order():
    assert p256.on_curve(p256.GX, p256.GY)
    assert not p256.on_curve(p256.GX, p256.GY + 1)
    assert not p256.on_curve(p256.GX + P, p256.GY)
    assert _aff(p256.mul_base(N)) is None  # n * G is the point at infinity
    assert _aff(p256.mul(N, p256.GX, p256.GY)) is None


def test_rfc6979_public_key():
    assert p256.public_key(X) == (UX, UY)


def test_rfc6979_a25_nonces_and_signatures():
    for msg, k, r, s in VECTORS:
        h = _sha(msg)
        assert next(p256.nonces(X, h)) == k
        assert p256.sign_digest(X, h) == (r, s)
        assert p256.verify_digest(UX, UY, h, r, s)


def test_verify_rejects():
    msg, k, r, s = VECTORS[0]
    h = _sha(msg)
    assert not p256.verify_digest(UX, UY, _sha(b"samplf"), r, s)
    assert not p256.verify_digest(UX, UY, h, r, s + 1)
    assert not p256.verify_digest(UX, UY, h, s, r)
    assert not p256.verify_digest(UX, UY, h, 0, s)
    assert not p256.verify_digest(UX, UY, h, r, N)
    assert not p256.verify_digest(G[0], G[1], h, r, s)  # other key


def test_small_multiples_and_edge_cases():
    gx, gy = G
    assert _aff(p256.mul_base(1)) == G
    assert _aff(p256.mul_base(2)) == G2
    assert _aff(p256.dbl(gx, gy, 1)) == G2
    assert _aff(p256.madd(gx, gy, 1, gx, gy)) == G2  # P + P falls back to doubling
    assert _aff(p256.madd(gx, gy, 1, gx, P - gy)) is None  # P + (-P)
    assert p256.madd(0, 1, 0, gx, gy) == (gx, gy, 1)  # infinity + P
    assert _aff(p256.mul_base(N - 1)) == (gx, P - gy)
    assert _aff(p256.mul(N - 1, gx, gy)) == (gx, P - gy)
    assert _aff(p256.mul(2, gx, gy)) == G2
    assert _aff(p256.mul_base(0)) is None


def test_fixed_base_matches_generic():
    # scalars around every window boundary and the signed-digit carries
    ks = [3, 8, 9, 15, 16, 17, 0x88, 0x8888, 1 << 252, (1 << 256) - 1 - (1 << 255), N - 2, N >> 1]
    k = 0x1234567
    for _ in range(4):
        k = (k * 0x9E3779B97F4A7C15 + 0xABCDEF) % N
        ks.append(k)
    for k in ks:
        assert _aff(p256.mul_base(k)) == _aff(p256.mul(k, p256.GX, p256.GY)), hex(k)


def test_mul_base_carry_into_infinity_paths():
    # the top window is unsigned with a carry: 2^256 mod n and its neighbours
    k = (1 << 256) % N
    a = _aff(p256.mul_base(k))
    assert a == _aff(p256.mul(k, p256.GX, p256.GY))
    # (n+1)/2 * 2 = 1 (mod n)
    half = (N + 1) // 2
    x, y = _aff(p256.mul_base(half))
    assert _aff(p256.mul(2, x, y)) == G


def test_inverse():
    for m in (P, N):
        for a in (1, 2, 3, m - 1, 0xDEADBEEF, m >> 3):
            assert p256.inv(a, m) * a % m == 1
    raises(LocalProtocolError, p256.inv, 0, P)
    raises(LocalProtocolError, p256.inv, N, N)


def test_public_key_range():
    raises(LocalProtocolError, p256.public_key, 0)
    raises(LocalProtocolError, p256.public_key, N)
    raises(LocalProtocolError, p256.sign_digest, 0, _sha(b"x"))
    raises(LocalProtocolError, p256.sign_digest, N, _sha(b"x"))
    assert p256.public_key(N - 1) == (p256.GX, P - p256.GY)


def test_hmac_sha256_rfc4231():
    assert p256.hmac_sha256(b"\x0b" * 20, b"Hi There") == unhex(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    assert p256.hmac_sha256(b"Jefe", b"what do ya want for nothing?") == unhex(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    # key longer than the block: hashed first (test case 6)
    assert p256.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First") == unhex(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    )


def test_nonce_stream_and_extra_data():
    h = _sha(b"sample")
    g = p256.nonces(X, h)
    k1 = next(g)
    k2 = next(g)
    assert k1 != k2 and 0 < k2 < N
    ke = next(p256.nonces(X, h, b"\x01" * 32))
    assert ke != k1
    r, s = p256.sign_digest(X, h, b"\x01" * 32)
    assert p256.verify_digest(UX, UY, h, r, s)
    assert (r, s) != (VECTORS[0][2], VECTORS[0][3])


def test_long_digest_truncated_to_256_bits():
    h = _sha(b"a") + _sha(b"b")
    assert p256.bits2int(h) == p256.bits2int(h[:32])
    r, s = p256.sign_digest(X, h)
    assert p256.verify_digest(UX, UY, h[:32], r, s)


def test_decompress():
    assert p256.decompress(p256.GX, p256.GY & 1) == p256.GY
    assert p256.decompress(p256.GX, 1 - (p256.GY & 1)) == P - p256.GY
    assert p256.decompress(UX, UY & 1) == UY
    # x = 0 is not on the curve? find a non-residue quickly
    bad = 0
    while p256.decompress(bad, 0) is not None:
        bad += 1
    assert bad < 50
    assert p256.decompress(P, 0) is None


class _Counting:
    # the set_table protocol over the built-in table, counting window reads
    def __init__(self, w, T):
        self.w = w
        self.T = T
        self.reads = 0

    def __len__(self):
        return len(self.T)

    def __getitem__(self, i):
        self.reads += 1
        return self.T[i]


def test_set_table_public_protocol():
    w, T = p256.table()
    src = _Counting(w, T)
    k = 0x1234567890ABCDEF1234567890ABCDEF
    want = _aff(p256.mul(k, p256.GX, p256.GY))
    assert p256.set_table(src) is None  # the built-in table was in use
    try:
        assert p256.table() == (w, src)
        assert _aff(p256.mul_base(k)) == want
        assert 0 < src.reads <= len(T)
        # bad sources are refused and leave the current one in place
        bad = _Counting(w, T[:-1])
        raises(LocalProtocolError, p256.set_table, bad)
        bad = _Counting(1, T)
        raises(LocalProtocolError, p256.set_table, bad)
        bad = _Counting("4", T)
        raises(LocalProtocolError, p256.set_table, bad)
        raises(LocalProtocolError, p256.set_table, T)  # no w
        assert p256.table() == (w, src)
    finally:
        assert p256.set_table(None) is src
    assert p256.table()[1] is T
    assert _aff(p256.mul_base(k)) == want
