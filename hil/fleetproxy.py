"""An `est-lite proxy` (RA) in its own process in front of a RefServer, as
the fleet's --via-proxy needs it (docs/proxy.md, "Run it"):

    px = ProxyProcess(os.path.join(workdir, "proxy"), server, concurrency=16).start()
    px.coaps_port, px.https_port, px.pin     # what the devices reach and pin
    px.sample()                              # fds / threads / RSS of the proxy process now
    px.stop()

Its RA certificate and its TLS/DTLS server certificate come from the
server's CA with `est-lite ca issue` (--eku clientAuth,cmcRA and
serverAuth); its data directory (proxy-state.sqlite) is its own.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import threading

from .refserver import stop_process, wait_port_files

CONFIG = """\
[ca]
data_dir = "data"

[server]
listen = "127.0.0.1"
port = 0
workers = {workers}
tls_cert = "proxy.pem"
tls_key = "proxy.key"
io_timeout_s = 10
request_timeout_s = 60
max_connections_per_host = {per_host}

[coaps]
port = 0
max_sessions = {max_sessions}
max_handshakes_per_host = {per_host}
idle_timeout_s = 30
handshake_timeout_s = 30
workers = {coaps_workers}

[trust.idevid]
certs = ["vendor.pem"]

[profiles.default]
key_types = ["ec:P-256"]
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
pop_exempt_transports = ["coaps"]

[proxy]
upstream = "https://127.0.0.1:{upstream_port}"
upstream_ca = "upstream-root.pem"
ra_cert = "ra.pem"
ra_key = "ra.key"
timeout_s = 30
"""

RA_CN = "est-fleet-ra"


def _cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli"] + list(args), capture_output=True, text=True,
                       cwd=cwd, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("est-lite %s failed: %s" % (args[0], (p.stdout + p.stderr).strip()[-1000:]))
    return p


class ProxyProcess:
    def __init__(self, workdir, server, *, concurrency=10):
        self.workdir = os.path.abspath(workdir)
        self.server = server
        self.opts = dict(workers=max(16, concurrency + 4), coaps_workers=max(4, min(16, concurrency)),
                         max_sessions=max(256, 2 * concurrency), per_host=max(64, 4 * concurrency),
                         upstream_port=server.https_port)
        self.config_path = os.path.join(self.workdir, "proxy.toml")
        self.log_path = os.path.join(self.workdir, "proxy.log")
        self.https_port = self.coaps_port = None
        self._proc = self._log = None
        self.samples = []
        self._sampler = None
        self._stop_sampling = threading.Event()

    def _prepare(self):
        os.makedirs(self.workdir, exist_ok=True)
        dd = self.server.data_dir
        _cli("ca", "issue", "--data-dir", dd, "--cn", RA_CN, "--eku", "clientAuth,cmcRA", "--out",
             os.path.join(self.workdir, "ra"))
        _cli("ca", "issue", "--data-dir", dd, "--cn", "est-fleet-proxy", "--eku", "serverAuth", "--dns", "localhost",
             "--ip", "127.0.0.1", "--out", os.path.join(self.workdir, "proxy"))
        shutil.copy(os.path.join(dd, "root.pem"), os.path.join(self.workdir, "upstream-root.pem"))
        shutil.copy(self.server.factory.pem_path, os.path.join(self.workdir, "vendor.pem"))
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(**self.opts))

    def start(self, timeout=60):
        self._prepare()
        pf = os.path.join(self.workdir, "https.port")
        cf = os.path.join(self.workdir, "coaps.port")
        cmd = [sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", self.config_path, "--port", "0",
               "--port-file", pf, "--coaps-port", "0", "--coaps-port-file", cf]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=self.workdir)
        try:
            self.https_port, self.coaps_port = wait_port_files(self._proc, pf, cf, timeout, "the proxy", self.log_tail)
        except RuntimeError:
            self.stop()
            raise
        self.samples.append(self.sample())
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()
        return self

    def _sample_loop(self):
        while not self._stop_sampling.wait(0.5):
            s = self.sample()
            if s is None:
                return
            self.samples.append(s)

    def sample(self):
        """{"fds", "threads", "rss_kb"} of the proxy process now (Linux /proc), None if it is gone."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        try:
            fds = len(os.listdir("/proc/%d/fd" % self._proc.pid))
            st = {}
            with open("/proc/%d/status" % self._proc.pid) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    st[k] = v.strip()
            return {"fds": fds, "threads": int(st["Threads"]), "rss_kb": int(st["VmRSS"].split()[0])}
        except (OSError, KeyError, ValueError):
            return None

    def resources(self):
        """The proxy's fds/threads/RSS: at start, at the end (after the
        devices, before stopping it) and the largest seen."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(5)
        last = self.sample()
        if last is not None:
            self.samples.append(last)
        s = [x for x in self.samples if x]
        if not s:
            return {}
        out = {}
        for k in ("fds", "threads", "rss_kb"):
            out[k] = {"start": s[0][k], "end": s[-1][k], "max": max(x[k] for x in s)}
        return out

    @property
    def pin(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        with open(os.path.join(self.workdir, "proxy.pem"), "rb") as f:
            c = x509.load_pem_x509_certificates(f.read())[0]
        return "sha256:" + hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def forwarded(self):
        """After stop(): what the proxy said of its upstream requests
        (count, failed, mean and max ms: the upstream's share of a
        device's wait), or None."""
        import re

        m = re.search(r"upstream: (\d+) requests, (\d+) failed; ([\d.]+) s in all, mean ([\d.]+) ms, max ([\d.]+) ms",
                      self.log_tail(20000))
        if not m:
            return None
        return {"requests": int(m.group(1)), "failed": int(m.group(2)), "seconds": float(m.group(3)),
                "mean_ms": float(m.group(4)), "max_ms": float(m.group(5))}

    def alive(self):
        return self._proc is not None and self._proc.poll() is None

    def stop(self):
        self._stop_sampling.set()
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def check_upstream(server, results):
    """What the upstream store holds for the devices' certificates: each
    device's certificate there, requested by the RA, chaining to the
    upstream CA. Returns a dict of counts (0 problems = all well)."""
    from cryptography import x509

    ca = server.ca
    # serial (hex, as the store keeps it) -> requester
    rows = dict(ca.store._db().execute("SELECT serial, requester FROM certs").fetchall())
    issuers = [ca.issuer] + ([ca.root] if ca.root is not ca.issuer else [])
    out = {"in_store": 0, "not_in_store": 0, "requester_not_ra": 0, "not_chained": 0, "by_ra": 0}
    out["by_ra"] = sum(1 for v in rows.values() if RA_CN in (v or ""))
    for res in results:
        der = res.get("cert")
        if not der:
            continue
        cert = x509.load_der_x509_certificate(der)
        chained = False
        for i in issuers:
            try:
                cert.verify_directly_issued_by(i)
                chained = True
                break
            except Exception:  # noqa: BLE001 - InvalidSignature / ValueError: try the next
                pass
        if not chained:
            out["not_chained"] += 1
        serial = "%x" % cert.serial_number
        if serial not in rows:
            out["not_in_store"] += 1
            continue
        out["in_store"] += 1
        if RA_CN not in (rows[serial] or ""):
            out["requester_not_ra"] += 1
    return out
