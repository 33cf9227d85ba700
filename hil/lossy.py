"""A lossy UDP link on loopback: a relay between devices and a server that
drops, duplicates, reorders and delays datagrams, in both directions.

    relay = LossyRelay(("127.0.0.1", coaps_port), loss=0.1, dup=0.05, reorder=0.1,
                       delay=(0.002, 0.030), seed=7)
    host, port = relay.start()          # devices talk to (host, port)
    ...
    relay.stats                         # {"up": {...}, "down": {...}}
    relay.stop()

Every device address gets its own upstream socket, so the server sees one
address per device (DTLS sessions stay apart). Each datagram, independently
and per direction: dropped with probability `loss`; otherwise delivered after
a delay drawn uniformly from `delay` (seconds), plus `reorder_delay` with
probability `reorder` (so datagrams sent after it overtake it); and with
probability `dup` a second copy follows after another delay. One thread,
one select loop, a heap of timed deliveries; seeded, so a run can be
repeated (timing still varies). Clients idle for `idle_timeout` are
forgotten; at most `max_clients` are kept (the oldest goes first).
"""

import heapq
import itertools
import random
import select
import socket
import threading
import time


class LossyRelay:
    def __init__(self, upstream, *, loss=0.0, dup=0.0, reorder=0.0, delay=(0.0, 0.0), reorder_delay=0.05,
                 seed=None, listen=("127.0.0.1", 0), max_clients=4096, idle_timeout=300.0, max_datagram=65535):
        for name, p in (("loss", loss), ("dup", dup), ("reorder", reorder)):
            if not 0.0 <= p < 1.0:
                raise ValueError("%s must be a probability in [0, 1), got %r" % (name, p))
        if isinstance(delay, (int, float)):
            delay = (delay, delay)
        if delay[0] < 0 or delay[1] < delay[0]:
            raise ValueError("delay must be (min, max) seconds with 0 <= min <= max")
        self.upstream = upstream
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.delay = tuple(delay)
        self.reorder_delay = reorder_delay
        self.rng = random.Random(seed)
        self.listen = listen
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.max_datagram = max_datagram
        self.stats = {d: {"in": 0, "sent": 0, "dropped": 0, "duplicated": 0, "reordered": 0} for d in ("up", "down")}
        self._front = None
        self._clients = {}  # device address -> [upstream socket, last activity]
        self._by_sock = {}  # upstream socket -> device address
        self._queue = []  # (when, seq, socket, payload, address or None)
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.address = None

    def start(self):
        fam = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        self._front = socket.socket(fam, socket.SOCK_DGRAM)
        self._front.bind(self.listen)
        self._front.setblocking(False)
        self.address = self._front.getsockname()[:2]
        self._thread = threading.Thread(target=self._loop, name="lossy-relay", daemon=True)
        self._thread.start()
        return self.address

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for s in list(self._by_sock):
            s.close()
        self._by_sock.clear()
        self._clients.clear()
        if self._front is not None:
            self._front.close()
            self._front = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def clients(self):
        return len(self._clients)

    # -- the impairments --

    def _schedule(self, direction, sock, payload, addr, now):
        st = self.stats[direction]
        st["in"] += 1
        r = self.rng
        if self.loss and r.random() < self.loss:
            st["dropped"] += 1
            return
        copies = 2 if self.dup and r.random() < self.dup else 1
        if copies == 2:
            st["duplicated"] += 1
        for i in range(copies):
            d = r.uniform(*self.delay) if self.delay[1] > 0 else 0.0
            if i == 0 and self.reorder and r.random() < self.reorder:
                d += self.reorder_delay
                st["reordered"] += 1
            if i == 1:
                d += r.uniform(0, max(self.delay[1], 0.005))
            heapq.heappush(self._queue, (now + d, next(self._seq), sock, payload, addr))

    def _upstream_for(self, addr, now):
        c = self._clients.get(addr)
        if c is not None:
            c[1] = now
            return c[0]
        if len(self._clients) >= self.max_clients:
            oldest = min(self._clients, key=lambda a: self._clients[a][1])
            self._forget(oldest)
        fam = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.connect(self.upstream)
        s.setblocking(False)
        self._clients[addr] = [s, now]
        self._by_sock[s] = addr
        return s

    def _forget(self, addr):
        c = self._clients.pop(addr, None)
        if c is not None:
            self._by_sock.pop(c[0], None)
            c[0].close()

    # -- the loop --

    def _loop(self):
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, sock, payload, addr = heapq.heappop(self._queue)
                try:
                    if addr is None:
                        sock.send(payload)
                    else:
                        sock.sendto(payload, addr)
                    self.stats["down" if addr is not None else "up"]["sent"] += 1
                except OSError:
                    pass  # closed or refused: a lossy link loses it
            wait = 0.05
            if self._queue:
                wait = max(0.0, min(wait, self._queue[0][0] - now))
            socks = [self._front] + list(self._by_sock)
            try:
                readable, _, _ = select.select(socks, [], [], wait)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                continue
            now = time.monotonic()
            for s in readable:
                for _ in range(64):  # drain a burst
                    try:
                        if s is self._front:
                            data, addr = s.recvfrom(self.max_datagram)
                        else:
                            data = s.recv(self.max_datagram)
                            addr = None
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # ICMP unreachable reported on a connected socket
                    if s is self._front:
                        self._schedule("up", self._upstream_for(addr, now), data, None, now)
                    else:
                        dev = self._by_sock.get(s)
                        if dev is None:
                            break
                        self._clients[dev][1] = now
                        self._schedule("down", self._front, data, dev, now)
            if now - last_sweep > 1.0:
                last_sweep = now
                for a in [a for a, c in self._clients.items() if now - c[1] > self.idle_timeout]:
                    self._forget(a)
