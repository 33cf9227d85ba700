# est_lite_mp.rto: RFC 6298 estimator in integer ms (CPython and MicroPython).
from _util import raises

from est_lite.errors import LocalProtocolError
from est_lite_mp.rto import Rto


def test_initial_before_any_sample():
    r = Rto(initial_ms=1000, min_ms=100)
    assert r.srtt is None and r.samples == 0
    assert r.timeout() == 1000
    assert r.timeout(1) == 2000
    assert r.timeout(3) == 8000


def test_first_sample_rfc6298():
    r = Rto(min_ms=0)
    r.sample(100)
    assert r.srtt == 100 and r.rttvar == 50
    assert r.timeout() == 100 + 4 * 50


def test_smoothing():
    r = Rto(min_ms=0)
    r.sample(100)
    r.sample(200)
    # RTTVAR = 3/4*50 + 1/4*100 = 62.5; SRTT = 7/8*100 + 1/8*200 = 112.5 (fixed point, truncated)
    assert r.rttvar == 62 and r.srtt == 112
    assert r.timeout() == 362  # 112.5 + 4 * 62.5
    for _ in range(60):
        r.sample(10)
    assert r.srtt == 10 and r.rttvar <= 1
    assert 11 <= r.timeout() <= 14
    assert r.samples == 62


def test_floor_and_ceiling():
    r = Rto(initial_ms=1000, min_ms=100, max_ms=3000)
    r.sample(2)
    assert r.timeout() == 100
    assert r.timeout(1) == 200
    assert r.timeout(10) == 3000
    r = Rto(initial_ms=1000, min_ms=100, max_ms=3000)
    r.sample(100000)  # clamped to max_ms
    assert r.srtt == 3000 and r.timeout() == 3000


def test_zero_rtt_keeps_granularity():
    r = Rto(min_ms=0)
    for _ in range(40):
        r.sample(0)
    assert 1 <= r.timeout() <= 4
    assert r.srtt == 0


def test_bad_arguments():
    raises(LocalProtocolError, Rto, initial_ms=0)
    raises(LocalProtocolError, Rto, min_ms=5000, max_ms=1000)
    raises(LocalProtocolError, Rto, initial_ms=-1)
    raises(LocalProtocolError, Rto, k=1.5)
    r = Rto()
    raises(LocalProtocolError, r.sample, -1)
    raises(LocalProtocolError, r.sample, "x")
    raises(LocalProtocolError, r.sample, None)
    assert r.samples == 0
    r.sample(12.7)
    assert r.srtt == 12
