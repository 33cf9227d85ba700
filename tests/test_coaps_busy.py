"""An EST-coaps server whose service runs in worker threads (the proxy: its
upstream may take seconds) does not queue requests without end: one that
would wait longer than max_wait_s for a worker, by the mean time of the
recent calls, gets 5.03 + Max-Age (the expected wait) at once. Before,
requests queued for as long as devices kept sending them, and were
forwarded long after the devices had given up (found by est-lite fleet
--via-proxy against a slow upstream: certificates issued that no device
received)."""

import asyncio
import concurrent.futures
import time

from est_lite_cpython.coaps_server import EstResource, ServerBusy, error_response


def _slow():
    time.sleep(0.3)
    return "done"


def test_a_request_that_would_wait_too_long_is_told_to_come_back():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    res = EstResource(None, executor=ex, max_wait_s=1.0)

    async def run():
        assert await res._call(_slow) == "done"  # the mean: about 0.3 s per call
        return await asyncio.gather(*(res._call(_slow) for _ in range(10)), return_exceptions=True)

    try:
        out = asyncio.run(run())
    finally:
        ex.shutdown(wait=True)
    done = [r for r in out if r == "done"]
    busy = [r for r in out if isinstance(r, ServerBusy)]
    assert len(done) + len(busy) == 10, out
    # the first waits for nobody; the ninth would wait 8 calls of >= 0.3 s
    assert len(done) >= 2 and busy and out[-1] in busy, out
    # served in order: once one is refused, every later one is too
    assert out[len(done):] == busy
    for e in busy:
        assert e.retry_after >= 1 and "busy" in e.msg
        m = error_response(e)
        assert m.code == 0xA3 and m.opts["max_age"] == e.retry_after
    assert res.stats["busy"] == len(busy) and res._queued == 0


def test_no_bound_when_asked():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    res = EstResource(None, executor=ex, max_wait_s=None)

    async def run():
        await res._call(_slow)
        return await asyncio.gather(*(res._call(_slow) for _ in range(4)))

    try:
        assert asyncio.run(run()) == ["done"] * 4
    finally:
        ex.shutdown(wait=True)
