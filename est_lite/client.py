# EST operations as a sans-IO state machine, over CoAP (RFC 9148) and
# HTTP/1.1 (RFC 7030 / RFC 8951).
#
# One operation object per EST request. The port owns the socket, the
# DTLS/TLS session, the clock and the random source:
#
#   op = CoapOperation(OP_CACERTS, token=rng(4), mid=mids, rand=random)
#   while True:
#       while (d := op.send(now())) is not None: sock.send(d)
#       ev = op.next_event()            # raises EstError on failure
#       if ev is not NEED_DATA: break
#       d = sock.recv(timeout=op.next_timeout() - now())
#       if d: op.receive_data(d, now())
#
# The flow of every operation (both transports) is the table TRANSITIONS
# below; CoAP message-layer reliability (RFC 7252 §4) sits beside it in
# CoapOperation.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from est_lite import numbers as N
from est_lite.errors import EstError, LocalProtocolError, RemoteProtocolError, ServerError, TransportError

# --- the operation flow: states ---
IDLE = const(0)  # nothing sent yet
AWAIT_RESPONSE = const(1)  # a request is out, waiting for its answer
BLOCK1_CONTINUE = const(2)  # peer took a Block1 block (2.31): the next block is to send
BLOCK2_CONTINUE = const(3)  # a Block2 block arrived with M=1: the next block is to request
AUTH_CONTINUE = const(4)  # HTTP 401 and we hold credentials: the request is to send again
DONE = const(5)  # a result event is ready
RETRY_AFTER = const(6)  # the peer asked us to come back later (RetryAfter event)
ERROR = const(7)  # failed; next_event() raises the error
STATE_NAMES = ("IDLE", "AWAIT_RESPONSE", "BLOCK1_CONTINUE", "BLOCK2_CONTINUE", "AUTH_CONTINUE", "DONE", "RETRY_AFTER", "ERROR")

# --- inputs ---
SEND = const(0)  # local: a request goes out
CONTINUE1 = const(1)  # peer: 2.31 Continue for a Block1 block
MORE2 = const(2)  # peer: a Block2 block with more to come
FINAL = const(3)  # peer: the whole final answer
RETRY = const(4)  # peer: HTTP 202 / 503 + Retry-After, CoAP 5.03 (+ Max-Age)
AUTH = const(5)  # peer: HTTP 401 with a challenge we can answer
FAIL = const(6)  # error status, malformed answer, link gave up, ...
INPUT_NAMES = ("SEND", "CONTINUE1", "MORE2", "FINAL", "RETRY", "AUTH", "FAIL")

# (state, input) -> next state. Anything else is illegal: a local input
# (SEND) raises LocalProtocolError, a peer input RemoteProtocolError.
TRANSITIONS = {
    (IDLE, SEND): AWAIT_RESPONSE,
    (AWAIT_RESPONSE, CONTINUE1): BLOCK1_CONTINUE,
    (AWAIT_RESPONSE, MORE2): BLOCK2_CONTINUE,
    (AWAIT_RESPONSE, FINAL): DONE,
    (AWAIT_RESPONSE, RETRY): RETRY_AFTER,
    (AWAIT_RESPONSE, AUTH): AUTH_CONTINUE,
    (AWAIT_RESPONSE, FAIL): ERROR,
    (BLOCK1_CONTINUE, SEND): AWAIT_RESPONSE,
    (BLOCK1_CONTINUE, FAIL): ERROR,
    (BLOCK2_CONTINUE, SEND): AWAIT_RESPONSE,
    (BLOCK2_CONTINUE, FAIL): ERROR,
    (AUTH_CONTINUE, SEND): AWAIT_RESPONSE,
    (AUTH_CONTINUE, FAIL): ERROR,
    (IDLE, FAIL): ERROR,
}
# states in which send() has a new request to emit
_SENDING = (IDLE, BLOCK1_CONTINUE, BLOCK2_CONTINUE, AUTH_CONTINUE)


def transition(state, inp):
    """Next state for (state, input) from TRANSITIONS, or raise."""
    nxt = TRANSITIONS.get((state, inp))
    if nxt is None:
        msg = "%s is not allowed in state %s" % (INPUT_NAMES[inp], STATE_NAMES[state])
        if inp == SEND:
            raise LocalProtocolError(msg)
        raise RemoteProtocolError(msg)
    return nxt


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")


