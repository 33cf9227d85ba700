"""Fleet benchmark: N simulated devices enroll over CoAPs (or HTTPS)
against one reference server process on this machine (hil/fleet.py).

    python bench/fleet.py                                # 10,000 devices, CoAPs, concurrency 32
    python bench/fleet.py --devices 2000 --loss 0.1 --plot fleet.png
    python bench/fleet.py --devices 1000 --loss 0.1 --concurrency 16 --via-proxy   # through the RA

The last line is one JSON object: devices, failures, throughput_per_s,
p50_ms, p95_ms, p99_ms, max_ms, failures_by_cause, elapsed_s, the command,
and the machine (CPUs, Python, OpenSSL). The server runs in its own process
(`est-lite serve` on a fresh CA); the devices share this process's event
loop, so the two processes share the machine's CPUs.
"""

import argparse
import json
import os
import pathlib
import platform
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from hil import report as R  # noqa: E402
from hil.fleet import FleetConfig, proxy_text, run_fleet  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--transport", choices=("coaps", "https"), default="coaps")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--mp-boards", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--via-proxy", action="store_true", help="through an `est-lite proxy` (RA) in its own process")
    ap.add_argument("--ack-timeout", type=float, default=2.0)
    ap.add_argument("--plot", help="PNG of latency over time and its distribution")
    a = ap.parse_args()
    cfg = FleetConfig(devices=a.devices, transport=a.transport, loss=a.loss, concurrency=a.concurrency,
                      mp_boards=a.mp_boards, seed=a.seed, via_proxy=a.via_proxy, ack_timeout=a.ack_timeout)
    rep = run_fleet(cfg, plot=a.plot, progress=True)
    import ssl

    from OpenSSL import SSL

    rep["command"] = "python bench/fleet.py " + " ".join(sys.argv[1:])
    rep["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "openssl_dtls": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
                      "openssl_stdlib": ssl.OPENSSL_VERSION,
                      "platform": platform.platform()}
    print(R.text(rep), file=sys.stderr)
    if rep.get("proxy"):
        print(proxy_text(rep), file=sys.stderr)
    print(json.dumps(rep))
    return 0 if rep["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
