"""Soak benchmark: do long-running clients and servers leak over hundreds
of operations? (docs/soak.md)

    python bench/soak.py [--client 300] [--server 3000] [--mp 30] [--mp-heap] [--parts client,server,mp]

Starts `est-lite serve` (HTTPS + EST-coaps) and `est-lite proxy` (HTTPS +
EST-coaps, upstream: that server) as subprocesses on 127.0.0.1, then:

- client: one CPython process (this one) runs --client operations of the
  public EstClient API in a loop (enroll, reenroll, provision/renew with a
  CredStore, cacerts, serverkeygen; HTTPS and CoAPs; direct and through
  the proxy) with failures mixed in (wrong password, bad CSR, wrong pin,
  server down). At checkpoints: open fds, threads, len(gc.get_objects())
  after gc.collect(), tracemalloc current bytes of this process.
- server: --server requests of mixed kinds at the two subprocesses (good
  enrollments, bad CSRs, wrong passwords, TCP connections dropped
  mid-handshake, DTLS clients that stop mid-handshake or vanish without
  close_notify, junk datagrams): at checkpoints the fds, threads and
  VmRSS of both processes (/proc/PID).
- mp: one `micropython` process (unix port, est_lite + est_lite_mp as .mpy)
  doing --mp renewals over CoAPs and then over HTTPS, printing
  gc.mem_free() after gc.collect() each cycle; --mp-heap also finds the
  smallest -X heapsize that completes 1 cycle and --mp cycles.

Growth is measured between the second checkpoint and the last one (not
from start-up: first-use caches and imports fill before). The last line
is one JSON object.
"""

import argparse
import gc
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MICROPYTHON = shutil.which("micropython")
MPY_CROSS = shutil.which("mpy-cross")

SERVE_TOML = """
[coaps]
port = 0
"""


# -- process counters ---------------------------------------------------------

def fds(pid="self"):
    return len(os.listdir("/proc/%s/fd" % pid))


def threads(pid="self"):
    if pid == "self":
        return threading.active_count()
    return len(os.listdir("/proc/%s/task" % pid))


def rss_kb(pid="self"):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def growth(samples, key):
    """Growth of samples[i][key] from the second checkpoint to the last."""
    return samples[-1][key] - samples[1][key]


# -- the two servers as subprocesses ------------------------------------------

