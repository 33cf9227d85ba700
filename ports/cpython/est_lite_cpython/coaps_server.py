"""EST-coaps (RFC 9148) in front of an `EstService`, on aiocoap over our DTLS
1.2 transport (X.509 client certificates, see coaps_transport.py).

    srv = EstCoapsServer(service, cert, key, host="127.0.0.1", port=0)
    port = srv.start()            # own event loop thread; or: await srv.start_async()
    ...
    srv.stop()

    srv = EstCoapsServer.from_config(service, config)   # [coaps] section, server cert

Resources (RFC 9148 §4, short names only; the HTTPS long names answer 4.04):

    /.well-known/core                 link format, rt="ace.est.*" filter
    /.well-known/est/[LABEL/]crts     GET   -> 2.05, 281 (default) or 287 (a one-certificate chain)
    /.well-known/est/[LABEL/]att      GET   -> 2.05, 285 (no attributes: 4.04)
    /.well-known/est/[LABEL/]sen      POST 286 -> 2.04, 281 or 287
    /.well-known/est/[LABEL/]sren     POST 286 -> 2.04, 281 or 287
    /.well-known/est/[LABEL/]skg      POST 286 -> 2.04, 62 [284 key, 281 certs]
    /.well-known/est/[LABEL/]skc      POST 286 -> 2.04, 62 [284 key, 287 cert]

Every resource authenticates the client: the DTLS handshake requires a
certificate chaining to one of the trust sets the profiles use (revocation
checked), and each request is then judged by the same `EstService` policy as
over HTTPS (per-label trust sets, renewal rules, PoP, manual approval). There
is no HTTP Basic/Digest over CoAP. Channel bindings (tls-unique, exporter)
reach the service only when the session negotiated the extended master secret
(RFC 7627); without it they are not unique to the session (MicroPython's Mbed
TLS build does not negotiate it).

Block-wise transfers (RFC 7959) are done here, not by aiocoap: Block1
uploads are reassembled up to a limit (Size1 checked first, 4.13 carrying the
limit in Size1), Block2 answers are served in the client's block size (or the
session's largest) with Size2, and the follow-up requests of a POST answer
(RFC 9148 Appendix B: Block2 only, no payload) find the answer by session and
path. Errors: 4.00, 4.01, 4.03, 4.04, 4.05, 4.06, 4.08, 4.13, 4.15, 5.01, 5.03
(+ Max-Age: manual approval), each with a short diagnostic payload.
"""

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import zlib

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers.codes import Code

from est_lite import coap, numbers
from est_lite.coap import BlockAssembler
from est_lite.errors import EstError, LimitError, LocalProtocolError, RemoteProtocolError, SecurityError

from .auth import VerifiedChain
from .codec_server import encode_multipart
from .coaps_transport import coaps_peer, coaps_server, create_coaps_server_context
from .dtls import issued_by
from .service import AuthContext, PendingApproval

log = logging.getLogger("est_lite.coaps")

GET, POST = Code.GET, Code.POST
_DIAG_MAX = 120  # bytes of diagnostic payload (RFC 7252 §5.5.2: short, for humans)

# content formats each operation can answer with; the first is the default
_ACCEPT = {
    numbers.OP_CACERTS: (numbers.CF_PKCS7_CERTS, numbers.CF_PKIX_CERT),
    numbers.OP_CSRATTRS: (numbers.CF_CSRATTRS,),
    numbers.OP_SIMPLEENROLL: (numbers.CF_PKCS7_CERTS, numbers.CF_PKIX_CERT),
    numbers.OP_SIMPLEREENROLL: (numbers.CF_PKCS7_CERTS, numbers.CF_PKIX_CERT),
    numbers.OP_SERVERKEYGEN: (numbers.CF_MULTIPART_CORE,),
    numbers.OP_FULLCMC: (numbers.CF_PKCS7_CERTS,),
}
# discovery: (short name, rt, ct)
_LINKS = (
    ("crts", "ace.est.crts", '"281 287"'),
    ("att", "ace.est.att", "285"),
    ("sen", "ace.est.sen", '"281 287"'),
    ("sren", "ace.est.sren", '"281 287"'),
    ("skg", "ace.est.skg", "62"),
    ("skc", "ace.est.skc", "62"),
)


class CoapError(EstError):
    """A CoAP-level problem of one request (code set per instance)."""


# the response options the resources set, by aiocoap's keyword
_OPTION_NUMBERS = {"etag": 4, "content_format": 12, "max_age": 14, "block2": 23, "block1": 27, "size2": 28,
                   "size1": 60}
# the plain uint options of PlainResponse.encode's direct path, by number
_UINT_ORDER = tuple(sorted((n, k) for k, n in _OPTION_NUMBERS.items() if k not in ("block1", "block2", "etag")))
_UINT_OPTIONS = frozenset(k for _, k in _UINT_ORDER)


