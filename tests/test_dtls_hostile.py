"""Hostile traffic against the DTLS server: ClientHello floods without
cookies, forged and replayed cookies, garbage, half-open handshakes, session
limits, idle eviction, restarted clients; fuzzing of the ClientHello parser."""

import os
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from est_lite.errors import SecurityError, TransportError
from est_lite_cpython import dtls as d
from est_lite_cpython.dtls_client import DtlsClient
from est_lite_cpython.dtls_server import CookieJar, build_hello_verify_request, parse_client_hello
from helpers_dtls import Pki, ServerThread
from helpers_server import wait_for


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture
def server(pki):
    s = ServerThread(pki)
    yield s
    s.stop()


def client(pki, port, **kw):
    kw.setdefault("timeout", 10)
    return DtlsClient("127.0.0.1", port, [pki.ca.root.cert], cert=pki.client.cert, key=pki.client.key, **kw)


def client_hello(cookie=b"", random=None, seq=0, suites=(0xC0AE, 0xC02B), msg_seq=0):
    """A structurally valid DTLS 1.2 ClientHello datagram."""
    random = random or os.urandom(32)
    ext = b"\x00\x0a\x00\x04\x00\x02\x00\x17"  # supported_groups: secp256r1
    body = (
        b"\xfe\xfd" + random + b"\x00" + bytes([len(cookie)]) + cookie
        + struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    )
    ln = len(body).to_bytes(3, "big")
    hs = b"\x01" + ln + struct.pack("!H", msg_seq) + b"\x00\x00\x00" + ln + body
    return b"\x16\xfe\xff" + b"\x00\x00" + seq.to_bytes(6, "big") + struct.pack("!H", len(hs)) + hs


def parse_hvr(dg):
    assert dg[0] == 22 and dg[1:3] == b"\xfe\xff" and dg[13] == 3  # handshake, DTLS 1.0, hello_verify_request
    cookie_len = dg[13 + 12 + 2]
    return dg[3:11], dg[13 + 12 + 3 : 13 + 12 + 3 + cookie_len]


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


def test_client_hello_flood_leaves_no_state(server):
    socks = [udp() for _ in range(8)]
    try:
        n = 0
        for i in range(400):
            s = socks[i % len(socks)]
            ch = client_hello(seq=i)
            s.sendto(ch, ("127.0.0.1", server.port))
            n += 1
        got = 0
        for s in socks:
            s.settimeout(0.15)
            try:
                while True:
                    dg = s.recv(2048)
                    seq, cookie = parse_hvr(dg)
                    assert len(cookie) == 16
                    assert len(dg) < len(ch)  # no amplification: the answer is smaller than the hello
                    got += 1
            except socket.timeout:
                pass
        # UDP may drop some of a burst; every hello that arrived got a
        # HelloVerifyRequest and none of them left a session behind
        stats = server.stats()
        assert 0 < got <= stats["hello_verify_sent"] == stats["datagrams"] <= n
        assert server.session_count() == 0
    finally:
        for s in socks:
            s.close()


def test_hello_verify_request_echoes_record_sequence(server):
    s = udp()
    try:
        s.sendto(client_hello(seq=0x1234), ("127.0.0.1", server.port))
        seq, cookie = parse_hvr(s.recv(2048))
        assert seq == b"\x00\x00" + (0x1234).to_bytes(6, "big")
    finally:
        s.close()


def test_forged_and_replayed_cookies_create_no_session(server):
    a, b = udp(), udp()
    try:
        rnd = os.urandom(32)
        # forged cookie: answered with a fresh HelloVerifyRequest
        a.sendto(client_hello(cookie=b"\x00" * 16, random=rnd), ("127.0.0.1", server.port))
        _, cookie = parse_hvr(a.recv(2048))
        assert cookie != b"\x00" * 16
        # the real cookie for a, replayed from b: not valid for b's address
        b.sendto(client_hello(cookie=cookie, random=rnd), ("127.0.0.1", server.port))
        _, cookie_b = parse_hvr(b.recv(2048))
        assert cookie_b != cookie
        # a's cookie with different ClientHello parameters: not valid either
        a.sendto(client_hello(cookie=cookie, random=os.urandom(32)), ("127.0.0.1", server.port))
        parse_hvr(a.recv(2048))
        assert server.session_count() == 0
        assert server.stats()["hello_verify_sent"] == 3
    finally:
        a.close()
        b.close()


