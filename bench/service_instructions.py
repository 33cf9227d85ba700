"""User-space instructions per enrollment of the EST service alone (no TLS,
no HTTP): PasswordFile.check + EstService.simpleenroll on a fresh CA with
the bench profile, counted by valgrind (cachegrind) in two runs of N1 and
N2 enrollments after 10 warm-up ones; (total2 - total1) / (N2 - N1).
CSRs are made before valgrind starts. Needs valgrind; about 30 s.

    python bench/service_instructions.py [--n1 50] [--n2 250]
"""

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

sys.path.insert(0, HERE)
from server import CONFIG as SERVER_CONFIG  # noqa: E402 - the bench profile of bench/server.py

CONFIG = SERVER_CONFIG % {"workers": 1, "io": ""}


def _child(csr_file, n):
    from helpers_server import PASSWORD, USER, make_vendor_ca

    from est_lite_cpython.auth import PasswordFile
    from est_lite_cpython.ca import LocalCA, init_ca
    from est_lite_cpython.config import load_config
    from est_lite_cpython.service import AuthContext, EstService

    with open(csr_file, "rb") as f:
        csrs = pickle.load(f)
    tmp = tempfile.mkdtemp(prefix="est-si-")
    try:
        init_ca(os.path.join(tmp, "ca")).store.close()
        PasswordFile(os.path.join(tmp, "ca", "passwords"), iterations=1000).set_password(USER, PASSWORD)
        make_vendor_ca(tmp)
        with open(os.path.join(tmp, "server.toml"), "w") as f:
            f.write(CONFIG)
        cfg = load_config(os.path.join(tmp, "server.toml"))
        ca = LocalCA(cfg.data_dir)
        svc = EstService(ca, cfg)
        auth = svc.authenticator
        for der in csrs[:10 + n]:
            ctx = AuthContext("https", tls_exporter=lambda: b"x" * 32, tls_version="TLSv1.3", remote=("127.0.0.1", 1))
            if not auth.verify_password(USER, PASSWORD, None):
                raise SystemExit("password check failed")
            ctx.http_user, ctx.http_scheme = USER, "basic"
            if svc.simpleenroll(None, der, ctx)[:1] != b"\x30":
                raise SystemExit("no PKCS#7")
        ca.store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _count(csr_file, n):
    fd, out = tempfile.mkstemp(prefix="est-si-cg-")
    os.close(fd)
    try:
        subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=" + out,
                        sys.executable, os.path.abspath(__file__), "--child", csr_file, str(n)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            return int(re.search(r"^summary:\s+(\d+)", f.read(), re.M).group(1))
    finally:
        if os.path.exists(out):
            os.unlink(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], int(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=50)
    ap.add_argument("--n2", type=int, default=250)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from helpers_server import make_csr

    fd, csr_file = tempfile.mkstemp(prefix="est-si-csrs-")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump([make_csr("si-%d" % i)[1] for i in range(10 + args.n2)], f)
        a = _count(csr_file, args.n1)
        b = _count(csr_file, args.n2)
    finally:
        os.unlink(csr_file)
    per = (b - a) / (args.n2 - args.n1)
    print("service user-space instructions per enrollment: %.0f" % per)
    print(json.dumps({"service_instructions_per_enrollment": round(per), "n1": args.n1, "n2": args.n2}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
