# P-256 (secp256r1) ECDSA with SHA-256 in pure Python, for MicroPython.
#
# Jacobian coordinates (X, Y, Z) with x = X/Z^2, y = Y/Z^3; Z == 0 is the
# point at infinity. Multiples of the base point G use the precomputed
# affine table in p256_table.py (signed 4-bit windows: one mixed
# Jacobian+affine addition per window, no doublings, one inversion at the
# end). Nonces are deterministic (RFC 6979) with HMAC-SHA256 on hashlib, so
# a weak random source on the device cannot leak the key through k.
#
# NOT CONSTANT-TIME: big-integer arithmetic, table lookups and branches
# depend on the secret scalar. Someone who can time or power-trace many
# signatures on the device can attack the key. See docs/crypto.md.
#
# Scalars and coordinates are ints; this module knows no DER (crypto.py).

import hashlib

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from est_lite.errors import LocalProtocolError

P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)
GX = const(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296)
GY = const(0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)
_IPAD = const(0x36363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636)
_OPAD = const(0x5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C5C)

# The table in use is kept on the est_lite_mp package (est_lite_mp._p256,
# (w, windows) or None: the built-in one), not here: est_lite_mp.provision
# unloads this module between the phases that use it.


def set_table(t):
    """Where mul_base reads the base-point table from; returns the previous
    source (None for the built-in one). `t` is None (the built-in
    p256_table module, imported on first use) or an object with
      t.w     the window width in bits (2..8)
      len(t)  the number of windows, (256 + w - 1) // w
      t[i]    window i as bytes (or any buffer): the affine points
              d * 2^(w*i) * G for d = 1 .. 2^(w-1) (the last window
              d = 1 .. 2^(256 - w*i)), X || Y, 32 bytes big-endian each
    -- the layout gen_p256_table.py writes (tablefile.FileTable reads it
    from a file one window at a time). A window is asked for once per
    scalar multiplication at most and not kept."""
    import est_lite_mp as pkg

    if t is not None:
        w = getattr(t, "w", 0)
        if not (isinstance(w, int) and 2 <= w <= 8 and len(t) == (255 + w) // w):
            raise LocalProtocolError("P-256 table: bad w or number of windows")
    prev = getattr(pkg, "_p256", None)
    pkg._p256 = None if t is None else (t.w, t)
    return None if prev is None else prev[1]


def table():
    """(w, windows) that mul_base uses (the built-in table if no source was
    set)."""
    import est_lite_mp as pkg

    t = getattr(pkg, "_p256", None)
    if t is None:
        from est_lite_mp import p256_table

        t = (p256_table.W, p256_table.T)
    return t


def inv(a, m):
    """a^-1 mod m (extended Euclid; faster than pow(a, m-2, m) here)."""
    r0, r1 = m, a % m
    if not r1:
        raise LocalProtocolError("P-256: inverse of zero")
    x0, x1 = 0, 1
    while r1:
        q, r = divmod(r0, r1)
        r0, r1 = r1, r
        x0, x1 = x1, x0 - q * x1
    return x0 % m


def on_curve(x, y):
    return 0 <= x < P and 0 <= y < P and (y * y - (x * x - 3) * x - B) % P == 0


def dbl(X, Y, Z):
    """2 * (X, Y, Z) in Jacobian coordinates (a = -3)."""
    p = P
    d = Z * Z % p
    g = Y * Y % p
    b = X * g % p
    a = 3 * (X - d) * (X + d) % p
    X3 = (a * a - 8 * b) % p
    return X3, (a * (4 * b - X3) - 8 * g * g) % p, 2 * Y * Z % p


def madd(X, Y, Z, x, y):
    """(X, Y, Z) + (x, y, 1): mixed Jacobian + affine addition. X and Y
    must be reduced mod p; every case (infinity, equal points, inverse
    points) is handled."""
    if not Z:
        return x, y, 1
    p = P
    zz = Z * Z % p
    h = x * zz % p - X
    r = y * (zz * Z % p) % p - Y
    if not h:
        if r:
            return 0, 1, 0
        return dbl(X, Y, Z)
    hh = h * h % p
    hhh = h * hh % p
    v = X * hh % p
    X3 = (r * r - hhh - 2 * v) % p
    return X3, (r * (v - X3) - Y * hhh) % p, Z * h % p


def mul_base(k):
    """k * G as Jacobian (X, Y, Z), for 0 <= k < 2^256, from the table.
    The mixed addition is written out here: a call costs as much as a few
    multiplications on MicroPython."""
    w, T = table()
    p = P
    fb = int.from_bytes
    half = 1 << (w - 1)
    full = 1 << w
    mask = full - 1
    last = len(T) - 1
    X = Y = Z = 0
    c = 0
    for i in range(last + 1):
        d = (k & mask) + c
        k >>= w
        c = 0
        if d > half and i < last:
            d -= full
            c = 1
        if not d:
            continue
        t = memoryview(T[i])
        if d > 0:
            o = (d - 1) << 6
            x = fb(t[o : o + 32], "big")
            y = fb(t[o + 32 : o + 64], "big")
        else:
            o = (-d - 1) << 6
            x = fb(t[o : o + 32], "big")
            y = p - fb(t[o + 32 : o + 64], "big")
        if not Z:
            X, Y, Z = x, y, 1
            continue
        zz = Z * Z % p
        h = x * zz % p - X
        r = y * (zz * Z % p) % p - Y
        if not h:  # only for contrived scalars: fall back to the general case
            X, Y, Z = madd(X, Y, Z, x, y)
            continue
        hh = h * h % p
        hhh = h * hh % p
        v = X * hh % p
        X = (r * r - hhh - 2 * v) % p
        Y = (r * (v - X) - Y * hhh) % p
        Z = Z * h % p
    return X, Y, Z


def mul(k, x, y):
    """k * (x, y) for any affine point (of order n) and any int k (taken
    mod n), as Jacobian (X, Y, Z): width-4 NAF (odd digits -7..7) over the
    affine points P, 3P, 5P, 7P. Little live data (4 points and 257 digit
    bytes; a 15-point window table with its Jacobian copies was ~16 KB at
    the peak of a verification) and fewer additions (about 52 instead of
    64)."""
    k %= N
    p = P
    # P, 3P, 5P, 7P affine (2P affine, then mixed additions); none is
    # infinity: the group order is a prime > 7
    x2, y2 = to_affine(*dbl(x, y, 1))
    tab = [(x, y)]
    X, Y, Z = x, y, 1
    for _ in range(3):
        X, Y, Z = madd(X, Y, Z, x2, y2)
        tab.append(to_affine(X, Y, Z))
    # digits, least significant first, stored + 8
    nd = bytearray(258)
    n = 0
    while k:
        d = 0
        if k & 1:
            d = k & 15
            if d > 8:
                d -= 16
            k -= d
        nd[n] = d + 8
        n += 1
        k >>= 1
    X = Y = Z = 0
    for j in range(n - 1, -1, -1):
        if Z:
            X, Y, Z = dbl(X, Y, Z)
        d = nd[j] - 8
        if d:
            if d > 0:
                x, y = tab[d >> 1]
                X, Y, Z = madd(X, Y, Z, x, y)
            else:
                x, y = tab[-d >> 1]
                X, Y, Z = madd(X, Y, Z, x, p - y)
    return X, Y, Z


def to_affine(X, Y, Z):
    """(x, y) from Jacobian; None for the point at infinity."""
    if not Z:
        return None
    p = P
    zi = inv(Z, p)
    z2 = zi * zi % p
    return X * z2 % p, Y * z2 * zi % p


def public_key(d):
    """(x, y) = d * G for a private scalar 1 <= d < n."""
    if not 0 < d < N:
        raise LocalProtocolError("P-256: private scalar must be in [1, n-1]")
    return to_affine(*mul_base(d))


def hmac_sha256(key, msg):
    """HMAC-SHA256 (RFC 2104) on hashlib; the pad XOR is one big-int XOR."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = int.from_bytes(key, "big") << (8 * (64 - len(key)))
    h = hashlib.sha256((k ^ _IPAD).to_bytes(64, "big"))
    h.update(msg)
    o = hashlib.sha256((k ^ _OPAD).to_bytes(64, "big"))
    o.update(h.digest())
    return o.digest()


def bits2int(h):
    """RFC 6979 §2.3.2 for a 256-bit group order and a byte-string digest."""
    return int.from_bytes(bytes(h[:32]), "big")


def nonces(d, h, extra=b""):
    """RFC 6979 §3.2 candidate nonces k for private scalar d and message
    digest h (optionally with additional data, §3.6). An endless generator:
    the caller takes the next one if a k gives r == 0 or s == 0."""
    hm = hmac_sha256
    xb = d.to_bytes(32, "big")
    hb = (bits2int(h) % N).to_bytes(32, "big")
    V = b"\x01" * 32
    K = hm(b"\x00" * 32, b"".join((V, b"\x00", xb, hb, extra)))
    V = hm(K, V)
    K = hm(K, b"".join((V, b"\x01", xb, hb, extra)))
    V = hm(K, V)
    while True:
        V = hm(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < N:
            yield k
        K = hm(K, V + b"\x00")
        V = hm(K, V)


def sign_digest(d, h, extra=b""):
    """ECDSA signature (r, s) of digest h with private scalar d, nonce per
    RFC 6979."""
    if not 0 < d < N:
        raise LocalProtocolError("P-256: private scalar must be in [1, n-1]")
    e = bits2int(h)
    for k in nonces(d, h, extra):
        X, Y, Z = mul_base(k)
        if not Z:
            continue
        zi = inv(Z, P)
        r = X * zi * zi % P % N
        if not r:
            continue
        s = inv(k, N) * (e + r * d) % N
        if s:
            return r, s


def verify_digest(x, y, h, r, s):
    """True if (r, s) is a valid signature of digest h by public point
    (x, y) (which the caller has validated with on_curve)."""
    if not (0 < r < N and 0 < s < N):
        return False
    w = inv(s, N)
    e = bits2int(h)
    u1 = e * w % N
    u2 = r * w % N
    q = to_affine(*mul(u2, x, y))
    X, Y, Z = mul_base(u1)
    if q is not None:
        X, Y, Z = madd(X, Y, Z, q[0], q[1])
    if not Z:
        return False
    zi = inv(Z, P)
    return X * zi * zi % P % N == r


def decompress(x, odd):
    """y for x on the curve with the given parity, or None if x is not the
    abscissa of a curve point."""
    if not 0 <= x < P:
        return None
    a = ((x * x - 3) * x + B) % P
    y = pow(a, (P + 1) >> 2, P)
    if y * y % P != a:
        return None
    if (y & 1) != odd:
        y = P - y
    return y
