"""The HTTPS server's event loop (io = "loop", the default with the built-in
CA and authenticator): which mode is picked, idle and slow clients cost a
socket and not the service, deadlines are kept without any data arriving,
max_connections holds further clients in the backlog, an internal error
answers 500 and the loop keeps serving, and stop() ends the loop thread."""

import socket
import threading

import pytest
from helpers_server import BASE_CONFIG, PASSWORD, USER, EstTestServer, make_csr

from est_lite.errors import LocalProtocolError
from est_lite_cpython.https_server import EstHttpsServer


def _server(tmp_path, extra=""):
    return EstTestServer(tmp_path, config_text=BASE_CONFIG.replace("workers = 8", "workers = 8\n" + extra))


def _idle(port, n):
    """n TCP connections that never send a byte."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


def test_default_io_follows_the_backends(tmp_path):
    srv = _server(tmp_path)
    try:
        assert srv.server.io == "loop"
        assert [t.name for t in srv.server._threads] == ["est-https-loop"]

        class Plugin:  # e.g. a RADIUS check: may block on the network
            def __getattr__(self, name):
                return getattr(srv.service.authenticator.__class__, name)

        svc = srv.service
        real = svc.authenticator
        svc.authenticator = Plugin()
        try:
            other = EstHttpsServer(svc, srv.config.data_dir + "/server.pem", srv.config.data_dir + "/server.key")
            assert other.io == "threads"
        finally:
            svc.authenticator = real
        with pytest.raises(LocalProtocolError):
            EstHttpsServer(svc, srv.config.data_dir + "/server.pem", srv.config.data_dir + "/server.key", io="fork")
    finally:
        srv.stop()


def test_many_idle_connections_do_not_hold_up_enrollment(tmp_path):
    # 40 silent clients, more than a thread pool of 32 would have had, each
    # allowed 60 s: with one thread per connection the enrollment would wait
    # behind them past the test client's 10 s timeout
    srv = _server(tmp_path)
    srv.server.io_timeout_s = 60
    idle = _idle(srv.port, 40)
    try:
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("past-the-idle")[1], auth=(USER, PASSWORD))
        assert r.status == 200
        assert len(r.certs()) == 1
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_silent_connection_is_closed_at_its_deadline(tmp_path):
    srv = _server(tmp_path)
    srv.server.io_timeout_s = 0.3
    (s,) = _idle(srv.port, 1)
    try:
        # nothing is ever sent: only the loop's deadline sweep can end it;
        # the server closes (EOF) long before this socket's own 30 s timeout
        assert s.recv(100) == b""
    finally:
        s.close()
        srv.stop()


def test_stalled_request_gets_408(tmp_path):
    srv = _server(tmp_path)
    srv.server.io_timeout_s = 0.3
    ctx = srv.tls_client_context()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                t.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n")  # header never ends
                data = b""
                while True:
                    d = t.recv(4096)
                    if not d:
                        break
                    data += d
        assert data.startswith(b"HTTP/1.1 408 ")
        assert b"timed out reading the request" in data
        # and the loop still serves
        assert srv.request("GET", srv.path("cacerts")).status == 200
    finally:
        srv.stop()


def test_max_connections_keeps_the_rest_in_the_backlog(tmp_path):
    srv = _server(tmp_path, "max_connections = 2")
    srv.server.io_timeout_s = 0.5
    assert srv.server.max_connections == 2
    idle = _idle(srv.port, 2)
    try:
        # the enrollment waits in the listen backlog until an idle one times
        # out, then is served: nothing is refused, nothing is lost
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("queued")[1], auth=(USER, PASSWORD))
        assert r.status == 200
        for s in idle:  # already closed by the sweep when the enrollment was answered
            s.setblocking(False)
            assert s.recv(10) == b""
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_internal_error_answers_500_and_the_loop_goes_on(tmp_path, caplog):
    srv = _server(tmp_path)
    real = srv.service.cacerts
    calls = []

    def broken(label, ctx):
        calls.append(label)
        raise RuntimeError("plug-in bug")

    srv.service.cacerts = broken
    try:
        r = srv.request("GET", srv.path("cacerts"))
        assert r.status == 500 and r.text == "internal server error\n"
        assert calls == [None]
        assert "plug-in bug" in caplog.text
        srv.service.cacerts = real
        assert srv.request("GET", srv.path("cacerts")).status == 200
    finally:
        srv.stop()


def test_stop_ends_the_loop_with_connections_open_and_restart_serves(tmp_path):
    srv = _server(tmp_path)
    idle = _idle(srv.port, 3)
    loop = srv.server._threads[0]
    try:
        srv.server.stop()
        assert not loop.is_alive()
        for s in idle:  # closed by the loop on its way out (or reset with the listener, if not yet accepted)
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        srv.port = srv.server.start()
        results = []

        def one(i):
            results.append(srv.request("POST", srv.path("simpleenroll"), make_csr("after-%d" % i)[1],
                                       auth=(USER, PASSWORD)).status)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert results == [200] * 6
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_config_rejects_bad_io_settings(tmp_path):
    from est_lite_cpython.config import ConfigError, load_config

    for bad in ('io = "fork"', "max_connections = 0", "workers = 0", "io_timeout_s = 0", "request_timeout_s = -1"):
        p = tmp_path / ("c%d.toml" % len(bad))
        p.write_text("[server]\n%s\n" % bad)
        with pytest.raises(ConfigError):
            load_config(str(p))


def test_start_refuses_while_a_timed_out_stop_left_a_request_running(tmp_path):
    srv = _server(tmp_path)
    real = srv.service.cacerts
    entered, release = threading.Event(), threading.Event()

    def slow(label, ctx):
        entered.set()
        release.wait(30)
        return real(label, ctx)

    srv.service.cacerts = slow
    results = []
    t = threading.Thread(target=lambda: results.append(srv.request("GET", srv.path("cacerts")).status))
    t.start()
    try:
        assert entered.wait(30)
        srv.server.stop(timeout=0.2)  # the loop is busy answering: the join times out
        assert srv.server._threads and srv.server._threads[0].is_alive()
        with pytest.raises(LocalProtocolError, match="has not stopped yet"):
            srv.server.start()
        release.set()
        t.join(30)
        srv.server.stop()
        assert srv.server._threads == []
        srv.service.cacerts = real
        srv.port = srv.server.start()  # now it may
        assert srv.request("GET", srv.path("cacerts")).status == 200
    finally:
        release.set()
        srv.stop()


def test_start_on_a_port_in_use_raises_and_closes_its_socket(tmp_path):
    # the listener socket of a failed start() stayed open as long as the
    # exception's traceback lived (a caller keeping the error kept the fd)
    srv = _server(tmp_path)
    try:
        other = EstHttpsServer(srv.service, srv.config.data_dir + "/server.pem", srv.config.data_dir + "/server.key",
                               host="127.0.0.1", port=srv.port)
        with pytest.raises(OSError) as ei:
            other.start()
        tb = ei.tb
        while tb.tb_next is not None and tb.tb_frame.f_code.co_name != "start":
            tb = tb.tb_next
        s = tb.tb_frame.f_locals["s"]
        assert isinstance(s, socket.socket) and s.fileno() == -1  # closed
    finally:
        srv.stop()
