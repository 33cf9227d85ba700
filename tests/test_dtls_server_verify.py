"""The DtlsServer's client-certificate verify callback: installed at the C
level (_direct_verify) and, as a fallback, pyOpenSSL's; both accept a good
chain, refuse an unknown or revoked one with a reason naming the
certificate, and fail closed when the callback itself raises."""

import logging
import time

import pytest

from est_lite.errors import SecurityError, TransportError
from est_lite_cpython import dtls_server as ds
from est_lite_cpython.dtls_client import DtlsClient
from helpers_dtls import Pki, ServerThread


@pytest.fixture(scope="module")
def pki():
    p = Pki()
    p.banned = p.ca.issue("revoked device", client=True)
    return p


def client(pki, port, cert=None, key=None, timeout=10):
    return DtlsClient("127.0.0.1", port, [pki.ca.root.cert], cert=cert or pki.client.cert,
                      key=key or pki.client.key, timeout=timeout)


def _server(pki):
    return ServerThread(pki, is_revoked=lambda c: c.serial_number == pki.banned.cert.serial_number)


def _exercise(pki, st, caplog):
    with client(pki, st.port) as c:
        c.send(b"hi")
        assert c.recv(5) == b"echo hi"
    peer = st.peers[0]
    assert peer.verified_chain == [pki.client.cert, pki.ca.root.cert]
    assert peer.peer_chain == [pki.client.cert]
    want = ("client certificate at depth 0: unable to get local issuer certificate (CN=stranger)",
            "client certificate at depth 0 is revoked (CN=revoked device)")
    with caplog.at_level(logging.INFO, logger="est_lite.dtls_server"):
        pytest.raises(SecurityError, client, pki, st.port, pki.stranger.cert, pki.stranger.key)
        pytest.raises(SecurityError, client, pki, st.port, pki.banned.cert, pki.banned.key)
        # the server thread may log after the client has its alert: wait
        # for the lines (inside at_level, which drops them once left)
        end = time.monotonic() + 10
        while not all(w in caplog.text for w in want) and time.monotonic() < end:
            time.sleep(0.02)
    text = caplog.text
    assert want[0] in text
    assert want[1] in text
    # still serving
    with client(pki, st.port) as c:
        c.send(b"ok")
        assert c.recv(5) == b"echo ok"


def test_direct_verify_callback(pki, caplog):
    st = _server(pki)
    try:
        ctx = st.call(lambda: st.server._context())
        assert getattr(ctx, "_est_verify_cb", None) is not None  # the C-level callback is the one installed
        _exercise(pki, st, caplog)
    finally:
        st.stop()


def test_pyopenssl_callback_fallback(pki, caplog, monkeypatch):
    monkeypatch.setattr(ds, "_direct_verify", lambda ctx, mode, server: False)
    st = _server(pki)
    try:
        ctx = st.call(lambda: st.server._context())
        assert getattr(ctx, "_est_verify_cb", None) is None
        _exercise(pki, st, caplog)
    finally:
        st.stop()


def test_exception_in_the_callback_fails_closed(pki):
    st = _server(pki)
    try:
        calls = []

        def broken(*args):
            calls.append(args)
            raise RuntimeError("bug in the verify callback")

        st.server._verify = broken
        # the exception leaves the handshake call (as pyOpenSSL's wrapper
        # re-raised it), the endpoint drops the session without an alert:
        # the client hears nothing more
        pytest.raises((SecurityError, TransportError), client, pki, st.port, timeout=1.5)
        assert calls and st.session_count() == 0 and not st.peers
        del st.server._verify
        with client(pki, st.port) as c:
            assert c.established
    finally:
        st.stop()
