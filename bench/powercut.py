"""Power-cut benchmark: a campaign of random power cuts on a virtual
MicroPython board during enroll and re-enroll (hil/powercut.py).

    python bench/powercut.py                 # 500 cuts
    python bench/powercut.py --runs 100 --seed 7

The last line is one JSON object: runs, broken_stores, outcomes
(old/new/empty), by_mode (time/point), by_op, points (commit points hit),
missed, elapsed_s, seed, and the command.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from hil import powercut  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--transport", choices=("coaps", "https"), default="coaps")
    a = ap.parse_args()

    def progress(n, total, r):
        if n % 25 == 0 or n == total:
            print("%d/%d cuts, last: %s %s -> %s" % (n, total, r["mode"], r["op"], r["outcome"]), file=sys.stderr)

    rep = powercut.campaign(a.runs, seed=a.seed, transport=a.transport, progress=progress)
    rep["command"] = "python bench/powercut.py " + " ".join(sys.argv[1:])
    print(json.dumps(rep))
    return 0 if rep["broken_stores"] == 0 and rep["runs"] == a.runs else 1


if __name__ == "__main__":
    sys.exit(main())
