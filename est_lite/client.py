# EST operations as a sans-IO state machine, over CoAP (RFC 9148, here)
# and HTTP/1.1 (RFC 7030 / RFC 8951, HttpOperation in client_http.py).
#
# One operation object per EST request. The port owns the socket, the
# DTLS/TLS session, the clock and the random source:
#
#   op = CoapOperation(OP_CACERTS, token=rng(4), mid=mids, rand=rnd)
#   while True:
#       d = op.send(now())              # call until None
#       while d is not None:
#           sock.send(d); d = op.send(now())
#       ev = op.next_event()            # raises EstError on failure
#       if ev is not NEED_DATA: break
#       d = sock.recv(timeout=op.next_timeout() - now())
#       if d: op.receive_data(d, now())
#
# The flow of every operation (both transports) is the table _T below
# (TRANSITIONS as a dict); CoAP message-layer reliability (RFC 7252 §4) sits
# beside it in CoapOperation.

from est_lite.errors import (
    EstError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    const,
)

# Private copies of est_lite.numbers values: mpy-cross folds them into the
# bytecode (no name lookups, no stored names, numbers is not loaded).
# tests/test_client_pair.py checks they equal the numbers module.
_CON = const(0)
_ACK = const(2)
_RST = const(3)
_GET = const(1)
_POST = const(2)
_CONTINUE = const(0x5F)
_NOT_FOUND = const(0x84)
_REQUEST_ENTITY_TOO_LARGE = const(0x8D)
_SERVICE_UNAVAILABLE = const(0xA3)
_CONTENT_FORMAT = const(12)
_MAX_AGE = const(14)
_BLOCK2 = const(23)
_BLOCK1 = const(27)
_SIZE2 = const(28)
_ETAG = const(4)
_CF_MULTIPART_CORE = const(62)
_CF_PKCS7_SERVER_KEYGEN = const(280)
_CF_PKCS7_CERTS = const(281)
_CF_PKCS8 = const(284)
_CF_CSRATTRS = const(285)
_CF_PKCS10 = const(286)
_CF_PKIX_CERT = const(287)
_OP_CACERTS = const(0)
_OP_CSRATTRS = const(1)
_OP_SERVERKEYGEN = const(4)

# --- the operation flow: states ---
_IDLE = const(0)  # nothing sent yet
_AWAIT_RESPONSE = const(1)  # a request is out, waiting for its answer
_BLOCK1_CONTINUE = const(2)  # peer took a Block1 block (2.31): the next block is to send
_BLOCK2_CONTINUE = const(3)  # a Block2 block came with M=1: the next block is to request
_AUTH_CONTINUE = const(4)  # HTTP 401 and we hold credentials: the request is to send again
_DONE = const(5)  # a result event is ready
_RETRY_AFTER = const(6)  # the peer asked us to come back later (RetryAfter event)
_ERROR = const(7)  # failed; next_event() raises the error

# --- inputs ---
_SEND = const(0)  # local: a request goes out
_CONTINUE1 = const(1)  # peer: 2.31 Continue for a Block1 block (or 4.13 with a smaller block size)
_MORE2 = const(2)  # peer: a Block2 block with more to come
_FINAL = const(3)  # peer: the whole final answer
_RETRY = const(4)  # peer: HTTP 202 / 503 + Retry-After, CoAP 5.03 (+ Max-Age)
_AUTH = const(5)  # peer: HTTP 401 with a challenge we can answer
_FAIL = const(6)  # error status, malformed answer, link gave up, ...

_SN = const("IDLE AWAIT_RESPONSE BLOCK1_CONTINUE BLOCK2_CONTINUE AUTH_CONTINUE DONE RETRY_AFTER ERROR")
_IN = const("SEND CONTINUE1 MORE2 FINAL RETRY AUTH FAIL")

# The table: next state for (state, input). One row of 7 inputs (SEND,
# CONTINUE1, MORE2, FINAL, RETRY, AUTH, FAIL) per state; "-" is illegal: a
# local input (SEND) raises LocalProtocolError, a peer input
# RemoteProtocolError. DONE, RETRY_AFTER and ERROR are final (no row).
_T = const(
    b"1-----7"  # IDLE
    b"-235647"  # AWAIT_RESPONSE
    b"1-----7"  # BLOCK1_CONTINUE
    b"1-----7"  # BLOCK2_CONTINUE
    b"1-----7"  # AUTH_CONTINUE
)
# states in which send() has a new request to emit: IDLE and the *_CONTINUE
# states (SENDING, as a tuple, from __getattr__)


