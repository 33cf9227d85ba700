# micropython-heapsize: 128K
# Portable tests of est_lite/client.py and client_http.py: bad caller
# arguments end in LocalProtocolError (a wrong value) or TypeError (a wrong
# type, where docs/client.md says so), the same on CPython and MicroPython,
# raised by the constructor before any bytes are produced.
from _util import raises

from est_lite import client as C
from est_lite.client_http import HttpOperation
from est_lite.errors import LocalProtocolError

L = LocalProtocolError


def test_auth_bytes_credentials_refused():
    # MicroPython used to send the text "b'u':b'p'" in Basic
    for a in ((b"u", b"p"), ("u", b"p"), (b"u", "p")):
        e = raises(L, HttpOperation, 2, host="h", body=b"x", auth=a, preemptive_basic=True)
        assert "(user, password)" in e.msg
        raises(L, HttpOperation, 0, host="h", auth=a)


def test_auth_not_a_pair_refused():
    for a in ("user:pw", "up", ("u",), ("u", "p", "x"), (), ["u"]):
        e = raises(L, HttpOperation, 0, host="h", auth=a, preemptive_basic=True)
        assert "auth" in e.msg
        raises(L, HttpOperation, 0, host="h", auth=a)
    raises(TypeError, HttpOperation, 0, host="h", auth=5)  # a wrong type (docs/client.md)


def test_auth_pairs_accepted():
    assert HttpOperation(0, host="h", auth=("u", "p"), preemptive_basic=True)._authz == "Basic dTpw"
    assert HttpOperation(0, host="h", auth=["u", "p"], preemptive_basic=True)._authz == "Basic dTpw"
    assert HttpOperation(0, host="h", auth=None).auth is None


def test_mid_source_bytes_of_any_length():
    # was IndexError for fewer than 2 bytes: bytes are a big-endian number, mod 65536
    assert C.MidSource(b"\x01").mid == 1
    assert C.MidSource(b"").mid == 0
    assert C.MidSource(b"\x01\x02\x03").mid == 0x203
    assert C.MidSource(b"\x01\x02").mid == 0x102
    assert C.MidSource(bytearray(b"\xff\xfe")).mid == 0xFFFE
    assert C.CoapOperation(0, mid=b"\x07")._mids.mid == 7
    raises(TypeError, C.MidSource, None)  # a wrong type (docs/client.md)


def test_max_message_negative():
    # CPython said ValueError "negative count", MicroPython MemoryError
    e = raises(L, C.CoapOperation, 0, max_message=-1)
    assert "max_message" in e.msg


def test_retry_delay_negative_attempt():
    # was ValueError "negative shift count": counts as attempt 0
    assert C.retry_delay(None, -1, 0, None, 0.0) == 5
    assert C.retry_delay(None, -100, 0, None, 0.0) == 5
    assert C.retry_delay(None, 0, 0, None, 0.0) == 5
    assert C.retry_delay(None, 2, 0, None, 0.0) == 20


def test_str_body_refused():
    # MicroPython used to send a str body as its UTF-8 bytes
    for op in (2, 3, 4):
        raises(L, HttpOperation, op, host="h", body="abc")
        raises(L, C.CoapOperation, op, body="abc")
    raises(L, C.CoapOperation, 0, body="")
    assert C.CoapOperation(2, body=bytearray(b"abc")).op == 2