# --- result events ---
class Event:
    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.__dict__)


class CaCerts(Event):
    """certs: list of DER certificates (bytes), in the order received."""

    def __init__(self, certs):
        self.certs = certs


class CsrAttrs(Event):
    """attrs: the decoded est_lite.csrattrs object (None when the server has
    none: empty body, HTTP 204/404, CoAP 4.04); der: the raw body."""

    def __init__(self, attrs, der=b""):
        self.attrs = attrs
        self.der = der


class Enrolled(Event):
    """cert: the issued certificate (DER bytes); chain: the other
    certificates of the answer (DER bytes)."""

    def __init__(self, cert, chain):
        self.cert = cert
        self.chain = chain


class ServerKeyGen(Event):
    """key_der: the private key; key_type: its content format, CF_PKCS8 (284,
    plain PKCS#8) or CF_PKCS7_SERVER_KEYGEN (280, encrypted); cert, chain as
    in Enrolled."""

    def __init__(self, key_der, key_type, cert, chain):
        self.key_der = key_der
        self.key_type = key_type
        self.cert = cert
        self.chain = chain


class RetryAfter(Event):
    """The server accepted the request but has no answer yet: repeat the
    whole operation (a new operation object) after `seconds`."""

    def __init__(self, seconds):
        self.seconds = seconds


class AuthRequired(Event):
    """HTTP 401 and the operation had no credentials (or they were used
    already). challenges: the parsed WWW-Authenticate challenges."""

    def __init__(self, challenges):
        self.challenges = challenges


DEFAULT_RETRY_AFTER = const(60)  # CoAP Max-Age default (RFC 7252 §5.10.5); also HTTP 202 without Retry-After


def retry_delay(retry_after, attempt, now, deadline, rand, jitter=0.25, base=5, cap=3600):
    """Time at which to repeat an operation that ended in RetryAfter (or, with
    retry_after None, failed transiently: exponential backoff base * 2**attempt
    capped at `cap`). A jitter of up to `jitter` * delay is added, never
    subtracted: rand in [0, 1) comes from the port. Raises TransportError when
    that time would be later than `deadline` (None = no deadline)."""
    if not 0 <= rand < 1:
        raise LocalProtocolError("rand must be in [0, 1)")
    if retry_after is None:
        d = min(cap, base * (1 << min(attempt, 20)))
    else:
        d = max(0, retry_after)
    t = now + d + d * jitter * rand
    if deadline is not None and t > deadline:
        raise TransportError("the next attempt (in %s s) would be after the deadline" % (t - now))
    return t


class MidSource:
    """Message ids for one CoAP session: start from a random 16-bit value
    given by the port (e.g. from 2 random bytes), then count up. Share one
    between the operations of a session."""

    def __init__(self, start):
        if isinstance(start, (bytes, bytearray)):
            start = start[0] << 8 | start[1]
        self.mid = start & 0xFFFF

    def next(self):
        m = self.mid
        self.mid = (m + 1) & 0xFFFF
        return m


class _Operation:
    # shared bookkeeping of both transports
    state = IDLE
    _exc = None
    _event = None

    def _to(self, inp):
        self.state = transition(self.state, inp)

    def _fail(self, exc):
        if self.state not in (DONE, RETRY_AFTER, ERROR):
            self._to(FAIL)
            self._exc = exc

    def _finish(self, inp, event):
        self._to(inp)
        self._event = event

    def next_event(self):
        """NEED_DATA, or the final event (returned again on every later
        call); raises the error that ended the operation."""
        if self._exc is not None:
            raise self._exc
        if self._event is not None:
            return self._event
        return NEED_DATA


def _check_op(op, body):
    if op not in (N.OP_CACERTS, N.OP_CSRATTRS, N.OP_SIMPLEENROLL, N.OP_SIMPLEREENROLL, N.OP_SERVERKEYGEN):
        raise LocalProtocolError("unsupported EST operation %r" % (op,))
    if N.OP_METHODS[op] == N.GET:
        if body:
            raise LocalProtocolError("%s takes no request body" % N.HTTP_NAMES[op])
    elif not body:
        raise LocalProtocolError("%s needs a CSR (DER) as body" % N.HTTP_NAMES[op])


