# Certificate checks of the client runtime (portable, loaded only when
# needed): the issued certificate against the CA chain and our key, validity
# dates, and what a renewal copies from the current certificate.
import time

from est_lite.errors import EstError, LocalProtocolError, SecurityError

_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_EC = "1.2.840.10045.2.1"
_P256 = "1.2.840.10045.3.1.7"
_SAN = "2.5.29.17"
SKEW = 300  # seconds of clock difference tolerated on notBefore


def seconds(t):
    """Seconds since 1970-01-01 UTC for a (year, month, day, hour, minute,
    second) tuple (no time-zone or epoch assumptions of the port)."""
    y, m, d, hh, mi, ss = t[:6]
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * 86400 + hh * 3600 + mi * 60 + ss


def utc_seconds(now=None):
    """`now` (seconds since 1970) if given, else the clock; None when the
    clock is obviously not set (before 2024: a device without RTC)."""
    if now is not None:
        return now
    t = seconds(time.gmtime())
    return t if t >= 1704067200 else None


def _fields(der):
    from est_lite import pkcs7

    return pkcs7.cert_tbs_fields(der)


def _signed_by(f, issuer_der, fi, verify):
    # portable check: ECDSA-SHA256 by a P-256 key
    if f["sig_alg"] != _ECDSA_SHA256 or fi["key_alg"] != _EC or fi["key_params"] != _P256:
        raise SecurityError("cannot check a %s signature by a %s %s key on this port (P-256 ECDSA-SHA256 only)"
                            % (f["sig_alg"], fi["key_alg"], fi["key_params"]))
    return verify(bytes(fi["public_key"]), f["tbs"], f["signature"])


def check_issued(cert, chain, anchors, public_key, verify, hook=None, now=None, max_depth=4, check_time=True):
    """Raise SecurityError unless `cert` carries `public_key`, is valid at
    `now` (see utc_seconds) and chains through `chain` to one of `anchors`
    (DER lists). verify(point, message, sig) is the port's ECDSA check;
    hook(issuer_der, cert_der) -> bool replaces the signature check (CPython:
    any algorithm)."""
    import gc

    f = _fields(cert)
    if public_key is not None and bytes(f["public_key"]) != bytes(public_key):
        raise SecurityError("the issued certificate does not carry the public key we sent")
    what = "the issued certificate" if public_key is not None else "the server certificate"
    t = utc_seconds(now) if check_time else None
    if t is not None:
        if seconds(f["not_before"]) - SKEW > t:
            raise SecurityError("the issued certificate is not valid yet (notBefore %04d-%02d-%02d %02d:%02d:%02d)"
                                % f["not_before"])
        if seconds(f["not_after"]) < t:
            raise SecurityError("the issued certificate has expired")
    anchors = [bytes(a) for a in anchors]
    pool = [bytes(c) for c in chain] + anchors
    cur = bytes(cert)
    for _ in range(max_depth):
        issuer = bytes(f["issuer"])
        found = None
        for c in pool:
            if c == cur:
                continue
            fi = _fields(c)
            if bytes(fi["subject"]) != issuer:
                continue
            fi["public_key"] = bytes(fi["public_key"])
            tbs = bytes(f["tbs"])
            sig = bytes(f["signature"])
            ok = hook(c, cur) if hook is not None else None
            if ok is None:
                fk = {"sig_alg": f["sig_alg"], "tbs": tbs, "signature": sig}
                f = None
                gc.collect()
                ok = _signed_by(fk, c, fi, verify)
            if ok:
                found = c
                break
            f = _fields(cur)
        if found is None:
            raise SecurityError("%s does not chain to the CA certificates (no valid issuer found)" % what)
        if found in anchors:
            return
        cur = found
        f = _fields(cur)
    raise SecurityError("%s: chain longer than %d" % (what, max_depth))


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


def name_pairs(name_der):
    """[(oid_text, value_der)] of an X.509 Name, in order (multi-valued RDNs
    flattened)."""
    from est_lite import der

    mv = memoryview(name_der)
    out = []
    s, e = der.read(mv, 0, der.SEQUENCE)
    for t, a, b in der.iter_tlv(mv, s, e):
        for t2, c, d in der.iter_tlv(mv, a, b):
            os_, oe = der.read(mv, c, der.OID, d)
            out.append((der.oid_str(mv[os_:oe]), bytes(mv[oe:d])))
    return out


def renewal_info(cert):
    """(not_before_s, not_after_s, subject pairs, (critical, SAN value) or
    None) of the current certificate: what a re-enrollment keeps."""
    from est_lite import pkcs7

    f = _fields(cert)
    san = None
    for oid, crit, val in pkcs7.cert_extensions(f):
        if oid == _SAN:
            san = (crit, bytes(val))
    return seconds(f["not_before"]), seconds(f["not_after"]), name_pairs(f["subject"]), san
