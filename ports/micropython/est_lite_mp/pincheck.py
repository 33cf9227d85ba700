# The pinned-bootstrap decision, made inside the (D)TLS handshake (the
# verify callback of est_lite_mp.client and est_lite_mp.https); loaded only
# when a client bootstraps from a pin. Portable.
from est_lite.errors import EstError, LocalProtocolError
from est_lite_mp.certs import _fields, _signed_by, _text, name_pairs, seconds, utc_seconds


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

    def __init__(self, pin, verify, max_below=6):
        if not isinstance(pin, bytes) or len(pin) != 32:
            raise LocalProtocolError("pin must be the 32-byte SHA-256 of a certificate")
        self.pin = pin
        self.verify = verify  # None: est_lite_mp.crypto.verify, imported when a signature is checked
        self.max_below = max_below
        self.depth = None
        self.hit = False  # read by the transports also when the handshake failed before any certificate
        self.why = None

    # Names are few on purpose: every name a module interns counts against
    # MicroPython's qstr pools, and a pinned first contact used to push the
    # enrollment past 620 names (a sixth 7 KB pool in the middle of the
    # handshake). Attributes reuse names the enrollment interns anyway
    # (depth, issuer), and there are no helper functions.
    def __call__(self, der, depth):
        # must not raise: it runs inside Mbed TLS
        if self.depth is None or depth >= self.depth:
            self.hit = False  # a new handshake (or a new walk of the chain)
            self.why = self.issuer = None
            self._n = 0
        self.depth = depth
        # issuer: (key fields, depth, subject DER) of the certificate the
        # next one must be signed by; None above the pin or below a failure
        up = self.issuer
        self.issuer = f = None
        try:
            import hashlib

            if hashlib.sha256(der).digest() == self.pin:
                # the match closest to the leaf counts (as on CPython)
                self.hit = True
                self.why = None
                self._n = 0
                if depth:
                    f = _fields(der)
            elif up is not None:
                self._n += 1
                if self._n > self.max_below:
                    self.why = "more than %d certificates below the pinned one (max_below)" % self.max_below
                else:
                    import gc

                    f = _fields(der)
                    gc.collect()  # the verification peaks at ~6 KB; run it on a collected heap
                    v = self.verify
                    if v is None:
                        from est_lite_mp.crypto import verify as v
                    if not _signed_by(f, None, up[0], v):
                        lab = []
                        for s, d in ((f["subject"], depth), (up[2], up[1])):
                            cn = None
                            try:
                                for oid, val in name_pairs(s):
                                    if oid.encode() == b"2.5.4.3" and len(val) > 2 and val[1] < 0x80:
                                        cn = bytes(val[2:]).decode()
                            except (EstError, UnicodeError):
                                pass
                            lab.append("the certificate at depth %d" % d if cn is None else "CN=%s (depth %d)"
                                       % (cn, d))
                        self.why = ("server's certificate chain contains the pinned certificate (sha256:%s) but %s "
                                    "is not signed by %s" % (self.pin.hex(), lab[0], lab[1]))
                        f = None
            t = utc_seconds() if self.hit and self.why is None else None
            if t is not None:
                # the pinned certificate and those below it must be within
                # their dates, unless the clock is not set (before 2024)
                if f is None:
                    f = _fields(der)  # the pinned leaf
                nb, na = seconds(f["not_before"]), seconds(f["not_after"])
                if nb > t or na < t:
                    self.why = ("server certificate at depth %d is %s by this device's clock (valid %s to %s, the "
                                "clock reads %s UTC)" % (depth, "not valid yet" if nb > t else "expired", _text(nb),
                                                         _text(na), _text(t)))
                    f = None
            if depth and f is not None:
                # what checking the certificate below needs, copied out of Mbed TLS's buffer
                self.issuer = ({"key_alg": f["key_alg"], "key_params": f["key_params"],
                                "public_key": bytes(f["public_key"])}, depth, bytes(f["subject"]))
        except MemoryError:
            self.why = "out of memory while checking the server's certificate chain against the pin"
            self.issuer = None
        except EstError as e:  # a malformed certificate or an unsupported algorithm
            self.why = "server certificate at depth %d: %s" % (depth, e)
            self.issuer = None
        if depth:
            return True
        if not self.hit and self.why is None:
            self.why = ("server's certificate chain does not contain the pinned certificate (sha256:%s); pin the "
                        "server certificate or one the server sends in its chain" % self.pin.hex())
        return self.why is None