def _text(payload, limit=200):
    b = bytes(payload[:limit])
    try:
        return str(b, "utf-8")
    except UnicodeError:
        return repr(b)


# --- result decoding (shared by both transports; cf = CoAP content format) ---


def _certs(der, max_certs):
    from est_lite import pkcs7

    return [bytes(c) for c in pkcs7.certificates(der, max_certs=max_certs)]


def _enrolled(cf, der, public_key, max_certs):
    if cf == N.CF_PKIX_CERT:
        certs = [bytes(der)]
    elif cf == N.CF_PKCS7_CERTS:
        certs = _certs(der, max_certs)
    else:
        raise RemoteProtocolError("certificate answer in unexpected content format %r" % (cf,))
    if not certs:
        raise RemoteProtocolError("the answer holds no certificate")
    leaf = _pick_leaf(certs, public_key)
    return leaf, [c for c in certs if c is not leaf]


def _pick_leaf(certs, public_key):
    """The issued certificate: the one carrying public_key if given, else
    the only one, else the one that is nobody's issuer."""
    if public_key is None and len(certs) == 1:
        return certs[0]
    from est_lite import pkcs7

    fields = [pkcs7.cert_tbs_fields(c) for c in certs]
    if public_key is not None:
        pk = bytes(public_key)
        for i in range(len(certs)):
            if bytes(fields[i]["public_key"]) == pk:
                return certs[i]
        raise RemoteProtocolError("no certificate in the answer carries our public key")
    issuers = [bytes(f["issuer"]) for f in fields]
    for i in range(len(certs)):
        if bytes(fields[i]["subject"]) not in issuers:
            return certs[i]
    return certs[0]


def decode_result(op, cf, body, public_key=None, max_certs=8, cert_cf=None):
    """The result event for a successful answer body in content format cf
    (None = not stated: the operation's default)."""
    if op == N.OP_CACERTS:
        if cf == N.CF_PKIX_CERT:
            return CaCerts([bytes(body)])
        if cf not in (None, N.CF_PKCS7_CERTS):
            raise RemoteProtocolError("cacerts answer in unexpected content format %r" % (cf,))
        certs = _certs(body, max_certs)
        if not certs:
            raise RemoteProtocolError("cacerts answer holds no certificate")
        return CaCerts(certs)
    if op == N.OP_CSRATTRS:
        if cf not in (None, N.CF_CSRATTRS):
            raise RemoteProtocolError("csrattrs answer in unexpected content format %r" % (cf,))
        if not body:
            return CsrAttrs(None, b"")
        from est_lite import csrattrs

        der = bytes(body)
        return CsrAttrs(csrattrs.decode(der), der)
    if op == N.OP_SERVERKEYGEN:
        # body is a list of (cf, bytes) parts: the key and the certificate
        key = cert = None
        for pcf, part in body:
            if part is None:
                raise RemoteProtocolError("serverkeygen answer has an empty (null) part")
            if pcf in (N.CF_PKCS8, N.CF_PKCS7_SERVER_KEYGEN) and key is None:
                key = (bytes(part), pcf)
            elif pcf in (N.CF_PKCS7_CERTS, N.CF_PKIX_CERT) and cert is None:
                cert = _enrolled(pcf, part, public_key, max_certs)
            else:
                raise RemoteProtocolError("serverkeygen answer has an unexpected part (format %r)" % (pcf,))
        if key is None or cert is None:
            raise RemoteProtocolError("serverkeygen answer needs a key part and a certificate part")
        return ServerKeyGen(key[0], key[1], cert[0], cert[1])
    leaf, chain = _enrolled(N.CF_PKCS7_CERTS if cf is None else cf, body, public_key, max_certs)
    return Enrolled(leaf, chain)


# --- CoAP (RFC 7252 reliability, RFC 7959 block-wise, RFC 9148 EST) ---

ACK_TIMEOUT = const(2)  # seconds
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = const(4)
SEPARATE_TIMEOUT = const(93)  # wait for a separate response after an empty ACK (MAX_TRANSMIT_WAIT)


