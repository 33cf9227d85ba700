# micropython-heapsize: 256K
# The code blocks of the core reference docs (docs/coap.md, http1.md,
# asn1.md, crypto.md), run as written on CPython and on the MicroPython unix
# port: each block is found by its `<!-- snippet: NAME` marker and executed
# with only the names a reader would supply (a socket, a datagram, a signer,
# the body of an answer) set beforehand. Also the library-user rules those
# docs state (buffer reuse, None answers). tests/test_core_docs_walkthrough.py
# runs the same blocks on CPython against independent checks (cryptography)
# and the transport loops of docs/client.md against the reference server.
from _util import raises, unhex

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_DOCS = _here + "/../../docs/"


def snippet(doc, name):
    """The ```python block after `<!-- snippet: name` in docs/doc (read
    line by line: a whole doc would take more heap than the block)."""
    mark = "<!-- snippet: " + name + " "
    out = []
    state = 0  # 0: looking for the marker, 1: for the fence, 2: in the block
    f = open(_DOCS + doc)
    for line in f:
        if state == 0:
            state = 1 if line.startswith(mark) else 0
        elif state == 1:
            state = 2 if line.startswith("```python") else 1
        elif line.startswith("```"):
            break
        else:
            out.append(line)
    f.close()
    assert state == 2 and out, "%s: no snippet %s" % (doc, name)
    return "".join(out)


def run(doc, name, ns):
    exec(snippet(doc, name), ns)
    return ns


class FakeSock:
    """send/write record what goes out; read hands out canned bytes."""

    def __init__(self, data=b""):
        self.data = data
        self.out = []

    def send(self, b):
        self.out.append(bytes(b))

    write = send

    def read(self, n):
        d = self.data[:n]
        self.data = self.data[n:]
        return d


class FixedSigner:
    """A Signer with a fixed point and a fixed (structurally valid) signature."""

    public_key = b"\x04" + bytes(range(1, 65))

    def sign(self, message):
        return unhex("3006 020101 020102")


# --- docs/coap.md ---


def test_coap_codec_snippet():
    from est_lite import coap

    # the answer a reader would receive: ACK 2.05, Content-Format 281, Block2 1/M/64
    answer = coap.Message(2, 0x45, 1, b"\x9a", [(12, coap.uint_encode(281)), (23, coap.block_encode(1, 1, 2))], b"x" * 64)
    ns = run("coap.md", "coap-codec", {"sock": FakeSock(), "datagram": answer.encode()})
    sent = ns["sock"].out
    assert sent == [ns["req"].encode()] and len(sent[0]) == ns["n"]
    assert coap.decode(sent[0]).options[-1] == (17, b"\x01\x19")  # Accept 281
    assert ns["cf"] == 281 and (ns["num"], ns["more"], ns["szx"]) == (1, 1, 2)


def test_cbor_multipart_snippet():
    from est_lite_cpython import codec_server

    key, certs = b"\x30\x03\x02\x01\x00", unhex("3000")
    payload = codec_server.encode_multipart([(284, key), (281, certs)])

    class Resp:
        pass

    resp = Resp()
    resp.payload = payload
    ns = run("coap.md", "cbor-multipart", {"resp": resp, "pkcs8": key, "pkcs7": certs})
    assert [(cf, bytes(v)) for cf, v in ns["parts"]] == [(284, key), (281, certs)]
    assert ns["body"] == payload


# --- docs/http1.md ---


def test_http1_request_snippet():
    ns = run("http1.md", "http1-request", {"csr_der": b"\x30\x03\x02\x01\x00", "sock": FakeSock()})
    req = ns["sock"].out[0]
    assert req.startswith(b"POST /.well-known/est/lbl/simpleenroll HTTP/1.1\r\nHost: est.example.com:8443\r\n")
    assert b"\r\nAuthorization: Basic dXNlcjpwdw==\r\n" in req and req.endswith(b"\r\n\r\nMAMCAQA=\r\n")


def test_http1_response_snippet():
    first = b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime; smime-type=certs-only\r\nRetry-After: 5\r\nContent-Length: 4\r\n\r\nMAMC"
    second = b"HTTP/1.1 202 Accepted\r\nRetry-After: 10\r\n\r\n"
    ns = run("http1.md", "http1-response", {"sock": FakeSock(first + second)})
    ev = ns["ev"]
    assert (ev.status, ev.reason, ev.header("retry-after"), ev.content_type) == (200, "OK", "5", "application/pkcs7-mime")
    assert ev.params == {"smime-type": "certs-only"} and bytes(ev.body) == b"MAMC" and ev.retry_after == 5
    # after reset("POST") the same parser reads the next response from what is left
    p = ns["p"]
    sock = ns["sock"]
    while True:
        ev = p.next_event()
        if ev != "NEED_DATA":
            break
        p.receive_data(sock.read(512))
    assert ev.status == 202 and ev.retry_after == 10 and not ev.keep_alive