class PlainResponse:
    """A response of the EST resources: code, payload and the options of
    `_OPTION_NUMBERS`, encoded by est_lite.coap when the transport's fast
    path sends it (`encode()`, after it set token, mtype and mid), or turned
    into an aiocoap Message where aiocoap sends it (`to_message()`)."""

    __slots__ = ("code", "payload", "opts", "token", "mtype", "mid")

    def __init__(self, code, payload=b"", opts=None):
        self.code = code
        self.payload = payload
        self.opts = opts or {}
        self.token = b""
        self.mtype = None
        self.mid = 0

    def encode(self):
        opts = self.opts
        token = bytes(self.token)
        n, mtype, code, mid = len(token), int(self.mtype), int(self.code), self.mid
        if opts.keys() <= _UINT_OPTIONS and n <= 8 and 0 <= mtype <= 3 and 0 < code < 256 and 0 <= mid < 65536:
            # the usual answer (a code, Content-Format, maybe Max-Age or
            # Size1/Size2, a payload) written directly; the same bytes as
            # est_lite.coap's encoder, which writes every other case
            parts = [bytes((0x40 | mtype << 4 | n, code, mid >> 8, mid & 255)), token]
            last = 0
            for num, k in _UINT_ORDER:
                v = opts.get(k)
                if v is None:
                    continue
                v = int(v)
                if v < 0 or v >> 32:
                    break  # est_lite.coap.uint_encode refuses it
                val = v.to_bytes((v.bit_length() + 7) >> 3, "big")
                d = num - last
                last = num
                parts.append(bytes((d << 4 | len(val),)) if d < 13 else bytes((0xD0 | len(val), d - 13)))
                parts.append(val)
            else:
                pl = self.payload
                if pl:
                    parts.append(b"\xff")
                    parts.append(pl)
                return b"".join(parts)
        o = []
        for k, v in self.opts.items():
            n = _OPTION_NUMBERS[k]
            o.append((n, coap.block_encode(*v) if n == 23 or n == 27 else bytes(v) if n == 4 else
                      coap.uint_encode(int(v))))
        return coap.Message(int(self.mtype), int(self.code), self.mid, bytes(self.token), o,
                            bytes(self.payload)).encode()

    def to_message(self):
        return aiocoap.Message(code=Code(int(self.code)), payload=bytes(self.payload), **self.opts)


def _as_message(response):
    return response.to_message() if isinstance(response, PlainResponse) else response


def _msg(code, payload=b"", **opts):
    return PlainResponse(code, payload, opts)


def error_response(e):
    """The response (PlainResponse) for an est_lite error: its coap_code hint, a short
    diagnostic payload, Max-Age for PendingApproval, Size1 for a 4.13 that
    knows the limit."""
    code = getattr(e, "coap_code", 0xA0) or 0xA0
    if code < 0x80:
        code = 0xA0
    text = e.msg if isinstance(e, EstError) else str(e)
    diag = text.encode("utf-8", "replace")
    if len(diag) > _DIAG_MAX:
        diag = diag[: _DIAG_MAX - 3].decode("utf-8", "ignore").encode() + b"..."
    opts = {}
    if isinstance(e, PendingApproval):
        opts["max_age"] = max(0, int(e.retry_after))
    if getattr(e, "size1", None) is not None:
        opts["size1"] = e.size1
    return _msg(Code(code), diag, **opts)


def auth_context(request):
    """The AuthContext of a request that came over a coaps session (None if
    it did not)."""
    peer = coaps_peer(request)
    if peer is None:
        return None
    ems = bool(peer.extended_master_secret)
    # the chain OpenSSL verified in the handshake rides along, so the service
    # does not verify its signatures again
    chain = VerifiedChain(peer.peer_chain, getattr(peer, "verified_chain", None)) if peer.peer_chain else None
    ctx = AuthContext("coaps", peer_chain=chain,
                      tls_unique=peer.tls_unique if ems else None,
                      tls_exporter=(lambda: peer.exporter) if ems else None,
                      tls_version="DTLSv1.2", remote=peer.address)
    # a session whose client certificate is outside its dates (admitted by
    # the handshake so that the refusal can say so): EstResource._authenticate
    # refuses its every request
    ctx.date_error = getattr(peer, "date_error", None)
    ctx.dtls_peer = peer  # EstResource._call marks it busy while the answer is worked out
    return ctx


# options these resources act on (RFC 7252 §5.4.1: an unrecognized critical
# option in a request is 4.02 Bad Option)
_UNDERSTOOD = frozenset((3, 4, 6, 7, 11, 12, 14, 15, 17, 23, 27, 28, 60, 258))


def check_critical_options(request):
    if getattr(request.opt, "only_understood", False):  # a PlainRequest: options 11, 12, 15, 17 only
        return
    for o in request.opt.option_list():
        n = int(o.number)
        if n & 1 and n not in _UNDERSTOOD:
            if n in (35, 39):
                raise CoapError("this server is not a forward proxy (Proxy-Uri/Proxy-Scheme)", 0xA5)
            raise CoapError("critical option %d is not supported here" % n, 0x82)


class _Transfer:
    __slots__ = ("asm", "body", "code", "cf", "expires", "limit")


class ServerBusy(PendingApproval):
    """The requests waiting for a worker would keep this one longer than
    max_wait_s: 5.03 + Max-Age (the expected wait), as for an approval."""


