"""The HTTPS server's worker pool (io = "threads") (leader/followers accept) and the lazy
TLS 1.3 exporter: parallel clients on fewer workers than connections are
all served, stop() with idle followers waiting leaves no worker
behind, the exporter is computed only when a PoP check needs it,
and the listener's socket options reach the accepted sockets."""

import socket
import struct
import threading
import time

from helpers_server import BASE_CONFIG, PASSWORD, USER, EstTestServer, make_csr

from est_lite_cpython.service import AuthContext


def _server(tmp_path, workers):
    assert "workers = 8" in BASE_CONFIG
    return EstTestServer(tmp_path, config_text=BASE_CONFIG.replace("workers = 8", 'workers = %d\nio = "threads"' % workers))


def _alive(threads):
    return [t for t in threads if t.is_alive()]


def test_parallel_clients_on_few_workers_and_prompt_stop(tmp_path):
    srv = _server(tmp_path, 3)
    workers = list(srv.server._threads)
    assert len(workers) == 3
    try:
        for _ in range(1000):  # two of the three come to wait as followers
            if len(srv.server._idle) == 2:
                break
            time.sleep(0.01)
        assert len(srv.server._idle) == 2 and srv.server._leading
        results = []
        lock = threading.Lock()

        def one(i):
            r = srv.request("POST", srv.path("simpleenroll"), make_csr("par-%d" % i)[1], auth=(USER, PASSWORD))
            with lock:
                results.append(r.status)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert results == [200] * 12
        assert srv.ca.store.count_certificates() == 12 + 1  # + the server's own TLS certificate
    finally:
        srv.stop()
    # followers blocked on their locks would still be alive after stop()'s join
    assert _alive(workers) == []


def test_restart_after_stop(tmp_path):
    srv = _server(tmp_path, 2)
    first = list(srv.server._threads)
    try:
        srv.server.stop()
        assert _alive(first) == []
        srv.port = srv.server.start()
        second = list(srv.server._threads)
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("again")[1], auth=(USER, PASSWORD))
        assert r.status == 200
    finally:
        srv.stop()
    assert _alive(second) == []


def test_listener_options_reach_accepted_sockets(tmp_path):
    srv = _server(tmp_path, 1)  # io_timeout_s = 5 in BASE_CONFIG
    seen = {}
    orig = srv.server._handle

    def spy(s, addr, ops=None):
        tv = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        seen["rcvtimeo"] = tv[0] + tv[1] / 1e6
        tv = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
        seen["sndtimeo"] = tv[0] + tv[1] / 1e6
        seen["nodelay"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen["blocking"] = s.getblocking()
        return orig(s, addr, ops)

    srv.server._handle = spy
    try:
        r = srv.request("GET", srv.path("cacerts"))
        assert r.status == 200
    finally:
        srv.stop()
    assert seen == {"rcvtimeo": 5.0, "sndtimeo": 5.0, "nodelay": 1, "blocking": True}


def test_exporter_computed_once_and_only_when_needed():
    calls = []

    def exporter():
        calls.append(1)
        return b"E" * 32

    ctx = AuthContext("https", tls_exporter=exporter, tls_version="TLSv1.3")
    assert calls == []
    assert ctx.channel_binding() == ("tls-exporter", b"E" * 32)
    assert ctx.tls_exporter == b"E" * 32
    assert calls == [1]
    ctx.tls_exporter = None
    assert ctx.channel_binding() is None
    # plain bytes still work (the EST-coaps front end passes them)
    assert AuthContext("coaps", tls_exporter=b"x", tls_version="TLSv1.3").tls_exporter == b"x"


def test_enroll_without_pop_never_computes_the_exporter(tmp_path, monkeypatch):
    from OpenSSL import SSL

    srv = _server(tmp_path, 1)
    calls = []
    orig = SSL.Connection.export_keying_material

    def counting(self, *a, **kw):
        calls.append(a)
        return orig(self, *a, **kw)

    monkeypatch.setattr(SSL.Connection, "export_keying_material", counting)
    try:
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("nopop")[1], auth=(USER, PASSWORD), version="1.3")
        assert r.status == 200
        assert calls == []
        # a PoP-required label computes it (and the PoP check still refuses a CSR without the binding)
        r = srv.request("POST", srv.path("simpleenroll", "pop"), make_csr("pop")[1], auth=(USER, PASSWORD),
                        version="1.3")
        assert r.status == 403 and b"tls-exporter" in r.body
        assert calls == [(b"EXPORTER-Channel-Binding", 32)]
    finally:
        srv.stop()