def test_http1_receive_data_none_reads_as_eof_as_documented():
    # docs/http1.md: None (a MicroPython non-blocking read with nothing
    # there) is taken as EOF, so a port must not pass it on
    from est_lite import http1
    from est_lite.errors import RemoteProtocolError

    p = http1.ResponseParser()
    p.receive_data(b"HTTP/1.1 200 OK\r\nContent-")
    p.receive_data(None)
    e = raises(RemoteProtocolError, p.next_event)
    assert "connection closed mid-response" in str(e)


def test_http1_receive_data_copies():
    from est_lite import http1

    buf = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    p = http1.ResponseParser()
    p.receive_data(memoryview(buf))
    buf[:] = b"x" * len(buf)  # the port reuses its read buffer
    ev = p.next_event()
    assert ev.status == 200 and bytes(ev.body) == b"ok"


# --- docs/asn1.md ---


def test_asn1_der_snippet():
    ns = run("asn1.md", "asn1-der", {})
    assert ns["tag"] == 2 and ns["oid"] == "1.2.840.10045.2.1" and ns["n"] == -129
    assert len(ns["kids"]) == 2 and ns["e"] == len(ns["data"])


def test_asn1_csr_builder_snippet():
    from est_lite import der

    ns = run("asn1.md", "asn1-csr-builder", {"signer": FixedSigner(), "tls_unique": bytes(range(12))})
    csr = memoryview(ns["csr_der"])
    s, e = der.read(csr, 0, der.SEQUENCE)
    assert e == len(csr)
    info_s, info_e = der.read(csr, s, der.SEQUENCE)
    # the CertificationRequestInfo the signer saw is inside, as signed
    assert bytes(csr[s : info_e]).find(FixedSigner.public_key) > 0
    # challengePassword: base64 of the 12 bytes in a PrintableString
    assert bytes(csr).find(b"\x13\x10AAECAwQFBgcICQoL") > 0


def test_apply_csrattrs_none_returns_the_builder():
    # a CsrAttrs event's attrs is None when the server has no attributes;
    # docs/asn1.md: builder.apply_csrattrs(ev.attrs) works either way
    # (was AttributeError: 'NoneType' object has no attribute 'template')
    from est_lite.csr import CsrBuilder

    b = CsrBuilder().subject(cn="dev-1")
    assert b.apply_csrattrs(None) is b
    assert b.apply_csrattrs(None, strict=True) is b
    assert b.unmet == () and b.ignored == ()


def test_asn1_pkcs7_snippet():
    from client_vectors import CA, CA_PUB, LEAF, P7_LEAF_CA

    ns = run("asn1.md", "asn1-pkcs7", {"body_der": P7_LEAF_CA})
    assert sorted(bytes(c) for c in ns["certs"]) == sorted([LEAF, CA])
    f = ns["f"]
    assert isinstance(f["serial"], int) and f["key_alg"] == "1.2.840.10045.2.1"
    assert f["key_params"] == "1.2.840.10045.3.1.7" and len(f["public_key"]) == 65
    assert len(f["not_before"]) == 6 and f["not_before"] < f["not_after"]
    # issuer and subject are DER Names, compared as bytes
    cf = [ns["pkcs7"].cert_tbs_fields(c) for c in ns["certs"]]
    ca = [x for x in cf if bytes(x["public_key"]) == CA_PUB][0]
    assert bytes(ca["subject"]) == bytes(ca["issuer"])


def test_asn1_csrattrs_snippet():
    # RFC 8951 §3.3's corrected example
    body = unhex(
        "30 41 06 09 2a 86 48 86 f7 0d 01 09 07 30 12 06 07 2a 86 48 ce 3d 02 01 31 07 06 05 2b 81 04 00 22"
        " 30 16 06 09 2a 86 48 86 f7 0d 01 09 0e 31 09 06 07 2b 06 01 01 01 01 16 06 08 2a 86 48 ce 3d 04 03 03"
    )
    ns = run("asn1.md", "asn1-csrattrs", {"body_der": body})
    a = ns["a"]
    assert a.wants_challenge_password and a.key_curve == "1.3.132.0.34"
    assert (a.hash_alg, a.signature_alg) == ("sha384", "1.2.840.10045.4.3.3")
    assert a.has("1.2.840.113549.1.9.7") and a.values("1.2.840.10045.2.1") == [unhex("06052b81040022")]


# --- docs/crypto.md ---


def _crypto_inputs(crypto):
    k = crypto.P256Key(0x1234567)
    sig = k.sign(b"message")
    r, s = crypto.decode_signature(sig)
    return {
        "der": k.export_sec1(),
        "d": 0x1234567,
        "message": b"message",
        "sha256_digest": crypto.sha256(b"message"),
        "data": b"data",
        "n": 16,
        "public_key": k.public_key,
        "der_sig": sig,
        "point_or_spki": k.public_key,
        "r": r,
        "s": s,
    }


def test_crypto_interface_snippet_micropython_port():
    from est_lite_mp import crypto

    ns = run("crypto.md", "crypto-interface", _crypto_inputs(crypto))
    key = ns["key"]
    assert crypto.verify(key.public_key, b"message", key.sign(b"message"))
    assert crypto.decode_signature(ns["der_sig"]) == (ns["r"], ns["s"])
    assert crypto.P256Key.load_der(key.export_pkcs8()).public_key == key.public_key


