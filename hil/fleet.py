"""Fleet simulator: N simulated devices enroll against one reference server.

    est-lite fleet --devices 50 --transport coaps --loss 0.1 --concurrency 10 --json --plot fleet.png

Each CPython device is the portable core (est_lite.client CoapOperation or
HttpOperation, est_lite.csr) on asyncio sockets with pyOpenSSL memory-BIO
DTLS/TLS (hil/adtls.py), all on one event loop: it has its own factory
identity (an IDevID of the vendor CA), checks the server against the
pinned bootstrap (SHA-256 of the server certificate), fetches the CA
certificates, makes a P-256 key and a CSR, enrolls, and checks that the
certificate carries its key and was issued by the CA it received. Optional
virtual MicroPython boards (--mp-boards) run the same enrollment in their
own processes alongside. The server runs in its own process (`est-lite
serve`, fresh CA in a temporary directory) unless --in-process. With
--loss the devices reach the server's CoAPs port through the lossy relay
(hil/lossy.py; loss, plus duplication and reordering at a third of it).

A device that fails is retried from scratch (a new session) up to
--attempts times with a short backoff, as a device would after a reboot;
its latency runs from its first attempt to its certificate, and it counts
as a failure only if every attempt failed. The report: devices, ok,
failures, failures_by_cause, throughput_per_s, p50_ms, p95_ms, p99_ms,
max_ms, mean_ms, attempts, elapsed_s (and by_kind with MicroPython boards).

With via_proxy (`--via-proxy`) an `est-lite proxy` (its own process, its
own data directory, an RA certificate from `est-lite ca issue --eku
clientAuth,cmcRA` of the server's CA) stands between the devices and the
server: the devices pin the proxy's certificate and enroll through it over
CoAPs or HTTPS (the lossy relay, if any, is on the device link); the
report adds "proxy" (its fds, threads and RSS sampled during the run, the
certificates in the upstream store and whether each device's certificate
is there with the RA as requester and chains to the upstream CA).
"""

import asyncio
import os
import random
import shutil
import tempfile
import time

from est_lite import client as C
from est_lite import numbers as N
from est_lite.errors import EstError, SecurityError, TransportError

from . import report as R
from .adtls import AsyncDtls, AsyncTls


class Device:
    __slots__ = ("i", "cn", "cert", "key")

    def __init__(self, i, cn, cert, key):
        self.i, self.cn, self.cert, self.key = i, cn, cert, key


class FleetConfig:
    def __init__(self, devices=50, transport="coaps", loss=0.0, concurrency=10, mp_boards=0, attempts=3,
                 ack_timeout=2.0, deadline=120.0, handshake_timeout=30.0, seed=None, in_process=False,
                 mp_heap="256K", dup=None, reorder=None, delay=(0.0, 0.0), via_proxy=False):
        if transport not in ("coaps", "https"):
            raise ValueError("transport must be coaps or https")
        if not 0.0 <= loss < 1.0:  # also NaN
            raise ValueError("--loss must be a probability from 0 up to (not including) 1, got %r" % loss)
        if devices == 0 and mp_boards == 0:
            raise ValueError("no devices to simulate: give --devices 1 or more (or --mp-boards)")
        if loss and transport != "coaps":
            raise ValueError("--loss applies to the UDP link (coaps); TCP has its own retransmission")
        for name, v, least in (("--devices", devices, 0), ("--concurrency", concurrency, 1),
                               ("--mp-boards", mp_boards, 0), ("--attempts", attempts, 1)):
            if v < least:
                raise ValueError("%s must be %d or more, got %r" % (name, least, v))
        if not 0 < ack_timeout < 3600:  # also NaN: else every exchange "gets no answer"
            raise ValueError("--ack-timeout must be a number of seconds above 0, got %r" % ack_timeout)
        self.devices, self.transport, self.loss = devices, transport, loss
        self.concurrency, self.mp_boards, self.attempts = concurrency, mp_boards, attempts
        self.ack_timeout, self.deadline, self.handshake_timeout = ack_timeout, deadline, handshake_timeout
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.in_process, self.mp_heap = in_process, mp_heap
        self.dup = loss / 3 if dup is None else dup
        self.reorder = loss / 3 if reorder is None else reorder
        self.delay = delay
        if via_proxy and mp_boards:
            raise ValueError("--via-proxy is for the simulated CPython devices (no --mp-boards)")
        if via_proxy and in_process:
            raise ValueError("--via-proxy runs the server and the proxy in their own processes (no --in-process)")
        self.via_proxy = via_proxy