class EstResource(resource.Resource, resource.PathCapable):
    """Every EST-coaps resource under /.well-known/est/ (a PathCapable
    resource: labels are dynamic). `service` is an EstService (or anything
    with its methods); blocking service calls run in `executor`.

    Limits: max_body (bytes of a Block1 upload, also capped by the label's
    max_csr_bytes), max_transfers_per_session (uploads and cached Block2
    answers kept per DTLS session; the oldest is dropped), max_transfers (all
    sessions), transfer_timeout (seconds a half-done transfer is kept),
    max_wait_s (with an executor: a request that would wait longer than
    this for a worker, by the mean time of the recent calls, is answered
    5.03 + Max-Age at once instead of being queued; None: no bound)."""

    def __init__(self, service, *, executor=None, max_body=16384, max_transfers=512, max_transfers_per_session=4,
                 transfer_timeout=93.0, clock=time.monotonic, max_wait_s=30.0):
        super().__init__()
        self.service = service
        self.executor = executor
        self.max_body = max_body
        self.max_transfers = max_transfers
        self.max_transfers_per_session = max_transfers_per_session
        self.transfer_timeout = transfer_timeout
        self.clock = clock
        self.max_wait_s = max_wait_s
        self._queued = 0  # calls handed to the executor and not yet done
        self._mean = None  # seconds a call takes in a worker (moving average)
        self._transfers = collections.OrderedDict()  # (session key, kind, path) -> _Transfer
        self.stats = collections.Counter()

    async def needs_blockwise_assembly(self, request):
        return False

    # -- transfer state --
    def _purge(self, now):
        t = self._transfers
        while t:
            k = next(iter(t))
            if t[k].expires > now and len(t) <= self.max_transfers:
                break
            del t[k]

    def _put(self, key, tr):
        now = self.clock()
        tr.expires = now + self.transfer_timeout
        self._transfers.pop(key, None)
        mine = [k for k in self._transfers if k[0] == key[0]]
        while len(mine) >= self.max_transfers_per_session:
            self._transfers.pop(mine.pop(0), None)
        self._transfers[key] = tr
        self._purge(now)

    def _get(self, key):
        self._purge(self.clock())
        return self._transfers.get(key)

    # -- helpers --
    async def _call(self, fn, *args):
        if self.executor is False:
            return fn(*args)
        loop = asyncio.get_running_loop()
        # a proxy whose upstream is slower than its devices: requests queued
        # for the workers without end were forwarded long after the devices
        # had given up (the upstream issued certificates nobody received)
        if self.max_wait_s is not None and self._mean is not None and self._queued:
            wait = self._queued * self._mean / max(1, getattr(self.executor, "_max_workers", 1) or 1)
            if wait > self.max_wait_s:
                self.stats["busy"] += 1
                s = int(wait) + 1
                raise ServerBusy("the server is busy (%d requests ahead, about %d s); retry in %d s"
                                 % (self._queued, wait, s), s)
        # the session is not idle while its request waits for a worker and
        # the service (a proxy's upstream may take many seconds): without
        # this the DTLS server closed it at idle_timeout, or evicted it for
        # a new client when full, and the device never got its answer
        # (the upstream had issued the certificate all the same)
        peer = next((a.dtls_peer for a in args if getattr(a, "dtls_peer", None) is not None), None)
        if peer is not None and hasattr(peer, "busy"):
            peer.busy += 1
        else:
            peer = None
        def timed(*a):
            t = time.monotonic()
            try:
                return fn(*a)
            finally:
                d = time.monotonic() - t
                m = self._mean
                self._mean = d if m is None else m + (d - m) / 8

        self._queued += 1
        try:
            return await loop.run_in_executor(self.executor, timed, *args)
        finally:
            self._queued -= 1
            if peer is not None:
                peer.busy -= 1
                peer.last_rx = max(peer.last_rx, loop.time())  # idle from the answer on

    def _authenticate(self, name, label, ctx):
        """Every resource authenticates the client: a certificate trusted for
        this label, for enrollment or (if the label renews) re-enrollment."""
        svc = self.service
        prof = svc.profile(label)
        try:
            svc.authenticate(name, prof, ctx)
        except EstError as first:
            if not getattr(prof, "reenroll", True):
                raise
            try:
                svc.authenticate("simplereenroll", prof, ctx)
            except EstError:
                raise first from None
        if ctx.date_error is not None:
            # the handshake admitted a certificate outside its dates by this
            # host's clock, the service's clock found it valid: refused all
            # the same (fail closed), with the handshake's reason
            raise SecurityError("%s; renew it before it expires, or enroll again with the first-contact "
                                "credentials" % ctx.date_error)

    # -- rendering --
    async def render(self, request):
        return _as_message(await self.render_path(request, request.opt.uri_path))

    async def render_path(self, request, path):
        """Render `request` for the path segments below /.well-known/est."""
        self.stats["requests"] += 1
        try:
            return await self._render(request, path)
        except EstError as e:
            return self._error(request, e)

    def _error(self, request, e):
        self.stats["errors"] += 1
        if isinstance(e, PendingApproval) and not isinstance(e, ServerBusy):
            self.stats["pending"] += 1
        log.info("%s %s -> %s %s", _who(request), _path(request), numbers.code_str(getattr(e, "coap_code", 0xA0)),
                 e.msg if isinstance(e, EstError) else e)
        return error_response(e)

    def unwritten(self, request, e, certs=None):
        """The answer to a POST rendered with its certificate's row queued
        (store.GroupCommit) when that row could not be written: the error
        (e: a StoreError, DuplicateSerial, or an sqlite3 error) as if the
        write had failed during the render, and the Block2 transfer that
        held the certificate dropped. certs: the DER of the request's
        certificates; the session's transfer for that resource is dropped
        only if it holds one of them (a later request's is not this one's).
        None (or no DER): dropped in any case."""
        segs = list(request.opt.uri_path)
        op, label, _short = numbers.parse_path(segs)  # (it was rendered: a valid EST path)
        remote = request.remote
        skey = getattr(remote, "blockwise_key", None) or id(remote)
        key = (skey, segs[-1].lower(), label or "")
        tr = self._transfers.get(key)
        ders = [bytes(c) for c in certs or () if isinstance(c, (bytes, bytearray, memoryview)) and len(c)]
        if tr is not None and (not ders or any(d in (tr.body or b"") for d in ders)):  # (in doubt: dropped)
            del self._transfers[key]
        self.stats["serverkeygen" if op == numbers.OP_SERVERKEYGEN else "enrolled"] -= 1
        if isinstance(e, EstError):
            return self._error(request, e)
        log.error("%s %s: internal error: the CA store: %r", _who(request), _path(request), e)
        return _msg(Code.INTERNAL_SERVER_ERROR)

    async def _render(self, request, path):
        check_critical_options(request)
        segs = [numbers.WELL_KNOWN, numbers.EST] + list(path)
        try:
            op, label, short = numbers.parse_path(segs)
        except LocalProtocolError as e:
            raise CoapError("no EST resource here: %s" % e, 0x84) from None
        name = segs[-1].lower()
        if not short:
            raise CoapError("EST-coaps uses the short name %s, not %s (RFC 9148)" % (
                numbers.COAP_NAMES[op], segs[-1]), 0x84)
        if op == numbers.OP_FULLCMC:
            raise CoapError("fullcmc (/cmc) is not implemented by this server; use /sen", 0xA1)
        method = numbers.OP_METHODS[op]
        if request.code != method:
            raise CoapError("%s needs %s, not %s" % (name, "GET" if method == numbers.GET else "POST", request.code),
                            0x85)
        remote = request.remote
        skey = getattr(remote, "blockwise_key", None) or id(remote)
        rexp = min(6, getattr(remote, "maximum_block_size_exp", 6))
        key = (skey, name, label or "")
        b2 = request.opt.block2
        if b2 is not None:
            if b2.size_exponent > 6:
                raise CoapError("Block2 SZX 7 is reserved", 0x80)
            if b2.block_number > 0:
                tr = self._get(key)
                if tr is None or tr.body is None:
                    if op in (numbers.OP_CACERTS, numbers.OP_CSRATTRS):
                        tr = None  # GET: render again
                    else:
                        raise CoapError("no answer to continue: block %d of an unknown or expired transfer"
                                        % b2.block_number, 0x88)
                if tr is not None:
                    self.stats["block2_followups"] += 1
                    return self._answer(key, tr, b2, None, rexp)
        ctx = auth_context(request)
        if ctx is None:
            raise CoapError("EST-coaps needs a DTLS session with a client certificate", 0x81)
        if ctx.date_error is not None:  # a certificate outside its dates: every request refused, saying why
            await self._call(self._authenticate, name, label, ctx)
        accept = request.opt.accept
        accept = None if accept is None else int(accept)
        allowed = _ACCEPT[op]
        if accept is not None and accept not in allowed:
            raise CoapError("%s cannot answer in content format %d (available: %s)" % (
                name, accept, " ".join(str(c) for c in allowed)), 0x86)
        cf_out = accept if accept is not None else allowed[0]
        if op == numbers.OP_SERVERKEYGEN and name == numbers.COAP_SKC:
            cert_cf = numbers.CF_PKIX_CERT
        elif op == numbers.OP_SERVERKEYGEN:
            cert_cf = numbers.CF_PKCS7_CERTS
        else:
            cert_cf = cf_out
        svc = self.service
        if method == numbers.GET:
            await self._call(self._authenticate, name, label, ctx)
            if op == numbers.OP_CACERTS:
                p7 = await self._call(svc.cacerts, label, ctx)
                body = self._certs_body(p7, cert_cf, None)
            else:
                body = await self._call(svc.csrattrs, label, ctx)
                if not body:
                    # RFC 9148 §4.5: EST's 204/404 "not available" is 4.04 in
                    # EST-coaps (an empty 2.05 is not a valid application/csrattrs)
                    raise CoapError("no CSR attributes for this label", 0x84)
            tr = _Transfer()
            tr.body, tr.code, tr.cf, tr.asm = bytes(body), Code.CONTENT, cf_out, None
            return self._answer(key, tr, b2, None, rexp)
        # POST: the CSR, maybe in Block1 blocks
        cf_in = request.opt.content_format
        b1 = request.opt.block1
        if cf_in is None or int(cf_in) != numbers.CF_PKCS10:
            if not (b1 is not None and b1.block_number > 0 and cf_in is None):
                raise CoapError("%s takes a PKCS#10 CSR as Content-Format 286 (application/pkcs10), not %s" % (
                    name, "none" if cf_in is None else int(cf_in)), 0x8F)
        prof = svc.profile(label)
        limit = min(self.max_body, getattr(prof, "max_csr_bytes", self.max_body))
        payload = request.payload
        if b1 is not None:
            if b1.size_exponent > 6:
                raise CoapError("Block1 SZX 7 is reserved", 0x80)
            ukey = (skey, name + "/up", label or "")
            if b1.block_number == 0:
                await self._call(self._authenticate, name, label, ctx)  # before taking any more data
                size1 = request.opt.size1
                if size1 is not None and size1 > limit:
                    e = CoapError("CSR of %d bytes exceeds the limit of %d bytes" % (size1, limit), 0x8D)
                    e.size1 = limit
                    raise e
                tr = _Transfer()
                tr.asm, tr.body, tr.code, tr.cf, tr.limit = BlockAssembler(max_body=limit), None, None, None, limit
                self._put(ukey, tr)
            else:
                tr = self._get(ukey)
                if tr is None or tr.asm is None:
                    raise CoapError("block %d of an upload that was never started (or expired): send block 0 first"
                                    % b1.block_number, 0x88)
            try:
                done = tr.asm.add(b1.block_number, b1.more, b1.size_exponent, payload)
            except LimitError as e:
                self._transfers.pop(ukey, None)
                e2 = CoapError(e.msg, 0x8D)
                e2.size1 = tr.limit
                raise e2 from None
            except RemoteProtocolError as e:
                self._transfers.pop(ukey, None)
                raise CoapError("Block1 upload out of order: %s" % e.msg, 0x88) from None
            if done is None:
                self._put(ukey, tr)
                self.stats["block1_continue"] += 1
                return _msg(Code.CONTINUE, block1=(b1.block_number, 1, b1.size_exponent))
            self._transfers.pop(ukey, None)
            payload = bytes(done)
        elif len(payload) > limit:
            e = CoapError("CSR of %d bytes exceeds the limit of %d bytes" % (len(payload), limit), 0x8D)
            e.size1 = limit
            raise e
        csr = bytes(payload)
        if op == numbers.OP_SERVERKEYGEN:
            res = await self._call(svc.serverkeygen, label, csr, ctx)
            p8, p7, cert = res
            cpart = self._certs_body(p7, cert_cf, cert)
            # 284 PKCS#8, or 280 when a proxy passes a CMS-protected key through
            body = encode_multipart([(getattr(res, "key_cf", numbers.CF_PKCS8), p8), (cert_cf, cpart)])
            self.stats["serverkeygen"] += 1
        else:
            fn = svc.simpleenroll if op == numbers.OP_SIMPLEENROLL else svc.simplereenroll
            p7 = await self._call(fn, label, csr, ctx)
            body = self._certs_body(p7, cert_cf, None)
            self.stats["enrolled"] += 1
        tr = _Transfer()
        tr.body, tr.code, tr.cf, tr.asm = bytes(body), Code.CHANGED, cf_out, None
        return self._answer(key, tr, b2, b1, rexp)

    @staticmethod
    def _certs_body(p7, cf, cert):
        if cf != numbers.CF_PKIX_CERT:
            return p7
        if cert is not None:
            from cryptography.hazmat.primitives import serialization

            return cert.public_bytes(serialization.Encoding.DER)
        from est_lite import pkcs7

        certs = pkcs7.certificates(p7, max_certs=16)
        if len(certs) != 1:
            raise CoapError("the answer holds %d certificates; application/pkix-cert (287) carries one: "
                            "ask for 281" % len(certs), 0x86)
        return bytes(certs[0])

    def _answer(self, key, tr, b2, b1, remote_exp):
        """The answer, whole or as the block the client asked for (at most
        the session's largest block, 16 << remote_exp)."""
        body = tr.body
        opts = {}
        if b1 is not None:
            opts["block1"] = (b1.block_number, 0, b1.size_exponent)
        szx = remote_exp if b2 is None else min(b2.size_exponent, remote_exp)
        size = 16 << szx
        num = 0 if b2 is None else b2.block_number
        if b2 is None and len(body) <= size:
            return _msg(tr.code, body, content_format=tr.cf, **opts)
        start = num * size
        if start >= len(body) and not (start == 0 and not body):
            raise CoapError("Block2 number %d is past the end of the %d-byte answer" % (num, len(body)), 0x82)
        more = start + size < len(body)
        if num == 0:
            opts["size2"] = len(body)
            if more:
                self._put(key, tr)
        elif not more:
            self._transfers.pop(key, None)
        if tr.code == Code.CONTENT:
            # a GET answer in blocks carries an ETag of its representation
            # (RFC 7252 §5.10.6, RFC 7959 §2.4): a follow-up rendered again
            # after the copy expired (or a CA rollover in between) cannot be
            # mixed with earlier blocks by a client that compares it
            opts["etag"] = zlib.crc32(body).to_bytes(4, "big")
        return _msg(tr.code, body[start:start + size], content_format=tr.cf, block2=(num, int(more), szx), **opts)


