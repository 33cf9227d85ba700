# The pinned-bootstrap decision, made inside the (D)TLS handshake (the
# verify callback of est_lite_mp.client and est_lite_mp.https); loaded only
# when a client bootstraps from a pin. Portable.
from est_lite.errors import EstError, LocalProtocolError
from est_lite_mp.certs import _fields, _signed_by, name_pairs


class PinCheck:
    """The pinned-bootstrap decision, made inside the (D)TLS handshake: the
    verify callback of the MicroPython transports (est_lite_mp.client,
    est_lite_mp.https). Mbed TLS calls check(der, depth) for each
    certificate of the chain the server presents, top first, down to the
    leaf at depth 0. Every call returns True except the one at depth 0,
    which returns whether `pin` (SHA-256 of a certificate, 32 bytes) is met:
    the pinned certificate is in the chain and every certificate below it
    is signed by the one above it (P-256 ECDSA-SHA256; verify(point,
    message, der_sig) is the port's check, None: est_lite_mp.crypto's), so
    a forged leaf that only names the pinned CA as its issuer, sent with
    the real CA certificate, does not meet a CA pin. A leaf pin needs no
    signature check.
    Afterwards `hit` says whether the pinned certificate was seen and `why`
    why the pin is not met (None when it is). Memory: the chain is not
    kept, only the public key of the last certificate checked (one
    certificate's fields at a time). max_below: most certificates checked
    below the pinned one (each costs a signature verification)."""

    def __init__(self, pin, verify, max_below=4):
        if not isinstance(pin, bytes) or len(pin) != 32:
            raise LocalProtocolError("pin must be the 32-byte SHA-256 of a certificate")
        self.pin = pin
        self.verify = verify if verify is not None else _mp_verify
        self.max_below = max_below
        self._depth = None
        self._start()

    def _start(self):
        self.hit = False
        self.why = None
        self._above = None  # (key fields, name) of the certificate the next one must be signed by
        self._n = 0

    def __call__(self, der, depth):
        # must not raise: it runs inside Mbed TLS
        if self._depth is None or depth >= self._depth:
            self._start()  # a new handshake (or a new walk of the chain)
        self._depth = depth
        try:
            self._step(der, depth)
        except MemoryError:
            self.why = "out of memory while checking the server's certificate chain against the pin"
            self._above = None
        except EstError as e:  # a malformed certificate or an unsupported algorithm
            self.why = "server certificate at depth %d: %s" % (depth, e)
            self._above = None
        if depth:
            return True
        if not self.hit and self.why is None:
            self.why = ("server's certificate chain does not contain the pinned certificate (sha256:%s); pin the "
                        "server certificate or one the server sends in its chain" % self.pin.hex())
        return self.why is None

    def _step(self, der, depth):
        import hashlib

        if hashlib.sha256(der).digest() == self.pin:
            # the match closest to the leaf counts (as on CPython)
            self.hit = True
            self.why = None
            self._n = 0
            self._above = None
            if depth:
                self._above = _key_of(_fields(der), depth)
            return
        up = self._above
        if up is None:
            return  # above the pin, or below a failed link (why is set)
        self._above = None
        self._n += 1
        if self._n > self.max_below:
            self.why = "more than %d certificates below the pinned one (max_below)" % self.max_below
            return
        import gc

        f = _fields(der)
        gc.collect()  # the verification peaks at ~6 KB; run it on a collected heap
        if not _signed_by(f, None, up[0], self.verify):
            self.why = ("server's certificate chain contains the pinned certificate (sha256:%s) but %s is not "
                        "signed by %s" % (self.pin.hex(), _label(f, depth), up[1]))
            return
        if depth:
            self._above = _key_of(f, depth)


def _mp_verify(point, message, sig):
    # est_lite_mp.crypto.verify, imported only when a signature is checked (a leaf pin needs none)
    from est_lite_mp.crypto import verify

    return verify(point, message, sig)


def _key_of(f, depth):
    # what checking the certificate below needs, copied out of Mbed TLS's buffer
    return {"key_alg": f["key_alg"], "key_params": f["key_params"], "public_key": bytes(f["public_key"])}, \
        _label(f, depth)


def _label(f, depth):
    # "CN=x (depth n)" for messages
    cn = None
    try:
        for oid, v in name_pairs(f["subject"]):
            if oid == "2.5.4.3" and len(v) > 2 and v[1] < 0x80:
                cn = bytes(v[2:]).decode()
    except (EstError, UnicodeError):
        pass
    return "the certificate at depth %d" % depth if cn is None else "CN=%s (depth %d)" % (cn, depth)