def test_garbage_is_ignored_and_service_continues(pki, server):
    s = udp()
    rnd = __import__("random").Random(7)
    try:
        junk = [b"", b"\x16", b"\x17\xfe\xfd" + b"\x00" * 10, os.urandom(2000), b"\xff" * 13,
                client_hello()[:40],  # truncated ClientHello
                b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\x00\x10" + os.urandom(16),  # app data, unknown peer
                b"\x16\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\xff\xff" + b"\x01",  # length beyond the datagram
                os.urandom(5000)]  # above max_datagram
        for _ in range(300):
            junk.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300))))
        for j in junk:
            s.sendto(j, ("127.0.0.1", server.port))
        time.sleep(0.2)
        assert server.session_count() == 0
        with client(pki, server.port) as c:
            # garbage injected into an established session, from the client's own address
            for j in junk[:50]:
                c._sock.send(j)
            c.send(b"still here")
            assert c.recv(5) == b"echo still here"
            assert server.session_count() == 1
    finally:
        s.close()


def test_half_open_handshake_times_out(pki):
    """A client that answers the cookie and then goes silent holds a session
    only until handshake_timeout."""
    from OpenSSL import SSL

    srv = ServerThread(pki, handshake_timeout=1.5)
    s = udp()
    try:
        ctx = d.base_context(False, d.CLIENT_SUITES, pki.client.cert, pki.client.key)
        conn = d.new_connection(ctx, 1200)
        conn.set_connect_state()
        for _ in range(2):  # ClientHello, then ClientHello with the cookie
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            for dg in d.drain_bio(conn, 1200):
                s.sendto(dg, ("127.0.0.1", srv.port))
            conn.bio_write(s.recv(4096))
        assert srv.session_count() == 1  # the cookie was good: now there is state
        assert wait_for(lambda: srv.session_count() == 0, 5)
        assert srv.stats()["handshake_timeouts"] == 1
        assert srv.stats()["handshakes"] == 0
    finally:
        s.close()
        srv.stop()


def test_full_server_evicts_the_longest_silent_session_for_a_new_client(pki):
    """MicroPython clients never send close_notify: a server full of their
    finished sessions must not refuse the next device for idle_timeout. A
    new client takes the place of the session silent for longest, once it
    has been silent for evict_idle_after; a busier one stays."""
    srv = ServerThread(pki, max_sessions=2, evict_idle_after=0.3)
    try:
        a, b = client(pki, srv.port), client(pki, srv.port)
        time.sleep(0.5)  # both silent for more than 0.3 s
        b.send(b"b")  # b is active again: a is the one silent for longest
        assert b.recv(5) == b"echo b"
        with client(pki, srv.port) as c:
            c.send(b"c")
            assert c.recv(5) == b"echo c"
            assert srv.stats()["evicted_for_new"] == 1 and srv.stats()["refused_full"] == 0
            assert srv.session_count() == 2
            assert any("evicted" in r for _, r in srv.closed)
            b.send(b"b2")  # the session that was not the idlest still works
            assert b.recv(5) == b"echo b2"
        a.close()
        b.close()
    finally:
        srv.stop()


def test_eviction_can_be_turned_off(pki):
    srv = ServerThread(pki, max_sessions=1, evict_idle_after=None)
    try:
        a = client(pki, srv.port)
        time.sleep(0.3)
        with pytest.raises(TransportError):
            client(pki, srv.port, timeout=1.5)
        assert srv.stats()["refused_full"] >= 1 and srv.stats()["evicted_for_new"] == 0
        a.close()
    finally:
        srv.stop()


def test_max_sessions_holds(pki):
    srv = ServerThread(pki, max_sessions=2)
    try:
        a, b = client(pki, srv.port), client(pki, srv.port)
        with pytest.raises(TransportError):
            client(pki, srv.port, timeout=1.5)
        assert srv.session_count() == 2
        assert srv.stats()["refused_full"] >= 1
        a.send(b"a")
        assert a.recv(5) == b"echo a"
        a.close()
        for _ in range(100):
            if srv.session_count() < 2:
                break
            time.sleep(0.02)
        with client(pki, srv.port) as c:  # a slot is free again
            c.send(b"c")
            assert c.recv(5) == b"echo c"
        b.close()
    finally:
        srv.stop()


