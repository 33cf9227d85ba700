"""[server] max_connections_per_host: one host holding connections open
(silent TCP connections, never a TLS byte) cannot take every connection
slot of the event loop or every worker thread from the other clients; its
further connections are closed at once, counted in stats, and it gets its
slots back as its connections end."""

import socket

import pytest
from helpers_server import BASE_CONFIG, PASSWORD, USER, EstTestServer, make_csr, wait_for

from est_lite.errors import LocalProtocolError
from est_lite_cpython.config import ConfigError, ServerConfig


def _server(tmp_path, io):
    return EstTestServer(tmp_path, config_text=BASE_CONFIG.replace(
        "workers = 8", 'workers = 8\nio = "%s"\nmax_connections_per_host = 2' % io))


def _closed_by_server(s, timeout=10):
    """True when the server closes s (EOF or reset) before timeout."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("io", ["loop", "threads"])
def test_one_host_gets_at_most_its_share_of_connections(tmp_path, io):
    srv = _server(tmp_path, io)
    held = []
    try:
        assert srv.server.io == io and srv.server.max_connections_per_host == 2
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
        assert wait_for(lambda: srv.server._per_host.get("127.0.0.1") == 2, 10)
        # the third from the same host: closed at once, nothing served
        third = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        assert _closed_by_server(third)
        third.close()
        assert srv.server.stats["refused_per_host"] >= 1
        # the two silent ones are still open (the limit refuses, it does not evict)
        held[0].settimeout(0.2)
        with pytest.raises(socket.timeout):
            held[0].recv(1)
        # one of them ends: the host has a slot again and enrolls
        held.pop().close()
        assert wait_for(lambda: srv.server._per_host.get("127.0.0.1") == 1, 10)
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("per-host")[1], auth=(USER, PASSWORD))
        assert r.status == 200 and len(r.certs()) == 1
        assert wait_for(lambda: srv.server._per_host.get("127.0.0.1") == 1, 10)  # the enrollment's slot came back
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_per_host_limit_settings():
    assert ServerConfig({}).max_connections_per_host == 64
    assert ServerConfig({"server": {"max_connections_per_host": 3}}).max_connections_per_host == 3
    with pytest.raises(ConfigError):
        ServerConfig({"server": {"max_connections_per_host": 0}})
    from est_lite_cpython.https_server import EstHttpsServer

    with pytest.raises(LocalProtocolError):
        EstHttpsServer(None, "unused.pem", "unused.key", io="loop", max_connections_per_host=0)
    # what counts as one host: dtls_server.host_key (tests/test_authz_attacks.py)
