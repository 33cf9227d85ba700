"""EstHttpsServer, TLS 1.3: what OpenSSL writes after the handshake (its
NewSessionTicket messages) is not sent on its own while the server waits
for the request; it goes out with the answer (one send instead of two).
TLS 1.2's last server flight is still sent before the request is read
(the client waits for it)."""

import select
import socket

import pytest
from helpers_server import BASE_CONFIG, EstTestServer


@pytest.fixture(params=["loop", "threads"])
def srv(tmp_path, request):
    text = BASE_CONFIG.replace("workers = 8", 'workers = 8\nio = "%s"' % request.param)
    s = EstTestServer(tmp_path, config_text=text)
    assert s.server.io == request.param
    yield s
    s.stop()


def _connect(srv, version):
    ctx = srv.tls_client_context(version=version)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return ctx.wrap_socket(s, server_hostname="localhost")


def _answer(t, path):
    t.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
    buf = []
    while True:
        d = t.recv(65536)
        if not d:
            break
        buf.append(d)
    return b"".join(buf)


def test_tls13_nothing_sent_between_handshake_and_answer(srv):
    with _connect(srv, "1.3") as t:
        assert t.version() == "TLSv1.3"
        # the client has sent its Finished; before the change the server sent
        # its session tickets at once, on their own
        readable, _, _ = select.select([t], [], [], 0.5)
        assert readable == []
        got = _answer(t, srv.path("cacerts"))
    assert got.startswith(b"HTTP/1.1 200 ")


def test_tls12_handshake_and_answer_unchanged(srv):
    with _connect(srv, "1.2") as t:
        assert t.version() == "TLSv1.2"
        assert t.get_channel_binding("tls-unique")
        got = _answer(t, srv.path("cacerts"))
    assert got.startswith(b"HTTP/1.1 200 ")


def test_tls13_keep_alive_second_request_after_held_tickets(srv):
    with _connect(srv, "1.3") as t:
        p = srv.path("cacerts")
        t.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % p).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += t.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        n = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0])
        while len(body) < n:
            body += t.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
        got = _answer(t, p)
    assert got.startswith(b"HTTP/1.1 200 ")