def transition(state, inp):
    """Next state for (state, input) from the table, or raise."""
    n = _T[state * 7 + inp] - 48 if state < _DONE else -1
    if n < 0:
        m = "%s not allowed in state %s" % (_IN.split()[inp], _SN.split()[state])
        raise LocalProtocolError(m) if inp == _SEND else RemoteProtocolError(m)
    return n


NEED_DATA = "NEED_DATA"  # the same object as est_lite.http1.NEED_DATA


# --- result events ---
class Event:
    _f = ""
    diagnostic = None  # RetryAfter, CsrAttrs: the server's text (its 202/5.03 or 404 body), or None

    def __init__(self, *a):
        for k, v in zip(self._f.split(), a):
            setattr(self, k, v)

    def __repr__(self):
        return "%s%r" % (type(self).__name__, tuple(getattr(self, k) for k in self._f.split()))


# The Event subclasses and their fields (docs/client.md, Events):
#   CaCerts(certs)            DER certificates (bytes), in the order received
#   CsrAttrs(attrs, der, diagnostic)  est_lite.csrattrs.CsrAttrs, or None when
#                             the server has none (empty body, HTTP 204/404, CoAP
#                             4.04); diagnostic: the text of a 204/404/4.04, or None
#   Enrolled(cert, chain)     the issued certificate, the others (DER bytes)
#   ServerKeyGen(key_der, key_type, cert, chain)  key_type: CF_PKCS8 (284) or
#                             CF_PKCS7_SERVER_KEYGEN (280, CMS-protected)
#   RetryAfter(seconds, diagnostic)  repeat the operation (a new object) later;
#                             diagnostic: the server's text (202 body, 5.03 payload), or None
#   AuthRequired(challenges)  HTTP 401 without credentials: WWW-Authenticate
#                             challenges [(scheme, {param: value})]
# Each class is made the first time it is used (module __getattr__ or the
# first event of its kind), so a device holds only the ones it meets.
_classes = {}


def _event_class(name):
    c = _classes.get(name)
    if c is None:
        for d in (
            "CaCerts:certs CsrAttrs:attrs,der,diagnostic Enrolled:cert,chain"
            " ServerKeyGen:key_der,key_type,cert,chain RetryAfter:seconds,diagnostic AuthRequired:challenges"
        ).split():
            n, f = d.split(":")
            if n == name:
                # setdefault: two threads making the class at once get the same one
                c = _classes.setdefault(name, type(name, (Event,), {"_f": f.replace(",", " ")}))
    return c


def _make_event(name, *a):
    return _event_class(name)(*a)


_DEFAULT_RETRY_AFTER = const(60)  # CoAP Max-Age default (RFC 7252 §5.10.5); also HTTP 202 without Retry-After


def _rand(r):
    # a float in [0, 1) from the port (or a callable returning one)
    if callable(r):
        r = r()
    if not 0 <= r < 1:
        raise LocalProtocolError("rand must be in [0, 1)")
    return r


def retry_delay(retry_after, attempt, now, deadline, rand, jitter=0.25, base=5, cap=3600):
    """Time at which to repeat an operation that ended in RetryAfter (or, with
    retry_after None, failed transiently: backoff base * 2**attempt, at most
    cap; a negative attempt counts as 0). Jitter of up to jitter * delay is
    added, never subtracted; rand in [0, 1) comes from the port. Raises TransportError when that time is past
    `deadline` (None: no deadline)."""
    d = min(cap, base << max(0, min(attempt, 20))) if retry_after is None else max(0, retry_after)
    t = now + d + d * jitter * _rand(rand)
    if deadline is not None and t > deadline:
        raise TransportError("next attempt past the deadline")
    return t


class MidSource:
    """CoAP message ids for one session: start at a random 16-bit value (an
    int or 2 random bytes from the port; bytes of another length are taken
    as a big-endian number, mod 65536), then count up. Share one between
    the operations of a session."""

    def __init__(self, start):
        if not isinstance(start, int):
            start = int.from_bytes(start, "big")
        self.mid = start & 0xFFFF

    def next(self):
        m = self.mid
        self.mid = (m + 1) & 0xFFFF
        return m


# --- result decoding (both transports; cf = CoAP content format) ---


