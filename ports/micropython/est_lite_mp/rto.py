# est-lite retransmission timeout estimator (RFC 6298 / RFC 8961 shape).
#
#   r = Rto()                 # nothing measured: timeout() == initial_ms
#   r.sample(12)              # one round trip of 12 ms (never one that was retransmitted: Karn)
#   r.timeout()               # SRTT + 4*RTTVAR, clamped to [min_ms, max_ms]
#   r.timeout(2)              # the same after two retransmissions (doubled twice, still <= max_ms)
#
# Integer milliseconds throughout (ticks_ms on a device). One estimator per
# client and peer: the DTLS handshake's round trips and every CoAP exchange
# feed it, so the first CoAP request already uses a measured timeout.
# Nothing here touches a clock.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from est_lite.errors import LocalProtocolError

_G = const(1)  # clock granularity (ms), RFC 6298 §2.3 "max(G, K*RTTVAR)"


class Rto:
    """initial_ms: timeout before any sample (RFC 8961: 1 s; RFC 7252's
    ACK_TIMEOUT is 2 s). min_ms: floor of a measured timeout (it must cover
    the server's think time, which the samples include). max_ms: ceiling,
    also of a backed-off timeout. k: RTTVAR multiplier (RFC 6298: 4)."""

    def __init__(self, initial_ms=1000, min_ms=100, max_ms=60000, k=4):
        for name, v in (("initial_ms", initial_ms), ("min_ms", min_ms), ("max_ms", max_ms), ("k", k)):
            if not isinstance(v, int) or v < 0:
                raise LocalProtocolError("Rto %s must be a non-negative int, got %r" % (name, v))
        if not min_ms <= max_ms or not 0 < initial_ms <= max_ms or not max_ms:
            raise LocalProtocolError("Rto needs 0 < initial_ms <= max_ms and min_ms <= max_ms")
        self.initial_ms = initial_ms
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.k = k
        self._s8 = -1  # SRTT * 8, ms (-1: no sample yet); fixed point as in Linux TCP
        self._v4 = 0  # RTTVAR * 4
        self.samples = 0

    @property
    def srtt(self):
        """Smoothed RTT (ms), None before the first sample."""
        return None if self._s8 < 0 else self._s8 >> 3

    @property
    def rttvar(self):
        return self._v4 >> 2

    def sample(self, rtt_ms):
        """Feed one round-trip time (ms) of a datagram that was sent once."""
        if not isinstance(rtt_ms, int):
            try:
                rtt_ms = int(rtt_ms)
            except (TypeError, ValueError, OverflowError):
                raise LocalProtocolError("an RTT sample is a number of ms, got %r" % (rtt_ms,))
        if rtt_ms < 0:
            raise LocalProtocolError("an RTT sample cannot be negative (%d ms)" % rtt_ms)
        if rtt_ms > self.max_ms:
            rtt_ms = self.max_ms
        if self._s8 < 0:
            self._s8 = rtt_ms << 3  # SRTT = R
            self._v4 = rtt_ms << 1  # RTTVAR = R/2
        else:
            # SRTT += (R - SRTT)/8;  RTTVAR += (|R - SRTT| - RTTVAR)/4
            d = rtt_ms - (self._s8 >> 3)
            self._s8 += d
            if d < 0:
                d = -d
            self._v4 += d - (self._v4 >> 2)
        self.samples += 1

    def timeout(self, backoff=0):
        """Retransmission timeout in ms after `backoff` retransmissions."""
        if self._s8 < 0:
            t = self.initial_ms
        else:
            v = (self.k * self._v4) >> 2
            t = (self._s8 >> 3) + (v if v > _G else _G)
            if t < self.min_ms:
                t = self.min_ms
        m = self.max_ms
        while backoff > 0 and t < m:
            t <<= 1
            backoff -= 1
        return t if t < m else m