def _who(request):
    peer = coaps_peer(request)
    if peer is None:
        return "?"
    return "%s:%s" % peer.address[:2]


def _path(request):
    return "/" + "/".join(request.opt.uri_path)


class CoreResource(resource.Resource):
    """/.well-known/core: the EST resources of every label in link format
    (RFC 6690), filtered by a query such as rt=ace.est* or rt=ace.est.sen."""

    ct = numbers.CF_LINK_FORMAT

    def __init__(self, service):
        super().__init__()
        self.service = service

    def links(self):
        out = []
        profiles = getattr(self.service.config, "profiles", {"": None})
        for label in sorted(profiles):
            prof = profiles[label]
            base = "/.well-known/est/" + (label + "/" if label else "")
            for short, rt, ct in _LINKS:
                # crts, sen and sren are always listed (RFC 9148 §4.1: MUST;
                # a label that does not renew answers sren with 4.03), skg and
                # skc only where serverkeygen is on
                if prof is not None and short in ("skg", "skc") and not prof.serverkeygen:
                    continue
                out.append((base + short, {"rt": rt, "ct": ct}))
        return out

    async def render_get(self, request):
        filters = []
        for q in request.opt.uri_query:
            k, _, v = q.partition("=")
            filters.append((k, v.strip('"')))
        items = []
        for href, attrs in self.links():
            ok = True
            for k, v in filters:
                have = href if k == "href" else attrs.get(k, "").strip('"')
                vals = have.split(" ") if k != "href" else [have]
                if v.endswith("*"):
                    ok = any(x.startswith(v[:-1]) for x in vals)
                else:
                    ok = v in vals
                if not ok:
                    break
            if ok:
                items.append("<%s>;rt=\"%s\";ct=%s" % (href, attrs["rt"], attrs["ct"]))
        return _as_message(_msg(Code.CONTENT, ",".join(items).encode(), content_format=numbers.CF_LINK_FORMAT))


