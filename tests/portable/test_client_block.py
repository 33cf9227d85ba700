# micropython-heapsize: 112K
# Portable tests of est_lite/client.py: RFC 7959 block-wise transfers in
# both directions (CPython and the MicroPython unix port).
from _util import raises

import client_vectors as V
from _coap_script import TOK, answer, block, blockopt, cf, path, req, serve_get, uint
from est_lite import client as C
from est_lite import coap
from est_lite import numbers as N
from est_lite.errors import LimitError, RemoteProtocolError


def test_block2_reassembly_at_szx_0_2_6():
    big = bytes(range(256)) * 10  # 2560 bytes: 3 blocks even at 1024
    for szx, body, nreq in ((0, V.CA, 20), (2, V.CA, 5), (6, V.CA, 1), (6, big, 3)):
        op = C.CoapOperation(N.OP_CACERTS, token=TOK, szx=szx, accept=N.CF_PKIX_CERT)
        ev, n = serve_get(op, body, N.CF_PKIX_CERT, szx)
        assert ev.certs == [body] and n == nreq, (szx, n)


def test_block2_server_smaller_than_asked_and_requests():
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, szx=6, accept=N.CF_PKIX_CERT)
    ev, n = serve_get(op, V.CA, N.CF_PKIX_CERT, 1)  # server uses 32-byte blocks
    assert ev.certs == [V.CA] and n == 10
    # the follow-up requests ask for the next block at the server's size
    op = C.CoapOperation(N.OP_CACERTS, token=TOK, mid=1, szx=1)
    r = req(op.send(0))
    assert blockopt(r, N.BLOCK2) == (0, 0, 1)
    op.receive_data(answer(r, N.CONTENT, V.CA[:32], [cf(N.CF_PKIX_CERT), block(N.BLOCK2, 0, 1, 1)]), 0)
    assert op.state == C.BLOCK2_CONTINUE
    r = req(op.send(0))
    assert r.mid == 2 and blockopt(r, N.BLOCK2) == (1, 0, 1) and bytes(r.token) == TOK


def test_block2_errors():
    # a piggybacked block with the wrong number
    op = C.CoapOperation(N.OP_CACERTS, szx=0)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, bytes(16), [block(N.BLOCK2, 3, 1, 0)]), 0)
    raises(RemoteProtocolError, op.next_event)
    # short block with M=1
    op = C.CoapOperation(N.OP_CACERTS, szx=0)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, bytes(15), [block(N.BLOCK2, 0, 1, 0)]), 0)
    raises(RemoteProtocolError, op.next_event)
    # Size2 beyond max_body: refused before any more block is fetched
    op = C.CoapOperation(N.OP_CACERTS, szx=0, max_body=64)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, bytes(16), [block(N.BLOCK2, 0, 1, 0), (N.SIZE2, uint(65))]), 0)
    raises(LimitError, op.next_event)
    # no Size2: stops at max_body
    op = C.CoapOperation(N.OP_CACERTS, szx=0, max_body=40, accept=N.CF_PKIX_CERT)
    raises(LimitError, serve_get, op, bytes(100), N.CF_PKIX_CERT, 0)
    assert op.state == C.ERROR
    # content format changes mid-transfer
    op = C.CoapOperation(N.OP_CACERTS, szx=0)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, bytes(16), [cf(287), block(N.BLOCK2, 0, 1, 0)]), 0)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTENT, bytes(3), [cf(281), block(N.BLOCK2, 1, 0, 0)]), 0)
    raises(RemoteProtocolError, op.next_event)


def test_block2_late_separate_block_is_ignored():
    op = C.CoapOperation(N.OP_CACERTS, szx=0, token=TOK, accept=N.CF_PKIX_CERT)
    r0 = req(op.send(0))
    op.receive_data(answer(r0, N.CONTENT, V.CA[:16], [cf(287), block(N.BLOCK2, 0, 1, 0)]), 0)
    r1 = req(op.send(0))
    # a stale separate copy of block 0 arrives: ACKed and dropped
    op.receive_data(answer(r0, N.CONTENT, V.CA[:16], [cf(287), block(N.BLOCK2, 0, 1, 0)], type=N.CON, mid=900), 0)
    assert bytes(op.send(0))[:1] == b"\x60" and op.state == C.AWAIT_RESPONSE and op.ignored == 1
    op.receive_data(answer(r1, N.CONTENT, V.CA[16:20], [cf(287), block(N.BLOCK2, 1, 0, 0)]), 0)
    assert op.next_event().certs == [V.CA[:20]]


