# Portable tests for est_lite_mp.credstore (CPython and the MicroPython unix
# port): atomic generations, corruption detected and never loaded, recovery
# of a complete manifest.tmp, leftovers of interrupted saves.
import os

from _util import raises

from est_lite.errors import LocalProtocolError
from est_lite_mp.credstore import CredStore, StoreError, split_der

CERT_A = b"\x30\x03\x02\x01\x01"
CERT_B = b"\x30\x81\x82" + b"\x04\x80" + bytes(range(128))
KEY = b"\x30\x05\x02\x01\x00\x04\x00"


def _tmpdir():
    p = "/tmp/est-store-%s" % os.urandom(6).hex()
    os.mkdir(p)
    return p


def _rmtree(p):
    for n in os.listdir(p):
        os.remove(p + "/" + n)
    os.rmdir(p)


def _with_store(fn):
    p = _tmpdir()
    try:
        fn(CredStore(p + "/store"), p + "/store")
    finally:
        if "store" in os.listdir(p):
            _rmtree(p + "/store")
        _rmtree(p)


def _put(path, name, data):
    f = open(path + "/" + name, "wb")
    f.write(data)
    f.close()


def _get(path, name):
    f = open(path + "/" + name, "rb")
    d = f.read()
    f.close()
    return d


def test_empty_store_loads_none():
    def t(s, path):
        assert s.load() is None

    _with_store(t)


def test_save_and_load_roundtrip():
    def t(s, path):
        g = s.save(key=KEY, cert=CERT_A, ca=[CERT_A, CERT_B])
        c = s.load()
        assert (c.key, c.cert, c.ca, c.gen) == (KEY, CERT_A, [CERT_A, CERT_B], g)
        assert g == 1

    _with_store(t)


def test_new_generation_replaces_and_removes_the_old_files():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A, ca=[CERT_A])
        g = s.save(key=KEY + b"", cert=CERT_B, ca=[CERT_B])
        assert g == 2
        c = s.load()
        assert c.cert == CERT_B and c.ca == [CERT_B]
        names = sorted(os.listdir(path))
        assert names == ["ca.2", "cert.2", "key.2", "manifest"], names

    _with_store(t)


def test_keep_replaces_only_the_ca():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A, ca=[CERT_A])
        s.save(ca=[CERT_B], keep=("key", "cert"))
        c = s.load()
        assert (c.key, c.cert, c.ca) == (KEY, CERT_A, [CERT_B])
        assert sorted(os.listdir(path)) == ["ca.2", "cert.1", "key.1", "manifest"]
        raises(LocalProtocolError, s.save, keep=("nope",))

    _with_store(t)


def test_trust_only_store():
    def t(s, path):
        s.save(ca=[CERT_A])
        c = s.load()
        assert c.key is None and c.cert is None and c.ca == [CERT_A]

    _with_store(t)


def test_flipped_byte_in_a_part_is_detected():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A, ca=[CERT_B])
        d = bytearray(_get(path, "key.1"))
        d[3] ^= 1
        _put(path, "key.1", bytes(d))
        e = raises(StoreError, s.load)
        assert "key" in str(e) and "hash" in str(e)

    _with_store(t)


def test_truncated_or_missing_part_is_detected():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A, ca=[CERT_B])
        _put(path, "ca.1", _get(path, "ca.1")[:10])
        raises(StoreError, s.load)
        os.remove(path + "/ca.1")
        assert "missing" in str(raises(StoreError, s.load))

    _with_store(t)