_CORE = (numbers.WELL_KNOWN, "core")


class EstSite(resource.Resource, resource.PathCapable):
    """The root resource: /.well-known/core and everything under
    /.well-known/est/, dispatched without aiocoap's Site (which copies every
    request to strip its path)."""

    def __init__(self, service, **resource_options):
        super().__init__()
        self.core = CoreResource(service)
        self.est = EstResource(service, **resource_options)

    async def needs_blockwise_assembly(self, request):
        return tuple(request.opt.uri_path) == _CORE  # aiocoap's Block2 for a long discovery answer

    def fast_render(self, request):
        """The answer to an EST request, computed now, when the service runs
        on the event loop (no executor): the transport then answers without
        aiocoap's exchange machinery (about 1 ms of CPU per request). None:
        let aiocoap handle it (discovery, or service calls in threads)."""
        if self.est.executor is not False:
            return None
        path = request.opt.uri_path
        if len(path) < 3 or path[0] != numbers.WELL_KNOWN or path[1] != numbers.EST:
            return None
        coro = self.est.render_path(request, path[2:])
        try:
            coro.send(None)
        except StopIteration as e:
            return e.value
        coro.close()
        raise LocalProtocolError("EST rendering suspended although the service runs on the event loop")

    def fast_failed(self, request, e, certs=None):
        """The answer to a request fast_render answered when the row of the
        certificate it issued could not be written at the group commit (see
        coaps_transport; certs: their DER): the error; nothing of the
        certificate is kept."""
        return self.est.unwritten(request, e, certs)

    async def render(self, request):
        return _as_message(await self._render_any(request))

    async def _render_any(self, request):
        path = request.opt.uri_path
        if len(path) >= 2 and path[0] == numbers.WELL_KNOWN and path[1] == numbers.EST:
            if len(path) == 2 or path[2:] == ("",):
                return error_response(CoapError("the EST resources are /.well-known/est/[LABEL/]crts, att, sen, "
                                                "sren, skg, skc", 0x84))
            return await self.est.render_path(request, path[2:])
        if tuple(path) == _CORE:
            if request.code != GET:
                return error_response(CoapError("/.well-known/core takes GET", 0x85))
            return await self.core.render_get(request)
        return error_response(CoapError("no resource at /%s (EST is under /.well-known/est/)" % "/".join(path)[:60],
                                        0x84))


