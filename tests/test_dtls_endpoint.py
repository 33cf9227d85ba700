"""dtls_server._UdpEndpoint: the DTLS server's own UDP socket handling on
the event loop (batched reads, direct sends, a bounded queue when the
kernel's send buffer is full)."""

import asyncio
import socket

from est_lite_cpython import dtls_server


class _Server:
    max_datagram = 100

    def __init__(self):
        self.got = []
        self.sessions = {}

    def _datagram(self, data, addr):
        self.got.append(data)


class _FullOnce:
    """A socket whose first `full` sends fail with EAGAIN."""

    def __init__(self, sock, full):
        self._s = sock
        self.full = full

    def __getattr__(self, name):
        return getattr(self._s, name)

    def sendto(self, data, addr):
        if self.full:
            self.full -= 1
            raise BlockingIOError()
        return self._s.sendto(data, addr)


def _pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", 0))
    b.settimeout(5)
    return a, b


def test_reads_in_batches_and_ignores_nothing_but_oversize():
    async def main():
        a, b = _pair()
        srv = _Server()
        ep = dtls_server._UdpEndpoint(asyncio.get_running_loop(), a, srv, batch=4)
        for i in range(6):
            b.sendto(b"x%d" % i, a.getsockname())
        b.sendto(b"y" * 300, a.getsockname())  # longer than max_datagram: arrives truncated to 101 bytes
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(srv.got) == 7:
                break
        ep.close()
        b.close()
        return srv.got

    got = asyncio.run(main())
    assert got[:6] == [b"x%d" % i for i in range(6)]
    assert len(got[6]) == 101  # DtlsServer._datagram drops anything longer than max_datagram


def test_full_send_buffer_queues_in_order_then_flushes():
    async def main():
        a, b = _pair()
        ep = dtls_server._UdpEndpoint(asyncio.get_running_loop(), _FullOnce(a, 2), _Server(), max_queued=3)
        dst = b.getsockname()
        for i in range(5):
            ep.sendto(b"d%d" % i, dst)  # first send EAGAIN: queued; the rest queue behind it, 4th and 5th dropped
        assert len(ep._queued) == 3
        out = []
        loop = asyncio.get_running_loop()
        for _ in range(3):
            out.append(await loop.run_in_executor(None, b.recv, 100))
        ep.sendto(b"after", dst)  # queue empty again: direct send
        out.append(await loop.run_in_executor(None, b.recv, 100))
        ep.close()
        ep.sendto(b"closed", dst)  # ignored after close
        b.close()
        return out

    assert asyncio.run(main()) == [b"d0", b"d1", b"d2", b"after"]
