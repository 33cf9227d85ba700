"""Test harness for the DTLS tests: a DtlsServer (or an aiocoap context) on
its own event loop thread, and a loss-injecting UDP relay. Loopback only;
everything stops by itself (daemon threads, and close() in fixtures)."""

import asyncio
import select
import socket
import threading

from helpers_pki import TestPki


class Pki:
    """The PKI most tests share: a root, a server certificate for localhost /
    127.0.0.1 / ::1, a client certificate, and an unrelated root with a client
    certificate of its own."""

    def __init__(self):
        self.ca = TestPki()
        self.server = self.ca.issue("est-lite test server", dns=["localhost"], ips=["127.0.0.1", "::1"], server=True)
        self.client = self.ca.issue("device-0001", client=True)
        self.other_ca = TestPki("unrelated root")
        self.stranger = self.other_ca.issue("stranger", client=True)


class LoopThread:
    """An asyncio event loop on a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args, timeout=30):
        """Run a plain function on the loop thread and return its result."""

        async def _c():
            return fn(*args)

        return self.run(_c(), timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class ServerThread(LoopThread):
    """A DtlsServer with an echo handler ("echo " + data) on a loop thread.

    `peers` collects every DtlsPeer that delivered data, `closed` every
    (peer, reason) the server reported."""

    def __init__(self, pki, bind=("127.0.0.1", 0), handler=None, **options):
        super().__init__()
        from est_lite_cpython.dtls_server import DtlsServer

        self.peers = []
        self.closed = []
        self.established = []

        def echo(peer, data):
            if peer not in self.peers:
                self.peers.append(peer)
            peer.send(b"echo " + data)

        options.setdefault("on_closed", lambda p, r: self.closed.append((p, r)))
        options.setdefault("on_established", self.established.append)

        async def _start():
            self.server = DtlsServer(
                pki.server.cert, pki.server.key, options.pop("trusted_cas", [pki.ca.root.cert]), handler or echo,
                **options,
            )
            return await self.server.start(bind)

        self.host, self.port = self.run(_start())

    def session_count(self):
        return self.call(lambda: self.server.session_count)

    def stats(self):
        return self.call(lambda: dict(self.server.stats))

    def stop(self):
        try:
            self.call(self.server.close)
        finally:
            super().stop()


class LossyRelay:
    """UDP relay on 127.0.0.1 between clients and `upstream`, dropping the
    datagrams `drop(direction, index, data)` says to drop (direction "up" is
    client -> server, "down" server -> client; index counts per direction).
    Each client gets its own upstream socket, so the server sees distinct
    addresses. Records the size of every datagram it forwards."""

    def __init__(self, upstream, drop=None):
        self.upstream = upstream
        self.drop = drop or (lambda direction, index, data: False)
        self.sizes = {"up": [], "down": []}
        self.dropped = {"up": 0, "down": 0}
        self._count = {"up": 0, "down": 0}
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self.port = self._front.getsockname()[1]
        self._backs = {}  # client addr -> socket
        self._rev = {}  # socket -> client addr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _forward(self, direction, data, sock, addr):
        i = self._count[direction]
        self._count[direction] += 1
        if self.drop(direction, i, data):
            self.dropped[direction] += 1
            return
        self.sizes[direction].append(len(data))
        try:
            sock.sendto(data, addr)
        except OSError:
            pass

    def _run(self):
        while not self._stop.is_set():
            socks = [self._front] + list(self._rev)
            r, _, _ = select.select(socks, [], [], 0.05)
            for s in r:
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:
                    continue
                if s is self._front:
                    back = self._backs.get(addr)
                    if back is None:
                        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        back.bind(("127.0.0.1", 0))
                        self._backs[addr] = back
                        self._rev[back] = addr
                    self._forward("up", data, back, self.upstream)
                else:
                    self._forward("down", data, self._front, self._rev[s])

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._front.close()
        for s in self._rev:
            s.close()
