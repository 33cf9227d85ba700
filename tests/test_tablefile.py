"""est_lite_mp.tablefile: the P-256 table read from a file, installed
through the public p256.set_table protocol."""

import pytest

from est_lite.errors import LocalProtocolError
from est_lite_mp import p256, tablefile


def _aff(j):
    X, Y, Z = j
    zi = p256.inv(Z, p256.P)
    return X * zi * zi % p256.P, Y * zi * zi * zi % p256.P


def test_install_and_uninstall(tmp_path):
    path = str(tmp_path / "t.bin")
    tablefile.write(path)
    k = 0xDEADBEEF << 200 | 12345
    want = _aff(p256.mul(k, p256.GX, p256.GY))
    t = tablefile.install(path)
    try:
        assert p256.table() == (4, t) and len(t) == 64
        assert _aff(p256.mul_base(k)) == want
        t2 = tablefile.install(path)  # a second install closes the first file
        assert t._f.closed and p256.table()[1] is t2
    finally:
        tablefile.uninstall()
    assert t2._f.closed
    from est_lite_mp import p256_table

    assert p256.table()[1] is p256_table.T
    assert _aff(p256.mul_base(k)) == want


def test_bad_file_refused(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"P256T\x04\x03" + b"\x00\x10" * 3 + b"\x00" * 48)  # 3 windows of 4 bits: wrong count
    with pytest.raises(LocalProtocolError, match="windows"):
        tablefile.install(str(p))
    p.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a P-256 table"):
        tablefile.install(str(p))
