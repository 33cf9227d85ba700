"""User-space instructions per HTTPS enrollment of the reference server,
counted by valgrind (cachegrind): a repeatable figure for comparing server
changes on a machine whose CPU time is too noisy to compare (shared CPUs).

    python bench/server_instructions.py [--n1 20] [--n2 120]

`est-lite serve` runs under `valgrind --tool=cachegrind` twice, each time
on a fresh CA with 2 workers; a sequential client (stdlib ssl, HTTP Basic,
one TLS connection per enrollment, as bench/server.py) enrolls 10 times to
warm up and then N1 (first run) or N2 (second run) times. The difference
of the two runs' totals divided by N2 - N1 is the server's instruction
count per enrollment without start-up and warm-up. Kernel work (TCP,
syscalls) is not counted, nor are cache misses: instructions are a proxy
for the server's own work, not its CPU time. Needs `valgrind` (apt-get
install valgrind); takes about 30 s. The last line printed is JSON.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)


def _serve_and_count(n, warm, csrs, auth_hdr):
    from helpers_server import PASSWORD, USER, make_vendor_ca
    from server import CONFIG

    from est_lite_cpython.auth import PasswordFile
    from est_lite_cpython.ca import init_ca

    tmp = tempfile.mkdtemp(prefix="est-ir-")
    try:
        init_ca(os.path.join(tmp, "ca")).store.close()
        PasswordFile(os.path.join(tmp, "ca", "passwords")).set_password(USER, PASSWORD)
        make_vendor_ca(tmp)
        with open(os.path.join(tmp, "server.toml"), "w") as f:
            f.write(CONFIG % {"workers": 2, "io": ""})
        pf = os.path.join(tmp, "port")
        out = os.path.join(tmp, "cachegrind.out")
        p = subprocess.Popen(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=" + out,
                              sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config",
                              os.path.join(tmp, "server.toml"), "--port-file", pf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(2400):  # start-up under valgrind takes a while
                if os.path.exists(pf) and open(pf).read().strip():
                    break
                if p.poll() is not None:
                    raise SystemExit("the server under valgrind exited with %s" % p.returncode)
                time.sleep(0.05)
            port = int(open(pf).read())
            from server import https_enroller

            one = https_enroller(port, os.path.join(tmp, "ca", "root.pem"), auth_hdr, timeout=120)
            ok = 0
            for body in csrs[:warm + n]:
                ok += one(body)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(600)
        if ok != warm + n:
            raise SystemExit("only %d of %d enrollments succeeded" % (ok, warm + n))
        with open(out) as f:
            m = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
        if m is None:
            raise SystemExit("no cachegrind summary in %s" % out)
        return int(m.group(1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=20)
    ap.add_argument("--n2", type=int, default=120)
    ap.add_argument("--warm", type=int, default=10)
    args = ap.parse_args(argv)
    if args.n2 <= args.n1:
        raise SystemExit("--n2 must be larger than --n1")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from helpers_server import PASSWORD, USER, make_csr

    csrs = [base64.encodebytes(make_csr("ir-%d" % i)[1]) for i in range(args.warm + args.n2)]
    auth_hdr = b"Authorization: Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()) + b"\r\n"
    a = _serve_and_count(args.n1, args.warm, csrs, auth_hdr)
    b = _serve_and_count(args.n2, args.warm, csrs, auth_hdr)
    per = (b - a) / (args.n2 - args.n1)
    print("server user-space instructions per HTTPS enrollment: %.0f (totals %d after %d, %d after %d)"
          % (per, a, args.n1, b, args.n2))
    print(json.dumps({"instructions_per_enrollment": round(per), "n1": args.n1, "n2": args.n2,
                      "total_n1": a, "total_n2": b}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
