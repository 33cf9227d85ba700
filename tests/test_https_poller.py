"""The event loop's poller: select.epoll directly (_EpollPoller, Linux) or
selectors (_SelectorsPoller, elsewhere); both report (socket, data) for
ready sockets, follow modify/unregister, and serve the loop."""

import socket

import pytest
from helpers_server import EstTestServer

from est_lite_cpython import https_server as H

POLLERS = [H._SelectorsPoller] + ([H._EpollPoller] if hasattr(H.select, "epoll") else [])


@pytest.mark.parametrize("cls", POLLERS)
def test_poller_reports_ready_sockets_with_their_data(cls):
    p = cls()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        ra, rc = ["a"], ["c"]
        p.register(a, H._READ, ra)
        p.register(c, H._READ, rc)
        assert p.select(0) == []
        b.send(b"x")
        assert p.select(0) == [(a, ra)]
        p.modify(c, H._WRITE, rc)  # a socket pair can be written at once
        assert sorted(p.select(0), key=lambda kv: kv[1]) == [(a, ra), (c, rc)]
        p.unregister(a)
        assert p.select(0) == [(c, rc)]
        p.register(a, H._WRITE, None)
        assert sorted(p.select(0), key=lambda kv: str(kv[1])) == [(a, None), (c, rc)]
    finally:
        p.close()
        for s in (a, b, c, d):
            s.close()


def test_default_poller_is_epoll_where_there_is_one():
    assert type(H._poller()) is (H._EpollPoller if hasattr(H.select, "epoll") else H._SelectorsPoller)


def test_loop_serves_with_the_selectors_poller(tmp_path, monkeypatch):
    monkeypatch.setattr(H, "_poller", H._SelectorsPoller)
    srv = EstTestServer(tmp_path)
    try:
        assert srv.server.io == "loop"
        for _ in range(3):
            r = srv.request("GET", srv.path("cacerts"))
            assert r.status == 200
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        r = srv.request("GET", srv.path("cacerts"))  # served while another connection waits
        assert r.status == 200
        idle.close()
    finally:
        srv.stop()
