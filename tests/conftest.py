"""Shared fixtures. `est_server`: a fresh CA in tmp_path behind a started
EST HTTPS server (see tests/helpers_server.py)."""

import pytest


@pytest.fixture
def est_server(tmp_path):
    from helpers_server import EstTestServer

    srv = EstTestServer(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def est_server_factory(tmp_path):
    """Build servers with extra TOML / an intermediate CA:
    est_server_factory(extra_toml="...", intermediate=True)."""
    from helpers_server import EstTestServer

    made = []

    def make(**kw):
        sub = tmp_path / ("srv%d" % len(made))
        sub.mkdir()
        s = EstTestServer(sub, **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()