# -- one device ---------------------------------------------------------------


class _Enrollment:
    def __init__(self, cfg, host, port, pin, dev):
        self.cfg, self.host, self.port, self.pin, self.dev = cfg, host, port, pin, dev
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random()

    def now(self):
        return self.loop.time()

    async def _coap(self, t, op, mids, buf, body=b"", public_key=None):
        end = self.now() + self.cfg.deadline
        while True:
            o = C.CoapOperation(op, body=body, token=os.urandom(4), mid=mids, public_key=public_key,
                                rand=self.rng.random, ack_timeout=self.cfg.ack_timeout, buf=buf, max_body=8192)
            while True:
                d = o.send(self.now())
                while d is not None:
                    t.send(d)
                    d = o.send(self.now())
                ev = o.next_event()
                if ev is not C.NEED_DATA:
                    break
                nt = o.next_timeout()
                data = await t.recv(max(0.0, (nt - self.now()) if nt is not None else 1.0))
                if data:
                    o.receive_data(data, self.now())
            if not isinstance(ev, C.RetryAfter):
                return ev
            if self.now() + ev.seconds > end:
                raise TransportError("the server keeps answering retry-after (%s s) past the deadline" % ev.seconds)
            await asyncio.sleep(ev.seconds)

    async def _http(self, t, op, body=b"", public_key=None):
        from est_lite.client_http import HttpOperation

        host = "%s:%d" % (self.host, self.port)
        end = self.now() + self.cfg.deadline
        while True:
            o = HttpOperation(op, host=host, body=body, public_key=public_key, max_body=16384)
            while True:
                req = o.send()
                if req is not None:
                    await t.write(req)
                ev = o.next_event()
                while ev is C.NEED_DATA and o.state == C.AWAIT_RESPONSE:
                    o.receive_data(await t.read(max(1.0, end - self.now())))
                    ev = o.next_event()
                if ev is not C.NEED_DATA:
                    break
            if o.need_new_connection:
                raise TransportError("the server closed the connection")
            if not isinstance(ev, C.RetryAfter):
                return ev
            if self.now() + ev.seconds > end:
                raise TransportError("the server keeps answering retry-after past the deadline")
            await asyncio.sleep(ev.seconds)

    async def once(self):
        from est_lite.csr import CsrBuilder
        from est_lite_cpython.crypto import P256Key

        dev = self.dev
        if self.cfg.transport == "coaps":
            t = AsyncDtls(self.host, self.port, cert=dev.cert, key=dev.key, pin=self.pin)
        else:
            t = AsyncTls(self.host, self.port, cert=dev.cert, key=dev.key, pin=self.pin)
        await t.connect(self.cfg.handshake_timeout)
        try:
            if self.cfg.transport == "coaps":
                mids = C.MidSource(os.urandom(2))
                buf = bytearray(1152)
                ca = (await self._coap(t, N.OP_CACERTS, mids, buf)).certs
                key = P256Key.generate()
                csr = CsrBuilder().subject(cn=dev.cn).sign(key)
                ev = await self._coap(t, N.OP_SIMPLEENROLL, mids, buf, csr, key.public_key)
            else:
                ca = (await self._http(t, N.OP_CACERTS)).certs
                key = P256Key.generate()
                csr = CsrBuilder().subject(cn=dev.cn).sign(key)
                ev = await self._http(t, N.OP_SIMPLEENROLL, csr, key.public_key)
        finally:
            t.close()
        _check_issued(ev.cert, ca, key.public_key)
        return ev.cert


def _check_issued(cert_der, ca_ders, point):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(cert_der)
    if cert.public_key().public_bytes(serialization.Encoding.X962,
                                      serialization.PublicFormat.UncompressedPoint) != bytes(point):
        raise SecurityError("the issued certificate does not carry our key")
    for d in ca_ders:
        ca = x509.load_der_x509_certificate(d)
        if ca.subject == cert.issuer:
            try:
                cert.verify_directly_issued_by(ca)
                return
            except Exception:  # noqa: BLE001 - InvalidSignature / ValueError / TypeError: try the next
                pass
    raise SecurityError("the issued certificate was not issued by the CA certificates the server sent")


