"""User-space instructions per enrollment of the reference server over
EST-coaps (and, for comparison, over HTTPS with the same IDevID client
certificates), counted by valgrind's callgrind: a repeatable figure for
comparing server changes on a machine whose CPU time is too noisy to
compare (two CPUs shared with the load generator and other work).

    python bench/coaps_instructions.py [--n 100] [--transport coaps|https|both] [--same-idevid]

`est-lite serve` runs under `valgrind --tool=callgrind --instr-atstart=no`
on a fresh CA (the bench/server.py config, IDevID trust). A sequential
client enrolls 10 times to warm up; then instrumentation is switched on
(`callgrind_control -i on`), the client enrolls --n times, and it is
switched off again, so start-up and warm-up are not counted. The CoAPs
client is bench/server.py's coaps_enroller (one DTLS handshake with the
cookie exchange per enrollment), the HTTPS client is stdlib ssl with the
same certificates (one TLS connection per enrollment, as bench/server.py).
Each enrollment presents a new IDevID, as a fleet's devices enrolling once
each (bench/server.py --idevids); --same-idevid presents one for all.
Kernel work (UDP/TCP, syscalls) is not counted, nor are cache misses:
instructions are a proxy for the server's own work, not its CPU time (and
valgrind's CPU lacks some instruction-set extensions, so OpenSSL's P-256
code runs a longer path than natively). Identical runs agree to 0.1%.
Needs `valgrind`; about 30 s per transport. The last line printed is JSON:
instructions per enrollment, total and split into OpenSSL/cryptography
(`_rust.abi3.so`), the Python interpreter and libc.
"""

import argparse
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)


def _setup(coaps, n_ids):
    from cryptography.hazmat.primitives import serialization
    from helpers_server import der, issue_cert, make_vendor_ca, write_identity
    from server import CONFIG

    from est_lite_cpython.ca import LocalCA, init_ca

    tmp = tempfile.mkdtemp(prefix="est-instr-")
    init_ca(os.path.join(tmp, "ca"))
    vendor = make_vendor_ca(tmp)
    with open(os.path.join(tmp, "server.toml"), "w") as f:
        f.write(CONFIG % {"workers": 2, "io": ""})
        if coaps:
            f.write("\n[coaps]\nport = 0\nprocesses = 1\n")
    ids = []  # (cryptography certificate, key, PEM paths) of each IDevID
    for i in range(n_ids):
        k, c = issue_cert(vendor["cert"], vendor["key"], "instr-idevid-%d" % i)
        ids.append((c, k, write_identity(tmp, "idevid-%d" % i, k, c)))
    ca = LocalCA(os.path.join(tmp, "ca"))
    root_der = der(ca.root)
    ca.store.close()
    c, k = ids[0][0], ids[0][1]
    key_der = k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return tmp, root_der, der(c), key_der, ids


def _https_one(port, root_pem, ids):
    """One enrollment per call, each IDevID of ids in turn."""
    from server import https_enroller

    ones = [https_enroller(port, root_pem, cert=pems[0], key=pems[1], timeout=120) for _, _, pems in ids]
    turn = itertools.count()
    return lambda csr: ones[next(turn) % len(ones)](base64.encodebytes(csr))


def _split(out_file):
    """Instructions by object: (total, openssl, python, libc)."""
    p = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out_file],
                       capture_output=True, text=True)
    total = ossl = py = libc = 0
    for ln in p.stdout.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", ln)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        rest = m.group(2)
        if "PROGRAM TOTALS" in rest:
            total = n
            continue
        if "_rust.abi3.so" in rest:
            ossl += n
        elif "libpython" in rest or "Python-3." in rest:
            py += n
        elif "libc.so" in rest or "/malloc/" in rest or "/string/" in rest:
            libc += n
    return total, ossl, py, libc


def count(transport, n, same_idevid=False):
    coaps = transport == "coaps"
    tmp, root_der, cert_der, key_der, ids = _setup(coaps, 1 if same_idevid else n + 10)
    from helpers_server import make_csr

    csrs = [make_csr("instr-%d" % i)[1] for i in range(n + 10)]
    out = os.path.join(tmp, "callgrind.out")
    pf, cpf = os.path.join(tmp, "port"), os.path.join(tmp, "coaps-port")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out,
           sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", os.path.join(tmp, "server.toml"),
           "--port-file", pf]
    if coaps:
        cmd += ["--coaps-port", "0", "--coaps-port-file", cpf]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(2400):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            time.sleep(0.05)
        if coaps:
            from server import coaps_enroller

            port = int(open(cpf).read())
            one = coaps_enroller(port, root_der, cert_der, key_der,
                                 identities=None if same_idevid else [(c, k) for c, k, _ in ids])
        else:
            port = int(open(pf).read())
            one = _https_one(port, os.path.join(tmp, "ca", "root.pem"), ids)
        for csr in csrs[:10]:
            if not one(csr):
                raise SystemExit("warm-up enrollment failed")
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
        for csr in csrs[10:]:
            if not one(csr):
                raise SystemExit("enrollment failed")
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
    finally:
        proc.terminate()
        proc.wait(120)
    total, ossl, py, libc = _split(out)
    shutil.rmtree(tmp, ignore_errors=True)
    r = {k: round(v / n) for k, v in (("instructions", total), ("openssl_cryptography", ossl),
                                       ("python_interpreter", py), ("libc", libc))}
    print("[%s] %d instructions per enrollment (OpenSSL/cryptography %d, Python %d, libc %d), n=%d"
          % (transport, r["instructions"], r["openssl_cryptography"], r["python_interpreter"], r["libc"], n),
          flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="enrollments counted")
    ap.add_argument("--transport", default="coaps", choices=["coaps", "https", "both"])
    ap.add_argument("--same-idevid", action="store_true",
                    help="one IDevID for every enrollment instead of a new one per enrollment (a fleet): the HTTPS "
                         "service then verifies its signature once and caches it; the DTLS server's OpenSSL "
                         "verifies the chain in every handshake either way")
    args = ap.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    out = {"n": args.n, "auth": "cert", "idevids": "one" if args.same_idevid else "one per enrollment"}
    for t in (["coaps", "https"] if args.transport == "both" else [args.transport]):
        out[t] = count(t, args.n, args.same_idevid)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
