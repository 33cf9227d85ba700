"""Power-cut campaign on a virtual board: cut the power (SIGKILL the
MicroPython process) during enroll or re-enroll, reboot (a new process on the
same flash directory), and check that the board holds a valid key and
certificate pair: the old one or the new one, never a broken store.

    python -m est_lite_hil.powercut --runs 20   # or: est-lite hil powercut --runs 20 --json

Two kinds of cut point, alternating:

- "time": at a random moment of the operation, uniform over its measured
  duration (key generation, CSR, DTLS, CoAP exchange, verification, store
  commit -- wherever the moment falls).
- "point": at a random point of the store's commit (before each file write,
  half way through it -- a torn write --, before the commit rename, before
  each removal of the previous generation, after the last step). The board
  stops there and is killed.

After each cut the board's own `check` step (load the store, key matches
certificate, certificate chains to the stored CA) and the host's check
(the store read back and verified with `cryptography` against the CA) must
both pass -- or the store may be empty if it was empty before the cut
(first boot) -- and the certificate must be the old one or a newly issued
one. The last line with --json is a JSON object: runs, broken_stores,
outcomes (old/new/empty), by_mode, by_op, missed (cut landed after the
operation ended: not counted), elapsed_s, seed.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from . import bundle as _bundle
from . import scenario as S
from .boards import VirtualBoard


class CampaignError(RuntimeError):
    """The campaign could not start (calibration or the first enrollment
    failed): .output holds the board's console."""

    def __init__(self, message, output=""):
        super().__init__(message)
        self.output = output


class _Cut:
    def __init__(self, op_index, mode, offset=None):
        self.op_index = op_index
        self.mode = mode
        self.offset = offset
        self.began = None
        self.cut_record = None
        self.finished = False

    def __call__(self, rec, ctl):
        if rec.kind == "begin" and rec.value.get("i") == self.op_index:
            self.began = time.monotonic()
            if self.mode == "time":
                ctl.kill_after(self.offset)
        elif rec.kind == "cut":
            self.cut_record = rec.value
            ctl.kill()
        elif rec.kind == "step" and rec.value.get("i") == self.op_index:
            self.finished = True


def _fp(creds):
    import hashlib

    return None if creds is None else hashlib.sha256(creds.cert).hexdigest()


