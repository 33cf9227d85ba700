"""The DTLS server answers a repeated client flight with its own last flight
at once (RFC 6347 §4.2.4), instead of waiting for OpenSSL's retransmission
timer (1 s, doubling): a lost ServerHello..ServerHelloDone flight, and a lost
ChangeCipherSpec + Finished after the server has finished its handshake.

The client here is raw pyOpenSSL on memory BIOs, driven by hand so that the
test decides which datagrams are lost and repeats the client's datagrams
verbatim (as the MicroPython port's `_Link` does)."""

import socket

import pytest

from est_lite_cpython import dtls as d
from est_lite_cpython.dtls_server import handshake_progress
from helpers_dtls import Pki, ServerThread


@pytest.fixture(scope="module")
def pki():
    return Pki()


class Client:
    def __init__(self, pki, port):
        from OpenSSL import SSL

        self.SSL = SSL
        ctx = d.base_context(False, d.CLIENT_SUITES, pki.client.cert, pki.client.key)
        d.add_trust_anchors(ctx, [pki.ca.root.cert])
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
        self.conn = d.new_connection(ctx, d.DEFAULT_MTU)
        self.conn.set_connect_state()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))

    def step(self):
        """Run the handshake as far as it goes; return the datagrams it wrote
        (not sent) and whether it is complete."""
        try:
            self.conn.do_handshake()
            done = True
        except self.SSL.WantReadError:
            done = False
        return d.drain_bio(self.conn, d.DEFAULT_MTU), done

    def send(self, dgs):
        for dg in dgs:
            self.sock.send(dg)

    def receive(self, quiet=0.3, first=10.0):
        """Datagrams until `quiet` seconds pass without one (the first may
        take up to `first` seconds)."""
        out = []
        self.sock.settimeout(first)
        while True:
            try:
                out.append(self.sock.recv(65535))
            except socket.timeout:
                return out
            self.sock.settimeout(quiet)

    def feed(self, dgs):
        for dg in dgs:
            self.conn.bio_write(dg)

    def close(self):
        self.sock.close()

    def send_flight3(self):
        """Flight 1, the HelloVerifyRequest, then flight 3 (ClientHello with
        the cookie) sent; returns flight 3."""
        out, _ = self.step()
        self.send(out)
        self.feed(self.receive())
        flight3, _ = self.step()
        self.send(flight3)
        return flight3


def test_handshake_progress_reads_plaintext_handshake_fragments():
    hs = b"\x0b" + (100).to_bytes(3, "big") + (2).to_bytes(2, "big") + (40).to_bytes(3, "big") + (60).to_bytes(3, "big")
    rec = b"\x16\xfe\xfd" + b"\x00\x00" + b"\x00" * 6 + len(hs + b"x" * 60).to_bytes(2, "big") + hs + b"x" * 60
    assert handshake_progress(rec) == (2, 100)
    enc = b"\x16\xfe\xfd" + b"\x00\x01" + b"\x00" * 6 + (40).to_bytes(2, "big") + b"y" * 40  # epoch 1: unreadable
    ccs = b"\x14\xfe\xfd\x00\x00" + b"\x00" * 6 + b"\x00\x01\x01"
    assert handshake_progress(rec + ccs + enc) == (2, 100)
    assert handshake_progress(ccs + enc) is None
    assert handshake_progress(rec[:-1]) is None  # truncated record: ignored, no exception
    assert handshake_progress(b"\x16\xfe") is None


def test_lost_server_flights_are_resent_when_the_client_repeats(pki):
    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        flight3 = c.send_flight3()  # -> flight 4, which we "lose"
        lost4 = c.receive()
        assert lost4
        # the client repeats flight 3 verbatim: the server's flight 4 comes back
        # as it first went out (OpenSSL's own timer would renumber the records)
        c.send(flight3)
        again4 = c.receive()
        assert set(lost4) <= set(again4)
        c.feed(again4)
        # flight 5 -> the server finishes and sends CCS + Finished, which we "lose"
        flight5, done = c.step()
        assert flight5 and not done
        c.send(flight5)
        lost6 = c.receive()
        assert lost6
        assert server.call(lambda: len(server.server.sessions)) == 1
        c.send(flight5)
        again6 = c.receive()
        assert set(lost6) <= set(again6)
        c.feed(again6)
        _, done = c.step()
        assert done
        assert server.stats()["flight_resends"] == 2
        # the session works; once application data came, there is nothing left to repeat
        c.conn.send(b"ping")
        c.send(d.drain_bio(c.conn, d.DEFAULT_MTU))
        c.feed(c.receive())
        assert c.conn.recv(100) == b"echo ping"
        c.send(flight5)
        assert c.receive(first=0.5) == []
        assert server.stats()["flight_resends"] == 2
    finally:
        c.close()
        server.stop()


