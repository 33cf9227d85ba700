# EST operations and their two path forms: the long HTTPS names (RFC 7030
# §3.2.2) and the short CoAP names (RFC 9148 §5.1), with the label rules.
# The client modules use this instead of est_lite.numbers, so a device does
# not load the whole registry; numbers re-exports every name here.
from est_lite.errors import LocalProtocolError

# index = operation number (numbers.OP_CACERTS ... OP_FULLCMC)
HTTP_NAMES = ("cacerts", "csrattrs", "simpleenroll", "simplereenroll", "serverkeygen", "fullcmc")
COAP_NAMES = ("crts", "att", "sen", "sren", "skg", "cmc")
# serverkeygen has a second CoAP resource: the certificate as
# application/pkix-cert instead of PKCS#7 (RFC 9148 §5.8)
COAP_SKC = "skc"


def op_from_name(name):
    """Operation number for an HTTP or CoAP operation name (str or bytes,
    any case), or -1 if the name is not an EST operation."""
    if not isinstance(name, str):
        try:
            name = str(bytes(name), "ascii")
        except ValueError:
            return -1
    n = name.lower()
    for t in (HTTP_NAMES, COAP_NAMES):
        if n in t:
            return t.index(n)
    return 4 if n == COAP_SKC else -1


def is_operation_name(name):
    return op_from_name(name) >= 0


def check_label(label):
    """An EST label (RFC 7030 §3.2.2) as str, or None for no label: one
    non-empty path segment of printable ASCII, never an operation name."""
    if isinstance(label, (bytes, bytearray)):
        try:
            label = str(bytes(label), "ascii")
        except ValueError:
            label = 0
    if label is None or label == "":
        return None
    if (
        not isinstance(label, str)
        or len(label) > 63
        or label in (".", "..")
        or [c for c in label if not " " < c < "\x7f" or c in "/?#%\\"]
    ):
        raise LocalProtocolError("label %r: one path segment of 1..63 printable ASCII characters" % (label,))
    if op_from_name(label) >= 0:
        raise LocalProtocolError("label %r is an EST operation name" % label)
    return label


def https_path(op, label=None):
    """'/.well-known/est/[label/]simpleenroll'"""
    label = check_label(label)
    return "/.well-known/est/" + (label + "/" if label else "") + HTTP_NAMES[op]


def coap_path(op, label=None, skc=False):
    """The CoAP Uri-Path segments, e.g. ['.well-known', 'est', 'sen']."""
    p = [".well-known", "est", COAP_SKC if skc and op == 4 else COAP_NAMES[op]]
    label = check_label(label)
    if label:
        p.insert(2, label)
    return p
