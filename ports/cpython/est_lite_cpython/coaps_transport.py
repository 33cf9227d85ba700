"""aiocoap transport serving coaps:// over our DTLS 1.2 server (X.509 client
certificates), modelled on aiocoap.transports.tinydtls_server (which is
PSK-only).

    ctx, port = await create_coaps_server_context(
        site, bind=("127.0.0.1", 0),
        cert=server_cert, key=server_key, trusted_cas=[device_ca],
    )
    ...
    class Enroll(aiocoap.resource.Resource):
        async def render_post(self, request):
            peer = coaps_peer(request)     # DtlsPeer, or None if not coaps
            peer.peer_certificate          # the client's leaf (cryptography)
            peer.verified_chain            # leaf ... trust anchor
            peer.tls_unique, peer.exporter # channel bindings
    ...
    await ctx.shutdown()

Each DTLS session gets one `CoapsRemote`; its `authenticated_claims` is
`(peer,)`, and `request.remote.peer` is the same DtlsPeer. A new session (new
epoch, RFC 7252 §9.1.2) is a new remote, so message deduplication and
block-wise state never cross sessions. The remote's `maximum_block_size_exp`
follows the session's MTU so aiocoap's automatic Block2 responses fit one
datagram.

Group commit (the fast path only): the certificates that the synchronous
renders of one event-loop iteration issue are written to the CA store in one
transaction (store.GroupCommit) by a callback the loop runs next; their
answers are held until then, and an answer whose row failed becomes the
error instead.
"""

import asyncio
import collections
import os

from aiocoap import ACK, CON, NON, Message, error, interfaces
from aiocoap.numbers.codes import Code
from aiocoap.numbers import COAPS_PORT
from aiocoap.transports.generic_udp import GenericMessageInterface
from aiocoap.util import hostportjoin

from .dtls_server import DtlsServer
from .store import GroupCommit

_COAP_OVERHEAD = 64  # header, token and options budget next to a block's payload
_ANSWERS_KEPT = 16  # answers kept per session for retransmitted CON requests (fast path)
_HELD = b""  # in CoapsRemote.answered: the answer is held for the group commit (a retransmission is ignored)


def _block_exp_for(max_payload):
    """Largest SZX (0..6) whose block plus a CoAP header fits max_payload."""
    exp = 6
    while exp > 0 and (16 << exp) + _COAP_OVERHEAD > max_payload:
        exp -= 1
    return exp


# --- requests the fast path can read without aiocoap's decoder ------------------------------

_URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT = 11, 12, 15, 17
_PLAIN_OPTIONS = frozenset((_URI_PATH, _CONTENT_FORMAT, _URI_QUERY, _ACCEPT))
_MAX_MESSAGE, _MAX_OPTIONS = 1152, 32  # est_lite.coap.decode's defaults
_EST_PREFIX = b"\xbb.well-known\x03est"  # the options Uri-Path ".well-known", Uri-Path "est", first in a request
_EST_PREFIX_LEN = len(_EST_PREFIX)


class _OptionNumber:
    __slots__ = ("number",)

    def __init__(self, number):
        self.number = number


class _PlainOptions:
    """The `request.opt` attributes the EST resources read, for a request
    that carries only Uri-Path, Uri-Query, Content-Format and Accept."""

    __slots__ = ("uri_path", "uri_query", "content_format", "accept", "_numbers")
    block1 = block2 = size1 = size2 = None
    only_understood = True  # Uri-Path, Uri-Query, Accept (critical) are all understood: check_critical_options passes

    def option_list(self):
        return [_OptionNumber(n) for n in self._numbers]


class PlainRequest:
    """A CoAP request decoded by est_lite.coap (about a fifth of aiocoap's
    Message.decode), with the attributes of aiocoap's Message that the EST
    resources use: code, mtype, mid, token, payload, remote, opt."""

    __slots__ = ("code", "mtype", "mid", "token", "payload", "remote", "opt")

    def __repr__(self):
        return "<PlainRequest %d.%02d mid %d %s>" % (self.code >> 5, self.code & 31, self.mid, self.opt.uri_path)