def _wait_port(path, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            t = open(path).read().strip()
            if t:
                return int(t)
        if proc.poll() is not None:
            raise RuntimeError("server exited: %s" % proc.stderr.read().decode())
        time.sleep(0.05)
    raise RuntimeError("server did not start")


class Servers:
    """A CA and `est-lite serve` (HTTPS + CoAPs) in tmp, and `est-lite
    proxy` in front of it, each in its own process."""

    def __init__(self, tmp, proxy=True):
        from helpers_coaps import COAPS_TOML
        from helpers_server import BASE_CONFIG, USER, PASSWORD, make_vendor_ca

        from est_lite_cpython.auth import PasswordFile
        from est_lite_cpython.ca import LocalCA, init_ca
        from est_lite_cpython.config import load_config

        self.tmp = str(tmp)
        self.procs = []
        self.data_dir = os.path.join(self.tmp, "ca")
        init_ca(self.data_dir)
        self.vendor = make_vendor_ca(self.tmp)
        self.config_path = os.path.join(self.tmp, "server.toml")
        with open(self.config_path, "w") as f:
            f.write('[ca]\ndata_dir = "ca"\n' + BASE_CONFIG + COAPS_TOML + SERVE_TOML)
        cfg = load_config(self.config_path)
        PasswordFile(cfg.password_file, iterations=1000).set_password(USER, PASSWORD, cfg.realm)
        self.ca = LocalCA(self.data_dir)
        self.root_pem = os.path.join(self.data_dir, "root.pem")
        pf, cpf = os.path.join(self.tmp, "port"), os.path.join(self.tmp, "cport")
        self.serve = self._start(["serve", "--config", self.config_path, "--port-file", pf, "--coaps-port-file", cpf])
        self.port = _wait_port(pf, self.serve)
        self.coaps_port = _wait_port(cpf, self.serve)
        self.url = "https://localhost:%d" % self.port
        self.proxy = None
        if proxy:
            self._start_proxy()

    def _start(self, argv):
        p = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli"] + argv, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=self.tmp)
        self.procs.append(p)
        return p

    def _start_proxy(self):
        from helpers_proxy import write_proxy_dir

        from est_lite_cpython.auth import PasswordFile
        from est_lite_cpython.proxy import load_proxy_config

        d = pathlib.Path(self.tmp) / "px"
        write_proxy_dir(self, d)
        cfg, _ = load_proxy_config(str(d / "proxy.toml"))
        os.makedirs(cfg.data_dir, exist_ok=True)
        PasswordFile(cfg.password_file, iterations=1000).set_password("dave", "devpass", cfg.realm)
        pf, cpf = str(d / "port"), str(d / "cport")
        self.proxy = self._start(["proxy", "--config", str(d / "proxy.toml"), "--port-file", pf,
                                  "--coaps-port-file", cpf])
        self.proxy_port = _wait_port(pf, self.proxy)
        self.proxy_coaps_port = _wait_port(cpf, self.proxy)

    def sample(self):
        out = {}
        for name, p in (("serve", self.serve), ("proxy", self.proxy)):
            if p is not None:
                out[name + "_fds"] = fds(p.pid)
                out[name + "_threads"] = threads(p.pid)
                out[name + "_rss_kb"] = rss_kb(p.pid)
        return out

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.ca.store.close()


class InProcServers:
    """The same pair in this process (tests/helpers_coaps.EstBothServer and
    tests/helpers_proxy.ProxyHarness), for tests that look inside: the
    DTLS session tables, the caches, tracemalloc."""

    def __init__(self, tmp, proxy=True, coaps_options=None):
        from helpers_coaps import EstBothServer
        from helpers_proxy import ProxyHarness

        self.both = EstBothServer(pathlib.Path(tmp) / "up", coaps_options=coaps_options)
        for k in ("ca", "vendor", "root_pem", "port", "coaps_port", "url", "tmp"):
            setattr(self, k, getattr(self.both, k))
        self.proxy = None
        if proxy:
            try:
                self.proxy = ProxyHarness(pathlib.Path(tmp) / "px", self.both,
                                          self.url.replace("127.0.0.1", "localhost"),
                                          upstream_root_pem=self.root_pem,
                                          vendor_pem=os.path.join(self.both.tmp, "vendor.pem"))
            except BaseException:
                self.both.stop()
                raise
            self.proxy_port, self.proxy_coaps_port = self.proxy.port, self.proxy.coaps_port

    def sample(self):
        gc.collect()
        out = {"fds": fds(), "threads": threads(), "objects": len(gc.get_objects()),
               "dtls_sessions": self.both.coaps.dtls.session_count,
               "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0}
        if self.proxy is not None:
            out["proxy_dtls_sessions"] = self.proxy.coaps.dtls.session_count
        return out

    def stop(self):
        try:
            if self.proxy is not None:
                self.proxy.stop()
        finally:
            self.both.stop()


# -- part 1: the CPython client in one process --------------------------------

class ClientLoop:
    """Operation i of a fixed cycle through the client's public API."""

    def __init__(self, srv, tmp):
        from helpers_coaps import der, idevid_device, key_der

        self.root = root_der(srv)
        self.srv = srv
        self.tmp = str(tmp)
        dev = idevid_device(srv)
        self.dev_cert, self.dev_key = der(dev.cert), key_der(dev.key)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.dead_port = s.getsockname()[1]  # nothing listens there
        s.close()
        self.kinds = [self.https_enroll_reenroll, self.coaps_enroll_reenroll, self.https_store,
                      self.coaps_store, self.coaps_serverkeygen, self.https_serverkeygen_cacerts,
                      self.wrong_password, self.wrong_pin, self.server_down, self.bad_csr]
        if srv.proxy is not None:
            self.kinds += [self.proxy_coaps_enroll, self.proxy_https_enroll]
        self.failures = 0

    def client(self, scheme="https", port=None, **kw):
        from helpers_server import PASSWORD, USER

        from est_lite_cpython.client import EstClient

        if scheme == "https":
            kw.setdefault("user", USER)
            kw.setdefault("password", PASSWORD)
            url = "https://localhost:%d" % (port or self.srv.port)
        else:
            kw.setdefault("cert", self.dev_cert)
            kw.setdefault("key", self.dev_key)
            url = "coaps://127.0.0.1:%d" % (port or self.srv.coaps_port)
        if "pin" not in kw:
            kw.setdefault("trust", [self.root])
        return EstClient(url, **kw)

    @staticmethod
    def csr(cn):
        from est_lite.csr import CsrBuilder
        from est_lite_cpython.crypto import P256Key

        k = P256Key.generate()
        return k, CsrBuilder().subject(cn=cn).sign(k)

    def _enroll_reenroll(self, c, i):
        try:
            k, body = self.csr("soak-%d" % i)
            ev = c.enroll(body, k.public_key)
        finally:
            c.close()
        c2 = self.client(c.scheme, cert=ev.cert, key=k.export_pkcs8(),
                         **({"user": None, "password": None} if c.scheme == "https" else {}))
        try:
            k2, body2 = self.csr("soak-%d" % i)
            c2.reenroll(body2, k2.public_key)
        finally:
            c2.close()

    def https_enroll_reenroll(self, i):
        self._enroll_reenroll(self.client("https"), i)

    def coaps_enroll_reenroll(self, i):
        self._enroll_reenroll(self.client("coaps"), i)

    def _store(self, scheme, i):
        from est_lite_cpython.credstore import CredStore

        st = CredStore(os.path.join(self.tmp, "store-%s-%d" % (scheme, i % 4)))
        c = self.client(scheme)
        try:
            if st.load() is None:
                c.provision(st, cn="soak-store-%d" % i)
            else:
                c.renew_if_needed(st, threshold=10 ** 9)
        finally:
            c.close()

    def https_store(self, i):
        self._store("https", i)

    def coaps_store(self, i):
        self._store("coaps", i)

    def coaps_serverkeygen(self, i):
        c = self.client("coaps")
        try:
            c.serverkeygen(self.csr("soak-skg-%d" % i)[1])
            c.cacerts()
        finally:
            c.close()

    def https_serverkeygen_cacerts(self, i):
        c = self.client("https")
        try:
            c.cacerts()
            c.csrattrs()
            c.serverkeygen(self.csr("soak-skg-%d" % i)[1])
        finally:
            c.close()

    def _fails(self, c, fn):
        from est_lite.errors import EstError

        try:
            fn(c)
        except EstError:
            self.failures += 1
        else:
            raise AssertionError("expected a failure")
        finally:
            c.close()

    def wrong_password(self, i):
        k, body = self.csr("soak-wp-%d" % i)
        self._fails(self.client("https", password="wrong", deadline=None), lambda c: c.enroll(body, k.public_key))

    def wrong_pin(self, i):
        scheme = ("https", "coaps")[i % 2]
        self._fails(self.client(scheme, pin="sha256:" + "ab" * 32, deadline=None), lambda c: c.cacerts())

    def server_down(self, i):
        scheme = ("https", "coaps")[i % 2]
        self._fails(self.client(scheme, port=self.dead_port, deadline=None, timeout=1), lambda c: c.cacerts())

    def bad_csr(self, i):
        k, body = self.csr("soak-bad-%d" % i)
        bad = bytearray(body)
        bad[-3] ^= 0xFF  # the signature no longer verifies: 400 / 4.00
        scheme = ("https", "coaps")[i % 2]
        self._fails(self.client(scheme, deadline=None), lambda c: c.enroll(bytes(bad), k.public_key))

    def proxy_coaps_enroll(self, i):
        c = self.client("coaps", port=self.srv.proxy_coaps_port)
        try:
            k, body = self.csr("soak-px-%d" % i)
            c.enroll(body, k.public_key)
        finally:
            c.close()

    def proxy_https_enroll(self, i):
        c = self.client("https", port=self.srv.proxy_port, user="dave", password="devpass")
        try:
            k, body = self.csr("soak-pxh-%d" % i)
            c.enroll(body, k.public_key)
        finally:
            c.close()

    def run(self, i):
        self.kinds[i % len(self.kinds)](i)


def client_sample(i):
    gc.collect()
    return {"i": i, "fds": fds(), "threads": threads(), "objects": len(gc.get_objects()),
            "traced_bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0}


def client_soak(srv, tmp, n, every=None, trace=True, log=None):
    """n operations of ClientLoop in this process; samples every `every`
    (default n // 10) operations. Returns (samples, failures)."""
    every = every or max(1, n // 10)
    loop = ClientLoop(srv, tmp)
    if trace:
        tracemalloc.start()
    samples = []
    try:
        for i in range(n):
            loop.run(i)
            if (i + 1) % every == 0:
                s = client_sample(i + 1)
                s.update(srv.sample())
                samples.append(s)
                if log:
                    log(s)
    finally:
        if trace:
            tracemalloc.stop()
    return samples, loop.failures


def kept_client_soak(srv, tmp, n, scheme, every=None, log=None):
    """One EstClient object kept for n rounds (a gateway's process that
    never recreates it): enroll + cacerts on one client authenticated by
    password (HTTPS) or IDevID (CoAPs), and renew_if_needed of one
    CredStore on a second kept client authenticated by the stored
    certificate. Samples as client_soak."""
    from est_lite_cpython.credstore import CredStore

    every = every or max(1, n // 10)
    loop = ClientLoop(srv, tmp)
    st = CredStore(os.path.join(str(tmp), "kept-%s-%d" % (scheme, n)))
    c = loop.client(scheme)
    c2 = loop.client(scheme, **({"user": None, "password": None} if scheme == "https" else {"cert": None, "key": None}))
    samples = []
    try:
        c.provision(st, cn="kept-" + scheme)
        for i in range(n):
            k, body = loop.csr("kept-%d" % i)
            c.enroll(body, k.public_key)
            c.cacerts()
            c2.renew_if_needed(st, threshold=10 ** 9)
            if (i + 1) % every == 0:
                s = client_sample(i + 1)
                samples.append(s)
                if log:
                    log(s)
    finally:
        c.close()
        c2.close()
    return samples


# -- part 2: hostile and mixed load at the servers ----------------------------

def _https_raw(port, method, path, body=b"", auth=None, timeout=10):
    import base64

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    h = ["%s %s HTTP/1.1" % (method, path), "Host: localhost", "Connection: close",
         "Content-Type: application/pkcs10", "Content-Length: %d" % len(body)]
    if auth:
        h.append("Authorization: Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(("\r\n".join(h) + "\r\n\r\n").encode() + body)
            data = b""
            while True:
                d = t.recv(65536)
                if not d:
                    break
                data += d
    return int(data.split(b" ", 2)[1])


class ServerLoad:
    """Request i of a fixed cycle of good and bad requests at serve/proxy."""

    def __init__(self, srv, tmp):
        self.c = ClientLoop(srv, tmp)
        self.srv = srv
        self.kinds = [self.good_https, self.good_coaps, self.bad_csr_https, self.wrong_password, self.tcp_drop,
                      self.tls_half_handshake, self.dtls_half_handshake, self.dtls_vanish, self.udp_junk,
                      self.bad_csr_coaps]
        if srv.proxy is not None:
            self.kinds += [self.proxy_good_coaps, self.proxy_dtls_vanish, self.proxy_bad_csr,
                           self.proxy_tcp_drop]
        self.statuses = {}

    def _count(self, k):
        self.statuses[k] = self.statuses.get(k, 0) + 1

    def good_https(self, i):
        c = self.c.client("https")
        try:
            k, body = self.c.csr("load-%d" % i)
            c.enroll(body, k.public_key)
        finally:
            c.close()

    def good_coaps(self, i):
        c = self.c.client("coaps")
        try:
            k, body = self.c.csr("load-%d" % i)
            c.enroll(body, k.public_key)
        finally:
            c.close()

    def bad_csr_https(self, i):
        import base64

        from helpers_server import PASSWORD, USER

        self._count(_https_raw(self.srv.port, "POST", "/.well-known/est/simpleenroll",
                               base64.b64encode(os.urandom(200)), auth=(USER, PASSWORD)))

    def wrong_password(self, i):
        import base64

        from helpers_server import USER

        body = base64.b64encode(self.c.csr("load-wp")[1])
        self._count(_https_raw(self.srv.port, "POST", "/.well-known/est/simpleenroll", body, auth=(USER, "no")))

    def _tcp_drop(self, port, i):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))  # a ClientHello cut short
        s.close()

    def tcp_drop(self, i):
        self._tcp_drop(self.srv.port, i)

    def proxy_tcp_drop(self, i):
        self._tcp_drop(self.srv.proxy_port, i)

    def tls_half_handshake(self, i):
        # a TLS client that sends its ClientHello, reads the server's flight and goes away
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=5)
        conn = SSL.Connection(ctx, s)
        conn.set_connect_state()
        try:
            conn.do_handshake()
        except SSL.Error:
            pass
        s.settimeout(0.2)
        try:
            s.recv(65536)
        except OSError:
            pass
        s.close()

    def _dtls(self, port, trust=None, **kw):
        from cryptography import x509

        from est_lite_cpython.dtls_client import DtlsClient

        trust = trust or [x509.load_der_x509_certificate(self.c.root)]
        return DtlsClient("127.0.0.1", port, trust, cert=x509.load_der_x509_certificate(self.c.dev_cert),
                          key=self.c.dev_key, timeout=5, **kw)

    def dtls_half_handshake(self, i):
        # ClientHello, HelloVerifyRequest, the second ClientHello, the
        # server's flight, then silence (the server's handshake_timeout ends it)
        from est_lite_cpython import dtls as _d

        SSL = _d._ssl()
        # from another loopback address each time (127.0.0.2-251): the
        # server allows 16 handshakes in progress per host, and these stay
        # in progress for its handshake_timeout
        d = self._dtls(self.srv.coaps_port, connect=False, local_address=("127.0.0.%d" % (2 + i % 250), 0))
        d._open_socket()
        d._conn = _d.new_connection(d._ctx, d.mtu)
        d._conn.set_app_data(d)
        d._conn.set_connect_state()
        for _ in range(2):
            try:
                d._conn.do_handshake()
            except SSL.WantReadError:
                pass
            d._send_pending()
            data = d._wait_datagram(2.0)
            if data:
                d._conn.bio_write(data)
        d._abort()

    def _vanish(self, port):
        # a full handshake and one request, then the socket closes without
        # close_notify (what the MicroPython `tls` module does)
        from helpers_coaps import CoapsSession

        d = self._dtls(port)
        CoapsSession(d).cacerts()
        d._abort()

    def dtls_vanish(self, i):
        self._vanish(self.srv.coaps_port)

    def proxy_dtls_vanish(self, i):
        self._vanish(self.srv.proxy_coaps_port)

    def udp_junk(self, i):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\x16\xfe\xfd" + os.urandom(60), ("127.0.0.1", self.srv.coaps_port))
        s.close()

    def bad_csr_coaps(self, i):
        c = self.c.client("coaps", deadline=None)
        try:
            c.enroll(os.urandom(100))
        except Exception:  # noqa: BLE001 - counted
            self._count("coaps-bad-csr")
        finally:
            c.close()

    def proxy_good_coaps(self, i):
        c = self.c.client("coaps", port=self.srv.proxy_coaps_port)
        try:
            k, body = self.c.csr("load-px-%d" % i)
            c.enroll(body, k.public_key)
        finally:
            c.close()

    def proxy_bad_csr(self, i):
        import base64

        self._count(_https_raw(self.srv.proxy_port, "POST", "/.well-known/est/simpleenroll",
                               base64.b64encode(os.urandom(200)), auth=("dave", "devpass")))

    def run(self, i):
        self.kinds[i % len(self.kinds)](i)


def server_soak(srv, tmp, n, every=None, log=None):
    every = every or max(1, n // 10)
    load = ServerLoad(srv, tmp)
    samples = []
    for i in range(n):
        load.run(i)
        if (i + 1) % every == 0:
            s = {"i": i + 1}
            s.update(srv.sample())
            samples.append(s)
            if log:
                log(s)
    return samples, load.statuses


# -- part 3: MicroPython, one process, many renewals --------------------------

MP_SCRIPT = r"""
import gc, json, os, sys
cfg = json.load(open(sys.argv[1]))
from est_lite_mp import tablefile
tablefile.install(cfg["table"])
from est_lite_mp.client import EstClient
from est_lite_mp.credstore import CredStore
def rd(p):
    f = open(p, "rb"); d = f.read(); f.close(); return d
trust = [rd(p) for p in cfg["trust"]]
cert = rd(cfg["cert"]) if cfg.get("cert") else None
key = rd(cfg["key"]) if cfg.get("key") else None
store = CredStore(cfg["store"])
c = EstClient(cfg["server"], trust=trust, cert=cert, key=key, user=cfg.get("user"), password=cfg.get("password"))
c.provision(store, cn="mp-soak")
c.close()
c = None
gc.collect()
print("FREE 0 %d" % gc.mem_free())
kept = EstClient(cfg["server"], trust=trust) if cfg.get("keep") else None
for i in range(1, cfg["cycles"] + 1):
    c = kept or EstClient(cfg["server"], trust=trust)
    r = c.renew_if_needed(store, threshold=10 ** 9)
    if kept is None:
        c.close()
    c = r = None
    gc.collect()
    print("FREE %d %d %d %d" % (i, gc.mem_free(), store.load().gen, len(os.listdir("/proc/self/fd"))))
print("DONE")
"""


def mp_soak(srv, tmp, cycles, transport, heap="256K", mplib=None, keep=False):
    """`cycles` renewals in one micropython process. Returns (rc, frees,
    fds, output): frees[i] = gc.mem_free() after gc.collect() after cycle
    i (0: after provision), fds[i-1] its open file descriptors after cycle
    i. keep: one EstClient for every renewal (its session kept between
    them), else a new one each time, closed after it."""
    from helpers_coaps import der, idevid_device, key_der
    from helpers_server import PASSWORD, USER

    tmp = pathlib.Path(tmp)
    if mplib is None:
        mplib = mp_lib(tmp / "mplib")
    sub = tmp / ("mp-%s-%d-%s-%d" % (transport, cycles, heap, keep))
    if sub.exists():
        shutil.rmtree(str(sub))
    sub.mkdir(parents=True)
    (sub / "root.der").write_bytes(root_der(srv))
    cfg = {"table": str(mplib / "p256_table.bin"), "trust": [str(sub / "root.der")], "store": str(sub / "store"),
           "cycles": cycles, "keep": keep}
    if transport == "coaps":
        dev = idevid_device(srv, "mp-soak-id")
        (sub / "id.der").write_bytes(der(dev.cert))
        (sub / "id.key").write_bytes(key_der(dev.key))
        cfg.update(server="coaps://127.0.0.1:%d" % srv.coaps_port, cert=str(sub / "id.der"), key=str(sub / "id.key"))
    else:
        cfg.update(server="https://localhost:%d" % srv.port, user=USER, password=PASSWORD)
    (sub / "cfg.json").write_text(json.dumps(cfg))
    (sub / "soak.py").write_text(MP_SCRIPT)
    p = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap, str(sub / "soak.py"), str(sub / "cfg.json")],
                       capture_output=True, text=True, timeout=60 + 20 * cycles,
                       env=dict(os.environ, MICROPYPATH=str(mplib)))
    out = p.stdout + p.stderr
    lines = [line.split() for line in p.stdout.splitlines() if line.startswith("FREE ")]
    frees = [int(x[2]) for x in lines]
    fds_ = [int(x[4]) for x in lines if len(x) > 4]
    return p.returncode, frees, fds_, out


def root_der(srv):
    """The server's root CA certificate, DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(srv.root_pem, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)


def mp_lib(path):
    from helpers_mp import compile_packages

    from est_lite_mp import tablefile

    path = pathlib.Path(path)
    if not (path / "p256_table.bin").exists():
        compile_packages(path)
        tablefile.write(str(path / "p256_table.bin"))
    return path


def mp_min_heap(srv, tmp, cycles, transport, mplib, lo=64, hi=256, keep=False):
    """Smallest -X heapsize (KB steps, bisection) at which `cycles`
    renewals complete."""
    while lo < hi:
        mid = (lo + hi) // 2
        rc, frees, fds_, out = mp_soak(srv, tmp, cycles, transport, heap="%dK" % mid, mplib=mplib, keep=keep)
        if rc == 0 and "DONE" in out:
            hi = mid
        else:
            lo = mid + 1
    return lo


# -- main ----------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--client", type=int, default=300, help="client operations (part 1)")
    ap.add_argument("--kept", type=int, default=150, help="rounds of the kept-client loop (part 1)")
    ap.add_argument("--server", type=int, default=3000, help="server requests (part 2)")
    ap.add_argument("--mp", type=int, default=30, help="MicroPython renewals per transport (part 3)")
    ap.add_argument("--mp-heap", action="store_true", help="also search the smallest heap for 1 and --mp cycles")
    ap.add_argument("--parts", default="client,kept,server,mp")
    a = ap.parse_args(argv)
    parts = a.parts.split(",")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="soak-"))
    result = {}

    def log(s):
        print(json.dumps(s), file=sys.stderr, flush=True)

    srv = Servers(tmp)
    try:
        if "client" in parts:
            t0 = time.monotonic()
            samples, failures = client_soak(srv, tmp, a.client, log=log)
            result["client"] = {"operations": a.client, "failures": failures, "seconds": round(time.monotonic() - t0),
                                "samples": samples,
                                "growth": {k: growth(samples, k) for k in samples[0] if k != "i"}}
        if "kept" in parts:
            result["kept"] = {}
            for scheme in ("https", "coaps"):
                t0 = time.monotonic()
                samples = kept_client_soak(srv, tmp, a.kept, scheme, log=log)
                result["kept"][scheme] = {"rounds": a.kept, "seconds": round(time.monotonic() - t0),
                                          "samples": samples,
                                          "growth": {k: growth(samples, k) for k in samples[0] if k != "i"}}
        if "server" in parts:
            t0 = time.monotonic()
            samples, statuses = server_soak(srv, tmp, a.server, log=log)
            result["server"] = {"requests": a.server, "statuses": {str(k): v for k, v in statuses.items()},
                                "seconds": round(time.monotonic() - t0), "samples": samples,
                                "growth": {k: growth(samples, k) for k in samples[0] if k != "i"}}
        if "mp" in parts:
            mplib = mp_lib(tmp / "mplib")
            result["mp"] = {}
            for transport in ("coaps", "https"):
                for keep in (False, True):
                    t0 = time.monotonic()
                    rc, frees, fds_, out = mp_soak(srv, tmp, a.mp, transport, mplib=mplib, keep=keep)
                    r = {"cycles": a.mp, "ok": rc == 0 and "DONE" in out, "seconds": round(time.monotonic() - t0),
                         "mem_free": frees, "fds": fds_}
                    if not r["ok"]:
                        r["output"] = out[-2000:]
                    if a.mp_heap:
                        r["min_heap_kb_1"] = mp_min_heap(srv, tmp, 1, transport, mplib, keep=keep)
                        r["min_heap_kb_n"] = mp_min_heap(srv, tmp, a.mp, transport, mplib, keep=keep)
                    name = transport + ("-kept" if keep else "")
                    result["mp"][name] = r
                    log({name: r})
    finally:
        srv.stop()
    shutil.rmtree(str(tmp), ignore_errors=True)
    summary(result)
    print(json.dumps(result))


def summary(result):
    """A few lines per part: the counters at the second and the last
    checkpoint."""
    for part in ("client", "server"):
        r = result.get(part)
        if r:
            a, b = r["samples"][1], r["samples"][-1]
            print("%s: %s" % (part, ", ".join("%s %s -> %s" % (k, a[k], b[k]) for k in a)))
    for scheme, r in sorted(result.get("kept", {}).items()):
        a, b = r["samples"][1], r["samples"][-1]
        print("kept %s: %s" % (scheme, ", ".join("%s %s -> %s" % (k, a[k], b[k]) for k in a)))
    for name, r in sorted(result.get("mp", {}).items()):
        f = r["mem_free"]
        print("mp %s: ok=%s mem_free after renewal 2 %s, after %d %s; fds %s; min heap 1/%d: %s/%s KB" % (
            name, r["ok"], f[2] if len(f) > 2 else "-", len(f) - 1, f[-1] if f else "-",
            sorted(set(r["fds"])), r["cycles"], r.get("min_heap_kb_1", "-"), r.get("min_heap_kb_n", "-")))


if __name__ == "__main__":
    main()
