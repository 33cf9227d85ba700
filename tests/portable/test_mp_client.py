# micropython-heapsize: 256K
# Portable tests for the client runtime's pure parts (CPython and the
# MicroPython unix port): server URIs, pins, UTC arithmetic, X.509 name
# pairs, the issued-certificate check with the port's verify, the retry loop
# with a scripted transport and clock.
from _util import raises

import client_vectors as V
from est_lite.errors import LocalProtocolError, SecurityError, ServerError, TransportError
from est_lite_mp import certs
from est_lite_mp.client import EstClient, parse_pin, parse_server


def test_parse_server():
    assert parse_server("coaps://est.example") == ("coaps", "est.example", 5684, None)
    assert parse_server("https://est.example") == ("https", "est.example", 443, None)
    assert parse_server("HTTPS://10.0.0.1:8443/") == ("https", "10.0.0.1", 8443, None)
    assert parse_server("coaps://[2001:db8::1]:5685/lbl") == ("coaps", "2001:db8::1", 5685, "lbl")
    assert parse_server("https://h/.well-known/est/arbitrary") == ("https", "h", 443, "arbitrary")
    assert parse_server("https://h/.well-known/est") == ("https", "h", 443, None)
    for bad in ("http://h", "h:443", "coaps://", "coaps://h:0", "coaps://h:99999", "coaps://h:x",
                "https://h/a/b", "coaps://[::1]x", b"coaps://h", None):
        raises(LocalProtocolError, parse_server, bad)
    # what would otherwise be misread: user info as part of the host, a
    # query as a bad port, the last group of an unbracketed IPv6 address as
    # the port, a line break inside the host name
    for bad, words in (("https://user@h:8443", "user info"), ("coaps://u:p@h", "user info"),
                       ("https://h:8443?x=1", "query"), ("https://h/lbl#top", "fragment"),
                       ("https://::1:8443", "brackets"), ("coaps://fe80::1", "brackets"),
                       (" https://h", "space"), ("https://a b", "space"), ("https://h\n:1", "control"),
                       ("coaps://h\x7f", "control")):
        try:
            parse_server(bad)
        except LocalProtocolError as e:
            assert words in str(e), (bad, str(e))
        else:
            raise AssertionError("accepted %r" % bad)


def test_parse_pin():
    h = "ab" * 32
    b = bytes([0xAB]) * 32
    assert parse_pin("sha256:" + h) == b
    assert parse_pin("SHA256:" + ":".join([h[i:i + 2] for i in range(0, 64, 2)])) == b
    assert parse_pin(h) == b and parse_pin(b) == b and parse_pin(None) is None
    for bad in ("sha256:abc", "sha1:" + h, h + "00", "zz" * 32, b"\x00" * 31):
        raises(LocalProtocolError, parse_pin, bad)


def test_client_arguments():
    raises(LocalProtocolError, EstClient, "coaps://h")  # no trust, no pin: no implicit trust
    raises(LocalProtocolError, EstClient, "coaps://h", [b"x"], None, b"cert")  # cert without key
    raises(LocalProtocolError, EstClient, "coaps://h", [b"x"], None, None, None, "user", "pw")  # no Basic over CoAP
    raises(LocalProtocolError, EstClient, "coaps://h/a", [b"x"], None, None, None, None, None, "b")
    c = EstClient("coaps://h/a", b"x", label="a")
    assert c.trust == [b"x"] and c.label == "a" and c.server_name == "h" and c.binding is None


def test_seconds():
    assert certs.seconds((1970, 1, 1, 0, 0, 0)) == 0
    assert certs.seconds((2000, 3, 1, 0, 0, 0)) == 951868800
    assert certs.seconds((2024, 2, 29, 23, 59, 59)) == 1709251199
    assert certs.seconds((2050, 1, 1, 0, 0, 0)) == 2524608000
    assert certs.utc_seconds(5) == 5


def test_name_pairs_and_renewal_info():
    nb, na, subj, san = certs.renewal_info(V.LEAF)
    assert na - nb == 3650 * 86400 and nb == certs.seconds((2025, 1, 1, 0, 0, 0))
    assert subj == [("2.5.4.3", b"\x0c\x08device-1")] and san is None
    raises(Exception, certs.name_pairs, b"\x30\x03\x31\x01")


def test_check_issued():
    from est_lite_mp import crypto

    t = certs.seconds((2026, 6, 1, 0, 0, 0))
    certs.check_issued(V.LEAF, [], [V.CA], V.LEAF_PUB, crypto.verify, now=t)
    certs.check_issued(V.LEAF, [V.CA], [V.CA], None, crypto.verify, check_time=False)
    e = raises(SecurityError, certs.check_issued, V.LEAF, [], [V.CA], V.CA_PUB, crypto.verify, now=t)
    assert "public key" in str(e)
    e = raises(SecurityError, certs.check_issued, V.LEAF, [], [V.CA], V.LEAF_PUB, crypto.verify,
               now=certs.seconds((2035, 1, 1, 0, 0, 0)))
    assert "expired" in str(e)
    raises(SecurityError, certs.check_issued, V.LEAF, [], [V.CA], V.LEAF_PUB, crypto.verify,
           now=certs.seconds((2024, 12, 31, 0, 0, 0)))
    # no issuer among the given certificates, or a signature that does not verify
    e = raises(SecurityError, certs.check_issued, V.LEAF, [], [V.LEAF], V.LEAF_PUB, crypto.verify, now=t)
    assert "chain" in str(e)
    bad = bytearray(V.LEAF)
    bad[-3] ^= 1
    raises(SecurityError, certs.check_issued, bytes(bad), [], [V.CA], V.LEAF_PUB, crypto.verify, now=t)
    # a hook decides instead of the portable ECDSA check
    certs.check_issued(V.LEAF, [], [V.CA], V.LEAF_PUB, None, hook=lambda i, c: True, now=t)
    raises(SecurityError, certs.check_issued, V.LEAF, [], [V.CA], V.LEAF_PUB, None, hook=lambda i, c: False, now=t)


