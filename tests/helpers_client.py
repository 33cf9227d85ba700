"""Helpers for the client runtime tests: a client with a controllable clock,
an impostor TLS server that records what a client sends it, an HTTP CONNECT
proxy, and approving pending requests of the reference server."""

import os
import socket
import struct
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from est_lite_cpython.client import EstClient


def der(c):
    return c.public_bytes(serialization.Encoding.DER)


def root_der(srv):
    return der(srv.ca.root)


class ClockClient(EstClient):
    """EstClient whose waits do not sleep: _sleep advances an offset added
    to the monotonic clock, records the wait and calls on_sleep(n)."""

    def __init__(self, *a, on_sleep=None, **kw):
        super().__init__(*a, **kw)
        self.offset = 0.0
        self.sleeps = []
        self.on_sleep = on_sleep

    def _mono(self):
        return time.monotonic() + self.offset

    def _sleep(self, s):
        self.sleeps.append(s)
        self.offset += max(0.0, s)
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


def approve_pending(srv):
    """Approve every pending enrollment request; returns how many."""
    n = 0
    for r in srv.ca.store.list_requests(status="pending"):
        srv.ca.store.decide(r["id"], True)
        n += 1
    return n


def load_cert(d):
    return x509.load_der_x509_certificate(d)


def point(cert):
    return cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


class _LoopbackServer:
    """A TCP listener on 127.0.0.1 with an accept loop on a daemon thread;
    subclasses handle each accepted socket in `_serve(sock)` (on the loop
    thread) and stop with stop()/close()."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            self._serve(s)

    def stop(self):
        """Stop accepting."""
        self._stop.set()
        self._t.join(5)

    def close(self):
        self.stop()
        self.sock.close()


class RecordingTls(_LoopbackServer):
    """A TLS server on 127.0.0.1 with the given pyOpenSSL server context
    (which should ask for a client certificate and accept any) that records
    what each connection sent: `connections` holds dicts with handshake
    (bool), client_cert (DER or None) and data (the bytes received up to the
    end of the first request head). `answer(data)` returns the bytes to send
    back (default: nothing, close)."""

    def __init__(self, ctx, answer=None):
        self.ctx = ctx
        self.answer = answer
        self.connections = []  # stay readable after stop()
        super().__init__()

    def _serve(self, s):
        from OpenSSL import SSL

        rec = {"handshake": False, "client_cert": None, "data": b""}
        self.connections.append(rec)
        s.settimeout(None)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 0))
        try:
            t = SSL.Connection(self.ctx, s)
            t.set_accept_state()
            t.do_handshake()
            rec["handshake"] = True
            pc = t.get_peer_certificate(as_cryptography=True)
            rec["client_cert"] = None if pc is None else der(pc)
            while b"\r\n\r\n" not in rec["data"]:
                d = t.recv(4096)
                if not d:
                    break
                rec["data"] += d
            if self.answer is not None and rec["data"]:
                t.sendall(self.answer(rec["data"]))
            t.shutdown()
        except (OSError, SSL.Error):
            pass
        finally:
            s.close()


class ImpostorTls(RecordingTls):
    """A RecordingTls with its own CA (TLS 1.2, so the client certificate
    comes in the handshake) presenting a certificate for localhost."""

    def __init__(self, tmp, answer=None):
        from helpers_server import issue_cert, key_pem, make_vendor_ca, pem
        from OpenSSL import SSL

        sub = os.path.join(str(tmp), "impostor")
        os.makedirs(sub, exist_ok=True)
        self.ca = make_vendor_ca(sub, "Impostor CA")
        key, cert = issue_cert(self.ca["cert"], self.ca["key"], "localhost", sans=["localhost"])
        cp, kp = os.path.join(sub, "srv.pem"), os.path.join(sub, "srv.key")
        with open(cp, "wb") as f:
            f.write(pem(cert) + pem(self.ca["cert"]))
        with open(kp, "wb") as f:
            f.write(key_pem(key))
        self.cert = cert
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)  # the client certificate comes in the handshake
        ctx.use_certificate_chain_file(cp)
        ctx.use_privatekey_file(kp)
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: True)  # ask for a client certificate, accept any: we record
        super().__init__(ctx, answer)


class ConnectProxy(_LoopbackServer):
    """A minimal HTTP CONNECT proxy on 127.0.0.1 (one thread per tunnel);
    records the CONNECT request lines and Proxy-Authorization values."""

    def __init__(self, require_auth=None):
        self.requests = []
        self.auth = []
        self.require_auth = require_auth
        super().__init__()

    def _serve(self, c):
        threading.Thread(target=self._tunnel, args=(c,), daemon=True).start()

    def _tunnel(self, c):
        c.settimeout(5)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            head = buf.split(b"\r\n\r\n")[0].decode()
            lines = head.split("\r\n")
            self.requests.append(lines[0])
            pa = [ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("proxy-authorization:")]
            self.auth += pa
            if self.require_auth and self.require_auth not in pa:
                c.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            method, target, _ = lines[0].split(" ")
            host, port = target.rsplit(":", 1)
            up = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(c, up)
        except OSError:
            pass
        finally:
            c.close()

    def _pipe(self, a, b):
        import select

        try:
            while not self._stop.is_set():
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    d = s.recv(65536)
                    if not d:
                        return
                    (b if s is a else a).sendall(d)
        finally:
            b.close()


# The start of a script (python -c) that SIGKILLs itself at the k-th file
# operation of a CredStore save, a write cut in half included: `k` and the
# rest of the script follow it (tests/test_station_walkthrough.py,
# tests/test_client_rollover.py).
CREDSTORE_KILLER = r"""
import os, signal, sys
from est_lite_cpython.credstore import CredStore

n = [0]


def hooked(name):
    orig = getattr(CredStore, name)

    def f(self, *a):
        n[0] += 1
        if n[0] == k:
            if name == "_write":  # half the file under its real name, then die
                fd = os.open(self._p(a[0]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, bytes(a[1])[:len(a[1]) // 2])
                os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(self, *a)
    return f


for h in ("_write", "_rename", "_remove", "_sync_dir"):
    setattr(CredStore, h, hooked(h))
"""
