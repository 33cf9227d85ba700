"""Where a lossy enrollment's time goes (issue #6): bench/device.py's loss
measurement with every datagram the relay sees written down.

    python bench/loss_timeline.py [bench/device.py options: --seed 7 --delay-ms 0 ...]

Runs `bench/device.py --skip-heap` (same relay, server, device and seed;
the options are passed on) with two observers in this process, which
change no decision: hil.lossy.LossyRelay._schedule (each datagram: time,
direction, device address, dropped or not, its DTLS records) and
est_lite_cpython.dtls_server.DtlsServer (a flight resent because the
client repeated its own, and OpenSSL's retransmission timer firing).
Then, for the lossy runs (each is one DTLS session, so one device
address at the relay):

- a table sorted by the device's enrollment time: datagrams dropped, and
  the waits -- a device datagram sent more than --gap-ms (15) after the
  device last sent or received one (received: `--delay-ms` after the
  relay read it; a dropped one is not received). Nothing but a timer
  waits that long: the device's longest CPU step, its handshake flight,
  is about 13 ms on this machine; "rest" is the run's time outside the
  waits;
- the timeline of the median run and of the 75th-percentile run (and of
  --show N,M): ms from the run's first datagram, direction, DROP, the
  records (CH ClientHello, HVR HelloVerifyRequest, SH..SHD the server's
  flight, Cert..Fin the client's, #n the record sequence number; APPn#s:
  an encrypted record of n bytes, a CoAP message), and the server's
  resends.

The device side (which timer fired, with which RTO) is not instrumented
here: docs/client-runtime.md, "Datagram loss", says how it was read.
"""

import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

_HS = {1: "CH", 2: "SH", 3: "HVR", 11: "Cert", 12: "SKE", 13: "CR", 14: "SHD", 15: "CV", 16: "CKE", 20: "Fin"}


def records(p):
    """The DTLS records of datagram p, as a short text."""
    out = []
    off, n = 0, len(p)
    while off + 13 <= n:
        ct, ep = p[off], p[off + 3] << 8 | p[off + 4]
        seq = int.from_bytes(p[off + 5:off + 11], "big")
        ln = p[off + 11] << 8 | p[off + 12]
        if ct == 22 and ep == 0 and off + 14 <= n:
            out.append("%s#%d" % (_HS.get(p[off + 13], p[off + 13]), seq))
        elif ct == 22:
            out.append("Fin(e%d)#%d" % (ep, seq))
        elif ct == 20:
            out.append("CCS#%d" % seq)
        elif ct == 23:
            out.append("APP%d#%d" % (ln, seq))
        elif ct == 21:
            out.append("Alert#%d" % seq)
        else:
            out.append("ct%d#%d" % (ct, seq))
        off += 13 + ln
    return "+".join(out) or "(%d B, no record)" % n