def build_site(service, **resource_options):
    """The root resource serving /.well-known/core and the EST resources,
    and the EstResource (limits, stats)."""
    site = EstSite(service, **resource_options)
    return site, site.est


# ---------------------------------------------------------------- trust for the handshake


def handshake_trust(service):
    """Callable returning every CA certificate a profile of `service` trusts
    for client certificates (enrollment or re-enrollment): the DTLS handshake
    accepts their union, the service then applies each label's own sets."""

    last = [None, None]  # (time, list): the same list object while nothing changed

    def cas():
        now = time.monotonic()
        if last[1] is not None and now - last[0] < 10.0:
            return last[1]
        out = _collect()
        if last[1] is None or [c.fingerprint(_sha256()) for c in out] != [c.fingerprint(_sha256()) for c in last[1]]:
            last[1] = out
        last[0] = now
        return last[1]

    def _collect():
        cfg = service.config
        names = set()
        for prof in cfg.profiles.values():
            names.update(prof.client_cert_trust)
            names.update(prof.reenroll_trust)
        out, seen = [], set()
        for n in sorted(names):
            certs = list(service.ca.ca_certs(None)) if n == "ca" else list(getattr(cfg.trust.get(n), "certs", []))
            for c in certs:
                fp = c.fingerprint(_sha256())
                if fp not in seen:
                    seen.add(fp)
                    out.append(c)
        return out

    return cas


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def revocation_check(service):
    """is_revoked(cert) for the DTLS handshake: this CA's store for the
    certificates it issued, the configured CRLs for the other trust sets."""

    def is_revoked(cert):
        ca = service.ca
        issuer = getattr(ca, "issuer", None)
        if issuer is not None and cert.issuer == issuer.subject and cert != issuer and hasattr(ca, "is_revoked"):
            if ca.is_revoked(cert):
                return True
        for t in getattr(service.config, "trust", {}).values():
            for crl in t.crls:
                if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                    return True
        return False

    return is_revoked


