# Certificate checks of the client runtime (portable, loaded only when
# needed): the issued certificate against the CA chain and our key, validity
# dates, and what a renewal copies from the current certificate. The
# pinned-bootstrap check of a server chain is est_lite_mp.pincheck.
import time

from est_lite.errors import SecurityError, const

_ECDSA_SHA256 = const("1.2.840.10045.4.3.2")
_EC = const("1.2.840.10045.2.1")
_P256 = const("1.2.840.10045.3.1.7")
_SAN = const("2.5.29.17")
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


def _text(t):
    # seconds since 1970 as YYYY-MM-DD HH:MM:SS (days to a civil date)
    d, r = divmod(int(t), 86400)
    z = d + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return "%04d-%02d-%02d %02d:%02d:%02d" % (yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1,
                                              r // 3600, r // 60 % 60, r % 60)


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
        # a fresh certificate outside its dates by more than SKEW: the
        # server's clock or ours is wrong; both dates and our time are said
        nb, na = seconds(f["not_before"]), seconds(f["not_after"])
        if nb - SKEW > t or na < t:
            raise SecurityError("%s is %s by this device's clock (valid %s to %s, the clock reads %s UTC): is the "
                                "clock wrong?" % (what, "not valid yet" if nb - SKEW > t else "expired", _text(nb),
                                                  _text(na), _text(t)))
    anchors = [bytes(a) for a in anchors]
    # anchors first (as OpenSSL's trusted-first): after a root key update
    # certificates of one name link both ways (NewWithOld, OldWithNew), and
    # a walk through them must end at an anchor, never go round
    pool = anchors + [bytes(c) for c in chain]
    cur = bytes(cert)
    seen = [cur]
    for _ in range(max_depth):
        issuer = bytes(f["issuer"])
        found = None
        for c in pool:
            if c in seen:
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
        seen.append(cur)
        f = _fields(cur)
    raise SecurityError("%s: chain longer than %d" % (what, max_depth))


def __getattr__(name):
    # PinCheck lives in est_lite_mp.pincheck (loaded only for a pinned
    # bootstrap); this name stays for callers of est_lite_mp.certs.PinCheck
    if name == "PinCheck":
        from est_lite_mp.pincheck import PinCheck

        return PinCheck
    raise AttributeError(name)


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

