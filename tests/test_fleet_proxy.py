"""A fleet through the proxy/RA (`est-lite fleet --via-proxy`): the
upstream `est-lite serve` and an `est-lite proxy` in their own processes
(the proxy's RA certificate from `est-lite ca issue --eku
clientAuth,cmcRA`), devices enrolling through the proxy at 10% loss."""

import pathlib as _pl
import sys as _sys

import pytest

_sys.path.insert(0, str(_pl.Path(__file__).resolve().parent.parent))  # hil/ of this checkout

from hil.fleet import FleetConfig, run_fleet  # noqa: E402


def _check(rep, n):
    assert rep["failures"] == 0, rep["failures_by_cause"]
    assert rep["ok"] == n and rep["via_proxy"]
    px = rep["proxy"]
    assert px["alive"]
    up = px["upstream"]
    # every device's certificate is in the upstream store, requested by
    # the RA, and chains to the upstream CA
    assert up["in_store"] == n and up["not_in_store"] == up["requester_not_ra"] == up["not_chained"] == 0, up
    # upstream store: the server's TLS certificate, the RA's and the
    # proxy's from `ca issue`, then one per device; more only for a device
    # that started over (tests/test_fleet.py's bound)
    tries = sum(int(k) * v for k, v in rep["attempts"].items())
    assert 3 + n <= rep["server_issued"] <= 3 + tries, (rep["server_issued"], rep["attempts"])
    assert n <= up["by_ra"] <= tries
    # the proxy's own count of its upstream requests (said when it stops):
    # the devices' simpleenroll requests, and its /cacerts
    fw = px["forwarded"]
    assert fw is not None and fw["requests"] >= n + 1 and fw["failed"] == 0, fw
    # the proxy's threads and fds come back to where they were
    res = px["resources"]
    assert res["fds"]["end"] <= res["fds"]["start"] + 2, res
    assert res["threads"]["end"] <= res["threads"]["start"] + 16, res


def test_a_fleet_through_the_proxy_over_coaps_at_ten_percent_loss(tmp_path):
    cfg = FleetConfig(devices=24, transport="coaps", loss=0.1, concurrency=8, seed=5, ack_timeout=1.0,
                      via_proxy=True)
    rep = run_fleet(cfg, progress=False, workdir=str(tmp_path))
    _check(rep, 24)
    assert rep["link"]["up"]["dropped"] + rep["link"]["down"]["dropped"] > 0


def test_a_fleet_through_the_proxy_over_https(tmp_path):
    rep = run_fleet(FleetConfig(devices=12, transport="https", concurrency=6, via_proxy=True), progress=False,
                    workdir=str(tmp_path))
    _check(rep, 12)


def test_via_proxy_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="mp-boards"):
        FleetConfig(devices=2, mp_boards=1, via_proxy=True)
    with pytest.raises(ValueError, match="in-process"):
        FleetConfig(devices=2, in_process=True, via_proxy=True)