def _ca_pool(service):
    """The CA certificates of the service's CA backend, [] if it cannot say
    (the server then sends what its certificate file holds)."""
    try:
        return list(service.ca.ca_certs(None))
    except (EstError, OSError, AttributeError) as e:
        log.warning("CoAPs: cannot get the CA certificates to complete the server chain: %s", e)
        return []


def intermediates(certs):
    """The certificates of a server chain file after the leaf, up to the
    first self-signed one (a root, by its signature: after a root key
    update NewWithOld carries the root's name as subject and issuer but is
    signed by the old key, and a device that trusts the old root needs it)."""
    out = []
    for c in certs[1:]:
        if c.issuer == c.subject and issued_by(c, c):
            break
        out.append(c)
    return out


def pin_chain(certs, pool):
    """send_chain "all": complete_chain(certs, pool), except for a server
    certificate still on the OLDER root's path (the root that became valid
    first) after a root key update
    (est-lite ca rollover; the chain file then goes [leaf, (intermediate,)
    OldWithNew, NewWithNew, NewWithOld, OldWithOld]): [leaf,
    (intermediate,) OldWithOld, OldWithNew, NewWithNew], each signed by the
    next, so a device pinning either root meets it on a path of signatures
    (Mbed TLS builds that path; it would stop below OldWithOld in the file's
    order, counting the self-issued certificates against the old root's
    pathLenConstraint)."""
    out = complete_chain(certs, pool)
    for i in range(1, len(out)):
        link = out[i]
        if link.issuer != link.subject:
            continue
        if issued_by(link, link):
            break  # a root right above: nothing to arrange
        roots = [r for r in out[i + 1:] + list(pool) if r.subject == link.subject and issued_by(r, r)]
        old = next((r for r in roots if issued_by(out[i - 1], r)), None)
        new = next((r for r in roots if issued_by(link, r)), None)
        if old is not None and new is not None and old.not_valid_before_utc < new.not_valid_before_utc:
            return out[:i] + [old, link, new]
        break
    return out


def complete_chain(certs, pool, *, max_length=8):
    """certs (leaf first) extended with certificates from `pool` until it
    ends in a self-signed certificate (the root) or no issuer is found:
    each added certificate's subject is the issuer of the last one and its
    key verifies the last one's signature. At most max_length certificates."""
    out = list(certs)
    while out and len(out) < max_length:
        last = out[-1]
        if last.issuer == last.subject:
            break
        for c in pool:
            if c.subject == last.issuer and c not in out and issued_by(last, c):
                out.append(c)
                break
        else:
            break
    return out


# ---------------------------------------------------------------- the server