def test_a_quick_repeat_is_answered(pki):
    """The MicroPython port resends a flight after its RTO, whose floor is
    20 ms: on a fast link its repeat reaches the server less than 20 ms after
    the server's lost flight. The server must answer it (a gap of 20 ms
    between resends made it ignore such a repeat, and the client waited
    another, doubled, RTO). Here the repeat comes 12 ms after the flight."""
    import time

    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        flight3 = c.send_flight3()
        c.sock.settimeout(10.0)
        lost4 = c.sock.recv(65535)  # the server's flight (one datagram at this MTU): "lost"
        time.sleep(0.012)
        c.send(flight3)
        again4 = c.receive(first=2.0)
        assert lost4 in again4
        assert server.stats()["flight_resends"] == 1
    finally:
        c.close()
        server.stop()


def test_a_client_flight_seen_once_is_not_answered_twice(pki):
    """A lossless handshake: no resend (the client never repeats)."""
    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        for _ in range(5):
            out, done = c.step()
            if done:
                break
            c.send(out)
            c.feed(c.receive())
        assert done
        assert server.stats()["flight_resends"] == 0
    finally:
        c.close()
        server.stop()


def _seqs(dg):
    out, off = [], 0
    while off + 13 <= len(dg):
        out.append((int.from_bytes(dg[off + 3 : off + 5], "big"),
                    int.from_bytes(dg[off + 5 : off + 11], "big")))
        off += 13 + int.from_bytes(dg[off + 11 : off + 13], "big")
    return out


def test_server_records_continue_from_the_client_hello_number(pki):
    """A ClientHello resent with a higher record number (a client's own
    retransmission, or the MicroPython port's resend) gets a HelloVerifyRequest
    with that number; the server's plaintext records must continue above it,
    or a client with a replay window (Mbed TLS) drops the ServerHello."""
    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        out, _ = c.step()
        first = bytearray(out[0])
        first[5:11] = (40).to_bytes(6, "big")  # the first ClientHello "resent" as record 40
        c.send([bytes(first)])
        hvr = c.receive()
        assert _seqs(hvr[0]) == [(0, 40)]
        c.feed(hvr)
        flight3, _ = c.step()
        again = bytearray(flight3[0])
        again[5:11] = (41).to_bytes(6, "big")
        c.send([bytes(again)])
        flight4 = c.receive()
        seqs = [s for dg in flight4 for s in _seqs(dg)]
        assert seqs[0] == (0, 41) and [q for _, q in seqs] == list(range(41, 41 + len(seqs)))
        for _ in range(4):
            c.feed(flight4)
            out, done = c.step()
            if done:
                break
            c.send(out)
            flight4 = c.receive()
        assert done
        epoch0 = [s for dg in flight4 for s in _seqs(dg) if s[0] == 0]  # the CCS of the last flight
        assert epoch0 and epoch0[0][1] > 41
    finally:
        c.close()
        server.stop()


def test_a_client_that_restarts_mid_handshake_gets_a_new_one(pki):
    """A device that reboots after the server's flight 4 (a power cut in the
    middle of its handshake) sends a new ClientHello, with a new random,
    from the same address and port. It is a new handshake (RFC 6347
    §4.2.8): a HelloVerifyRequest, then a session. Before, it was fed to
    the old handshake, the server answered with its old flight as if the
    client had repeated one, and the device got nowhere until that
    handshake timed out (30 s). A ClientHello repeated with the same random
    is still answered with the flight (the test above)."""
    server = ServerThread(pki, handshake_timeout=600)
    a = Client(pki, server.port)
    try:
        a.send_flight3()
        assert a.receive()  # flight 4, then the device "restarts"
        b = Client(pki, server.port)
        b.sock.close()
        b.sock = a.sock  # the same address and port
        hello, _ = b.step()
        b.send(hello)
        got = b.receive()
        assert [g[13] for g in got] == [3]  # a HelloVerifyRequest, not the old ServerHello flight
        b.feed(got)
        flight3, _ = b.step()
        b.send(flight3)
        b.feed(b.receive())
        flight5, done = b.step()
        b.send(flight5)
        b.feed(b.receive())
        _, done = b.step()
        assert done
        b.conn.send(b"ping")
        b.send(d.drain_bio(b.conn, d.DEFAULT_MTU))
        b.feed(b.receive())
        assert b.conn.recv(100) == b"echo ping"
        assert server.stats()["flight_resends"] == 0
    finally:
        a.close()
        server.stop()
