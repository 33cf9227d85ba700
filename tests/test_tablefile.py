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


def test_installed_table_survives_reloading_p256(tmp_path):
    # est_lite_mp.provision unloads p256 between phases: the installed
    # table is kept on the est_lite_mp package, not in the module
    import importlib
    import sys

    path = str(tmp_path / "t.bin")
    tablefile.write(path)
    k = 0xC0FFEE << 180 | 77
    want = _aff(p256.mul(k, p256.GX, p256.GY))
    t = tablefile.install(path)
    try:
        del sys.modules["est_lite_mp.p256"]
        p2 = importlib.import_module("est_lite_mp.p256")
        assert p2 is not p256 and p2.table() == (4, t)
        assert _aff(p2.mul_base(k)) == want
    finally:
        sys.modules["est_lite_mp.p256"] = p256
        import est_lite_mp

        est_lite_mp.p256 = p256
        tablefile.uninstall()
    assert p256.table()[0] == 4 and p256.table()[1] is not t


def test_truncated_file_refused_on_read(tmp_path):
    path = tmp_path / "t.bin"
    tablefile.write(str(path))
    path.write_bytes(path.read_bytes()[:-100])  # the last window cut short
    t = tablefile.FileTable(str(path))
    try:
        assert len(t) == 64 and len(t[0]) == 512
        with pytest.raises(ValueError, match="truncated"):
            t[63]
    finally:
        t.close()