def _certs(cf, der, max_certs):
    if cf == _CF_PKIX_CERT:
        return [bytes(der)]
    if cf != _CF_PKCS7_CERTS:
        raise RemoteProtocolError("unexpected content format %r" % (cf,))
    from est_lite import pkcs7

    return [bytes(c) for c in pkcs7.certificates(der, max_certs=max_certs)]


def _leaf(certs, pk):
    # the issued certificate: the one carrying our public key pk if given,
    # else the only one, else the first one that issued none of the others.
    # Every certificate is parsed (a malformed one is an error), one at a time.
    leaf = certs[0]
    if pk is not None or len(certs) > 1:
        from est_lite import pkcs7

        pk = None if pk is None else bytes(pk)
        names = []  # (issuer, subject) of each certificate
        leaf = None
        for c in certs:
            f = pkcs7.cert_tbs_fields(c)
            if pk is None:
                names.append((bytes(f["issuer"]), bytes(f["subject"])))
            elif leaf is None and bytes(f["public_key"]) == pk:
                leaf = c
        f = None  # the last dict: not kept while the event is made
        if pk is None:
            issuers = [i for i, _ in names]
            leaf = certs[0]
            for i in range(len(certs)):
                if names[i][1] not in issuers:
                    leaf = certs[i]
                    break
        elif leaf is None:
            raise RemoteProtocolError("no certificate with our public key")
    return leaf, [c for c in certs if c is not leaf]


def decode_result(op, cf, body, public_key=None, max_certs=8):
    """The result event for a successful answer `body` in content format cf
    (None: not stated, the operation's default). For serverkeygen, body is
    the list of (cf, bytes) parts."""
    if op == _OP_SERVERKEYGEN:
        key = certs = None
        for pcf, part in body:
            if part is None:
                break
            if pcf in (_CF_PKCS8, _CF_PKCS7_SERVER_KEYGEN) and key is None:
                key = (bytes(part), pcf)
            elif certs is None:
                certs = _certs(pcf, part, max_certs)
            else:
                break
        else:
            if key and certs:
                return _make_event("ServerKeyGen", key[0], key[1], *_leaf(certs, None))
        raise RemoteProtocolError("serverkeygen: need one key and one certificate part")
    if op == _OP_CSRATTRS:
        if cf not in (None, _CF_CSRATTRS):
            raise RemoteProtocolError("unexpected content format %r" % (cf,))
        der = bytes(body)
        if not der:
            return _make_event("CsrAttrs", None, der)
        from est_lite import csrattrs

        return _make_event("CsrAttrs", csrattrs.decode(der), der)
    certs = _certs(_CF_PKCS7_CERTS if cf is None else cf, body, max_certs)
    if op == _OP_CACERTS:
        return _make_event("CaCerts", certs)
    return _make_event("Enrolled", *_leaf(certs, public_key))


def _text(payload, limit=200):
    # a diagnostic payload as text for error messages: escaped (repr) when
    # not UTF-8 or holding control characters (a peer's ESC, CR or LF must
    # not reach a terminal or a log line as such)
    # not LF-terminated: the trailing line break of an HTTP body is no reason to escape it
    b = bytes(payload[:limit]).strip()
    for c in b:
        if c < 32 or c == 127:
            return repr(b)
    try:
        return str(b, "utf-8")
    except UnicodeError:
        return repr(b)


class Operation:
    """Shared part of CoapOperation and HttpOperation: op, state, the
    result, the limits."""

    state = _IDLE
    _exc = None
    _event = None

    def __init__(self, op, body, public_key, max_body, max_certs):
        if op not in (0, 1, 2, 3, 4):
            raise LocalProtocolError("unsupported EST operation %r" % (op,))
        if (op < 2) == bool(body) or type(body) is str:
            raise LocalProtocolError("no body for cacerts/csrattrs, the CSR (bytes) for the others")
        self.op = op
        self._body = body
        self.public_key = None if op == _OP_SERVERKEYGEN else public_key
        self.max_body = max_body
        self.max_certs = max_certs

    def _to(self, inp):
        self.state = transition(self.state, inp)

    def _fail(self, exc):
        if self.state < _DONE:
            self._to(_FAIL)
            # the operation's name in front: "csrattrs: DER: truncated at offset 0"
            n = "cacerts csrattrs enroll reenroll serverkeygen".split()[self.op] + ": "
            if not exc.msg.startswith(n):
                exc = type(exc)(n + exc.msg, exc.coap_code, exc.http_status, exc.diagnostic)
            self._exc = exc

    def _finish(self, inp, event):
        self._to(inp)
        self._event = event

    def _result(self, cf, body):
        self._finish(_FINAL, decode_result(self.op, cf, body, self.public_key, self.max_certs))

    def next_event(self):
        """NEED_DATA, or the final event (again on every later call); raises
        the error that ended the operation."""
        if self._exc is not None:
            raise self._exc
        return self._event or NEED_DATA


