"""Group commit on the EST-coaps server's fast path (the service on the event
loop, no workers): the certificates the synchronous renders of one loop
iteration issue are written in one transaction (store.GroupCommit) by a
callback the loop runs next, and their answers are held until it has
committed. What a client received must be in the store; a row that failed
answers its client 5.00 with the reason and leaves nothing of the
certificate behind (no cached answer, no Block2 transfer); a retransmission
or a Block2 follow-up arriving while the answer is held issues nothing and
is ignored; the worker-thread path writes at once."""

import asyncio
import logging
import os
import threading
import time

import pytest
from cryptography import x509

from est_lite import coap
from est_lite import numbers as N
from est_lite_cpython.coaps_server import PlainResponse
from est_lite_cpython.coaps_transport import CoapsServerInterface, plain_request
from est_lite_cpython.store import StoreError, serial_hex
from helpers_coaps import CoapsSession, EstBothServer, make_csr, operational_device

SEN = [".well-known", "est", "sen"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps-gc"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dev(srv):
    return operational_device(srv, "device-gc")  # (issued before any test wraps the store)


def _wrap_insert(monkeypatch, store, hook):
    real = store._insert_group
    monkeypatch.setattr(store, "_insert_group", lambda rows: hook(rows, real))


def _hold_first_commit(monkeypatch, store, later=None):
    """Wrap store._insert_group: the first commit waits until `go` is set
    (`in_first` is set meanwhile); later ones are later(rows, real, n), n
    counting from 1, or plain. Returns (calls: rows per commit, in_first, go)."""
    calls = []
    in_first, go = threading.Event(), threading.Event()

    def hook(rows, real):
        calls.append(len(rows))
        if len(calls) == 1:
            in_first.set()
            go.wait(10)
            return real(rows)
        return later(rows, real, len(calls)) if later is not None else real(rows)

    _wrap_insert(monkeypatch, store, hook)
    return calls, in_first, go


def _sen(cn, mid, **kw):
    return coap.request(N.POST, SEN, os.urandom(4), mid, content_format=N.CF_PKCS10, payload=make_csr(cn)[1],
                        **kw).encode()


def _cert_serial(payload):
    from est_lite import pkcs7

    return x509.load_der_x509_certificate(bytes(pkcs7.certificates(bytes(payload))[0])).serial_number


def test_one_transaction_per_loop_iteration_and_no_answer_before_its_commit(srv, dev, monkeypatch):
    """Nine sessions: the first one's commit is held while eight more send
    their requests. The loop reads the eight in one wake-up and writes
    their certificates in one transaction; no client has its answer before
    the commit that wrote its certificate."""
    answered = []
    commits = []  # [rows, answers received when the commit began, ... when it ended]
    in_first, go = threading.Event(), threading.Event()

    def hook(rows, real):
        commits.append([len(rows), len(answered)])
        if len(commits) == 1:
            in_first.set()
            go.wait(10)
        time.sleep(0.2)  # an answer sent before this commit would arrive meanwhile
        out = real(rows)
        commits[-1].append(len(answered))
        return out

    _wrap_insert(monkeypatch, srv.ca.store, hook)
    clients = [srv.dtls_client(dev) for _ in range(9)]  # handshakes done
    results = [None] * 9

    def read(i):
        results[i] = coap.decode(clients[i].recv(timeout=20))
        answered.append(i)

    readers = []
    try:
        clients[0].send(_sen("gc-0", 0x100))
        readers.append(threading.Thread(target=read, args=(0,)))
        readers[-1].start()
        assert in_first.wait(10)
        for i in range(1, 9):
            clients[i].send(_sen("gc-%d" % i, 0x100 + i))  # (loopback: in the server's socket buffer on return)
            readers.append(threading.Thread(target=read, args=(i,)))
            readers[-1].start()
        go.set()
        for t in readers:
            t.join(20)
    finally:
        for c in clients:
            c.close()
    assert [r.code for r in results] == [N.CHANGED] * 9, [(r.code, bytes(r.payload)) for r in results]
    # no answer before its commit: none during the first, at most the
    # first's during the second (sent before it began, but its reader
    # thread may not have run yet: 0 or 1)
    assert [c[0] for c in commits] == [1, 8], commits
    assert commits[0][1:] == [0, 0] and commits[1][1] <= 1 and commits[1][2] <= 1, commits
    stored = set(srv.ca.store.all_serials())
    for r in results:
        assert serial_hex(_cert_serial(r.payload)) in stored


def test_a_failed_commit_answers_500_and_leaves_no_certificate(srv, dev, monkeypatch):
    """The answer would have gone in Block2 blocks: the 5.00 replaces it,
    a follow-up finds no transfer, a retransmission gets the 5.00 again
    and issues nothing, and the next request is served."""
    before = set(srv.ca.store.all_serials())
    calls = []

    def hook(rows, real):
        calls.append(len(rows))
        if len(calls) == 1:
            return [StoreError("the CA store ca.db: no space on the disk (test): nothing was written")] * len(rows)
        return real(rows)

    _wrap_insert(monkeypatch, srv.ca.store, hook)
    st = srv.coaps_stats()
    errors, enrolled = st.get("errors", 0), st.get("enrolled", 0)
    with srv.dtls_client(dev) as dc:
        first = _sen("gc-fail", 0x200, block2=(0, 0, 1))  # 32-byte blocks
        dc.send(first)
        r = coap.decode(dc.recv(timeout=10))
        assert r.code == 0xA0 and b"no space on the disk" in bytes(r.payload), (r.code, bytes(r.payload))
        assert coap.opt(r, 23) is None and coap.opt(r, 12) is None
        dc.send(coap.request(N.POST, SEN, os.urandom(4), 0x201, block2=(1, 0, 1)).encode())
        r2 = coap.decode(dc.recv(timeout=10))
        assert r2.code == 0x88 and b"no answer to continue" in bytes(r2.payload), (r2.code, bytes(r2.payload))
        dc.send(first)  # a retransmission: the cached 5.00, no second certificate
        r3 = coap.decode(dc.recv(timeout=10))
        assert r3.code == 0xA0 and r3.mid == 0x200 and bytes(r3.payload) == bytes(r.payload)
        assert calls == [1]
        assert set(srv.ca.store.all_serials()) == before
        assert not [t for t in srv.coaps.resource._transfers.values() if t.code == N.CHANGED]
        dc.send(_sen("gc-after", 0x202))  # the server goes on
        r4 = coap.decode(dc.recv(timeout=10))
    assert r4.code == N.CHANGED and calls == [1, 1]
    assert set(srv.ca.store.all_serials()) - before == {serial_hex(_cert_serial(r4.payload))}
    st = srv.coaps_stats()
    assert st["errors"] == errors + 2 and st["enrolled"] == enrolled + 1  # the 5.00 and the 4.08; gc-after


def test_a_retransmission_or_follow_up_while_held_issues_nothing(srv, dev, monkeypatch):
    """While the first client's commit is held, a second one sends its
    request twice (a retransmission) and a Block2 follow-up before block 0
    was answered: the loop reads all three in one wake-up; the request
    issues one certificate, the duplicate and the follow-up are ignored
    (the client retransmits: then the cache and the transfer answer)."""
    calls, in_first, go = _hold_first_commit(monkeypatch, srv.ca.store)
    before = set(srv.ca.store.all_serials())
    a, b = srv.dtls_client(dev), srv.dtls_client(dev)
    try:
        a.send(_sen("gc-a", 0x300))
        assert in_first.wait(10)
        req = _sen("gc-b", 0x400, block2=(0, 0, 2))  # 64-byte blocks
        follow = coap.request(N.POST, SEN, os.urandom(4), 0x401, block2=(1, 0, 2)).encode()
        b.send(req)
        b.send(req)
        b.send(follow)
        go.set()
        assert coap.decode(a.recv(timeout=10)).code == N.CHANGED
        r = coap.decode(b.recv(timeout=10))
        assert r.code == N.CHANGED and r.mid == 0x400 and coap.block_decode(coap.opt(r, 23)) == (0, 1, 2)
        assert b.recv(timeout=0.5) is None  # one answer for the three datagrams
        b.send(follow)
        r1 = coap.decode(b.recv(timeout=10))
        assert r1.code == N.CHANGED and r1.mid == 0x401 and coap.block_decode(coap.opt(r1, 23))[0] == 1
        b.send(req)
        assert coap.decode(b.recv(timeout=10)).payload == r.payload  # from the cache
    finally:
        a.close()
        b.close()
    assert calls == [1, 1], calls
    assert len(set(srv.ca.store.all_serials()) - before) == 2


def test_the_worker_thread_path_writes_at_once(srv, dev, monkeypatch):
    """workers > 0 (the proxy's way): no group, each certificate is written
    by the worker that issued it, before its answer."""
    from est_lite_cpython.coaps_server import EstCoapsServer

    calls = []
    _wrap_insert(monkeypatch, srv.ca.store, lambda rows, real: calls.append(rows) or real(rows))
    other = EstCoapsServer.from_config(srv.service, srv.config, port=0, workers=2)
    port = other.start()
    try:
        assert other.resource.executor
        with srv.dtls_client(dev, port=port) as dc:
            ev = CoapsSession(dc).enroll(make_csr("gc-workers")[1])
        serial = x509.load_der_x509_certificate(ev.cert).serial_number
    finally:
        other.stop()
    assert calls == []
    assert serial_hex(serial) in set(srv.ca.store.all_serials())


# -- the interface alone: held answers at shutdown and after the session closed --


class _Peer:
    def __init__(self):
        self.id = 1
        self.address = ("127.0.0.1", 40000)
        self.max_payload = 1100
        self.closed = False
        self.sent = []

    def send(self, data):
        self.sent.append(bytes(data))


class _Pool:
    async def shutdown(self):
        pass


def _interface(store):
    loop = asyncio.get_running_loop()
    iface = CoapsServerInterface(None, logging.getLogger("test"), loop)
    iface._pool = _Pool()

    def render(request):
        store.add_issued(int.from_bytes(os.urandom(8), "big"), b"\x30\x00", "CN=t", 1, 2)
        return PlainResponse(N.CHANGED, b"cert")

    iface.fast_render = render
    return iface


def test_stopping_writes_the_held_rows(srv):
    before = set(srv.ca.store.all_serials())

    async def run():
        iface = _interface(srv.ca.store)
        peer = _Peer()
        remote = iface._remote(peer)
        assert iface._fast(remote, plain_request(_sen("x", 7), remote))
        assert peer.sent == [] and len(iface._group.rows) == 1
        await iface.shutdown()  # before the loop ran the scheduled commit
        return peer.sent

    sent = asyncio.run(run())
    assert len(sent) == 1 and coap.decode(sent[0]).code == N.CHANGED
    assert len(set(srv.ca.store.all_serials()) - before) == 1


def test_a_session_closed_while_held_drops_the_answer(srv):
    before = set(srv.ca.store.all_serials())

    async def run():
        iface = _interface(srv.ca.store)
        peer = _Peer()
        remote = iface._remote(peer)
        assert iface._fast(remote, plain_request(_sen("y", 8), remote))
        peer.closed = True
        iface._session_closed(peer, "test")
        await asyncio.sleep(0)  # the loop runs the commit
        assert iface._held == [] and iface._group.rows == []
        return peer.sent

    assert asyncio.run(run()) == []
    assert len(set(srv.ca.store.all_serials()) - before) == 1  # written all the same


# -- review of c7956bf --


def test_an_answer_that_cannot_be_sent_at_the_commit_keeps_the_others(srv):
    """One held answer whose send raises (DtlsPeer.send: an OpenSSL error
    is a LocalProtocolError) must not keep the answers after it: on
    c7956bf the exception left _commit, the next session never got its
    answer and stayed `held` (its Block2 follow-ups ignored for good).
    Before the group commit, DtlsServer contained it to one datagram."""
    from est_lite.errors import LocalProtocolError

    before = set(srv.ca.store.all_serials())

    def refuse(data):
        raise LocalProtocolError("cannot send %d bytes (test)" % len(data))

    async def run():
        iface = _interface(srv.ca.store)
        bad, good = _Peer(), _Peer()
        good.id, good.address = 2, ("127.0.0.1", 40001)
        bad.send = refuse
        rb, rg = iface._remote(bad), iface._remote(good)
        assert iface._fast(rb, plain_request(_sen("bad", 9), rb))
        assert iface._fast(rg, plain_request(_sen("good", 10), rg))
        await asyncio.sleep(0)  # the loop runs the commit
        return rb, rg, good.sent

    rb, rg, sent = asyncio.run(run())
    assert len(sent) == 1 and coap.decode(sent[0]).code == N.CHANGED
    assert (rb.held, rg.held) == (0, 0)
    assert len(set(srv.ca.store.all_serials()) - before) == 2


def test_an_error_answer_whose_row_failed_is_counted_once(srv, dev, monkeypatch):
    """A render that queued its certificate's row and then answered an
    error (the service refused after its CA issued): when that row fails
    the answer is still that one error. On c7956bf fast_failed replaced it
    and counted it again: stats errors +2 and enrolled -1 for one request,
    two error lines."""
    from est_lite_cpython.coaps_server import CoapError

    svc = srv.coaps.resource.service
    real = svc.simpleenroll

    def enroll_then_refuse(label, csr, ctx):
        real(label, csr, ctx)
        raise CoapError("refused after the CA issued (test)", 0x86)

    monkeypatch.setattr(svc, "simpleenroll", enroll_then_refuse)
    calls = []

    def hook(rows, real_insert):
        calls.append(len(rows))
        return [StoreError("the CA store ca.db: no space on the disk (test): nothing was written")] * len(rows)

    _wrap_insert(monkeypatch, srv.ca.store, hook)
    before = set(srv.ca.store.all_serials())
    st = srv.coaps_stats()
    errors, enrolled = st.get("errors", 0), st.get("enrolled", 0)
    with srv.dtls_client(dev) as dc:
        dc.send(_sen("gc-refused", 0x500))
        r = coap.decode(dc.recv(timeout=10))
    assert calls == [1]
    assert r.code == 0x86 and b"refused after the CA issued" in bytes(r.payload), (r.code, bytes(r.payload))
    st = srv.coaps_stats()
    assert (st.get("errors", 0), st.get("enrolled", 0)) == (errors + 1, enrolled)
    assert set(srv.ca.store.all_serials()) == before


def test_a_failed_row_drops_its_own_block2_transfer_not_the_next_ones(srv, dev, monkeypatch):
    """Two enrollments on one session in one wake-up, both answered in
    Block2 blocks: the first one's row fails, the second's is written. The
    failure drops the first one's transfer only; on c7956bf it dropped
    whatever transfer the session had under that resource (by then the
    second one's), and the second client's block 1 was 4.08 though its
    certificate was in the store."""
    def second_fails_its_first_row(rows, real, n):
        if n == 2:
            return [StoreError("the CA store ca.db: no space on the disk (test): nothing was written")] + \
                real(rows[1:])
        return real(rows)

    calls, in_first, go = _hold_first_commit(monkeypatch, srv.ca.store, second_fails_its_first_row)
    before = set(srv.ca.store.all_serials())
    a, b = srv.dtls_client(dev), srv.dtls_client(dev)
    try:
        a.send(_sen("gc-x", 0x600))
        assert in_first.wait(10)
        b.send(_sen("gc-fails", 0x700, block2=(0, 0, 2)))  # 64-byte blocks
        b.send(_sen("gc-stored", 0x701, block2=(0, 0, 2)))
        go.set()
        assert coap.decode(a.recv(timeout=10)).code == N.CHANGED
        r1 = coap.decode(b.recv(timeout=10))
        r2 = coap.decode(b.recv(timeout=10))
        assert (r1.mid, r1.code) == (0x700, 0xA0), (r1.mid, r1.code, bytes(r1.payload))
        assert (r2.mid, r2.code) == (0x701, N.CHANGED) and coap.block_decode(coap.opt(r2, 23)) == (0, 1, 2)
        body = bytes(r2.payload)
        num = 1
        while True:
            b.send(coap.request(N.POST, SEN, os.urandom(4), 0x702 + num, block2=(num, 0, 2)).encode())
            r = coap.decode(b.recv(timeout=10))
            assert r.code == N.CHANGED, (num, r.code, bytes(r.payload))
            body += bytes(r.payload)
            if not coap.block_decode(coap.opt(r, 23))[1]:
                break
            num += 1
    finally:
        a.close()
        b.close()
    assert calls == [1, 2], calls
    new = set(srv.ca.store.all_serials()) - before
    assert len(new) == 2 and serial_hex(_cert_serial(body)) in new  # gc-x and gc-stored, whole