class EstCoapsServer:
    """EST-coaps server: aiocoap + our DTLS transport + EstResource.

    cert/key: the server's certificate (DER, PEM, a PEM chain file's bytes,
    or cryptography objects) and key; chain: certificates sent after the leaf
    (default: none; a client that lacks an intermediate needs it here).
    trusted_cas / is_revoked: default from the service's profiles and CA.
    Other keywords: the DtlsServer options (mtu, max_sessions,
    max_handshakes_per_host, idle_timeout, handshake_timeout, ciphers, ...) and the EstResource limits (max_body,
    max_transfers, max_transfers_per_session, transfer_timeout). workers:
    threads for the blocking service calls."""

    def __init__(self, service, cert, key, *, chain=(), host="127.0.0.1", port=5684, trusted_cas=None,
                 is_revoked=None, workers=None, max_body=16384, max_transfers=512, max_transfers_per_session=4,
                 transfer_timeout=93.0, **dtls_options):
        self.service = service
        self.cert, self.key, self.chain = cert, key, list(chain)
        self.host = host
        self.requested_port = port
        self.port = None
        self.trusted_cas = trusted_cas if trusted_cas is not None else handshake_trust(service)
        self.is_revoked = is_revoked if is_revoked is not None else revocation_check(service)
        if workers is None:  # our own CA answers in well under a millisecond: on the loop (no GIL hand-offs)
            from .ca import LocalCA

            workers = 0 if isinstance(getattr(service, "ca", None), LocalCA) else 4
        self.workers = workers
        # a client certificate of a trusted CA that is only outside its dates
        # completes the handshake and gets 4.03 naming the reason on every
        # request (as over HTTPS), not a bare fatal alert
        dtls_options.setdefault("admit_out_of_date", True)
        self.dtls_options = dtls_options
        self.resource_options = dict(max_body=max_body, max_transfers=max_transfers,
                                     max_transfers_per_session=max_transfers_per_session,
                                     transfer_timeout=transfer_timeout)
        self.context = None
        self.resource = None
        self._executor = None
        self._loop = None
        self._thread = None

    @classmethod
    def from_config(cls, service, config, *, port=None, host=None, **options):
        """From a ServerConfig: its [coaps] section and the server certificate
        (tls_cert / tls_key, default <data_dir>/server.pem); `options`
        override constructor arguments."""
        import os

        from . import dtls as _d

        cert_file = config.tls_cert or os.path.join(config.data_dir, "server.pem")
        key_file = config.tls_key or os.path.join(config.data_dir, "server.key")
        try:
            with open(cert_file, "rb") as f:
                certs = _d.load_certificates(f.read())
            with open(key_file, "rb") as f:
                key = f.read()
        except OSError as e:
            raise LocalProtocolError("cannot read the server certificate/key for CoAPs: %s" % e) from None
        mode = getattr(config, "coaps_send_chain", "intermediates")
        if mode == "none":
            chain = []
        elif mode == "all":  # up to and including the root: a device may pin the root (first contact)
            chain = pin_chain(certs, _ca_pool(service))[1:]
        else:  # the chain the client lacks: intermediates, never the root it trusts
            chain = intermediates(certs)
        kw = dict(chain=chain, host=host or getattr(config, "coaps_listen", None) or config.listen,
                  port=getattr(config, "coaps_port", 5684) if port is None else port,
                  mtu=getattr(config, "coaps_mtu", 1200),
                  max_sessions=getattr(config, "coaps_max_sessions", 256),
                  max_handshakes_per_host=getattr(config, "coaps_max_handshakes_per_host", 16),
                  idle_timeout=getattr(config, "coaps_idle_timeout_s", 120.0),
                  evict_idle_after=getattr(config, "coaps_evict_idle_s", 10.0),
                  handshake_timeout=getattr(config, "coaps_handshake_timeout_s", 30.0),
                  workers=getattr(config, "coaps_workers", None),
                  max_body=getattr(config, "coaps_max_body_bytes", 16384))
        kw.update(options)
        return cls(service, certs[0], key, **kw)

    # -- asyncio --
    async def start_async(self):
        """Start on the running loop; returns the bound UDP port."""
        if self.workers:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                                   thread_name_prefix="est-coaps")
        site, self.resource = build_site(self.service, executor=self._executor or False, **self.resource_options)
        self.context, self.port = await create_coaps_server_context(
            site, (self.host, self.requested_port), cert=self.cert, key=self.key, trusted_cas=self.trusted_cas,
            chain=self.chain, is_revoked=self.is_revoked, **self.dtls_options)
        log.info("EST-coaps server on %s port %d", self.host, self.port)
        return self.port

    async def stop_async(self):
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def dtls(self):
        """The DtlsServer (stats, sessions)."""
        return coaps_server(self.context) if self.context is not None else None

    @property
    def stats(self):
        out = dict(self.resource.stats) if self.resource is not None else {}
        d = self.dtls
        if d is not None:
            out.update({"dtls_" + k: v for k, v in d.stats.items()})
            out["dtls_sessions"] = d.session_count
        return out

    @property
    def url(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "coaps://%s:%d" % (h, self.port)

    # -- own loop thread --
    def start(self):
        """Run on an event loop in a daemon thread; returns the UDP port."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="est-coaps-loop", daemon=True)
        self._thread.start()
        try:
            return self.call(self.start_async())
        except BaseException:
            # nothing started (e.g. the port is in use): release what
            # start_async made, then the loop; stop() is a no-op afterwards
            try:
                self.call(self.stop_async(), timeout=5)
            except Exception:  # noqa: BLE001 - the start error is the one to report
                log.debug("CoAPs: cleanup after a failed start", exc_info=True)
            self._end_loop()
            raise

    def _end_loop(self):
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()

    def call(self, coro, timeout=30):
        """Run a coroutine on the server's loop thread (after start())."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self):
        if self._loop is None:
            return
        if self._thread.is_alive():  # (a loop that is not running would never run stop_async)
            try:
                self.call(self.stop_async(), timeout=10)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("CoAPs server did not stop cleanly")
        self._end_loop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- more processes


def start_worker_processes(n, config_path, data_dir, host, port, timeout=60.0):
    """Start n more processes serving EST-coaps on (host, port) (the
    caller's own server must use reuse_port=True); see serve_procs."""
    from .serve_procs import start_worker_processes as start

    return start("coaps", n, config_path, data_dir, host, port, timeout=timeout)