# --- CoAP (RFC 7252 reliability, RFC 7959 block-wise, RFC 9148 EST) ---

_ACK_TIMEOUT = const(2)  # seconds
_MAX_RETRANSMIT = const(4)
_SEPARATE_TIMEOUT = const(93)  # wait for a separate response after an empty ACK (MAX_TRANSMIT_WAIT)


class CoapOperation(Operation):
    """One EST-coaps operation as confirmable requests over one DTLS session.

    op: est_lite.numbers.OP_*; body: the CSR (DER) of POST operations;
    token: 0-8 bytes from the port's random source, used for every request
    of the operation; mid: a MidSource shared by the operations of a
    session (or a first message id); szx: preferred block size 16 << szx
    for Block1 uploads and Block2 downloads (a server's smaller size is
    honoured); accept: Accept option (e.g. CF_PKIX_CERT); skc: serverkeygen
    with a plain certificate (/skc); public_key: our 65-byte key, to pick
    and check the issued certificate; rand: a float in [0, 1) or a callable
    returning one, for ACK_RANDOM_FACTOR (the core has no RNG); buf: a
    bytearray to encode requests into (shared by a session), else one
    just large enough for the largest request (at most max_message bytes)
    is made. `now`: seconds from any monotonic clock."""

    # per-operation state (class attributes are the initial values)
    _n = 0  # length of the request in _mv
    _mid = -1  # message id of the request out
    _sep = -1  # message id of the last separate response taken
    _ctl = None  # an ACK or RST to send
    _acked = False  # empty ACK seen: wait for the separate response
    _t = 0  # time of the next retransmission or give-up
    _tmo = 0  # current retransmission timeout
    _tries = 0
    _now = 0
    _off1 = 0  # offset of the Block1 block out
    _b1 = False  # the request out carries Block1
    _last1 = True  # ... and it is the last block
    _asm = None  # coap.BlockAssembler of a Block2 transfer (.cf: its (Content-Format, ETag))
    retransmissions = 0  # statistics for the port
    ignored = 0

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
        ack_timeout=_ACK_TIMEOUT,
        ack_random_factor=1.5,
        max_retransmit=_MAX_RETRANSMIT,
        separate_timeout=_SEPARATE_TIMEOUT,
        max_body=4096,
        max_message=1152,
        max_certs=8,
        buf=None,
    ):
        super().__init__(op, body, public_key, max_body, max_certs)
        if not 0 <= szx <= 6 or len(token) > 8 or max_message < 0:
            raise LocalProtocolError("szx 0..6, token <= 8 bytes, max_message >= 0")
        if label is None:  # = paths.coap_path(op, None, skc), without loading paths
            self._path = [".well-known", "est", "skc" if skc and op == 4 else "crts att sen sren skg".split()[op]]
        else:
            from est_lite import paths

            self._path = paths.coap_path(op, label, skc)
        self.token = bytes(token)
        self._mids = mid if isinstance(mid, MidSource) else MidSource(mid)
        self.accept = accept
        self.rand = rand
        self.ack_timeout = ack_timeout
        self.ack_random_factor = ack_random_factor
        self.max_retransmit = max_retransmit
        self.separate_timeout = separate_timeout
        self._body = memoryview(body)
        # the largest request: header, token, options (<= 33 bytes besides
        # Uri-Path), the payload marker and one Block1 block of the body
        n = 48 + sum([len(x) + 3 for x in self._path]) + min(len(body), 16 << szx)
        self._mv = memoryview(buf or bytearray(min(n, max_message)))
        self._szx1 = szx  # Block1 size in use
        self.szx = szx  # Block2 size to ask for

    def send(self, now):
        """The next datagram to send now (a memoryview valid until the next
        call), or None. Call until None, again at next_timeout() and after
        receive_data()."""
        self._now = now
        c = self._ctl
        if c is not None:
            self._ctl = None
            return c
        st = self.state
        if st != _AWAIT_RESPONSE and st < _DONE:
            r = _rand(self.rand)
            self._build()
            self._to(_SEND)
            self._acked = False
            self._tries = 0
            self._tmo = self.ack_timeout * (1 + (self.ack_random_factor - 1) * r)
        elif st != _AWAIT_RESPONSE or now < self._t:
            return None
        elif self._acked:
            return self._fail(TransportError("no separate response %d s after the ACK" % self.separate_timeout))
        elif self._tries >= self.max_retransmit:
            return self._fail(TransportError("no answer after %d retransmissions%s" % (self._tries, self._ign())))
        else:
            self._tries += 1
            self.retransmissions += 1
            self._tmo *= 2
        self._t = now + (self.separate_timeout if self._acked else self._tmo)
        return self._mv[: self._n]

    def _ign(self):
        # for a give-up message: answers that came but were not ours
        n = self.ignored
        return "; %d datagram(s) ignored (malformed, too large, or wrong token, message ID or type)" % n if n else ""

    def next_timeout(self):
        """Absolute time at which to call send(now) again (a retransmission
        or giving up); a time <= now means at once; None: nothing scheduled."""
        if self._ctl is not None or self.state != _AWAIT_RESPONSE and self.state < _DONE:
            return self._now
        if self.state == _AWAIT_RESPONSE:
            return self._t

    def _build(self):
        from est_lite import coap

        cf = b1 = b2 = s1 = None
        pl = b""
        a = self._asm
        if self.state == _BLOCK2_CONTINUE:
            b2 = (a.next_num(), 0, a.szx)
        else:
            pl = self._body
            n = len(pl)
            if n:
                cf = _CF_PKCS10
                z = self._szx1
                off = self._off1
                if n > 16 << z:
                    end = off + (16 << z)
                    self._last1 = end >= n
                    b1 = (off >> (4 + z), not self._last1, z)
                    pl = pl[off:end]
                    if not off:
                        s1 = n
            if self.szx < 6 and self._last1:
                b2 = (0, 0, self.szx)
        self._b1 = b1 is not None
        self._mid = self._mids.next()
        m = coap.request(
            _POST if self.op > 1 else _GET,
            self._path,
            self.token,
            self._mid,
            content_format=cf,
            accept=self.accept,
            payload=pl,
            block1=b1,
            block2=b2,
            size1=s1,
        )
        self._n = m.encode_into(self._mv)

    def receive_data(self, data, now):
        """Feed one datagram. Malformed, duplicate, late and foreign ones are
        counted in `ignored`; a confirmable response gets its ACK (and a
        foreign one an RST) from the next send()."""
        from est_lite import coap

        self._now = now
        try:
            m = coap.decode(data)
        except EstError:
            m = None
        pig = -1  # the answer to take: 1 piggybacked, 0 separate, -1 none
        if m is not None:
            t = m.type
            mine = m.code >= 0x40 and m.token == self.token
            if t >= _ACK:  # ACK or RST
                if m.mid == self._mid and self.state == _AWAIT_RESPONSE and not self._acked:
                    if t == _RST:
                        return self._fail(ServerError("the server reset (RST) our request"))
                    if not m.code:
                        self._acked = True
                        self._t = now + self.separate_timeout
                        return
                    if mine:
                        pig = 1
            elif t == _CON and not mine:
                self._ctl = _empty(_RST, m.mid)
            elif mine:
                if t == _CON:
                    self._ctl = _empty(_ACK, m.mid)
                if m.mid != self._sep and self.state == _AWAIT_RESPONSE:
                    self._sep = m.mid
                    pig = 0
        try:
            if pig < 0 or self._handle(m):
                # a block that does not fit: a late separate answer to an
                # earlier request is dropped; a piggybacked one is an error
                if pig > 0:
                    raise RemoteProtocolError("answer for another block")
                self.ignored += 1
        except EstError as e:
            self._fail(e)

    def _handle(self, m):
        # returns True for an answer to another block
        from est_lite import coap

        code = m.code
        opt = coap.opt
        u = coap.uint_decode
        if code == _SERVICE_UNAVAILABLE:
            v = opt(m, _MAX_AGE)
            return self._finish(_RETRY, _make_event("RetryAfter", _DEFAULT_RETRY_AFTER if v is None else u(v),
                                                    _text(m.payload) or None))
        if code == _NOT_FOUND and self.op == _OP_CSRATTRS:
            return self._finish(_FINAL, _make_event("CsrAttrs", None, b"", _text(m.payload) or None))
        b1 = opt(m, _BLOCK1)
        if b1 is not None:
            num, _, szx = coap.block_decode(b1)
            if code == _REQUEST_ENTITY_TOO_LARGE and not self._off1 and szx < self._szx1:
                # RFC 7959 §2.9.3: start over in the smaller blocks the server wants
                self._szx1 = szx
                return self._to(_CONTINUE1)
            if self._b1 and num != self._off1 >> (4 + self._szx1):
                return True
        cs = "%d.%02d" % (code >> 5, code & 31)
        if 0x80 <= code < 0xC0:
            d = _text(m.payload)
            raise ServerError("the server answered %s%s" % (cs, ": " + d if d else " (no diagnostic)"), code, None, d)
        if code >= 0x60:
            raise RemoteProtocolError("unexpected code " + cs)
        if code == _CONTINUE or not self._last1:
            if code != _CONTINUE or self._last1 or b1 is None:
                raise RemoteProtocolError("answer %s does not fit the Block1 upload" % cs)
            self._off1 += 16 << self._szx1
            self._szx1 = min(szx, self._szx1)  # the server may ask for smaller blocks (RFC 7959 §2.3)
            return self._to(_CONTINUE1)
        cf = opt(m, _CONTENT_FORMAT)
        if cf is not None:
            cf = u(cf)
        body = m.payload
        b2 = opt(m, _BLOCK2)
        a = self._asm
        if b2 is not None:
            num, more, szx = coap.block_decode(b2)
            if num << (4 + szx) != (a.got if a else 0):
                return True
            e = opt(m, _ETAG)
            cf2 = (cf, None if e is None else bytes(e))  # RFC 7959 §2.4: blocks of one representation
            if a is None and more:
                s2 = opt(m, _SIZE2)
                s2 = 0 if s2 is None else u(s2)
                if s2 > self.max_body:
                    raise LimitError("Size2 %d > max_body=%d" % (s2, self.max_body))
                a = self._asm = coap.BlockAssembler(self.max_body, s2)
                a.cf = cf2
            if a:
                if cf2 != a.cf:
                    raise RemoteProtocolError("Content-Format changed in Block2 (or ETag)")
                body = a.add(num, more, szx, body)
                if more:
                    return self._to(_MORE2)
                self._asm = None
        elif a:
            raise RemoteProtocolError("Block2 missing")
        if len(body) > self.max_body:
            raise LimitError("answer > max_body=%d" % self.max_body)
        if self.op == _OP_SERVERKEYGEN:
            if cf != _CF_MULTIPART_CORE:
                raise RemoteProtocolError("serverkeygen: content format %r, not 62" % (cf,))
            from est_lite import cbor

            body = cbor.decode_multipart(body)
        self._result(cf, body)


