"""dtls_server.parse_client_hello and handshake_progress read datagrams by
index; they must give what the memoryview-based versions they replaced gave
(kept here as the reference) on real ClientHellos and on any bytes."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from est_lite_cpython import dtls as _d
from est_lite_cpython.dtls_server import handshake_progress, parse_client_hello


def ref_parse(datagram):
    mv = memoryview(datagram)
    n = len(mv)
    if n < 25 or mv[0] != 22:
        return None
    version, epoch = struct.unpack_from("!HH", mv, 1)
    if version not in _d.DTLS_VERSIONS or epoch != 0:
        return None
    rlen = struct.unpack_from("!H", mv, 11)[0]
    if 13 + rlen > n:
        return None
    frag = mv[13 : 13 + rlen]
    if len(frag) < 12 or frag[0] != 1:
        return None
    mlen = int.from_bytes(frag[1:4], "big")
    foff = int.from_bytes(frag[6:9], "big")
    flen = int.from_bytes(frag[9:12], "big")
    if foff != 0 or flen != mlen or 12 + mlen > len(frag):
        return None
    body = frag[12 : 12 + mlen]
    if len(body) < 35:
        return None
    p = 34
    sid_len = body[p]
    p += 1
    if sid_len > 32 or p + sid_len + 1 > len(body):
        return None
    sid = bytes(body[p : p + sid_len])
    p += sid_len
    cookie_len = body[p]
    p += 1
    if p + cookie_len + 2 > len(body):
        return None
    cookie = bytes(body[p : p + cookie_len])
    p += cookie_len
    suites_len = struct.unpack_from("!H", body, p)[0]
    p += 2
    if suites_len == 0 or suites_len % 2 or p + suites_len + 1 > len(body):
        return None
    suites = bytes(body[p : p + suites_len])
    p += suites_len
    comp_len = body[p]
    p += 1
    if comp_len == 0 or p + comp_len > len(body):
        return None
    return (bytes(mv[3:11]), bytes(body[0:2]), bytes(body[2:34]), sid, cookie, suites, bytes(body[p : p + comp_len]))


def ref_progress(datagram):
    mv = memoryview(datagram)
    n = len(mv)
    best = None
    off = 0
    while n - off >= 13:
        rlen = struct.unpack_from("!H", mv, off + 11)[0]
        if off + 13 + rlen > n:
            break
        if mv[off + 3] == 0 and mv[off + 4] == 0 and mv[off] == 22 and rlen >= 12:
            h = off + 13
            seq = struct.unpack_from("!H", mv, h + 4)[0]
            fend = int.from_bytes(mv[h + 6 : h + 9], "big") + int.from_bytes(mv[h + 9 : h + 12], "big")
            if best is None or (seq, fend) > best:
                best = (seq, fend)
        off += 13 + rlen
    return best


def check(data):
    info = parse_client_hello(data)
    got = None if info is None else (info.record_seq, info.client_version, info.random, info.session_id, info.cookie,
                                      info.suites, info.compression)
    assert got == ref_parse(data)
    if got is not None:
        assert all(type(x) is bytes for x in got)
    assert handshake_progress(data) == ref_progress(data)
    return got


def _client_hello():
    conn = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def test_real_client_hello_and_its_variants():
    ch = _client_hello()
    assert check(ch) is not None
    assert check(bytearray(ch)) is not None and check(memoryview(ch)) is not None
    for i in range(len(ch)):
        check(ch[:i])
        b = bytearray(ch)
        b[i] ^= 0xFF
        check(bytes(b))
    check(ch + ch)  # two records
    check(ch + ch[:20])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_same_as_reference_on_bytes(data):
    check(data)
    check(bytes([22, 0xFE, 0xFD, 0, 0]) + data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_same_as_reference_on_mutated_client_hellos(data):
    ch = bytearray(_CH)
    for _ in range(data.draw(st.integers(1, 4))):
        ch[data.draw(st.integers(0, len(ch) - 1))] = data.draw(st.integers(0, 255))
    check(bytes(ch))


_CH = _client_hello()