def test_half_written_manifest_is_detected():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A)
        m = _get(path, "manifest")
        for cut in (0, 5, len(m) // 2, len(m) - 3):
            _put(path, "manifest", m[:cut])
            raises(StoreError, s.load)
        _put(path, "manifest", m.replace(b"gen 1", b"gen 2"))
        assert "corrupt" in str(raises(StoreError, s.load))
        _put(path, "manifest", b"\xff\xfe garbage")
        raises(StoreError, s.load)

    _with_store(t)


def test_interrupted_save_before_the_rename_keeps_the_old_generation():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A, ca=[CERT_A])
        # what a power cut leaves after writing the new parts and part of manifest.tmp
        _put(path, "key.2", b"new key")
        _put(path, "cert.2", CERT_B[:7])
        _put(path, "manifest.tmp", b"est-lite-store 1\ngen 2\nkey key.2 ")
        c = s.load()
        assert c.gen == 1 and c.cert == CERT_A
        # the next save goes past the leftovers and cleans them up
        g = s.save(key=KEY, cert=CERT_B, ca=[CERT_B])
        assert g == 3 and s.load().cert == CERT_B
        assert sorted(os.listdir(path)) == ["ca.3", "cert.3", "key.3", "manifest"]

    _with_store(t)


def test_complete_manifest_tmp_without_manifest_is_recovered():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A)
        s.save(key=KEY, cert=CERT_B)
        # cut between remove("manifest") and rename on a FAT-like filesystem:
        # rebuild that state from the committed manifest
        m = _get(path, "manifest")
        os.remove(path + "/manifest")
        _put(path, "manifest.tmp", m)
        assert s.load().cert == CERT_B
        assert "manifest" in os.listdir(path) and "manifest.tmp" not in os.listdir(path)

    _with_store(t)


def test_corrupt_store_can_be_overwritten_by_a_fresh_save():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A)
        _put(path, "manifest", b"junk")
        raises(StoreError, s.load)
        raises(StoreError, s.save, ca=[CERT_A], keep=("key",))
        s.save(key=KEY, cert=CERT_B)
        assert s.load().cert == CERT_B

    _with_store(t)


def test_oversized_file_is_refused():
    def t(s, path):
        s.save(cert=CERT_A)
        small = CredStore(path, max_file=20)
        e = raises(StoreError, small.load)
        assert "max_file" in str(e)

    _with_store(t)


def test_split_der():
    assert split_der(CERT_A + CERT_B) == [CERT_A, CERT_B]
    assert split_der(b"") == []
    for bad in (b"\x31\x00", b"\x30\x05\x01", b"\x30", b"\x30\x84\x00\x00\x00\x01\x00"):
        raises(StoreError, split_der, bad)
    raises(StoreError, split_der, CERT_A * 3, 2)


def test_clear():
    def t(s, path):
        s.save(key=KEY, cert=CERT_A)
        _put(path, "other.txt", b"x")
        s.clear()
        assert os.listdir(path) == ["other.txt"]
        assert s.load() is None

    _with_store(t)


def _sealed(lines):
    # a manifest with a valid closing hash (what someone who can write the
    # store's files can make): the checks below must not rest on the hash
    import hashlib

    body = "\n".join(lines) + "\n"
    return (body + "end " + hashlib.sha256(body.encode()).digest().hex() + "\n").encode()


def test_manifest_naming_a_file_outside_the_store_is_refused():
    def t(s, path):
        import hashlib

        s.save(key=KEY, cert=CERT_A)
        _put(path + "/..", "outside", KEY)
        h = hashlib.sha256(KEY).digest().hex()
        for name in ("../outside", "key.1/../../outside", "cert.1", "key.x", "key.", "manifest"):
            _put(path, "manifest", _sealed(["est-lite-store 1", "gen 1", "key %s %s" % (name, h)]))
            assert "unknown line" in str(raises(StoreError, s.load)), name
        for gen in ("x", "-1", "1.5"):
            _put(path, "manifest", _sealed(["est-lite-store 1", "gen %s" % gen]))
            assert "unknown line" in str(raises(StoreError, s.load)), gen
        os.remove(path + "/../outside")

    _with_store(t)


def test_store_path_must_name_a_directory():
    for p in ("", "/", "//", " ", None, b"/tmp/x"):
        raises(LocalProtocolError, CredStore, p)
    assert CredStore("/tmp/x/").path == "/tmp/x"