def test_crypto_element_signer_snippet():
    from est_lite_mp import crypto
    from est_lite_mp.secure_element import SimulatedElement

    el = SimulatedElement()

    def sign_digest_der(digest):
        return crypto.encode_signature(*_raw(el.sign_digest(digest)))

    ns = run("crypto.md", "crypto-element-signer", {"public_key_from_chip": el.public_key,
                                                   "chip_sign_digest": el.sign_digest,
                                                   "sign_digest_der": sign_digest_der})
    signer = ns["signer"]  # the second one: raw=False
    assert crypto.verify(signer.public_key, b"m", signer.sign(b"m"))


def _raw(rs):
    return int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big")


# --- docs/client.md: what the operations keep of the caller's buffers ---


def test_coap_operation_keeps_nothing_of_the_datagram_buffer():
    # docs/client.md: receive_data copies what it keeps, so a port can
    # recv_into one bytearray for every datagram
    from client_vectors import P7_LEAF_CA

    from est_lite import client as C
    from est_lite import coap

    op = C.CoapOperation(0, token=b"tk", mid=7)
    req = coap.decode(bytes(op.send(0)))
    rx = bytearray(1152)
    blocks = list(coap.blocks(P7_LEAF_CA, 2))
    for num, m, view in blocks:
        if num:
            req = coap.decode(bytes(op.send(1)))
        ans = coap.Message(2, 0x45, req.mid, b"tk", [(12, b"\x01\x19"), (23, coap.block_encode(num, m, 2))], view)
        n = ans.encode_into(rx)
        op.receive_data(memoryview(rx)[:n], 1)
        rx[:] = b"\xff" * len(rx)  # the next recv_into overwrites it
    ev = op.next_event()
    assert len(blocks) > 2 and len(ev.certs) == 2 and bytes(P7_LEAF_CA).find(ev.certs[0]) > 0


# --- the value errors the docs promise (types are Python's TypeError) ---


def test_bad_values_are_est_errors():
    from est_lite import cbor, coap, csrattrs, der, http1
    from est_lite import client as C
    from est_lite.errors import LimitError, LocalProtocolError

    L, X = LocalProtocolError, LimitError
    for exc, fn, args, kw in (
        (L, coap.request, (1, ["est"], b"123456789", 1), {}),  # a 9-byte token
        (L, coap.request, (1, ["est"], b"", 65536), {}),
        (L, coap.request, (1, ["est"], b"", 1), {"block1": (0, 0, 7)}),
        (L, coap.request, (1, ["est"], b"", 1), {"accept": -1}),
        (X, coap.decode, (b"\x40\x01\x00\x00",), {"max_message": -1}),
        (X, coap.decode, (b"\x40\x01\x00\x00\xb1x",), {"max_options": 0}),
        (L, coap.block_encode, (-1, 0, 0), {}),
        (X, coap.BlockAssembler(-1).add, (0, 0, 0, b"a"), {}),
        (X, cbor.decode_multipart, (b"\x80",), {"max_items": -1}),
        (L, http1.build_est_request, (2, "h", b"0"), {"label": "a/b"}),
        (L, http1.build_est_request, (0, "h"), {"label": "CACERTS"}),
        (L, http1.build_request, ("GET", "/", "h\r\nX: y"), {}),
        (X, http1.decode_b64_body, (b"MAMC",), {"max_out": -1}),
        (X, der.read_tlv, (b"\x30\x00", 0, None, -1), {}),
        (X, csrattrs.decode, (b"\x30\x00",), {"max_size": -1}),
        (L, C.CoapOperation, (0,), {"token": b"123456789"}),
        (L, C.CoapOperation, (0,), {"label": "a/b"}),
        (L, C.CoapOperation, (0,), {"szx": 7}),
        (L, C.CoapOperation, (2,), {"body": b""}),
        (L, C.HttpOperation, (0,), {"host": "h", "label": "sen"}),
    ):
        raises(exc, fn, *args, **kw)


def test_out_of_order_and_after_the_result():
    from est_lite import client as C
    from est_lite import coap, http1
    from est_lite.errors import LocalProtocolError

    p = http1.ResponseParser()
    p.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert p.next_event().status == 204
    raises(LocalProtocolError, p.next_event)  # reset() first
    p.receive_data(b"")
    raises(LocalProtocolError, p.receive_data, b"x")  # after EOF
    # a CoAP operation ignores datagrams after its result, and sends nothing more
    op = C.CoapOperation(1, token=b"t", mid=5)
    op.send(0)
    answer = coap.Message(2, 0x45, 5, b"t", [(12, coap.uint_encode(285))], b"").encode()
    op.receive_data(answer, 0)
    ev = op.next_event()
    assert ev.attrs is None
    op.receive_data(answer, 1)
    op.receive_data(b"garbage", 1)
    assert op.send(2) is None and op.next_event() is ev and op.next_timeout() is None
    # an HTTP operation: send() has nothing more, later bytes change nothing
    h = C.HttpOperation(1, host="h")
    h.send()
    h.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    ev = h.next_event()
    h.receive_data(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    assert h.send() is None and h.next_event() is ev
