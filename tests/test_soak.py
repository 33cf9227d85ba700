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