class _Script:
    # a CoAP transport answering from a list of functions (request -> datagram or None)
    binding = None

    def __init__(self, answers):
        self.answers = answers
        self.sent = []
        self.q = []

    def connect(self):
        pass

    def send(self, d):
        from est_lite import coap

        req = coap.decode(bytes(d))
        self.sent.append(req)
        a = self.answers.pop(0)(req) if self.answers else None
        if a is not None:
            self.q.append(a)

    def recv_into(self, buf, timeout):
        if not self.q:
            return None
        d = self.q.pop(0)
        buf[:len(d)] = d
        return len(d)

    def close(self):
        pass


class _Fake(EstClient):
    def __init__(self, answers, deadline=100):
        super().__init__("coaps://h", [b"ca"], deadline=deadline)
        self.t = 0.0
        self.sleeps = []
        self.script = _Script(answers)
        self.opened = 0

    def _mono(self):
        return self.t

    def _sleep(self, s):
        self.sleeps.append(s)
        self.t += s

    def _rand(self):
        return 0.5

    def _open_coaps(self, trust, pin, timeout):
        self.opened += 1
        if self.script.answers and self.script.answers[0] == "down":
            self.script.answers.pop(0)
            raise TransportError("server down")
        return self.script


def _ans(code, payload=b"", cf=None, max_age=None):
    from est_lite import coap

    def f(req):
        opts = []
        if cf is not None:
            opts.append((12, coap.uint_encode(cf)))
        if max_age is not None:
            opts.append((14, coap.uint_encode(max_age)))
        m = coap.Message(2, code, req.mid, req.token, opts, payload)
        return bytes(m.encode())

    return f


def test_retry_after_503_then_success():
    c = _Fake([_ans(0xA3, max_age=10), _ans(0x45, V.P7_CA, 281)])
    certs_ = c.cacerts()
    assert len(certs_) == 1 and c.sleeps == [10 + 10 * 0.25 * 0.5]
    assert len(c.script.sent) == 2 and c.script.sent[0].mid + 1 == c.script.sent[1].mid


def test_retry_after_past_deadline():
    c = _Fake([_ans(0xA3, max_age=100)], deadline=50)
    e = raises(TransportError, c.cacerts)
    assert "deadline" in str(e) and c.sleeps == []


def test_retry_after_past_deadline_says_what_the_server_said():
    # the server's text (a request waiting for approval) is in the give-up,
    # which carries the 5.03 hint: "come back later", not a link failure
    c = _Fake([_ans(0xA3, b"enrollment request 5 is waiting for approval", max_age=100)], deadline=50)
    e = raises(TransportError, c.cacerts)
    assert str(e).endswith("after 1 attempt(s): enrollment request 5 is waiting for approval"), str(e)
    assert e.coap_code == 0xA3 and e.diagnostic == "enrollment request 5 is waiting for approval"
    c = _Fake([_ans(0xA3, max_age=100)], deadline=50)
    e = raises(TransportError, c.cacerts)
    assert str(e).endswith("attempt(s)") and e.diagnostic is None and e.coap_code == 0xA3
    c = _Fake(["down"], deadline=1)
    assert raises(TransportError, c.cacerts).coap_code != 0xA3  # a link failure is not "later"


def test_link_failures_back_off_until_the_deadline():
    c = _Fake(["down", "down", "down", "down", "down"], deadline=40)
    e = raises(TransportError, c.cacerts)
    assert "deadline" in str(e) and "server down" in str(e)
    assert c.sleeps == [5 * 1.125, 10 * 1.125, 20 * 1.125] and c.t <= 40


def test_link_failure_then_success():
    c = _Fake(["down", _ans(0x45, V.P7_CA, 281)])
    assert len(c.cacerts()) == 1 and c.opened == 2


def test_error_answer_is_not_retried():
    c = _Fake([_ans(0x83, b"not allowed")])
    e = raises(ServerError, c.cacerts)
    assert "4.03" in str(e) and c.sleeps == []


def test_rtt_sample_comes_from_the_answer_not_an_ignored_datagram():
    # a datagram the exchange ignores (wrong token) arrives 5 ms after the
    # request, the answer 80 ms after it: the estimator gets 80 ms
    from est_lite import coap

    c = _Fake([_ans(0x45, V.P7_CA, 281)])
    s = c.script
    send = s.send

    def send_with_stray(d):
        send(d)
        req = s.sent[-1]
        s.q.insert(0, bytes(coap.Message(2, 0x45, req.mid, b"zz", [], b"").encode()))

    s.send = send_with_stray
    got = s.recv_into

    def recv_into(buf, timeout):
        n = got(buf, timeout)
        if n:
            c.t += 0.005 if s.q else 0.075
        return n

    s.recv_into = recv_into
    assert len(c.cacerts()) == 1
    assert c.rto.samples == 1 and c.rto.srtt == 80