class Campaign:
    def __init__(self, workdir, server=None, heap="256K", seed=None, ops=("renew", "renew", "renew", "provision"),
                 modes=("time", "point"), transport="coaps", progress=None, keep_broken=True, fixed_points=None,
                 unsafe_store=False):
        self.workdir = os.path.abspath(workdir)
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.ops = list(ops)
        self.modes = list(modes)
        self.transport = transport
        self.heap = heap
        self.progress = progress
        self.keep_broken = keep_broken
        self.fixed_points = list(fixed_points) if fixed_points else None
        self.unsafe_store = unsafe_store  # control runs: a store that is known to break
        self._own_server = server is None
        self.server = server
        self.board = None
        self.scn = {"name": "powercut", "transport": transport, "steps": []}
        self.durations = {}
        self.points = {}
        self.results = []
        self.missed = 0

    def setup(self):
        from .refserver import RefServer

        os.makedirs(self.workdir, exist_ok=True)
        if self.server is None:
            self.server = RefServer(os.path.join(self.workdir, "server")).start()
        b = os.path.join(self.workdir, "bundle")
        _bundle.build(b)
        self.board = VirtualBoard(os.path.join(self.workdir, "board"), heap=self.heap, name="powercut")
        self.board.deploy(b)
        self.cn = "hil-powercut"
        S.provision_board(self.board, self.server, self.cn)
        # calibrate: duration and number of commit points of each operation
        for op in sorted(set(self.ops)):
            steps = ([{"do": "wipe"}] if op == "provision" else [])
            if op == "renew":
                self._ensure_enrolled()
            steps.append({"do": op, "cut": {"at": None}, "unsafe_store": self.unsafe_store})
            res = self._run(steps)
            if not res.ok:
                raise CampaignError("calibration run of %s failed: %s" % (op, res.failure()), res.output[-2000:])
            st = res.steps[-1]
            self.durations[op] = st["ms"] / 1000.0
            self.points[op] = st["points"]
        self._ensure_enrolled()

    def close(self):
        if self._own_server and self.server is not None:
            self.server.stop()

    def _run(self, steps, on_record=None, timeout=300):
        cfg = S.device_config(self.scn, self.server, self.cn, steps=steps)
        return self.board.run(cfg, timeout=timeout, on_record=on_record)

    def _ensure_enrolled(self):
        if S.read_store(self.board) is None:
            res = self._run([{"do": "provision"}])
            if not res.ok:
                raise CampaignError("provisioning failed: %s" % res.failure(), res.output[-2000:])

    def one(self, i):
        """One cut; returns its record (None when the cut missed)."""
        op = self.rng.choice(self.ops)
        mode = self.modes[i % len(self.modes)]
        if op == "renew":
            self._ensure_enrolled()
        steps = [{"do": "wipe"}] if op == "provision" else []
        idx = len(steps)
        if mode == "time":
            offset = self.rng.uniform(0, self.durations[op])
            cut = _Cut(idx, mode, offset)
            steps.append({"do": op})
        else:
            if self.fixed_points:
                at = self.fixed_points[i % len(self.fixed_points)]
            else:
                at = self.rng.randrange(self.points[op])
            cut = _Cut(idx, mode, at)
            steps.append({"do": op, "cut": {"at": at}})
        if self.unsafe_store:
            steps[-1]["unsafe_store"] = True
        before = None if op == "provision" else _fp(S.read_store(self.board))
        issued0 = self.server.issued_count()
        serials0 = set(self.server.ca.store.all_serials())
        res = self._run(steps, on_record=cut)
        if not res.killed or cut.finished:
            self.missed += 1
            if mode == "time" and cut.began is not None:  # the operation was faster this time
                self.durations[op] = max(0.001, 0.9 * self.durations[op])
            return None
        # reboot and check, on the board and on the host
        chk = self._run([{"do": "check"}])
        st = chk.steps[0] if chk.steps else {}
        rec = {"i": i, "op": op, "mode": mode, "offset": cut.offset if mode == "time" else None,
               "point": cut.cut_record, "issued_during": self.server.issued_count() - issued0}
        problems = []
        if not chk.ok:
            problems.append("board check: %s" % chk.failure())
        host = None
        try:
            creds = S.read_store(self.board)
            if creds is not None:
                host = S.verify_creds(creds, self.server)
        except Exception as e:  # noqa: BLE001 - any failure of the check is a broken store
            problems.append("host check: %s: %s" % (type(e).__name__, e))
            creds = None
        after = host["sha256"] if host else None
        if not problems:
            if after is None:
                if before is not None:
                    problems.append("the store lost its credentials")
                outcome = "empty"
            elif after == before:
                outcome = "old"
            else:
                outcome = "new"
                # "new" is a certificate the CA issued during this operation,
                # not any other one (an older generation coming back)
                during = set(int(x, 16) for x in self.server.ca.store.all_serials() if x not in serials0)
                if int(host["serial"], 16) not in during:
                    problems.append("a certificate the CA did not issue during this operation (serial %s)"
                                    % host["serial"])
            if st.get("state") == "ok" and st.get("cert") != after:
                problems.append("the board and the host see different certificates")
        rec["outcome"] = "broken" if problems else outcome
        rec["problems"] = problems
        if problems and self.keep_broken:
            dst = os.path.join(self.workdir, "broken-%04d" % i)
            shutil.copytree(os.path.join(self.board.flash, S.STORE), dst, dirs_exist_ok=True)
            rec["kept"] = dst
        return rec

    def run(self, runs, max_attempts=None):
        t0 = time.monotonic()
        max_attempts = max_attempts or runs * 4 + 20
        attempts = 0
        while len(self.results) < runs and attempts < max_attempts:
            r = self.one(attempts)
            attempts += 1
            if r is not None:
                self.results.append(r)
                if self.progress:
                    self.progress(len(self.results), runs, r)
        return self.report(time.monotonic() - t0)

    def report(self, elapsed):
        out = {"runs": len(self.results), "broken_stores": sum(r["outcome"] == "broken" for r in self.results),
               "outcomes": {}, "by_mode": {}, "by_op": {}, "points": {}, "missed": self.missed,
               "elapsed_s": round(elapsed, 1), "seed": self.seed, "transport": self.transport,
               "calibration": {"op_seconds": self.durations, "commit_points": self.points}}
        for r in self.results:
            for key, k in (("outcomes", r["outcome"]), ("by_mode", r["mode"]), ("by_op", r["op"])):
                out[key][k] = out[key].get(k, 0) + 1
            if r["point"]:
                k = r["point"]["what"]
                out["points"][k] = out["points"].get(k, 0) + 1
        out["broken"] = [r for r in self.results if r["outcome"] == "broken"][:20]
        return out