def test_idle_sessions_are_evicted_with_close_notify(pki):
    srv = ServerThread(pki, idle_timeout=1.0)
    try:
        c = client(pki, srv.port)
        c.send(b"x")
        assert c.recv(5) == b"echo x"
        time.sleep(0.5)
        c.send(b"y")  # activity resets the idle clock
        assert c.recv(5) == b"echo y"
        time.sleep(0.4)
        assert srv.session_count() == 1
        # unauthenticated datagrams from its address for 1.5 s do not keep it
        # alive: it goes at ~1.0 s (were they counted, it would live until 2.9 s)
        for _ in range(15):
            c._sock.send(b"\x17\xfe\xfd\x00\x01" + os.urandom(30))
            time.sleep(0.1)
        assert wait_for(lambda: srv.session_count() == 0, 0.5)
        assert srv.stats()["idle_evictions"] == 1
        with pytest.raises(TransportError):  # the eviction's close_notify
            c.recv(2)
    finally:
        srv.stop()


def test_restarted_client_on_the_same_address_replaces_its_session(pki, server):
    probe = udp()
    addr = probe.getsockname()
    probe.close()
    c1 = client(pki, server.port, local_address=addr)
    c1.send(b"one")
    assert c1.recv(5) == b"echo one"
    # a spoofed ClientHello from that address without a valid cookie changes nothing
    c1._sock.send(client_hello(cookie=b"\x01" * 16))
    parse_hvr(c1._sock.recv(2048) if _readable(c1._sock) else b"")
    c1.send(b"still one")
    assert c1.recv(5) == b"echo still one"
    first = server.peers[0]
    # the device reboots: same address, no close_notify, a new handshake
    c1._abort()
    c2 = client(pki, server.port, local_address=addr)
    c2.send(b"two")
    assert c2.recv(5) == b"echo two"
    assert server.session_count() == 1
    assert server.stats()["handshakes"] == 2
    assert first.closed and (first, "client started a new handshake") in server.closed
    c2.close()


def _readable(sock, timeout=2):
    import select

    return bool(select.select([sock], [], [], timeout)[0])


def test_untrusted_and_certless_clients_leave_no_session(pki, server):
    for kw in ({"cert": pki.stranger.cert, "key": pki.stranger.key}, {"cert": None, "key": None}):
        with pytest.raises(SecurityError):
            DtlsClient("127.0.0.1", server.port, [pki.ca.root.cert], timeout=5, **kw)
    assert server.session_count() == 0
    assert server.stats()["handshake_failures"] == 2


def test_cookie_rotation():
    jar = CookieJar(lifetime=10, now=0)
    info = parse_client_hello(client_hello())
    c0 = jar.make(("10.0.0.1", 5684), info, now=1)
    info.cookie = c0
    assert jar.check(("10.0.0.1", 5684), info, now=2)
    assert not jar.check(("10.0.0.2", 5684), info, now=2)
    assert not jar.check(("10.0.0.1", 5685), info, now=2)
    assert jar.check(("10.0.0.1", 5684), info, now=12)  # one rotation: previous secret still accepted
    assert not jar.check(("10.0.0.1", 5684), info, now=25)  # two rotations: expired
    info.cookie = c0[:15]
    assert not jar.check(("10.0.0.1", 5684), info, now=25)


def test_parse_client_hello_and_hvr():
    ch = client_hello(cookie=b"abc", seq=5)
    info = parse_client_hello(ch)
    assert info.cookie == b"abc" and info.client_version == b"\xfe\xfd"
    assert info.suites == b"\xc0\xae\xc0\x2b" and info.compression == b"\x00"
    hvr = build_hello_verify_request(info, b"C" * 16)
    assert parse_hvr(hvr) == (b"\x00\x00" + (5).to_bytes(6, "big"), b"C" * 16)
    assert struct.unpack("!H", hvr[11:13])[0] == len(hvr) - 13
    # not ClientHellos
    assert parse_client_hello(ch[:50]) is None
    assert parse_client_hello(b"\x17" + ch[1:]) is None  # application data
    assert parse_client_hello(ch[:3] + b"\x00\x01" + ch[5:]) is None  # epoch 1
    frag = bytearray(ch)
    frag[13 + 6 : 13 + 9] = b"\x00\x00\x01"  # fragment offset 1
    assert parse_client_hello(bytes(frag)) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_client_hello_never_raises_on_junk(data):
    info = parse_client_hello(data)
    assert info is None or isinstance(info.cookie, bytes)
    parse_client_hello(b"\x16\xfe\xfd\x00\x00" + data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255), st.integers(1, 40))
def test_parse_client_hello_never_raises_on_mutations(pos, byte, cut):
    ch = bytearray(client_hello(cookie=b"x" * 16))
    ch[pos % len(ch)] = byte
    info = parse_client_hello(bytes(ch))
    assert info is None or len(info.random) == 32
    assert parse_client_hello(bytes(ch[:-cut])) is None or cut <= 0
