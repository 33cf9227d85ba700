"""User-space instructions per HTTPS enrollment of the reference server,
counted by valgrind (cachegrind): a repeatable figure for comparing server
changes on a machine whose CPU time is too noisy to compare (shared CPUs).

    python bench/server_instructions.py [--n1 20] [--n2 120] [--tls 1.2] [--auth cert [--same-idevid]]
    python bench/server_instructions.py --callgrind [--n 100] [--top 40] [--auth cert] [--tls 1.2] [--out FILE]

`est-lite serve` runs under `valgrind --tool=cachegrind` twice, each time
on a fresh CA with 2 workers; a sequential client (stdlib ssl, HTTP Basic,
one TLS connection per enrollment, as bench/server.py; TLS 1.3, or 1.2
as a MicroPython device with --tls 1.2) enrolls 10 times to
warm up and then N1 (first run) or N2 (second run) times. The difference
of the two runs' totals divided by N2 - N1 is the server's instruction
count per enrollment without start-up and warm-up. Kernel work (TCP,
syscalls) is not counted, nor are cache misses: instructions are a proxy
for the server's own work, not its CPU time. Needs `valgrind` (apt-get
install valgrind); takes about 30 s. The last line printed is JSON.

--callgrind: where those instructions go. One run under `valgrind
--tool=callgrind` (same server, CA and client; --auth cert enrolls with
IDevID client certificates instead of HTTP Basic, a new one per
enrollment as a fleet's devices, or one for all with --same-idevid, whose
signature the service then verifies once and caches): after the warm-up the
counters are zeroed (`callgrind_control --zero`), N enrollments run, and
the counters are dumped (`callgrind_control --dump`) before the server is
stopped, so start-up, warm-up and shut-down are excluded (the frames on
the event loop's stack at that moment are not listed: callgrind_annotate
charges each of them with the whole run). The output file
(callgrind format, for kcachegrind or `callgrind_annotate --inclusive=yes
FILE`) is kept (--out, default ./callgrind.server.out). Printed per
enrollment: the total, the self instructions by object (libssl and
libcrypto are both inside cryptography's _rust module, which links
OpenSSL statically; they are told apart by the function's name: SSL_*,
tls_*, ssl3_*, ossl_statem_* ... are libssl), then the top --top
functions by inclusive and by self instructions, each tagged with its
object. Takes about 1-2 minutes. The last line printed is JSON.
"""

import argparse
import base64
import glob
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