async def _device(cfg, host, port, pin, dev, t0):
    start = time.monotonic()
    cause = cert = None
    causes = []  # of the attempts that failed
    n = 0
    for n in range(1, cfg.attempts + 1):
        try:
            cert = await _Enrollment(cfg, host, port, pin, dev).once()
            cause = None
            break
        except (EstError, OSError) as e:
            cause = R.cause_of(e)
        except Exception as e:  # noqa: BLE001 - a simulator counts every failure by its cause
            cause = R.cause_of(e)
        causes.append(cause)
        if n < cfg.attempts:
            await asyncio.sleep(0.5 * n + random.random())
    end = time.monotonic()
    return {"i": dev.i, "kind": "cpython", "start": start - t0, "end": end - t0, "ms": (end - start) * 1000.0,
            "ok": cause is None, "cause": cause, "attempts": n, "cert": cert if cause is None else None,
            "retried_for": causes if cause is None else causes[:-1]}


# -- the fleet -------------------------------------------------------------------


class Fleet:
    """Set up (server, identities, relay, boards), run, report."""

    def __init__(self, cfg, workdir=None, progress=True, server=None):
        self.cfg = cfg
        self._tmp = None
        if workdir is None:
            self._tmp = workdir = tempfile.mkdtemp(prefix="est-lite-fleet-")
        self.workdir = os.path.abspath(workdir)
        self.progress = progress
        self.server = server
        self._own_server = server is None
        self.relay = None
        self.proxy = None
        self.devices = []
        self.boards = []
        self.setup_s = None

    def setup(self):
        from .refserver import RefServer

        t = time.monotonic()
        cfg = self.cfg
        if self.server is None:
            self.server = RefServer(os.path.join(self.workdir, "server"), own_process=not cfg.in_process,
                                    max_sessions=max(256, 2 * cfg.concurrency + 2 * cfg.mp_boards),
                                    workers=max(16, cfg.concurrency + 4), idle_timeout=30).start()
        f = self.server.factory
        self.devices = [Device(i, "fleet-%05d" % i, *f.idevid("fleet-%05d" % i)) for i in range(cfg.devices)]
        front = self.server
        if cfg.via_proxy:
            from .fleetproxy import ProxyProcess

            self.proxy = front = ProxyProcess(os.path.join(self.workdir, "proxy"), self.server,
                                              concurrency=cfg.concurrency).start()
        host, port = "127.0.0.1", front.coaps_port if cfg.transport == "coaps" else front.https_port
        if cfg.loss:
            from .lossy import LossyRelay

            self.relay = LossyRelay(("127.0.0.1", front.coaps_port), loss=cfg.loss, dup=cfg.dup,
                                    reorder=cfg.reorder, delay=cfg.delay, seed=cfg.seed,
                                    max_clients=max(4096, 4 * cfg.concurrency))
            host, port = self.relay.start()
        self.target = (host, port)
        if cfg.mp_boards:
            from . import bundle as B
            from . import scenario as S
            from .boards import VirtualBoard

            bd = os.path.join(self.workdir, "bundle")
            B.build(bd)
            for j in range(cfg.mp_boards):
                b = VirtualBoard(os.path.join(self.workdir, "mp-%03d" % j), heap=cfg.mp_heap, name="mp-%03d" % j)
                b.deploy(bd)
                S.provision_board(b, self.server, "fleet-mp-%03d" % j)
                self.boards.append(b)
        self.setup_s = time.monotonic() - t

    async def _board(self, j, b, t0):
        from . import scenario as S

        url = "%s://%s:%d" % (self.cfg.transport, self.target[0], self.target[1])
        scn = {"name": "fleet", "transport": self.cfg.transport, "steps": [{"do": "wipe"}, {"do": "provision"}],
               "deadline": self.cfg.deadline}
        cfg = S.device_config(scn, self.server, "fleet-mp-%03d" % j, url=url)
        start = time.monotonic()
        res = await asyncio.to_thread(b.run, cfg, 600)
        end = time.monotonic()
        st = res.step(1) or {}
        ok = res.ok
        cause = None if ok else ("%s: %s" % (st.get("error"), R.cause_of(Exception(st.get("msg", ""))).split(": ", 1)[-1])
                                 if st.get("error") else res.failure())
        # latency: the board's own measure of the enrollment step (not the process start)
        ms = st.get("ms") if st.get("ms") is not None else (end - start) * 1000.0
        return {"i": self.cfg.devices + j, "kind": "micropython", "start": start - t0, "end": end - t0, "ms": ms,
                "ok": ok, "cause": cause, "attempts": 1}

    async def run_async(self):
        cfg = self.cfg
        host, port = self.target
        pin = bytes.fromhex((self.proxy or self.server).pin.split(":", 1)[1])
        total = len(self.devices) + len(self.boards)
        prog = R.Progress(total) if self.progress else None
        results = []
        queue = list(reversed(self.devices))
        t0 = time.monotonic()

        def done(r):
            results.append(r)
            if prog:
                ok = sum(1 for x in results if x["ok"])
                prog.update(ok, len(results) - ok)

        async def worker():
            while queue:
                dev = queue.pop()
                done(await _device(cfg, host, port, pin, dev, t0))

        async def boards():
            sem = asyncio.Semaphore(max(1, min(len(self.boards), 2)))

            async def one(j, b):
                async with sem:
                    done(await self._board(j, b, t0))

            await asyncio.gather(*[one(j, b) for j, b in enumerate(self.boards)])

        try:
            await asyncio.gather(boards(),
                                 *[worker() for _ in range(min(cfg.concurrency, max(1, len(self.devices))))])
        except BaseException:
            # Ctrl-C (the loop cancels this task): the boards run in threads
            # that a cancel does not stop; cut their power so they end now
            for b in self.boards:
                b.kill()
            raise
        elapsed = time.monotonic() - t0
        if prog:
            prog.finish()
        return results, elapsed

    def run(self, plot=None):
        cfg = self.cfg
        results, elapsed = asyncio.run(self.run_async())
        results.sort(key=lambda r: r["i"])
        rep = R.summarize(results, elapsed, transport=cfg.transport, loss=cfg.loss, concurrency=cfg.concurrency,
                          mp_boards=cfg.mp_boards, seed=cfg.seed, setup_s=round(self.setup_s or 0, 2),
                          server="own process" if not cfg.in_process else "in process")
        if self.relay is not None:
            rep["link"] = self.relay.stats
        retried = {}
        for r in results:
            for c in r.get("retried_for") or ():
                retried[c] = retried.get(c, 0) + 1
        if retried:
            rep["retried_by_cause"] = retried  # failed attempts of devices that then enrolled
        issued = self.server.issued_count()
        rep["server_issued"] = issued
        if self.proxy is not None:
            from .fleetproxy import check_upstream

            rep["proxy"] = {"alive": self.proxy.alive(), "resources": self.proxy.resources(),
                            "upstream": check_upstream(self.server, results)}
            # stopped now: it says how long its requests to the upstream took
            self.proxy.stop()
            rep["proxy"]["forwarded"] = self.proxy.forwarded()
            rep["via_proxy"] = True
        if plot:
            R.plot_png(results, plot, "est-lite fleet: %d devices over %s, loss %g, concurrency %d"
                       % (rep["devices"], cfg.transport, cfg.loss, cfg.concurrency))
            rep["plot"] = plot
        self.results = results
        return rep

    def close(self):
        if self.relay is not None:
            self.relay.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self._own_server and self.server is not None:
            self.server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def run_fleet(cfg, plot=None, progress=True, workdir=None):
    """Set up, run and tear down a fleet; returns the report dict."""
    f = Fleet(cfg, workdir=workdir, progress=progress)
    try:
        f.setup()
        return f.run(plot=plot)
    finally:
        f.close()


def proxy_text(rep):
    """Lines about the proxy of a --via-proxy report ("" without one)."""
    px = rep.get("proxy")
    if not px:
        return ""
    up, res, fw = px["upstream"], px.get("resources") or {}, px.get("forwarded")
    lines = ["through the proxy (RA): %d device certificates in the upstream store, requested by the RA: %d, "
             "not chaining to the upstream CA: %d, missing: %d; the RA's requests there: %d"
             % (up["in_store"], up["in_store"] - up["requester_not_ra"], up["not_chained"], up["not_in_store"],
                up["by_ra"])]
    if fw:
        lines.append("upstream requests: %d (%d failed), mean %.1f ms, max %.1f ms (the rest of a device's wait is "
                     "the device link and the proxy)" % (fw["requests"], fw["failed"], fw["mean_ms"], fw["max_ms"]))
    if res:
        lines.append("proxy process: fds %d -> %d (max %d), threads %d -> %d (max %d), RSS %d -> %d kB" % (
            res["fds"]["start"], res["fds"]["end"], res["fds"]["max"], res["threads"]["start"],
            res["threads"]["end"], res["threads"]["max"], res["rss_kb"]["start"], res["rss_kb"]["end"]))
    return "\n".join(lines)