class CoapOperation(_Operation):
    """One EST-coaps operation as confirmable requests over one DTLS session.

    op: est_lite.numbers.OP_*; body: the CSR (DER) for POST operations;
    token: 0-8 bytes from the port's random source, used for every request
    of the operation; mid: a MidSource (shared by the operations of a
    session) or a first message id; szx: preferred block size 16 << szx for
    Block1 uploads and Block2 downloads (a peer's smaller SZX is honoured);
    accept: Accept option (e.g. CF_PKIX_CERT); skc: serverkeygen with a
    plain certificate (/skc); public_key: our 65-byte key, to pick the issued
    certificate and check it carries our key; rand: a float in [0, 1) or a
    callable returning one, for ACK_RANDOM_FACTOR (the core has no RNG).
    Times (`now`) are seconds from any monotonic clock."""

    def __init__(
        self,
        op,
        label=None,
        body=b"",
        token=b"",
        mid=0,
        szx=6,
        accept=None,
        skc=False,
        public_key=None,
        rand=0.0,
        ack_timeout=ACK_TIMEOUT,
        ack_random_factor=ACK_RANDOM_FACTOR,
        max_retransmit=MAX_RETRANSMIT,
        separate_timeout=SEPARATE_TIMEOUT,
        max_body=4096,
        max_message=1152,
        max_certs=8,
    ):
        _check_op(op, body)
        if not 0 <= szx <= 6:
            raise LocalProtocolError("szx must be 0..6 (block size 16..1024)")
        if len(token) > 8:
            raise LocalProtocolError("a CoAP token has at most 8 bytes")
        self.op = op
        self._path = N.coap_path(op, label, skc)
        self._body = memoryview(body)
        self.token = bytes(token)
        self._mids = mid if isinstance(mid, MidSource) else MidSource(mid)
        self.accept = accept
        self.public_key = None if op == N.OP_SERVERKEYGEN else public_key
        self._rand = rand
        self.ack_timeout = ack_timeout
        self.ack_random_factor = ack_random_factor
        self.max_retransmit = max_retransmit
        self.separate_timeout = separate_timeout
        self.max_body = max_body
        self.max_certs = max_certs
        self._buf = bytearray(max_message)
        self._mv = memoryview(self._buf)
        self._n = 0  # length of the request in _buf
        self._mid = -1  # message id of the outstanding request
        self._sep_mid = -1  # message id of the last separate response taken
        self._ctl = None  # an ACK or RST to send
        self._acked = False
        self._t = 0  # next retransmission (or give-up) time
        self._timeout = 0
        self._tries = 0
        self._now = 0
        self._szx1 = szx  # Block1 size in use
        self._off1 = 0  # offset of the Block1 block out
        self._last1 = True  # the block out is the last one
        self._szx2 = szx  # Block2 size requested
        self._asm = None  # coap.BlockAssembler of a Block2 transfer
        self._cf2 = None
        self.retransmissions = 0  # counters for the port's statistics
        self.ignored = 0

    # -- what to send --
    def send(self, now):
        """The next datagram to send now (a memoryview valid until the next
        call), or None. Call it until it returns None, again at
        next_timeout(), and after receive_data()."""
        self._now = now
        c = self._ctl
        if c is not None:
            self._ctl = None
            return c
        st = self.state
        if st in _SENDING:
            self._build()
            self._to(SEND)
            self._acked = False
            self._tries = 0
            r = self._rand() if callable(self._rand) else self._rand
            if not 0 <= r < 1:
                raise LocalProtocolError("rand must be in [0, 1)")
            self._timeout = self.ack_timeout * (1 + (self.ack_random_factor - 1) * r)
            self._t = now + self._timeout
            return self._mv[: self._n]
        if st == AWAIT_RESPONSE and now >= self._t:
            if self._acked:
                self._fail(TransportError("no separate response within %s s after the ACK" % self.separate_timeout))
            elif self._tries >= self.max_retransmit:
                self._fail(TransportError("no answer after %d retransmissions" % self._tries))
            else:
                self._tries += 1
                self.retransmissions += 1
                self._timeout *= 2
                self._t = now + self._timeout
                return self._mv[: self._n]
        return None

    def next_timeout(self):
        """Absolute time of the next retransmission or give-up: call send(now)
        then. A time <= now means at once; None: nothing scheduled."""
        if self._ctl is not None or self.state in _SENDING:
            return self._now
        if self.state == AWAIT_RESPONSE:
            return self._t
        return None

    def _build(self):
        from est_lite import coap

        method = N.OP_METHODS[self.op]
        cf = b1 = b2 = size1 = None
        payload = b""
        if self.state == BLOCK2_CONTINUE:
            b2 = (self._asm.next_num(), 0, self._asm.szx)
        else:
            if method == N.POST:
                cf = N.CF_PKCS10
                body = self._body
                n = len(body)
                size = 16 << self._szx1
                off = self._off1
                if n > size:
                    end = min(n, off + size)
                    payload = body[off:end]
                    self._last1 = end >= n
                    b1 = (off >> (4 + self._szx1), 0 if self._last1 else 1, self._szx1)
                    if off == 0:
                        size1 = n
                else:
                    payload = body
            if self._szx2 < 6 and self._last1:
                b2 = (0, 0, self._szx2)
        self._mid = self._mids.next()
        m = coap.request(
            method,
            self._path,
            self.token,
            self._mid,
            content_format=cf,
            accept=self.accept,
            payload=payload,
            block1=b1,
            block2=b2,
            size1=size1,
        )
        self._n = m.encode_into(self._buf)

    # -- what arrives --
    def receive_data(self, data, now):
        """Feed one datagram. Malformed, duplicate, late and foreign
        datagrams are counted in `ignored`; a confirmable response gets its
        ACK from the next send()."""
        from est_lite import coap

        self._now = now
        try:
            m = coap.decode(data)
        except EstError:
            self.ignored += 1
            return
        t = m.type
        code = m.code
        ours = bytes(m.token) == self.token
        if t == N.ACK or t == N.RST:
            if m.mid != self._mid or self.state != AWAIT_RESPONSE or self._acked:
                self.ignored += 1
            elif t == N.RST:
                self._fail(ServerError("the server reset (RST) our request"))
            elif code == N.EMPTY:
                self._acked = True
                self._t = now + self.separate_timeout
            elif ours and N.is_response(code):
                self._response(m, True)
            else:
                self.ignored += 1
            return
        # CON or NON from the server: a separate response, or noise
        if not (ours and N.is_response(code)):
            if t == N.CON:
                self._ctl = _empty(N.RST, m.mid)
            self.ignored += 1
            return
        if t == N.CON:
            self._ctl = _empty(N.ACK, m.mid)
        if m.mid == self._sep_mid or self.state != AWAIT_RESPONSE:
            self.ignored += 1
            return
        self._sep_mid = m.mid
        self._response(m, False)

    def _response(self, m, piggybacked):
        try:
            self._handle(m)
        except _Mismatch:
            # a late separate answer to an earlier block request: drop it;
            # a piggybacked one (ACK of our message id) is the peer's error
            if piggybacked:
                self._fail(RemoteProtocolError("block number in the answer does not match the request"))
            else:
                self.ignored += 1
        except EstError as e:
            self._fail(e)

    def _handle(self, m):
        from est_lite import coap

        code = m.code
        op = self.op
        if code == N.SERVICE_UNAVAILABLE:
            v = coap.opt(m, N.MAX_AGE)
            self._finish(RETRY, RetryAfter(DEFAULT_RETRY_AFTER if v is None else coap.uint_decode(v)))
            return
        if code == N.NOT_FOUND and op == N.OP_CSRATTRS:
            self._finish(FINAL, CsrAttrs(None, b""))
            return
        b1 = coap.opt(m, N.BLOCK1)
        if code == N.REQUEST_ENTITY_TOO_LARGE and b1 is not None and self._off1 == 0 and self._body:
            # RFC 7959 §2.9.3: start over in blocks of the size the server gives
            szx = coap.block_decode(b1)[2]
            if szx < self._szx1:
                self._szx1 = szx
                self._to(CONTINUE1)
                return
        cls = code >> 5
        if cls == 4 or cls == 5:
            diag = _text(m.payload)
            raise ServerError(
                "the server answered %s%s" % (N.code_str(code), (": " + diag) if diag else ""), code, diagnostic=diag
            )
        if cls != 2:
            raise RemoteProtocolError("unexpected answer code %s" % N.code_str(code))
        if b1 is not None and self._body is not None and len(self._body) > (16 << self._szx1):
            num, more, szx = coap.block_decode(b1)
            if num != self._off1 >> (4 + self._szx1):
                raise _Mismatch()
            if code == N.CONTINUE:
                if self._last1:
                    raise RemoteProtocolError("2.31 Continue after the last Block1 block")
                self._off1 += 16 << self._szx1
                if szx < self._szx1:  # the server wants smaller blocks (RFC 7959 §2.3)
                    self._szx1 = szx
                self._to(CONTINUE1)
                return
        if code == N.CONTINUE:
            raise RemoteProtocolError("2.31 Continue without a Block1 upload in progress")
        if not self._last1:
            raise RemoteProtocolError("final answer %s before the last Block1 block" % N.code_str(code))
        cf = coap.opt(m, N.CONTENT_FORMAT)
        cf = None if cf is None else coap.uint_decode(cf)
        payload = m.payload
        b2 = coap.opt(m, N.BLOCK2)
        asm = self._asm
        if b2 is not None:
            num, more, szx = coap.block_decode(b2)
            if num << (4 + szx) != (0 if asm is None else len(asm.body)):
                raise _Mismatch()
            if asm is None and more:
                s2 = coap.opt(m, N.SIZE2)
                if s2 is not None and coap.uint_decode(s2) > self.max_body:
                    raise _limit(coap.uint_decode(s2), self.max_body)
                asm = self._asm = coap.BlockAssembler(self.max_body)
                self._cf2 = cf
            if asm is not None:
                if cf != self._cf2:
                    raise RemoteProtocolError("Content-Format changed during a Block2 transfer")
                payload = asm.add(num, more, szx, payload)
                if more:
                    self._to(MORE2)
                    return
                self._asm = None
        elif asm is not None:
            raise RemoteProtocolError("a Block2 transfer ended without a Block2 option")
        if len(payload) > self.max_body:
            raise _limit(len(payload), self.max_body)
        if op == N.OP_SERVERKEYGEN:
            if cf != N.CF_MULTIPART_CORE:
                raise RemoteProtocolError("serverkeygen answer is not application/multipart-core (62)")
            from est_lite import cbor

            payload = cbor.decode_multipart(payload)
            cf = None
        self._finish(FINAL, decode_result(op, cf, payload, self.public_key, self.max_certs))