def campaign(runs, workdir=None, **kw):
    """Run a campaign of `runs` cuts; returns the report (a dict)."""
    tmp = None
    if workdir is None:
        tmp = workdir = tempfile.mkdtemp(prefix="est-lite-powercut-")
    c = Campaign(workdir, **kw)
    try:
        c.setup()
        rep = c.run(runs)
    finally:
        c.close()
        if tmp is not None and not any(r["outcome"] == "broken" for r in c.results):
            shutil.rmtree(tmp, ignore_errors=True)
    return rep


def add_arguments(ap):
    ap.add_argument("--runs", type=int, default=20, help="number of power cuts (default 20)")
    ap.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    ap.add_argument("--transport", choices=("coaps", "https"), default="coaps")
    ap.add_argument("--heap", default="256K", help="MicroPython heap of the virtual board (default 256K)")
    ap.add_argument("--workdir", help="keep the work files here (default: a temporary directory, removed "
                                      "unless a store broke)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")


def main_args(a, out=sys.stdout):
    if a.runs < 1:
        sys.stderr.write("est-lite hil powercut: --runs must be 1 or more, got %d\n" % a.runs)
        return 2

    def progress(n, total, r):
        if not a.json or sys.stderr.isatty():
            sys.stderr.write("\rpower cut %d/%d: %-5s %-9s -> %s   " % (n, total, r["mode"], r["op"], r["outcome"]))
            sys.stderr.flush()

    try:
        rep = campaign(a.runs, a.workdir, seed=a.seed, transport=a.transport, heap=a.heap, progress=progress)
    except CampaignError as e:
        sys.stderr.write("est-lite hil powercut: %s\n" % e)
        return 1
    sys.stderr.write("\n")
    if a.json:
        out.write(json.dumps(rep) + "\n")
    else:
        out.write("%d power cuts (%s), %d broken stores; outcomes %s; commit points hit %s; seed %d\n"
                  % (rep["runs"], ", ".join("%s %d" % kv for kv in sorted(rep["by_mode"].items())),
                     rep["broken_stores"], rep["outcomes"], rep["points"], rep["seed"]))
        for r in rep["broken"]:
            out.write("  BROKEN %s\n" % json.dumps(r))
    if rep["runs"] < a.runs:
        sys.stderr.write("est-lite hil powercut: only %d of %d cuts landed inside the operation (%d missed: it "
                         "ended before the cut); run again or with fewer --runs\n" % (rep["runs"], a.runs, rep["missed"]))
    return 1 if rep["broken_stores"] or rep["runs"] < a.runs else 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m est_lite_hil.powercut", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return main_args(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
