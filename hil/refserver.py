"""The reference server as the HIL harness needs it: a fresh CA in a work
directory, a "factory" (vendor CA) that gives each device its IDevID, and
the EST server on HTTPS and CoAPs, in this process or in its own process.

    srv = RefServer(workdir).start()               # in-process, ephemeral ports
    srv = RefServer(workdir, own_process=True).start()   # `est-lite serve` child
    cert_der, key_der = srv.factory.idevid("board-1")
    srv.url("coaps"), srv.url("https", "manual"), srv.pin    # "sha256:..." of the server certificate
    srv.approve_pending("manual")                   # as `est-lite ca approve` would
    srv.stop()

Profiles: the default label (client certificate of the vendor CA or of this
CA; re-enrollment with this CA's certificates; P-256 keys) and "manual"
(the same with manual approval, `retry_after` seconds).
"""

import datetime
import hashlib
import os
import subprocess
import sys
import time

CONFIG = """\
[server]
listen = "{host}"
port = 0
workers = {workers}
io_timeout_s = 10
request_timeout_s = 30
# every simulated device is on this one host: the per-host limits follow
# the fleet's concurrency instead of their defaults (64 and 16)
max_connections_per_host = {per_host}

[ca]
data_dir = "ca"

[coaps]
port = 0
max_sessions = {max_sessions}
max_handshakes_per_host = {per_host}
idle_timeout_s = {idle_timeout}
handshake_timeout_s = 30
workers = {coaps_workers}

[trust.idevid]
certs = ["vendor.pem"]

[profiles.default]
validity_days = {validity_days}
key_types = ["ec:P-256"]
auth = ["cert", "basic"]
client_cert_trust = ["ca", "idevid"]

[profiles.manual]
validity_days = {validity_days}
key_types = ["ec:P-256"]
auth = ["cert", "basic"]
client_cert_trust = ["ca", "idevid"]
manual_approval = true
retry_after = {retry_after}
"""


def stop_process(proc, timeout=10):
    """Terminate `proc` if it still runs, kill it after `timeout` s, reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port_files(proc, https_file, coaps_file, timeout, what, log_tail):
    """(https port, coaps port) once the process `proc` (est-lite serve or
    proxy) has written both port files; RuntimeError naming `what` and the
    end of its log (log_tail()) when it exits first or `timeout` s pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s): %s" % (what, proc.returncode, log_tail()))
        try:
            with open(https_file) as f:
                h = f.read().strip()
            with open(coaps_file) as f:
                c = f.read().strip()
            if h and c:
                return int(h), int(c)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("%s did not start in %d s: %s" % (what, timeout, log_tail()))


class Factory:
    """The device maker's CA: signs one IDevID (manufacturer certificate)
    per device. DER out, as a board's flash holds them."""

    def __init__(self, workdir, name="est-lite HIL Vendor CA"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem_path = os.path.join(workdir, "vendor.pem")
        with open(self.pem_path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def idevid(self, cn, key=None):
        """(certificate DER, PKCS#8 key DER) of a new device identity."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.DER),
                key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


class RefServer:
    def __init__(self, workdir, *, own_process=False, host="127.0.0.1", validity_days=30, retry_after=2,
                 max_sessions=256, idle_timeout=30, workers=16, coaps_workers=4):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.own_process = own_process
        self.host = host
        self.opts = dict(host=host, validity_days=validity_days, retry_after=retry_after, max_sessions=max_sessions,
                         idle_timeout=idle_timeout, workers=workers, coaps_workers=coaps_workers,
                         per_host=max(64, max_sessions, 2 * workers))
        self.data_dir = os.path.join(self.workdir, "ca")
        self.config_path = os.path.join(self.workdir, "server.toml")
        self.https_port = self.coaps_port = None
        self.factory = None
        self._https = self._coaps = self._proc = None
        self._ca = None
        self.log_path = os.path.join(self.workdir, "server.log")

    # -- setup --

    def _prepare(self):
        from est_lite_cpython.ca import init_ca

        init_ca(self.data_dir).store.close()
        self.factory = Factory(self.workdir)
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(**self.opts))

    def start(self, timeout=30):
        self._prepare()
        if self.own_process:
            self._start_process(timeout)
        else:
            self._start_inprocess()
        return self

    def _start_inprocess(self):
        from est_lite_cpython.coaps_server import EstCoapsServer
        from est_lite_cpython.config import load_config
        from est_lite_cpython.https_server import server_from_config

        cfg = load_config(self.config_path)
        self._https = server_from_config(cfg)
        self.https_port = self._https.start()
        try:
            self._coaps = EstCoapsServer.from_config(self._https.service, cfg)
            self.coaps_port = self._coaps.start()
        except BaseException:
            self._https.stop()
            raise
        self._ca = self._https.service.ca

    def _start_process(self, timeout):
        pf = os.path.join(self.workdir, "https.port")
        cf = os.path.join(self.workdir, "coaps.port")
        for p in (pf, cf):
            if os.path.exists(p):
                os.unlink(p)
        cmd = [sys.executable, "-m", "est_lite_cpython.cli", "serve", "--config", self.config_path, "--port-file", pf,
               "--coaps-port", "0", "--coaps-port-file", cf]
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.https_port, self.coaps_port = wait_port_files(self._proc, pf, cf, timeout, "the EST server",
                                                               self._log_tail)
        except RuntimeError:
            self.stop()
            raise

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self._coaps is not None:
            self._coaps.stop()
            self._coaps = None
        if self._https is not None:
            self._https.stop()
            self._https.service.ca.store.close()
            self._https = None
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
            self._log.close()
        if self._ca is not None and self.own_process:
            self._ca.store.close()
        self._ca = None

    def __enter__(self):
        return self.start() if self.https_port is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- what devices and tests need --

    @property
    def ca(self):
        """The LocalCA (this process's handle on the shared store)."""
        if self._ca is None:
            from est_lite_cpython.ca import LocalCA

            self._ca = LocalCA(self.data_dir)
        return self._ca

    def _server_cert_der(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        with open(os.path.join(self.data_dir, "server.pem"), "rb") as f:
            c = x509.load_pem_x509_certificates(f.read())[0]
        return c.public_bytes(serialization.Encoding.DER)

    @property
    def pin(self):
        """Bootstrap pin: SHA-256 of the server's certificate, "sha256:<hex>"."""
        return "sha256:" + hashlib.sha256(self._server_cert_der()).hexdigest()

    @property
    def root_der(self):
        from cryptography.hazmat.primitives import serialization

        return self.ca.root.public_bytes(serialization.Encoding.DER)

    def url(self, transport, label=None):
        port = self.coaps_port if transport == "coaps" else self.https_port
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d%s" % (transport, h, port, "/" + label if label else "")

    def pending(self, label=None):
        return [r for r in self.ca.store.list_requests("pending") if label is None or (r["label"] or "") == label]

    def approve_pending(self, label=None):
        """Approve every pending request (of `label`); returns how many."""
        n = 0
        for r in self.pending(label):
            self.ca.store.decide(r["id"], True)
            n += 1
        return n

    def issued_count(self):
        return self.ca.store.count_certificates()