def _serve(tool_args, n, warm, csrs, auth, between=None, tls="1.3", same_idevid=False):
    """Start `est-lite serve` under valgrind with `tool_args` on a fresh CA,
    enroll warm + n times (one TLS connection each); between(pid) runs
    after the warm-up and between(pid, True) after the n enrollments, while
    the server still runs. Returns the temporary directory (the caller
    removes it)."""
    from helpers_server import PASSWORD, USER, issue_cert, make_vendor_ca, write_identity
    from server import CONFIG, https_enroller

    from est_lite_cpython.auth import PasswordFile
    from est_lite_cpython.ca import init_ca

    tmp = tempfile.mkdtemp(prefix="est-ir-")
    init_ca(os.path.join(tmp, "ca")).store.close()
    PasswordFile(os.path.join(tmp, "ca", "passwords")).set_password(USER, PASSWORD)
    vendor = make_vendor_ca(tmp)
    ids = None
    auth_hdr = b""
    if auth == "cert":
        # one IDevID for every enrollment (same_idevid: the service verifies
        # its signature once, then finds it in its cache), or a new one for
        # each, as a fleet of devices enrolling once each
        ids = []
        for i in range(1 if same_idevid else warm + n):
            k, c = issue_cert(vendor["cert"], vendor["key"], "bench-idevid-%d" % i)
            ids.append(write_identity(tmp, "idevid-%d" % i, k, c))
    else:
        auth_hdr = b"Authorization: Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()) + b"\r\n"
    with open(os.path.join(tmp, "server.toml"), "w") as f:
        f.write(CONFIG % {"workers": 2, "io": ""})
    pf = os.path.join(tmp, "port")
    p = subprocess.Popen(["valgrind"] + [a.replace("%TMP%", tmp) for a in tool_args] +
                         [sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config",
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
        root = os.path.join(tmp, "ca", "root.pem")
        if ids is None:
            ones = [https_enroller(port, root, auth_hdr, timeout=120, tls=tls)]
        else:
            ones = [https_enroller(port, root, b"", cert, key, timeout=120, tls=tls) for cert, key in ids]
        ok = 0
        for i, body in enumerate(csrs[:warm]):
            ok += ones[i % len(ones)](body)
        if between:
            between(p.pid)
        for i, body in enumerate(csrs[warm:warm + n], warm):
            ok += ones[i % len(ones)](body)
        if between:
            between(p.pid, True)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(600)
    if ok != warm + n:
        raise SystemExit("only %d of %d enrollments succeeded" % (ok, warm + n))
    return tmp


def _serve_and_count(n, warm, csrs, auth, tls="1.3", same_idevid=False):
    tmp = _serve(["--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=%TMP%/cachegrind.out"],
                 n, warm, csrs, auth, tls=tls, same_idevid=same_idevid)
    try:
        with open(os.path.join(tmp, "cachegrind.out")) as f:
            m = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
        if m is None:
            raise SystemExit("no cachegrind summary in %s" % tmp)
        return int(m.group(1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# libssl's functions inside the statically linked OpenSSL (cryptography's _rust module)
_LIBSSL = re.compile(r"^(SSL_|ssl_|ssl3_|tls_|tls1_|tls13_|dtls1?_|DTLS_|TLS_|ossl_statem|statem_|ossl_ssl_|"
                     r"ossl_quic|custom_ext|final_|ssl_cipher|construct_|ossl_choose_|read_state_machine|"
                     r"write_state_machine|state_machine|ossl_tls|ssl_generate|do_ssl3_write|"
                     r"RECORD_LAYER_|tls_construct|tls_process|tls_parse|tls_handle|create_synthetic|"
                     r"ssl_derive|ssl_gensecret|cmd_|ctrl_switch|SSL_CONF)")


def _object(fn, obj):
    o = os.path.basename(obj)
    if "_rust" in o or "libssl" in o or "libcrypto" in o:
        if "libssl" in o or _LIBSSL.match(fn):
            return "libssl"
        if "libcrypto" in o or not fn.startswith("_ZN"):
            return "libcrypto"
        return "cryptography-rust"
    if "sqlite" in o:
        return "sqlite"
    if o.startswith("libc.") or o.startswith("libc-") or o.startswith("ld-linux") or o.startswith("libm."):
        return "libc"
    if "_cffi" in o:
        return "cffi"
    if "python" in o or "cpython" in o:
        return "python"
    return o or "?"


def _annotate(path, inclusive):
    """{(function, object): instructions} from callgrind_annotate (an
    inlined function's lines come without an object: the file's path names
    it). Entries whose self cost is the whole run's are left out: the
    frames that were on the thread's stack at --zero (the event loop's),
    which callgrind_annotate charges with all of their callees' cost."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=%s" % ("yes" if inclusive else "no"),
                          "--threshold=100", path], capture_output=True, text=True, check=True).stdout
    res = {}
    total = None
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)(?: \[(.*)\])?\s*$", line)
        if m is None:
            continue
        ir = int(m.group(1).replace(",", ""))
        where = m.group(2)
        if where.startswith("PROGRAM TOTALS"):
            total = ir
            continue
        f, _, fn = where.partition(":")
        fn = re.sub(r"'\d+$", "", fn.strip())  # recursion levels ('2) are one function here
        obj = m.group(3) or ("libpython" if "Python-3" in f else "libc" if f.startswith("./") else "")
        if not fn or fn.startswith("0x"):
            continue
        if not inclusive and total and ir > 0.95 * total:
            continue
        key = (fn, obj)
        res[key] = max(res[key], ir) if inclusive and key in res else res.get(key, 0) + ir
    return res


def callgrind(args, csrs):
    """The --callgrind mode (see the module docstring)."""
    out = os.path.abspath(args.out)

    def control(pid, after=False):
        cmd = ["callgrind_control", "--dump=measured" if after else "--zero", str(pid)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)

    tmp = _serve(["--tool=callgrind", "--callgrind-out-file=%TMP%/callgrind.out", "--dump-instr=no",
                  "--collect-systime=no"], args.n, args.warm, csrs, args.auth, control, tls=args.tls,
                 same_idevid=args.same_idevid)
    try:
        dumps = [f for f in glob.glob(os.path.join(tmp, "callgrind.out*")) if f != os.path.join(tmp, "callgrind.out")]
        if len(dumps) != 1:
            raise SystemExit("expected one callgrind dump in %s, found %s" % (tmp, dumps))
        shutil.copyfile(dumps[0], out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(out) as f:
        m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M)
    total = int(m.group(1)) / args.n
    incl = _annotate(out, True)
    excl = _annotate(out, False)
    by_obj = {}
    for (fn, obj), ir in excl.items():
        k = _object(fn, obj)
        by_obj[k] = by_obj.get(k, 0) + ir / args.n
    print("server user-space instructions per HTTPS enrollment (callgrind, %d enrollments after %d, auth %s): %.0f"
          % (args.n, args.warm, args.auth, total))
    print("\nself instructions by object, per enrollment:")
    for k, v in sorted(by_obj.items(), key=lambda kv: -kv[1]):
        print("  %10.0f  %5.1f%%  %s" % (v, 100.0 * v / total, k))
    for name, table in (("inclusive", incl), ("self", excl)):
        print("\ntop %d functions by %s instructions, per enrollment:" % (args.top, name))
        for (fn, obj), ir in sorted(table.items(), key=lambda kv: -kv[1])[:args.top]:
            per = ir / args.n
            print("  %10.0f  %5.1f%%  %-10s %s" % (per, 100.0 * per / total, _object(fn, obj), fn[:110]))
    print("\ncallgrind output: %s (callgrind_annotate --inclusive=yes %s)" % (out, out))

    def top(t):
        return [[fn, _object(fn, obj), round(ir / args.n)]
                for (fn, obj), ir in sorted(t.items(), key=lambda kv: -kv[1])[:args.top]]

    print(json.dumps({"instructions_per_enrollment": round(total), "n": args.n, "auth": args.auth,
                      "idevids": None if args.auth != "cert" else "one" if args.same_idevid else "one per enrollment",
                      "client_tls": "TLS " + args.tls, "file": out,
                      "self_by_object": {k: round(v) for k, v in by_obj.items()},
                      "top_inclusive": top(incl), "top_self": top(excl)}))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n1", type=int, default=20)
    ap.add_argument("--n2", type=int, default=120)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--callgrind", action="store_true", help="per-function profile (one callgrind run)")
    ap.add_argument("--n", type=int, default=100, help="--callgrind: enrollments counted")
    ap.add_argument("--top", type=int, default=40, help="--callgrind: functions listed")
    ap.add_argument("--auth", default="basic", choices=["basic", "cert"])
    ap.add_argument("--tls", default="1.3", choices=["1.3", "1.2"],
                    help="the client's highest TLS version (bench/server.py --tls): 1.2 is a MicroPython device's")
    ap.add_argument("--same-idevid", action="store_true",
                    help="--auth cert: one IDevID for every enrollment (the service then verifies its signature "
                         "once and finds it in its cache) instead of a new IDevID per enrollment, as in a fleet")
    ap.add_argument("--out", default="callgrind.server.out", help="--callgrind: where the output file is kept")
    args = ap.parse_args(argv)
    if args.n2 <= args.n1:
        raise SystemExit("--n2 must be larger than --n1")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    from helpers_server import make_csr

    count = args.n if args.callgrind else args.n2
    csrs = [base64.encodebytes(make_csr("ir-%d" % i)[1]) for i in range(args.warm + count)]
    if args.callgrind:
        return callgrind(args, csrs)
    a = _serve_and_count(args.n1, args.warm, csrs, args.auth, args.tls, args.same_idevid)
    b = _serve_and_count(args.n2, args.warm, csrs, args.auth, args.tls, args.same_idevid)
    per = (b - a) / (args.n2 - args.n1)
    print("server user-space instructions per HTTPS enrollment: %.0f (totals %d after %d, %d after %d)"
          % (per, a, args.n1, b, args.n2))
    print(json.dumps({"instructions_per_enrollment": round(per), "n1": args.n1, "n2": args.n2,
                      "total_n1": a, "total_n2": b, "auth": args.auth,
                      "idevids": None if args.auth != "cert" else "one" if args.same_idevid else "one per enrollment",
                      "client_tls": "TLS " + args.tls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
