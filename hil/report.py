"""Fleet reports: latency percentiles, throughput, failures by cause, the
JSON summary, a progress bar, and a PNG plot (latency over time and its
distribution; needs matplotlib, imported only when a plot is asked for).

A result is a dict per device: {"i", "kind" ("cpython" | "micropython"),
"start", "end" (seconds since the fleet started), "ms" (enrollment latency,
first attempt to certificate), "ok", "cause" (None or a short reason),
"attempts"}.
"""

import math
import re
import sys
import time


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..100) of an ascending list; None
    for an empty one."""
    if not sorted_values:
        return None
    k = max(1, int(math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[min(k, len(sorted_values)) - 1]


def cause_of(exc):
    """A short, stable failure cause: exception class and its message with
    numbers and addresses blanked (so equal causes group together)."""
    msg = str(exc)
    msg = re.sub(r"\[?[0-9a-fA-F:.]*[0-9][0-9a-fA-F:.]*\]?", "#", msg)
    msg = re.sub(r"\s+", " ", msg).strip()
    return "%s: %s" % (type(exc).__name__, msg[:80]) if msg else type(exc).__name__


def _r(x, nd=1):
    return None if x is None else round(x, nd)


def summarize(results, elapsed, **meta):
    """The report dict: devices, ok, failures, failures_by_cause,
    throughput_per_s (successful enrollments per second of wall time),
    p50_ms/p95_ms/p99_ms/max_ms/mean_ms over successful enrollments,
    attempts (histogram), by_kind (the same per device kind), elapsed_s,
    plus `meta`."""
    out = dict(meta)
    out.update(_stats(results, elapsed))
    kinds = sorted(set(r["kind"] for r in results))
    if len(kinds) > 1:
        out["by_kind"] = {k: _stats([r for r in results if r["kind"] == k], elapsed) for k in kinds}
    return out


def _stats(results, elapsed):
    ok = sorted(r["ms"] for r in results if r["ok"])
    causes = {}
    for r in results:
        if not r["ok"]:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    attempts = {}
    for r in results:
        attempts[str(r.get("attempts", 1))] = attempts.get(str(r.get("attempts", 1)), 0) + 1
    return {"devices": len(results), "ok": len(ok), "failures": len(results) - len(ok),
            "failures_by_cause": causes,
            "throughput_per_s": _r(len(ok) / elapsed if elapsed > 0 else 0.0, 2),
            "p50_ms": _r(percentile(ok, 50)), "p95_ms": _r(percentile(ok, 95)), "p99_ms": _r(percentile(ok, 99)),
            "max_ms": _r(ok[-1] if ok else None), "mean_ms": _r(sum(ok) / len(ok) if ok else None),
            "attempts": attempts, "elapsed_s": _r(elapsed, 2)}


def text(rep):
    """A human summary (several lines)."""
    lines = ["%d devices (%s, loss %s, concurrency %s): %d enrolled, %d failed in %.1f s"
             % (rep["devices"], rep.get("transport"), rep.get("loss"), rep.get("concurrency"), rep["ok"],
                rep["failures"], rep["elapsed_s"]),
             "throughput %.1f enrollments/s; latency %s"
             % (rep["throughput_per_s"], "p50 %s ms, p95 %s ms, p99 %s ms, max %s ms"
                % (rep["p50_ms"], rep["p95_ms"], rep["p99_ms"], rep["max_ms"]) if rep["ok"] else
                "none (no device enrolled)")]
    for k, v in sorted(rep.get("by_kind", {}).items()):
        lines.append("  %s: %d devices, %d failed, p50 %s ms, p95 %s ms" % (k, v["devices"], v["failures"],
                                                                          v["p50_ms"], v["p95_ms"]))
    if rep.get("attempts") and set(rep["attempts"]) != {"1"}:
        lines.append("attempts per device: %s" % ", ".join("%s: %d" % kv for kv in sorted(rep["attempts"].items())))
    for cause, n in sorted(rep["failures_by_cause"].items(), key=lambda kv: -kv[1]):
        lines.append("  %5d x %s" % (n, cause))
    if rep.get("plot"):
        lines.append("plot: %s" % rep["plot"])
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal (stderr); without a terminal,
    a status line every `interval` seconds."""

    def __init__(self, total, stream=None, width=30, interval=5.0):
        self.total = max(1, total)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.interval = interval if not self.tty else 0.1
        self.t0 = time.monotonic()
        self._last = 0.0
        self.ok = self.failed = 0

    def update(self, ok, failed, force=False):
        self.ok, self.failed = ok, failed
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        done = ok + failed
        rate = ok / (now - self.t0) if now > self.t0 else 0.0
        fill = int(self.width * done / self.total)
        line = "[%s%s] %d/%d  ok %d  failed %d  %.1f/s" % ("#" * fill, "." * (self.width - fill), done, self.total,
                                                          ok, failed, rate)
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self):
        self.update(self.ok, self.failed, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def plot_png(results, path, title="est-lite fleet"):
    """Two panels: each enrollment's latency at its completion time
    (failures marked at the time they gave up), and the latency
    distribution with p50/p95/p99. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the PNG plot needs matplotlib: pip install matplotlib (or pip install -e '.[fleet]')")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, marker, color in (("cpython", ".", "tab:blue"), ("micropython", "D", "tab:green")):
        rs = [r for r in results if r["kind"] == kind and r["ok"]]
        if rs:
            a1.scatter([r["end"] for r in rs], [r["ms"] for r in rs], s=6 if marker == "." else 18, marker=marker,
                       color=color, label="%s (%d)" % (kind, len(rs)), alpha=0.6, linewidths=0)
    bad = [r for r in results if not r["ok"]]
    if bad:
        a1.scatter([r["end"] for r in bad], [r["ms"] for r in bad], s=20, marker="x", color="tab:red",
                   label="failed (%d)" % len(bad))
    a1.set_xlabel("time since start (s)")
    a1.set_ylabel("enrollment latency (ms)")
    a1.set_title("latency over time")
    a1.grid(True, alpha=0.3)
    a1.legend(loc="upper right", fontsize=8)
    ok = sorted(r["ms"] for r in results if r["ok"])
    if ok:
        a2.hist(ok, bins=min(80, max(10, len(ok) // 20)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            v = percentile(ok, q)
            a2.axvline(v, color="black", linestyle=style, linewidth=1, label="p%d %.0f ms" % (q, v))
        a2.legend(fontsize=8)
    a2.set_xlabel("enrollment latency (ms)")
    a2.set_ylabel("devices")
    a2.set_title("latency distribution")
    a2.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