def main(argv):
    gap_ms, show = 15.0, []
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--gap-ms":
            gap_ms = float(argv[i + 1])
            i += 2
        elif argv[i] == "--show":
            show = [int(x) for x in argv[i + 1].split(",")]
            i += 2
        else:
            rest.append(argv[i])
            i += 1

    delay = 0.0
    if "--delay-ms" in rest:
        delay = float(rest[rest.index("--delay-ms") + 1]) / 1000.0
    import hil.lossy as lossy
    from est_lite_cpython import dtls_server

    events = []  # (time, kind, device address, text, dropped)
    up_of = {}  # the relay's upstream socket address -> device address (what the server sees)

    sched = lossy.LossyRelay._schedule

    def schedule(self, direction, sock, payload, addr, now):
        d0 = self.stats[direction]["dropped"]
        sched(self, direction, sock, payload, addr, now)
        dev = addr if addr is not None else self._by_sock.get(sock)
        if dev is not None and self.loss:
            if direction == "up":
                up_of[sock.getsockname()[:2]] = dev
            events.append((now, direction, dev, records(payload), self.stats[direction]["dropped"] > d0))

    lossy.LossyRelay._schedule = schedule
    resend, retx = dtls_server.DtlsServer._resend_flight, dtls_server.DtlsServer._retransmit

    def resend_flight(self, peer):
        n = self.stats["flight_resends"]
        resend(self, peer)
        what = "server resends its flight (client repeated)" if self.stats["flight_resends"] > n else \
            "server: repeat within flight_resend_gap, not resent"
        events.append((time.monotonic(), "srv", up_of.get(peer.address[:2]), what, False))

    def retransmit(self, peer):
        events.append((time.monotonic(), "srv", up_of.get(peer.address[:2]), "server: OpenSSL's timer fired", False))
        retx(self, peer)

    dtls_server.DtlsServer._resend_flight = resend_flight
    dtls_server.DtlsServer._retransmit = retransmit

    import device

    out = []
    real_print = print

    def capture(*a, **k):
        real_print(*a, **k)
        if a and isinstance(a[0], str) and a[0].startswith("{"):
            out.append(a[0])

    device.print = capture
    sys.argv = ["device.py", "--skip-heap"] + rest
    device.main()
    res = json.loads(out[-1])
    times = res["lossy_ms"]

    runs = {}
    order = []
    for e in events:
        if e[1] != "srv" and e[2] not in runs:
            runs[e[2]] = []
            order.append(e[2])
    for e in events:
        if e[2] in runs:
            runs[e[2]].append(e)
    if len(order) != len(times):
        raise SystemExit("%d device addresses at the relay for %d lossy runs" % (len(order), len(times)))
    rows = []
    for i, a in enumerate(order):
        evs = runs[a]
        # the device's clock, seen from the relay: it sends a datagram when
        # the relay reads it, and reads one `delay` after the relay did
        last, waits = evs[0][0], []
        for e in evs[1:]:
            if e[1] == "up":
                if (e[0] - last) * 1000 > gap_ms:
                    waits.append(round((e[0] - last) * 1000, 1))
                last = e[0]
            elif e[1] == "down" and not e[4]:
                last = max(last, e[0] + delay)
        rows.append(dict(run=i, device_ms=times[i], dropped=sum(1 for e in evs if e[4]), waits_ms=waits,
                         waited_ms=round(sum(waits)), rest_ms=round(times[i] - sum(waits))))
    print("\nlossy runs by enrollment time (waits: a device datagram > %g ms after its previous one in or out)" % gap_ms)
    print("%4s %9s %8s %10s %8s  %s" % ("run", "device", "dropped", "waited", "rest", "waits (ms)"))
    ranked = sorted(rows, key=lambda r: (r["device_ms"], r["run"]))
    for r in ranked:
        print("%4d %6d ms %8d %7d ms %5d ms  %s" % (r["run"], r["device_ms"], r["dropped"], r["waited_ms"], r["rest_ms"],
                                                     r["waits_ms"]))
    n = len(ranked)
    med, p75 = ranked[(n - 1) // 2]["run"], ranked[min(n - 1, (3 * n) // 4)]["run"]
    print("lossless median %s ms, lossy median %s ms (run %d), 75th percentile run %d; server: %s" % (
        res["lossless_median_ms"], res["lossy_median_ms"], med, p75,
        {k: sum(1 for e in events if e[1] == "srv" and e[3] == k) for k in set(e[3] for e in events if e[1] == "srv")}))
    for i in [med, p75] + [s for s in show if s not in (med, p75)]:
        evs = runs[order[i]]
        t0 = evs[0][0]
        print("\n-- lossy run %d: %d ms in the device" % (i, times[i]))
        for e in evs:
            if e[1] == "srv":
                print("%8.1f      %s" % ((e[0] - t0) * 1000, e[3]))
            else:
                print("%8.1f %-4s %s%s" % ((e[0] - t0) * 1000, e[1], "DROP " if e[4] else "", e[3]))
    print(json.dumps(dict(gap_ms=gap_ms, median_run=med, p75_run=p75, runs=rows,
                          lossless_median_ms=res["lossless_median_ms"], lossy_median_ms=res["lossy_median_ms"],
                          lossy_waited_median_ms=statistics.median(r["waited_ms"] for r in rows),
                          lossy_rest_median_ms=statistics.median(r["rest_ms"] for r in rows))))


if __name__ == "__main__":
    main(sys.argv[1:])
