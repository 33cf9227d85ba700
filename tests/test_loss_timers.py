"""Waits and datagrams a lossy enrollment spends that are not the RTO
(issue #6; docs/client-runtime.md, "Datagram loss", says how they were
found: bench/loss_timeline.py and the relay's traces).

A flight of the client's that comes in two datagrams, the first lost: the
server sees the second half, then both again. The first half is the
client's NEXT flight, not a repeat of the one our last flight answered, so
our flight reached the client and must not be sent again. The server took
it for a repeat (its check compared with the furthest fragment seen, which
the second half had raised) and sent its ServerHello flight once more: an
874-byte datagram for nothing, seen in a relay trace after Mbed TLS had
lowered its MTU (508 bytes) on repeated losses."""

import pytest

from est_lite_cpython import dtls as d
from helpers_dtls import Pki, ServerThread
from test_dtls_flight_resend import Client


@pytest.fixture(scope="module")
def pki():
    return Pki()


def _records(dg):
    out, off = [], 0
    while off + 13 <= len(dg):
        end = off + 13 + int.from_bytes(dg[off + 11:off + 13], "big")
        out.append(dg[off:end])
        off = end
    return out


def _renumber(recs, seq):
    # a resent copy: plaintext records get new sequence numbers (as Mbed
    # TLS's own resend and est_lite_mp.dtls._Link's do; the same numbers
    # again would be dropped as replays), the encrypted Finished goes as is
    out = []
    for r in recs:
        if r[3:5] == b"\x00\x00":
            r = r[:5] + seq.to_bytes(6, "big") + r[11:]
            seq += 1
        out.append(r)
    return b"".join(out)


def test_the_first_half_of_a_split_flight_after_the_second_is_not_a_repeat(pki):
    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        c.send_flight3()
        flight4 = c.receive()
        assert flight4
        c.feed(flight4)
        flight5, done = c.step()
        assert not done
        recs = [r for dg in flight5 for r in _records(dg)]
        assert len(recs) >= 4  # Certificate, ClientKeyExchange, CertificateVerify, CCS, Finished
        c.send([b"".join(recs[2:])])  # the first half is lost
        # nothing to answer yet (OpenSSL's own 1 s timer may resend flight 4
        # with new record numbers on a slow machine: not our resend)
        assert not set(flight4) & set(c.receive(first=0.5))
        c.send([_renumber(recs[:2], 40), _renumber(recs[2:], 42)])  # the client resends both halves
        got = c.receive()
        assert not set(flight4) & set(got), "the ServerHello flight came again"
        assert server.stats()["flight_resends"] == 0
        c.feed(got)
        _, done = c.step()
        assert done
        c.conn.send(b"ping")
        c.send(d.drain_bio(c.conn, d.DEFAULT_MTU))
        c.feed(c.receive())
        assert c.conn.recv(100) == b"echo ping"
    finally:
        c.close()
        server.stop()


def test_a_split_flight_repeated_after_our_lost_answer_is_a_repeat(pki):
    """The other side of the rule above (review of 891ed7e): the client's
    split flight came in full (first half lost once), our CCS + Finished
    were lost, and the client sends its flight again. Each half reaches no
    further than the flight our last flight answered, so the first to
    arrive, either half, brings our flight back at once (no wait for
    OpenSSL's 1 s timer)."""
    import time

    server = ServerThread(pki)
    c = Client(pki, server.port)
    try:
        c.send_flight3()
        c.feed(c.receive())
        flight5, _ = c.step()
        recs = [r for dg in flight5 for r in _records(dg)]
        c.send([b"".join(recs[2:])])  # the first half is lost
        assert c.receive(first=0.5) == []
        c.send([_renumber(recs[:2], 40), _renumber(recs[2:], 42)])
        lost6 = c.receive()  # our CCS + Finished: "lost"
        assert lost6
        for n, half in enumerate((recs[:2], recs[2:])):  # the repeat's first half, then (later) its second alone
            time.sleep(0.05)  # past flight_resend_gap
            c.send([_renumber(half, 50 + 10 * n)])
            again = c.receive()  # OpenSSL's own resend (after 1 s) would bring new record numbers
            assert set(lost6) <= set(again), n
        assert server.stats()["flight_resends"] == 2
        c.feed(again)
        _, done = c.step()
        assert done
    finally:
        c.close()
        server.stop()
