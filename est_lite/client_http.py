# EST over HTTP/1.1 (RFC 7030 as corrected by RFC 8951): the HTTP side of
# est_lite.client, same flow table, same events. Kept apart so that a
# CoAP-only device does not load it.

from est_lite import client as C
from est_lite import http1
from est_lite.errors import EstError, LocalProtocolError, RemoteProtocolError, ServerError, const

# est_lite.client's states and inputs (folded by mpy-cross)
_AWAIT_RESPONSE = const(1)
_DONE = const(5)
_SEND = const(0)
_FINAL = const(3)
_RETRY = const(4)
_AUTH = const(5)

# response media type -> CoAP content format (numbers.CF_*), for decode_result
_CF = {"application/pkcs7-mime": 281, "application/csrattrs": 285, "application/pkix-cert": 287}


class HttpOperation(C.Operation):
    """One EST operation over an HTTP/1.1 connection (the port's TLS stream).

    host: the Host header; body: the CSR (DER) of POST operations (sent as
    base64 lines); auth: (user, password), both str, or None. With auth,
    one 401 is answered automatically (Digest preferred, else Basic;
    cnonce, random bytes or str from the port, is needed for Digest), and
    preemptive_basic=True sends Basic with the first request already.
    Without auth a 401 ends in an AuthRequired event. A redirection (301,
    302, 307, 308) to the same origin (a path, or https:// with the same
    host and port) is followed up to 3 times with the same method and body
    (RFC 7030 §3.2.1); one to another origin is a ServerError naming it.
    After a response that does not keep the connection alive,
    need_new_connection is True: the port must reconnect before sending
    the next request."""

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
        super().__init__(op, body, public_key, max_body, max_certs)
        if auth is not None and (type(auth) is str or list(map(type, auth)) != [str, str]):
            raise LocalProtocolError("auth: (user, password) of str")
        from est_lite.paths import https_path

        self.method = "POST" if op > 1 else "GET"
        self.path = https_path(op, label)
        self.label = label
        self.host = host
        self.auth = auth
        self.cnonce = cnonce
        self.accept = accept
        self._authz = http1.basic_auth(auth[0], auth[1]) if auth and preemptive_basic else None
        self._tried = False  # the last request carried credentials
        self._parser = http1.ResponseParser(max_header, max_body, self.method)
        self.need_new_connection = False
        self.response = None  # the last http1.Response

    def send(self):
        """The request bytes to write now, or None."""
        if self.state != _AWAIT_RESPONSE and self.state < _DONE:
            data = http1.build_est_request(
                self.op, self.host, self._body, self.label, self.path, authorization=self._authz, accept=self.accept
            )
            self._tried = self._authz is not None
            self._to(_SEND)
            self.need_new_connection = False
            return data

    def receive_data(self, data):
        """Feed bytes read from the connection; b"" means EOF. They are
        parsed at once, so nothing beyond max_header/max_body is buffered."""
        if self.state == _AWAIT_RESPONSE:
            self._parser.receive_data(data)
            self._poll()

    def next_event(self):
        self._poll()
        return C.Operation.next_event(self)

    def _poll(self):
        if self.state == _AWAIT_RESPONSE and self._exc is None:
            try:
                r = self._parser.next_event()
                if r is not http1.NEED_DATA:
                    self.response = r
                    self.need_new_connection = not r.keep_alive
                    self._parser.reset()
                    self._handle(r)
            except EstError as e:
                self._fail(e)

    def _handle(self, r):
        s = r.status
        a = self.auth
        if s == 202 or s == 503 and r.retry_after is not None:
            v = r.retry_after
            # 60: DEFAULT_RETRY_AFTER; the body ("request 5 is waiting for approval") as the diagnostic
            return self._finish(_RETRY, C._make_event("RetryAfter", 60 if v is None else v, C._text(r.body) or None))
        if s == 401:
            ch = http1.parse_challenges([v for k, v in r.headers if k == "www-authenticate"])
            if a is None:
                return self._finish(_FINAL, C._make_event("AuthRequired", ch))
            d = http1.pick_digest(ch)
            if self._tried:
                pass
            elif d is not None:
                if self.cnonce is None:
                    raise LocalProtocolError("the server wants Digest authentication: give HttpOperation a cnonce")
                self._authz = http1.digest_auth(d, self.method, self.path, a[0], a[1], self.cnonce)
                return self._to(_AUTH)
            elif "basic" in [c[0] for c in ch]:
                self._authz = http1.basic_auth(a[0], a[1])
                return self._to(_AUTH)
        if s in (301, 302, 307, 308):
            http1.follow(self, r)  # http1_rare: same origin -> self.path, or raises
            return self._to(_AUTH)
        if self.op == 1 and s in (204, 404):
            return self._finish(_FINAL, C._make_event("CsrAttrs", None, b"", C._text(r.body) or None))
        if s != 200:
            d = C._text(r.body)
            raise ServerError("the server answered %d %s%s" % (s, r.reason, ": " + d if d else ""), None, s, d)
        ct = r.content_type
        if self.op == 4:
            if ct != "multipart/mixed" or "boundary" not in r.params:
                raise RemoteProtocolError("serverkeygen answer is not multipart/mixed with a boundary")
            key, kt, certs = http1.split_serverkeygen(r.body, r.params["boundary"], self.max_body)
            return self._result(None, [(284 if kt == "application/pkcs8" else 280, key), (281, certs)])
        cf = _CF.get(ct, -1) if ct else None
        if cf == -1:
            raise RemoteProtocolError("unexpected Content-Type %r" % ct)
        self._result(cf, http1.decode_b64_body(r.body, self.max_body))