def _empty(t, mid):
    # an empty ACK or RST: the 4-byte header, version 1, no token
    return bytes((0x40 | t << 4, 0, mid >> 8, mid & 0xFF))


def __getattr__(name):
    # HttpOperation lives in client_http.py so that a CoAP-only device does
    # not load it (`from est_lite.client import HttpOperation` still works);
    # the public state, input and default names, the event classes, the
    # name tuples and the TRANSITIONS dict are made when asked for
    if name == "HttpOperation":
        from est_lite import client_http

        return client_http.HttpOperation
    for k in (_SN, _IN):
        k = k.split()
        if name in k:
            return k.index(name)
    k = "ACK_TIMEOUT ACK_RANDOM_FACTOR MAX_RETRANSMIT SEPARATE_TIMEOUT DEFAULT_RETRY_AFTER SENDING".split()
    if name in k:
        v = (_ACK_TIMEOUT, 1.5, _MAX_RETRANSMIT, _SEPARATE_TIMEOUT, _DEFAULT_RETRY_AFTER, (0, 2, 3, 4))
        return v[k.index(name)]
    c = _event_class(name)
    if c is not None:
        return c
    if name == "STATE_NAMES":
        return tuple(_SN.split())
    if name == "INPUT_NAMES":
        return tuple(_IN.split())
    if name == "TRANSITIONS":
        return {(s, i): _T[s * 7 + i] - 48 for s in range(5) for i in range(7) if _T[s * 7 + i] > 48}
    raise AttributeError(name)