def run_block1(op, server_szx, final_payload, final_cf):
    """Serve a Block1 upload, answering 2.31 with server_szx; returns the
    body the server received, the final event and the requests seen."""
    got = bytearray()
    seen = []
    while True:
        d = op.send(0)
        if d is None:
            return bytes(got), op.next_event(), seen
        r = req(d)
        b1 = blockopt(r, N.BLOCK1)
        seen.append((b1, coap.opt(r, N.SIZE1) and coap.uint_decode(coap.opt(r, N.SIZE1)), len(r.payload)))
        if b1 is None:
            got.extend(r.payload)
            op.receive_data(answer(r, N.CHANGED, final_payload, [cf(final_cf)]), 0)
            continue
        num, m, szx = b1
        assert num * (16 << szx) == len(got)
        got.extend(r.payload)
        if m:
            op.receive_data(answer(r, N.CONTINUE, b"", [block(N.BLOCK1, num, 1, min(szx, server_szx))]), 0)
        else:
            op.receive_data(answer(r, N.CHANGED, final_payload, [cf(final_cf), block(N.BLOCK1, num, 0, szx)]), 0)


def test_block1_upload_with_server_reduced_szx():
    csr = bytes((i * 7) & 0xFF for i in range(300))
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2, token=TOK, accept=N.CF_PKIX_CERT)
    got, ev, seen = run_block1(op, 1, V.LEAF, N.CF_PKIX_CERT)
    assert got == csr and ev.cert == V.LEAF
    # first block 64 bytes with Size1, then 32-byte blocks from number 2 on
    assert seen[0] == ((0, 1, 2), 300, 64)
    assert seen[1] == ((2, 1, 1), None, 32)
    assert seen[-1] == ((9, 0, 1), None, 300 - 9 * 32)
    assert len(seen) == 9
    # no reduction: 64-byte blocks all along
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2, accept=N.CF_PKIX_CERT)
    got, ev, seen = run_block1(op, 6, V.LEAF, N.CF_PKIX_CERT)
    assert got == csr and len(seen) == 5 and seen[-1][0] == (4, 0, 2)
    # fits in one message: no Block1
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, accept=N.CF_PKIX_CERT)
    got, ev, seen = run_block1(op, 6, V.LEAF, N.CF_PKIX_CERT)
    assert got == csr and seen == [(None, None, 300)]


def test_block1_4_13_restarts_smaller():
    csr = bytes(100)
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, accept=N.CF_PKIX_CERT)
    r = req(op.send(0))
    assert coap.opt(r, N.BLOCK1) is None
    op.receive_data(answer(r, N.REQUEST_ENTITY_TOO_LARGE, b"", [block(N.BLOCK1, 0, 0, 2)]), 0)
    got, ev, seen = run_block1(op, 6, V.LEAF, N.CF_PKIX_CERT)
    assert got == csr and seen[0] == ((0, 1, 2), 100, 64) and ev.cert == V.LEAF


def test_block1_errors():
    csr = bytes(100)
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CHANGED, V.LEAF, [cf(287), block(N.BLOCK1, 0, 1, 2)]), 0)
    e = raises(RemoteProtocolError, op.next_event)
    assert "does not fit the Block1 upload" in str(e)
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTINUE, b"", [block(N.BLOCK1, 1, 1, 2)]), 0)  # wrong number
    raises(RemoteProtocolError, op.next_event)
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTINUE, b"", [block(N.BLOCK1, 0, 1, 2)]), 0)
    r = req(op.send(0))
    op.receive_data(answer(r, N.CONTINUE, b"", [block(N.BLOCK1, 1, 1, 2)]), 0)  # after the last block
    raises(RemoteProtocolError, op.next_event)


def test_block1_then_block2_post():
    csr = bytes(range(200))
    big = bytes(range(250)) * 2
    op = C.CoapOperation(N.OP_SIMPLEENROLL, body=csr, szx=2, accept=N.CF_PKIX_CERT)
    got = bytearray()
    while True:
        r = req(op.send(0))
        b1 = blockopt(r, N.BLOCK1)
        if b1 is not None and b1[1]:
            got.extend(r.payload)
            op.receive_data(answer(r, N.CONTINUE, b"", [block(N.BLOCK1, b1[0], 1, 2)]), 0)
            continue
        if b1 is not None:
            got.extend(r.payload)
            assert blockopt(r, N.BLOCK2) == (0, 0, 2)  # size hint on the last block
            opts = [cf(287), block(N.BLOCK1, b1[0], 0, 2), block(N.BLOCK2, 0, 1, 2)]
            op.receive_data(answer(r, N.CHANGED, big[:64], opts), 0)
            continue
        # follow-ups: POST with Block2 only, no payload
        assert r.code == N.POST and not r.payload and coap.opt(r, N.CONTENT_FORMAT) is None
        num = blockopt(r, N.BLOCK2)[0]
        m, piece = coap.block_slice(big, num, 2)
        op.receive_data(answer(r, N.CHANGED, bytes(piece), [cf(287), block(N.BLOCK2, num, m, 2)]), 0)
        if not m:
            break
    assert bytes(got) == csr and op.next_event().cert == big


