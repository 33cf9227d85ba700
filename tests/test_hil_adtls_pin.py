"""The fleet simulator's asyncio DTLS client (hil/adtls.py) decides the
pinned bootstrap and the server name inside the handshake: a wrong pin or
name never gets the device's certificate. A relay records what goes up."""

import asyncio
import pathlib
import sys

import pytest
from test_pin_in_handshake import _dtls_server, _recording_relay, _sent_cert

from est_lite.errors import SecurityError
from est_lite_cpython.dtls import fingerprint

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from hil.adtls import AsyncDtls  # noqa: E402

from test_pin_in_handshake import pki  # noqa: E402,F401 - the module-scoped PKI fixture



def _connect(port, **kw):
    async def go():
        c = AsyncDtls("127.0.0.1", port, **kw)
        try:
            await c.connect(timeout=5)
            c.send(b"x")
            return await c.recv(5)
        finally:
            c.close()

    return asyncio.run(go())


@pytest.mark.parametrize("case", ["wrong_pin", "wrong_name", "right_pin"])
def test_async_dtls_checks_server_before_client_certificate(pki, case):  # noqa: F811
    srv = _dtls_server(pki, pki.server)
    relay, up = _recording_relay(srv.port)
    kw = dict(cert=pki.client.cert, key=pki.client.key)
    try:
        if case == "wrong_pin":
            with pytest.raises(SecurityError):
                _connect(relay.port, pin=fingerprint(pki.ca.root.cert), **kw)  # a leaf pin: the root is not the leaf
            assert up and not _sent_cert(up, pki.client.cert)
        elif case == "wrong_name":
            with pytest.raises(SecurityError):
                _connect(relay.port, trust_cas=[pki.ca.root.cert], server_name="evil.example", **kw)
            assert up and not _sent_cert(up, pki.client.cert)
        else:
            assert _connect(relay.port, pin=fingerprint(pki.server.cert), **kw) == b"echo x"
            assert _sent_cert(up, pki.client.cert)  # control: the recorder sees it when it goes out
    finally:
        relay.close()
        srv.stop()
