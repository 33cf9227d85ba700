# micropython-heapsize: 128K
# est_lite_mp.p256.mul (width-4 NAF over P, 3P, 5P, 7P) against a plain
# affine double-and-add, for scalars whose NAF digits carry at every place,
# and scalars outside [0, n) (taken mod n). Runs under CPython and MicroPython.
from est_lite_mp import p256

P = p256.P
N = p256.N


def _inv(a):
    return pow(a, P - 2, P)


def _add(a, b):
    # affine addition; None is the point at infinity
    if a is None:
        return b
    if b is None:
        return a
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        m = 3 * (x1 * x1 - 1) * _inv(2 * y1) % P
    else:
        m = (y2 - y1) * _inv(x2 - x1) % P
    x3 = (m * m - x1 - x2) % P
    return x3, (m * (x1 - x3) - y1) % P


def _ref(k, pt):
    r = None
    while k:
        if k & 1:
            r = _add(r, pt)
        pt = _add(pt, pt)
        k >>= 1
    return r


def _mul(k, pt):
    return p256.to_affine(*p256.mul(k, pt[0], pt[1]))


Q = p256.public_key(0x1F2E3D4C5B6A79880123456789ABCDEF0FEDCBA9876543210123456789ABCDEF)


def test_small_and_edge_scalars():
    for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 23, 31, 255, 0x7777, 0x8888):
        assert _mul(k, Q) == _ref(k, Q), k
    assert _mul(N, Q) is None
    assert _mul(N - 1, Q) == (Q[0], P - Q[1])
    assert _mul(N + 5, Q) == _ref(5, Q)


def test_carry_patterns():
    # all-ones runs make every NAF digit negative with a carry out of the top
    for k in ((1 << 256) - 1, (1 << 255) - 1, 0xF0F0 << 200 | 0xFFFF, 0x9999999999 << 180, (N - 1) // 2):
        assert _mul(k, Q) == _ref(k % N, Q), hex(k)


def test_any_scalar_is_taken_mod_n():
    assert _mul(1 << 256, Q) == _ref((1 << 256) % N, Q)
    assert _mul(-1, Q) == (Q[0], P - Q[1])
    assert _mul(-N, Q) is None
    assert _mul(5 * N + 3, Q) == _ref(3, Q)
