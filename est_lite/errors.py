# est-lite: one exception root, split by blame (see docs/design.md).
#
# EstError
#   LocalProtocolError   we were asked to do something invalid (bad argument)
#   RemoteProtocolError  the peer sent something invalid (malformed, truncated,
#                        oversized, unexpected)
#     LimitError         the peer's data exceeds one of our named limits
#   ServerError          the peer answered with a well-formed error status
#   SecurityError        trust, identity or authentication failure
#   TransportError       the link failed
#
# Each error carries hints of the CoAP code and HTTP status it maps to, like
# h11's ProtocolError.error_status_hint, so a server can answer with them.
#
# `const` is re-exported for the core modules: `from est_lite.errors import
# const` and `_X = const(1)` are folded by mpy-cross like micropython.const,
# and the CPython fallback lives here once instead of in every module.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


class EstError(Exception):
    coap_code = 0xA0  # 5.00
    http_status = 500
    diagnostic = None  # ServerError: the peer's error text

    def __init__(self, msg, coap_code=None, http_status=None, diagnostic=None):
        super().__init__(msg)
        self.msg = msg
        if coap_code:
            self.coap_code = coap_code
        if http_status:
            self.http_status = http_status
        if diagnostic is not None:
            self.diagnostic = diagnostic


class LocalProtocolError(EstError):
    pass


class RemoteProtocolError(EstError):
    coap_code = 0x80  # 4.00 Bad Request
    http_status = 400


class LimitError(RemoteProtocolError):
    coap_code = 0x8D  # 4.13 Request Entity Too Large
    http_status = 413


class ServerError(EstError):
    """A well-formed error answer from the peer (HTTP 4xx/5xx, CoAP 4.xx/5.xx)."""


class SecurityError(EstError):
    coap_code = 0x83  # 4.03
    http_status = 403


class TransportError(EstError):
    coap_code = 0xA4  # 5.04
    http_status = 504