def plain_request(datagram, remote):
    """A PlainRequest for a CON or NON request whose options are all of the
    plain kind (each of Content-Format and Accept at most once, UTF-8 path
    and query), else None: the caller then decodes with aiocoap, which
    keeps every other case (and every error) as it was.

    Reads the datagram directly (what est_lite.coap.decode accepts, with
    its limits: at most 1152 bytes and 32 options), without building an
    intermediate message: the options a plain request may carry are all
    below 269, so only the one-byte extended delta and length forms can
    occur in an accepted request."""
    n = len(datagram)
    if n < 4 or n > _MAX_MESSAGE:
        return None
    b = datagram[0]
    tkl = b & 15
    code = datagram[1]
    if b >> 6 != 1 or b & 0x20 or tkl > 8 or not 1 <= code <= 31:
        return None  # not version 1, ACK/RST, bad token length, not a request
    p = 4 + tkl
    if p > n:
        return None
    if datagram[p : p + _EST_PREFIX_LEN] == _EST_PREFIX:
        # Uri-Path ".well-known", "est": the start of every EST request
        path, nums, num = [".well-known", "est"], [_URI_PATH, _URI_PATH], _URI_PATH
        p += _EST_PREFIX_LEN
    else:
        path, nums, num = [], [], 0
    query = []
    cf = acc = None
    payload = b""
    try:
        while p < n:
            b = datagram[p]
            p += 1
            if b == 0xFF:
                if p == n:
                    return None
                payload = datagram[p:]
                break
            d = b >> 4
            if d == 13:
                d = datagram[p] + 13
                p += 1
            elif d > 13:
                return None  # 14: a delta of 269 or more (no plain option), 15: a format error
            v = b & 15
            if v == 13:
                v = datagram[p] + 13
                p += 1
            elif v > 13:
                return None
            num += d
            e = p + v
            if e > n or len(nums) >= _MAX_OPTIONS:
                return None
            if num == _URI_PATH:
                path.append(str(datagram[p:e], "utf-8"))
            elif num == _URI_QUERY:
                query.append(str(datagram[p:e], "utf-8"))
            elif num == _CONTENT_FORMAT and cf is None and v <= 2:
                cf = int.from_bytes(datagram[p:e], "big")
            elif num == _ACCEPT and acc is None and v <= 2:
                acc = int.from_bytes(datagram[p:e], "big")
            else:
                return None
            nums.append(num)
            p = e
    except (IndexError, UnicodeDecodeError):
        return None
    o = _PlainOptions()
    o.uri_path, o.uri_query, o.content_format, o.accept, o._numbers = tuple(path), tuple(query), cf, acc, nums
    r = PlainRequest()
    r.code, r.mtype, r.mid, r.token, r.payload, r.remote, r.opt = (
        code, NON if datagram[0] & 0x10 else CON, datagram[2] << 8 | datagram[3], bytes(datagram[4:4 + tkl]),
        bytes(payload), remote, o)
    return r


class CoapsRemote(interfaces.EndpointAddress):
    """The remote of one DTLS session (identity-hashed: one object per session)."""

    is_multicast = False
    is_multicast_locally = False
    scheme = "coaps"
    # a plain attribute shadowing the base class property: settable per instance
    maximum_block_size_exp = 6

    def __init__(self, interface, peer):
        self._interface = interface
        self.peer = peer
        self.via_aiocoap = False  # a message went to aiocoap's machinery (which then may hold state for us)
        self.answered = collections.OrderedDict()  # CON message id -> answer bytes (fast path deduplication)
        self.held = 0  # answers of the fast path waiting for the group commit
        self.maximum_block_size_exp = _block_exp_for(peer.max_payload or 0)

    def __repr__(self):
        return "<CoapsRemote %s session #%d>" % (self.hostinfo, self.peer.id)

    def send(self, data):
        if self.peer.closed:
            self._interface._log.info("Not sending %d bytes to %s: DTLS session closed", len(data), self.hostinfo)
            return
        self.peer.send(data)

    @property
    def hostinfo(self):
        host, port = self.peer.address[:2]
        return hostportjoin(host, None if port == COAPS_PORT else port)

    @property
    def uri_base(self):
        return "coaps://" + self.hostinfo

    @property
    def hostinfo_local(self):
        return self._interface.hostinfo_local

    @property
    def uri_base_local(self):
        return "coaps://" + self.hostinfo_local

    @property
    def authenticated_claims(self):
        return (self.peer,)

    @property
    def blockwise_key(self):
        return (self.peer.address, self.peer.id)


class _ClosedPeer:
    """What a CoapsRemote keeps of its DtlsPeer once the session has closed:
    the attributes the remote and the resources read, without the OpenSSL
    connection and the certificates. A request still being rendered for
    it sees no client certificate (its answer could not be sent anyway)."""

    closed = True
    established = False
    peer_chain = verified_chain = ()
    tls_unique = exporter = extended_master_secret = None

    def __init__(self, peer):
        self.id = peer.id
        self.address = peer.address
        self.max_payload = peer.max_payload
        self.date_error = getattr(peer, "date_error", None)

    def send(self, data):
        pass


def coaps_peer(request_or_remote):
    """The DtlsPeer behind an aiocoap request (or remote) that came in over
    this transport, else None."""
    remote = getattr(request_or_remote, "remote", request_or_remote)
    if isinstance(remote, CoapsRemote):
        return remote.peer
    return None


