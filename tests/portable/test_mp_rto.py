# micropython-heapsize: 128K
# est_lite_mp.client.Rto: RFC 6298 estimator in integer ms (CPython and MicroPython).
from _util import raises

from est_lite.errors import LocalProtocolError
from est_lite_mp.client import Rto


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


def _rec(epoch, seq, body):
    h = bytearray(13)
    h[0] = 22
    h[1] = 0xFE
    h[2] = 0xFD
    h[3] = epoch >> 8
    h[4] = epoch & 0xFF
    for i in range(6):
        h[10 - i] = (seq >> (8 * i)) & 0xFF
    h[11] = len(body) >> 8
    h[12] = len(body) & 0xFF
    return bytes(h) + body


def _seqs(d):
    out = []
    off = 0
    while off + 13 <= len(d):
        v = 0
        for i in range(off + 5, off + 11):
            v = v << 8 | d[i]
        out.append((d[off + 3] << 8 | d[off + 4], v))
        off += 13 + (d[off + 11] << 8 | d[off + 12])
    return out


def test_dtls_resend_renumbers_epoch0_records():
    # est_lite_mp.dtls: a resent flight's plaintext records get new, higher
    # sequence numbers (the peer's replay check drops a byte-identical copy
    # of a record it saw); encrypted ones stay as they are
    from est_lite_mp import dtls

    d = bytearray(_rec(0, 5, b"\x0b" * 20) + _rec(0, 6, b"\x10" * 3) + _rec(1, 0, b"\x00" * 40))
    assert dtls._records(d, None) == 6
    body = bytes(d[13:33])
    assert dtls._records(d, 30) == 32
    assert _seqs(d) == [(0, 30), (0, 31), (1, 0)]
    assert bytes(d[13:33]) == body  # only the headers change
    assert dtls._records(bytearray(_rec(1, 7, b"x")), None) == -1
    # a truncated trailing header or a length past the end stops the walk
    t = bytearray(_rec(0, 9, b"abc") + b"\x16\xfe")
    assert dtls._records(t, None) == 9
    t = bytearray(_rec(0, 2, b"abc"))
    t[12] = 200
    assert dtls._records(t, None) == 2
    assert dtls._records(bytearray(), None) == -1


class _NoWire:
    # a transport that connects to nothing (EstClient._session() only calls connect)
    binding = None

    def connect(self):
        pass

    def close(self):
        pass


def _client(host="est.example", port=5684, **attrs):
    from est_lite_mp.client import EstClient

    c = EstClient("coaps://%s:%d" % (host, port), trust=[b"anchor"])
    c._open_coaps = lambda trust, pin, timeout: _NoWire()
    for k in attrs:
        setattr(c, k, attrs[k])
    return c


def test_rtt_estimate_seeds_the_next_client_to_the_same_server():
    # RFC 9040 temporal sharing: a new client to a server starts from the last
    # session's SRTT/RTTVAR instead of the 1 s of no knowledge
    from est_lite_mp import client as mc

    mc._PATHS.clear()
    a = _client()
    a._session()
    assert a.rto.timeout() == 1000  # nothing known yet
    a.rto.sample(30)
    a.rto.sample(34)
    learned = a.rto.timeout()
    assert learned < 1000
    a.close()
    b = _client()
    b._session()
    assert b.rto.timeout() == learned and b.rto.samples == 0
    assert b._coap_timers() == (b.ack_timeout, b.max_retransmit)  # CoAP keeps RFC 7252 timers until b measures
    b.rto.sample(40)  # b's own samples continue from the shared estimate
    s8 = a.rto._s8
    assert b.rto.srtt == (s8 + 40 - (s8 >> 3)) >> 3 and b.rto.samples == 1
    # another server, or sharing switched off: no knowledge
    c = _client(port=5685)
    c._session()
    assert c.rto.timeout() == 1000
    d = _client(rtt_keep_s=0)
    d._session()
    assert d.rto.timeout() == 1000
    mc._PATHS.clear()


def test_rtt_sharing_keeps_few_servers_and_needs_a_sample():
    from est_lite_mp import client as mc

    mc._PATHS.clear()
    e = _client()
    e._session()
    e.close()  # no sample taken: nothing to share
    assert not mc._PATHS
    for p in range(6):
        f = _client(port=6000 + p)
        f._session()
        f.rto.sample(20)
        f.close()
    assert len(mc._PATHS) == 4  # _PATHS_MAX (a const: not a module attribute on MicroPython)
    assert ("est.example", 6005) in mc._PATHS
    mc._PATHS.clear()
