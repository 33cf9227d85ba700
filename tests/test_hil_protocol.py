"""The HIL result line protocol (hil/device/hil_proto.py): what the board
prints and the host parses, over noisy, chunked and corrupted consoles.
The board side is also run under MicroPython, to prove both ends agree."""

import pathlib as _pl
import sys as _sys
import json
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil import protocol as P  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(*recs):
    out = []
    e = P.Emitter(out.append)
    for kind, value in recs:
        e.emit(kind, value)
    return out


def test_round_trip_with_noise_and_crlf():
    ls = lines(("hello", {"run": "x"}), ("step", {"i": 0, "ok": True, "msg": "a b  c #HIL"}), ("bye", {"ok": True}))
    text = "MicroPython v1.29\r\n>>> \r\n" + "\r\n".join(ls) + "\r\nsoft reboot\r\n"
    p = P.Parser()
    recs = p.feed(text) + p.close()
    assert [r.kind for r in recs] == ["hello", "step", "bye"]
    assert recs[1].value["msg"] == "a b  c #HIL"
    assert p.complete and p.corrupt == 0 and p.gaps == 0
    assert "soft reboot" in p.noise


def test_crc_detects_a_changed_byte():
    (line,) = lines(("step", {"ok": True, "gen": 7}))
    bad = line.replace('"gen": 7', '"gen": 8')
    p = P.Parser()
    assert p.feed(bad + "\n") == []
    assert p.corrupt == 1 and not p.records


def test_gap_is_counted():
    ls = lines(("a", 1), ("b", 2), ("c", 3))
    p = P.Parser()
    p.feed(ls[0] + "\n" + ls[2] + "\n")
    assert p.gaps == 1 and [r.kind for r in p.records] == ["a", "c"]


def test_overlong_line_is_dropped_and_counted():
    p = P.Parser(max_line=100)
    p.feed(P.PREFIX + "0 step " + "x" * 50)
    p.feed("y" * 100)
    p.feed("z\n")
    (ok,) = lines(("bye", None))
    p.feed(ok.replace("#HIL 0", "#HIL 0") + "\n")
    assert p.corrupt == 1 and [r.kind for r in p.records] == ["bye"]


def test_malformed_prefixed_lines_never_raise():
    p = P.Parser()
    for junk in ["#HIL ", "#HIL 1", "#HIL x y z 00000000", "#HIL 1 k {bad json} " + "%08x" % P.crc32(b"1 k {bad json}"),
                 "#HIL 1 k 1 zzzzzzzz", "#HIL 1 k 1 123"]:
        p.feed(junk + "\n")
    assert p.records == [] and p.corrupt == 6


def test_records_are_not_lost_between_chunks_of_any_size():
    ls = lines(*[("step", {"i": i, "v": "x" * i}) for i in range(30)])
    text = "noise\n" + "\n".join(ls) + "\n"
    for size in (1, 2, 7, 64, 1000):
        p = P.Parser()
        for k in range(0, len(text), size):
            p.feed(text[k:k + size].encode())
        assert [r.value["i"] for r in p.records] == list(range(30)), size


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hello", "step", "cut", "bye"]), json_values), max_size=8),
       st.lists(st.text(max_size=30).filter(lambda s: "#HIL" not in s), max_size=8), st.integers(1, 50))
def test_fuzz_records_survive_interleaved_noise(recs, noise, chunk):
    ls = lines(*recs)
    mixed = []
    for i, line in enumerate(ls):
        if i < len(noise):
            mixed.append(noise[i].replace("\n", " ").replace("\r", " "))
        mixed.append(line)
    text = "\r\n".join(mixed) + "\r\n"
    p = P.Parser()
    for k in range(0, len(text), chunk):
        p.feed(text[k:k + chunk])
    p.close()
    assert [(r.kind, r.value) for r in p.records] == [(k, json.loads(json.dumps(v))) for k, v in recs]
    assert p.corrupt == 0 and p.gaps == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(data):
    p = P.Parser(max_line=64)
    p.feed(data)
    p.feed(b"#HIL " + data + b"\n")
    p.close()


def test_crc_fallback_equals_binascii():
    import zlib

    for data in (b"", b"a", b"0 hello {}", bytes(range(256))):
        assert P.crc32(data) == zlib.crc32(data)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hp2", os.path.join(ROOT, "hil", "device", "hil_proto.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    m._crc32 = None  # the table-less fallback a board without binascii.crc32 uses
    for data in (b"", b"a", b"0 hello {}", bytes(range(256))):
        assert m.crc32(data) == zlib.crc32(data)


@pytest.mark.skipif(shutil.which("micropython") is None, reason="micropython not installed")
def test_micropython_emitter_parses_on_the_host():
    script = ("import sys; sys.path.insert(0, %r)\n"
              "import hil_proto\n"
              "e = hil_proto.Emitter()\n"
              "e.emit('hello', {'impl': sys.implementation.name, 'list': [1, 2.5, None, True, 'x y']})\n"
              "hil_proto._crc32 = None\n"
              "e.emit('step', {'ok': False, 'msg': 'fallback crc'})\n"
              "e.emit('bye', None)\n") % os.path.join(ROOT, "hil", "device")
    out = subprocess.run(["micropython", "-c", script], capture_output=True, text=True, timeout=30).stdout
    p = P.Parser()
    p.feed(out)
    assert p.complete and p.corrupt == 0 and p.gaps == 0
    assert p.records[0].value == {"impl": "micropython", "list": [1, 2.5, None, True, "x y"]}
    assert p.records[1].value["msg"] == "fallback crc"
