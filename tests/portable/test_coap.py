# Portable tests of est_lite/coap.py (CPython and the MicroPython unix port).
from _util import coap_roundtrip as _roundtrip
from _util import unhex, vector

from est_lite import coap


class n:  # the est_lite.numbers values used here (not imported: saves MicroPython heap)
    ACCEPT = 17
    ACK = 2
    BLOCK2 = 23
    CF_MULTIPART_CORE = 62
    CF_PKCS7_CERTS = 281
    CHANGED = 68
    CON = 0
    CONTENT = 69
    CONTENT_FORMAT = 12
    GET = 1
    POST = 2
    URI_HOST = 3
    URI_PATH = 11
    URI_PORT = 7


# --- RFC 9148 Appendix A and B -------------------------------------------
# The appendix prints each header field by field, not as hex, and leaves the
# Message ID out: these datagrams are built from those breakdowns (MID 0x0000
# and 0x0001 chosen here). Payloads are the appendix's hex.

A1_REQUEST = unhex(
    "41 01 0000 9a"  # Ver 1, CON, TKL 1, 0.01 GET, token 0x9a
    "3b 6578616d706c652e636f6d"  # Uri-Host (delta 3, len 11) "example.com"
    "42 237d"  # Uri-Port (delta 4, len 2) 9085
    "43 657374"  # Uri-Path (delta 4, len 3) "est"
    "04 63727473"  # Uri-Path (delta 0, len 4) "crts"
    "62 0119"  # Accept (delta 6, len 2) 281
)


def test_rfc9148_a1_crts_request():
    m = _roundtrip(A1_REQUEST)
    assert (m.type, m.code, m.mid, m.token) == (n.CON, n.GET, 0, b"\x9a")
    assert coap.opt(m, n.URI_HOST) == b"example.com"
    assert coap.uint_decode(coap.opt(m, n.URI_PORT)) == 9085
    assert coap.opts(m, n.URI_PATH) == [b"est", b"crts"]
    assert coap.uint_decode(coap.opt(m, n.ACCEPT)) == n.CF_PKCS7_CERTS
    assert m.payload == b""
    built = coap.request(
        n.GET, ["est", "crts"], b"\x9a", 0, accept=281, extra_options=[(n.URI_PORT, 9085), (n.URI_HOST, "example.com")]
    )
    assert built.encode() == A1_REQUEST
    assert built == m


def test_rfc9148_a1_crts_response():
    body = vector("a1_crts_response")
    wire = unhex("61 45 0000 9a c2 0119 ff") + body  # ACK 2.05, Content-Format 281
    m = _roundtrip(wire)
    assert (m.type, m.code, m.token) == (n.ACK, n.CONTENT, b"\x9a")
    assert coap.uint_decode(coap.opt(m, n.CONTENT_FORMAT)) == 281
    assert m.payload == body and len(m.payload) == 638
    assert isinstance(m.payload, memoryview)  # zero-copy view of the datagram
    assert coap.Message(n.ACK, n.CONTENT, 0, b"\x9a", [(n.CONTENT_FORMAT, b"\x01\x19")], body).encode() == wire


def test_rfc9148_a2_sen():
    csr = vector("a2_sen_request")
    # POST /est/sen, token 0x45, Content-Format 286, Accept 281 (Uri-Host and
    # Uri-Port omitted: they coincide with the transport's, RFC 7252 §5.10.1)
    wire = unhex("41 02 0001 45 b3 657374 03 73656e 12 011e 52 0119 ff") + csr
    m = _roundtrip(wire)
    assert m.code == n.POST and m.token == b"\x45" and m.payload == csr
    assert coap.request(n.POST, ["est", "sen"], b"\x45", 1, content_format=286, accept=281, payload=csr).encode() == wire
    resp = unhex("61 44 0001 45 c2 0119 ff") + vector("a2_sen_response")  # ACK 2.04 Changed
    r = _roundtrip(resp)
    assert r.code == n.CHANGED and coap.uint_decode(coap.opt(r, n.CONTENT_FORMAT)) == 281
    assert r.payload == vector("a2_sen_response")


def test_rfc9148_a3_skg():
    from est_lite import cbor

    wire = unhex("41 02 0000 a5 b3 657374 03 736b67 12 011e 51 3e ff") + vector("a3_skg_request")
    m = _roundtrip(wire)
    assert coap.uint_decode(coap.opt(m, n.ACCEPT)) == n.CF_MULTIPART_CORE
    csr = vector("a3_skg_request")
    assert coap.request(n.POST, ["est", "skg"], b"\xa5", 0, content_format=286, accept=62, payload=csr) == m
    resp = unhex("61 44 0000 a5 c1 3e ff") + vector("a3_skg_response")
    r = _roundtrip(resp)
    assert coap.uint_decode(coap.opt(r, n.CONTENT_FORMAT)) == 62
    parts = cbor.decode_multipart(r.payload)
    assert [(cf, len(p)) for cf, p in parts] == [(284, 138), (281, 467)]


def test_rfc9148_a4_att():
    body = vector("a4_att_response")
    m = _roundtrip(unhex("41 01 0000 9b b3 657374 03 617474"))  # GET /est/att
    assert coap.opts(m, n.URI_PATH) == [b"est", b"att"]
    r = _roundtrip(unhex("61 45 0000 9b c2 011d ff") + body)
    assert coap.uint_decode(coap.opt(r, n.CONTENT_FORMAT)) == 285 and r.payload == body


def test_rfc9148_b1_block2():
    # The request of B.1 is A.1's plus Block2 0/0/64 (the option the flow
    # shows as "(2:0/0/64)"; the printed header breakdown leaves it out).
    req = _roundtrip(A1_REQUEST + unhex("61 02"))
    assert coap.block_decode(coap.opt(req, n.BLOCK2)) == (0, 0, 2)
    head = unhex("61 45 0000 9a c2 0119 b1")
    got = []
    for name, b2 in (("b1_block0", 0x0A), ("b1_block1", 0x1A), ("b1_block9", 0x92)):
        r = _roundtrip(head + bytes((b2, 0xFF)) + vector(name))
        got.append((coap.block_decode(coap.opt(r, n.BLOCK2)), len(r.payload)))
    assert got == [((0, 1, 2), 64), ((1, 1, 2), 64), ((9, 0, 2), 63)]
    # reassemble the 639-byte body (blocks 2..8 are not printed: filler)
    asm = coap.BlockAssembler(max_body=639)
    assert asm.add(0, 1, 2, vector("b1_block0")) is None
    assert asm.add(1, 1, 2, vector("b1_block1")) is None
    for i in range(2, 9):
        assert asm.next_num() == i
        assert asm.add(i, 1, 2, bytes(64)) is None
    body = asm.add(9, 0, 2, vector("b1_block9"))
    assert len(body) == 639 and body[:4] == b"\x30\x82\x02\x7b" and body[-63:] == vector("b1_block9")