class _Mismatch(Exception):
    pass


def _limit(n, limit):
    from est_lite.errors import LimitError

    return LimitError("the answer body (%d bytes) exceeds max_body=%d" % (n, limit))


def _empty(t, mid):
    # an empty ACK or RST: 4 header bytes, version 1, no token
    return bytes((0x40 | t << 4, 0, mid >> 8, mid & 0xFF))


# --- HTTP/1.1 (RFC 7030 as corrected by RFC 8951) ---


class HttpOperation(_Operation):
    """One EST operation over an HTTP/1.1 connection (the port's TLS stream).

    host: the Host header; body: the CSR (DER) for POST operations (sent as
    base64 lines); auth: (user, password) or None. With auth, a 401 answer is
    answered automatically once (Digest preferred, else Basic), and
    preemptive_basic=True sends Basic on the first request already; cnonce
    (random bytes or str from the port) is required for Digest. Without
    auth a 401 ends in an AuthRequired event. After a response whose
    connection is not kept alive, need_new_connection is True: the port must
    reconnect before sending the next request of this operation."""

    def __init__(
        self,
        op,
        label=None,
        host="",
        body=b"",
        auth=None,
        preemptive_basic=False,
        cnonce=None,
        accept=None,
        public_key=None,
        max_body=16384,
        max_header=4096,
        max_certs=8,
    ):
        from est_lite import http1

        _check_op(op, body)
        self.op = op
        self.method = "GET" if N.OP_METHODS[op] == N.GET else "POST"
        self.path = N.https_path(op, label)
        self.label = label
        self.host = host
        self._body = body
        self.auth = auth
        self.cnonce = cnonce
        self.accept = accept
        self.public_key = None if op == N.OP_SERVERKEYGEN else public_key
        self.max_body = max_body
        self.max_certs = max_certs
        self._authz = None
        if auth is not None and preemptive_basic:
            self._authz = http1.basic_auth(auth[0], auth[1])
        self._tried = False  # credentials were sent
        self._parser = http1.ResponseParser(max_header, max_body, self.method)
        self.need_new_connection = False
        self.response = None  # the last http1.Response

    def send(self):
        """The request bytes to write now, or None."""
        if self.state not in _SENDING:
            return None
        from est_lite import http1

        data = http1.build_est_request(
            self.op, self.host, self._body, self.label, authorization=self._authz, accept=self.accept
        )
        self._tried = self._authz is not None
        self._to(SEND)
        self.need_new_connection = False
        return data

    def receive_data(self, data):
        """Feed bytes read from the connection; b"" means EOF."""
        if self.state == AWAIT_RESPONSE:
            self._parser.receive_data(data)

    def next_event(self):
        if self.state == AWAIT_RESPONSE and self._exc is None:
            from est_lite import http1

            try:
                r = self._parser.next_event()
                if r is not http1.NEED_DATA:
                    self.response = r
                    self.need_new_connection = not r.keep_alive
                    self._parser.reset()
                    self._handle(r, http1)
            except EstError as e:
                self._fail(e)
        return _Operation.next_event(self)

    def _handle(self, r, http1):
        s = r.status
        op = self.op
        if s == 202 or (s == 503 and r.retry_after is not None):
            self._finish(RETRY, RetryAfter(DEFAULT_RETRY_AFTER if r.retry_after is None else r.retry_after))
            return
        if s == 401:
            ch = http1.parse_challenges([v for k, v in r.headers if k == "www-authenticate"])
            if self.auth is None:
                self._finish(FINAL, AuthRequired(ch))
                return
            if self._tried:
                raise ServerError("the server rejected our credentials (401)", None, 401, _text(r.body))
            d = http1.pick_digest(ch)
            if d is not None:
                if self.cnonce is None:
                    raise LocalProtocolError("the server asks for Digest authentication: give a cnonce")
                self._authz = http1.digest_auth(d, self.method, self.path, self.auth[0], self.auth[1], self.cnonce)
            elif [1 for c in ch if c[0] == "basic"]:
                self._authz = http1.basic_auth(self.auth[0], self.auth[1])
            else:
                raise ServerError("401 without a Basic or Digest challenge", None, 401)
            self._to(AUTH)
            return
        if op == N.OP_CSRATTRS and s in (204, 404):
            self._finish(FINAL, CsrAttrs(None, b""))
            return
        if s != 200:
            diag = _text(r.body)
            raise ServerError(
                "the server answered %d %s%s" % (s, r.reason, (": " + diag) if diag else ""), None, s, diag
            )
        ct = r.content_type
        if op == N.OP_SERVERKEYGEN:
            if ct != N.MT_MULTIPART_MIXED or "boundary" not in r.params:
                raise RemoteProtocolError("serverkeygen answer is not multipart/mixed with a boundary")
            key, kt, certs = http1.split_serverkeygen(r.body, r.params["boundary"], self.max_body)
            kt = N.CF_PKCS8 if kt == N.MT_PKCS8 else N.CF_PKCS7_SERVER_KEYGEN
            body = [(kt, key), (N.CF_PKCS7_CERTS, certs)]
            cf = None
        else:
            cf = _HTTP_CF.get(ct, -1) if ct else None
            if cf == -1:
                raise RemoteProtocolError("unexpected Content-Type %r" % ct)
            body = http1.decode_b64_body(r.body, self.max_body)
        self._finish(FINAL, decode_result(op, cf, body, self.public_key, self.max_certs))


_HTTP_CF = {N.MT_PKCS7: N.CF_PKCS7_CERTS, N.MT_CSRATTRS: N.CF_CSRATTRS, N.MT_PKIX_CERT: N.CF_PKIX_CERT}

