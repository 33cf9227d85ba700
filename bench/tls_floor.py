"""What a bare pyOpenSSL TLS server costs per connection: the server-side
part of issue #4's gap that no EST code can remove.

    python bench/tls_floor.py [--seconds 3] [--concurrency 4]

A server process with the TLS context of the reference server
(EstHttpsServer._make_context: same certificate, versions, suites, options
and client-certificate request) and nothing else: one thread, blocking
accept, TLS handshake, read one HTTP request (headers + Content-Length
body), answer 200 with a fixed 1,000-byte body, close_notify, close. The
load generator is bench/server.py's default (pyOpenSSL, a new TCP
connection and full handshake per request, the same 2 processes and
CSR-sized bodies);
the server's CPU (user + system, /proc) is divided by the requests served.

Printed: `bare_tls_server_cpu_ms` (per connection) and, with the crypto
floor measured the same way as bench/server.py's (`crypto_floor_ms`), the
ratio a server doing only this could reach: `bare_floor_ratio` = floor /
bare CPU. The last line is one JSON object.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

SERVER = r"""
import os, socket, sys
from OpenSSL import SSL
from est_lite_cpython.https_server import EstHttpsServer
d = sys.argv[1]
ctx = EstHttpsServer._make_context(os.path.join(d, "server.pem"), os.path.join(d, "server.key"), "1.2", "1.3")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.bind(("127.0.0.1", 0))
s.listen(256)
print(s.getsockname()[1], flush=True)
resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: 1000\r\n\r\n" + b"A" * 1000
while True:
    c, _ = s.accept()
    t = SSL.Connection(ctx, c)
    t.set_accept_state()
    try:
        t.do_handshake()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += t.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < n:
            body += t.recv(65536)
        t.sendall(resp)
        t.shutdown()
    except (SSL.Error, OSError, ValueError, IndexError):
        pass
    c.close()
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args(argv)

    from helpers_server import make_csr
    from server import crypto_floor, proc_cpu_s, run_level

    from est_lite_cpython.ca import init_ca

    tmp = tempfile.mkdtemp(prefix="est-tls-floor-")
    data = os.path.join(tmp, "ca")
    init_ca(data).store.close()
    bodies = [base64.encodebytes(make_csr("tls-%d" % i)[1]) for i in range(200)]
    floor = crypto_floor("basic")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, data], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        root = os.path.join(data, "root.pem")
        run_level(port, root, bodies[:50], b"", None, None, 2, 0.5, 1)  # warm-up
        best = None
        for _ in range(3):
            r = run_level(port, root, bodies, b"", None, None, args.concurrency, args.seconds, 2, proc.pid)
            if best is None or r["server_cpu_ms"] < best["server_cpu_ms"]:
                best = r
            floor = min(floor, crypto_floor("basic", 200))
    finally:
        proc.terminate()
        proc.wait(10)
    cpu = best["server_cpu_ms"]
    print("bare pyOpenSSL TLS server: %.3f ms CPU per connection (%.0f connections/s, concurrency %d); crypto floor "
          "%.3f ms -> a server doing only this reaches floor / CPU = %.2f"
          % (cpu, best["enrollments_per_s"], args.concurrency, floor * 1000, floor * 1000 / cpu))
    cpu_ms, floor_ms = round(cpu, 4), round(floor * 1000, 4)  # the ratio from the printed figures
    print(json.dumps({"bare_tls_server_cpu_ms": cpu_ms, "connections_per_s": best["enrollments_per_s"],
                      "concurrency": args.concurrency, "crypto_floor_ms": floor_ms,
                      "bare_floor_ratio": round(floor_ms / cpu_ms, 3), "runs": 3, "best_of": "server CPU"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