class _Pool:
    """What GenericMessageInterface.shutdown() expects in self._pool."""

    def __init__(self, server):
        self._server = server

    async def shutdown(self):
        self._server.close()

    async def connect(self, sockaddr):
        raise error.NetworkError("this coaps transport only serves; it cannot start DTLS sessions")


class CoapsServerInterface(GenericMessageInterface):
    """aiocoap MessageInterface over a DtlsServer."""

    def __init__(self, mman, log, loop):
        super().__init__(mman, log, loop)
        self._remotes = {}  # peer id -> CoapsRemote
        self.unparsable = 0  # datagrams of established sessions that are not CoAP
        self.fast_render = None  # site.fast_render: synchronous answers without aiocoap's exchange machinery
        self.fast_failed = None  # site.fast_failed(request, error, certificates' DER): the answer when the
        # request's certificates could not be written at the group commit
        self._group = GroupCommit()  # installed around each fast render: the rows it queues wait for _commit
        self._held = []  # (remote, request, response, first row, end row) waiting for _commit
        self._mid = int.from_bytes(os.urandom(2), "big")
        self.server = None
        self.hostinfo_local = None

    @classmethod
    async def create(cls, mman, log, loop, bind, cert, key, trusted_cas, **dtls_options):
        self = cls(mman, log, loop)
        on_closed = dtls_options.pop("on_closed", None)

        def closed(peer, reason):
            self._session_closed(peer, reason)
            if on_closed is not None:
                on_closed(peer, reason)

        reuse_port = dtls_options.pop("reuse_port", False)
        self.server = DtlsServer(cert, key, trusted_cas, self._datagram, on_closed=closed, **dtls_options)
        host, port = await self.server.start(bind, reuse_port=reuse_port)
        self.hostinfo_local = hostportjoin(host, None if port == COAPS_PORT else port)
        self._pool = _Pool(self.server)
        return self

    @property
    def local_address(self):
        return self.server.local_address

    def _remote(self, peer):
        r = self._remotes.get(peer.id)
        if r is None:
            r = self._remotes[peer.id] = CoapsRemote(self, peer)
        return r

    def _datagram(self, peer, data):
        if self._mman is None:
            return
        self._received_datagram(self._remote(peer), data)

    def _received_datagram(self, address, datagram):
        if self.fast_render is not None:
            # the common request (an EST operation without block-wise options)
            # goes through est_lite.coap's decoder, not aiocoap's
            req = plain_request(datagram, address)
            if req is not None and self._fast(address, req):
                return
        # aiocoap's version logs a warning per bad message and lets some
        # decoding errors escape (a non-UTF-8 Uri-Path is a UnicodeDecodeError):
        # an authenticated but misbehaving peer must not flood the log
        try:
            message = Message.decode(datagram, remote=address)
        except (error.UnparsableMessage, ValueError) as e:  # UnicodeDecodeError is a ValueError
            self.unparsable += 1
            self._log.debug("Ignoring unparsable message from %s: %s", address, e)
            return
        if self.fast_render is not None and message.mtype in (CON, NON) and message.code.is_request():
            if self._fast(address, message):
                return
        address.via_aiocoap = True
        self._mman.dispatch_message(message)

    def _fast(self, remote, request):
        """Answer a request at once if the site can render it synchronously
        (site.fast_render returns a response, or None to let aiocoap handle
        it): piggybacked on the ACK of a CON, or a NON for a NON, with the
        answers to recent CON message ids kept per session so a
        retransmission gets the same answer (RFC 7252 §4.5)."""
        answered = remote.answered
        if request.mtype is CON:
            cached = answered.get(request.mid)
            if cached is not None:
                if cached is not _HELD:  # (held: the client retransmits again and gets it from here)
                    remote.send(cached)
                return True
        if remote.held:
            b2 = request.opt.block2
            if b2 is not None and b2.block_number:
                return True  # more of an answer not sent yet (its certificate is not written yet): ignored
        group = self._group
        start = len(group.rows)
        try:
            group.install()
            try:
                response = self.fast_render(request)
            finally:
                group.uninstall()
        except Exception:  # noqa: BLE001 - a bug in one request must not take the session down
            self._log.exception("fast render of %s failed", request)
            response = Message(code=Code.INTERNAL_SERVER_ERROR)
        if response is None:
            return False
        end = len(group.rows)
        if end > start:
            # the answer carries certificates whose rows are only queued: it
            # waits for the one commit of this loop iteration (_commit)
            if not self._held:
                self._loop.call_soon(self._commit)
            self._held.append((remote, request, response, start, end))
            remote.held += 1
            if request.mtype is CON:
                answered[request.mid] = _HELD
            return True
        self._answer(remote, request, response)
        return True

    def _answer(self, remote, request, response):
        answered = remote.answered
        response.token = request.token
        if request.mtype is CON:
            response.mtype, response.mid = ACK, request.mid
        else:
            self._mid = (self._mid + 1) & 0xFFFF
            response.mtype, response.mid = NON, self._mid
        data = response.encode()
        if request.mtype is CON:
            answered[request.mid] = data
            while len(answered) > _ANSWERS_KEPT:
                answered.pop(next(iter(answered)))
        remote.send(data)

    def _commit(self):
        """Write the rows the fast renders queued since the last call in one
        transaction, then send their held answers; an answer whose row
        failed is replaced by the error (site.fast_failed). The answer of a
        session closed meanwhile is dropped (its row is written all the same)."""
        held, self._held = self._held, []
        rows = self._group.rows
        if not held and not rows:
            return
        errors = self._group.flush()
        for remote, request, response, start, end in held:
            remote.held -= 1
            e = GroupCommit.first(errors, start, end)
            if e is not None and int(response.code) >= 0x80:
                # already an error (the render failed after its CA issued):
                # it stands, counted and logged once
                self._log.error("%s: the certificate could not be stored: %r", request, e)
            elif e is not None:
                response = None
                if self.fast_failed is not None:
                    try:
                        # (the certificates: the transfer to drop is the one that holds them)
                        response = self.fast_failed(request, e, GroupCommit.certificates(rows, start, end))
                    except Exception:  # noqa: BLE001 - a bug here must not keep the other answers
                        self._log.exception("fast_failed of %s failed", request)
                if response is None:
                    self._log.error("%s: the certificate could not be stored: %r", request, e)
                    response = Message(code=Code.INTERNAL_SERVER_ERROR)
            if remote.peer.closed:
                continue
            try:
                self._answer(remote, request, response)
            except Exception:  # noqa: BLE001 - as DtlsServer does per datagram: the other answers go out
                self._log.exception("answer to %s failed", request)
                if request.mtype is CON and remote.answered.get(request.mid) is _HELD:  # not ignored for good
                    del remote.answered[request.mid]

    def _session_closed(self, peer, reason):
        r = self._remotes.pop(peer.id, None)
        if r is None:
            return
        if r.via_aiocoap and self._mman is not None:  # fast-path-only sessions left nothing there
            self._received_exception(r, error.NetworkError("DTLS session closed: %s" % reason))
        # aiocoap keeps the messages of this remote for its deduplication
        # (EXCHANGE_LIFETIME, 247 s), and with them the remote: from now on
        # it holds a small record of the session, not the session (its
        # OpenSSL connection, the client's certificates)
        r.peer = _ClosedPeer(peer)
        r.answered = collections.OrderedDict()  # up to 16 answers of the fast path

    async def determine_remote(self, request):
        # Server-initiated coaps requests would need a DTLS client role.
        return None

    async def recognize_remote(self, remote):
        return isinstance(remote, CoapsRemote) and remote._interface is self

    async def shutdown(self):
        self._commit()  # (stopping) what the fast path issued goes to the store, the answers out if they can
        self._remotes.clear()
        await super().shutdown()


