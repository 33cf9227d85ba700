# IANA registries used by EST and EST-coaps, as plain module constants.
# (aiocoap keeps one module per registry in numbers/; a single small module
# is cheaper on a device.)

from est_lite.errors import LocalProtocolError, const

# --- CoAP message types (RFC 7252 §3) ---
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

# --- CoAP codes: class << 5 | detail ---
EMPTY = const(0x00)
GET = const(0x01)
POST = const(0x02)
PUT = const(0x03)
DELETE = const(0x04)
FETCH = const(0x05)

CREATED = const(0x41)  # 2.01
DELETED = const(0x42)  # 2.02
VALID = const(0x43)  # 2.03
CHANGED = const(0x44)  # 2.04
CONTENT = const(0x45)  # 2.05
CONTINUE = const(0x5F)  # 2.31
BAD_REQUEST = const(0x80)  # 4.00
UNAUTHORIZED = const(0x81)  # 4.01
BAD_OPTION = const(0x82)  # 4.02
FORBIDDEN = const(0x83)  # 4.03
NOT_FOUND = const(0x84)  # 4.04
METHOD_NOT_ALLOWED = const(0x85)  # 4.05
NOT_ACCEPTABLE = const(0x86)  # 4.06
REQUEST_ENTITY_INCOMPLETE = const(0x88)  # 4.08
PRECONDITION_FAILED = const(0x8C)  # 4.12
REQUEST_ENTITY_TOO_LARGE = const(0x8D)  # 4.13
UNSUPPORTED_CONTENT_FORMAT = const(0x8F)  # 4.15
INTERNAL_SERVER_ERROR = const(0xA0)  # 5.00
NOT_IMPLEMENTED = const(0xA1)  # 5.01
BAD_GATEWAY = const(0xA2)  # 5.02
SERVICE_UNAVAILABLE = const(0xA3)  # 5.03
GATEWAY_TIMEOUT = const(0xA4)  # 5.04
PROXYING_NOT_SUPPORTED = const(0xA5)  # 5.05


def code_class(code):
    return code >> 5


def is_request(code):
    return 1 <= code <= 31


def is_response(code):
    return code >= 0x40


def is_success(code):
    return code >> 5 == 2


def code_str(code):
    """'2.05' style text for a code byte."""
    d = code & 0x1F
    return "%d.%d%d" % (code >> 5, d // 10, d % 10)


# --- CoAP option numbers (RFC 7252 §5.10, RFC 7959, RFC 7641) ---
IF_MATCH = const(1)
URI_HOST = const(3)
ETAG = const(4)
IF_NONE_MATCH = const(5)
OBSERVE = const(6)
URI_PORT = const(7)
LOCATION_PATH = const(8)
URI_PATH = const(11)
CONTENT_FORMAT = const(12)
MAX_AGE = const(14)
URI_QUERY = const(15)
ACCEPT = const(17)
LOCATION_QUERY = const(20)
BLOCK2 = const(23)
BLOCK1 = const(27)
SIZE2 = const(28)
PROXY_URI = const(35)
PROXY_SCHEME = const(39)
SIZE1 = const(60)
NO_RESPONSE = const(258)


def is_critical(opt):
    return opt & 1


def is_unsafe(opt):
    return opt & 2


def is_no_cache_key(opt):
    return (opt & 0x1E) == 0x1C


# --- Content formats (CoAP registry; RFC 9148 §8.3) ---
CF_TEXT_PLAIN = const(0)
CF_LINK_FORMAT = const(40)
CF_OCTET_STREAM = const(42)
CF_CBOR = const(60)
CF_MULTIPART_CORE = const(62)
CF_PKCS7_SERVER_KEYGEN = const(280)  # application/pkcs7-mime; smime-type=server-generated-key
CF_PKCS7_CERTS = const(281)  # application/pkcs7-mime; smime-type=certs-only
CF_PKCS8 = const(284)  # application/pkcs8
CF_CSRATTRS = const(285)  # application/csrattrs
CF_PKCS10 = const(286)  # application/pkcs10
CF_PKIX_CERT = const(287)  # application/pkix-cert

# HTTP media types for EST over HTTPS (RFC 7030 §3.2.4, RFC 8951)
MT_PKCS7 = "application/pkcs7-mime"
MT_PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"
MT_PKCS7_SERVER_KEYGEN = "application/pkcs7-mime; smime-type=server-generated-key"
MT_PKCS8 = "application/pkcs8"
MT_PKCS10 = "application/pkcs10"
MT_CSRATTRS = "application/csrattrs"
MT_PKIX_CERT = "application/pkix-cert"
MT_MULTIPART_MIXED = "multipart/mixed"
MT_TEXT_PLAIN = "text/plain"

# --- EST operations and their two path forms ---
# The operation index is the number used by the client state machine.
OP_CACERTS = const(0)
OP_CSRATTRS = const(1)
OP_SIMPLEENROLL = const(2)
OP_SIMPLEREENROLL = const(3)
OP_SERVERKEYGEN = const(4)
OP_FULLCMC = const(5)

# HTTPS names (RFC 7030 §3.2.2), CoAP short names (RFC 9148 §5.1), paths
# and labels: in est_lite.paths (the client modules import only that)
from est_lite.paths import (  # noqa: E402,F401
    COAP_NAMES,
    COAP_SKC,
    HTTP_NAMES,
    check_label,
    coap_path,
    https_path,
    is_operation_name,
    op_from_name,
)

# method of each operation (GET for cacerts/csrattrs, POST otherwise)
OP_METHODS = (GET, GET, POST, POST, POST, POST)

WELL_KNOWN = ".well-known"
EST = "est"
HTTP_PREFIX = "/.well-known/est/"


def parse_path(segments):
    """Inverse of https_path/coap_path for a server: segments after the
    leading '/' (str). Returns (op, label, short_form) or raises
    LocalProtocolError for a path that is not an EST resource."""
    n = len(segments)
    if n < 3 or n > 4 or segments[0] != WELL_KNOWN or segments[1] != EST:
        raise LocalProtocolError("not an EST path", 0x84, 404)
    name = segments[n - 1]
    op = op_from_name(name)
    if op < 0:
        raise LocalProtocolError("unknown EST operation %r" % name, 0x84, 404)
    label = None
    if n == 4:
        label = check_label(segments[2])
    return op, label, name.lower() in COAP_NAMES + (COAP_SKC,)