async def create_coaps_server_context(
    site,
    bind=("127.0.0.1", 0),
    *,
    cert,
    key,
    trusted_cas,
    loggername="est-lite.coaps",
    **dtls_options,
):
    """An aiocoap Context serving `site` over coaps:// on `bind`. Returns
    (context, bound_port). `dtls_options` go to DtlsServer (chain, is_revoked,
    mtu, max_sessions, idle_timeout, handshake_timeout, suites, ...) and
    reuse_port to DtlsServer.start; the DtlsServer itself is
    `coaps_server(context)`."""
    from aiocoap import Context

    loop = asyncio.get_running_loop()
    ctx = Context(loop=loop, serversite=site, loggername=loggername)
    made = []

    async def construct(mman):
        t = await CoapsServerInterface.create(mman, ctx.log, loop, bind, cert, key, trusted_cas, **dtls_options)
        t.fast_render = getattr(site, "fast_render", None)
        t.fast_failed = getattr(site, "fast_failed", None)
        made.append(t)
        return t

    append = getattr(ctx, "_append_tokenmanaged_messagemanaged_transport", None)
    if append is None:  # pragma: no cover - aiocoap internals changed
        raise RuntimeError("this aiocoap has no _append_tokenmanaged_messagemanaged_transport; est-lite needs 0.4.x")
    await append(construct)
    return ctx, made[0].local_address[1]


def coaps_server(context):
    """The DtlsServer of a context made by create_coaps_server_context (for
    statistics and session inspection), or None."""
    for ri in getattr(context, "request_interfaces", ()):
        mman = getattr(ri, "token_interface", None)
        mi = getattr(mman, "message_interface", None)
        if isinstance(mi, CoapsServerInterface):
            return mi.server
    return None


