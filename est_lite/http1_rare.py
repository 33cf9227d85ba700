# The rarely used parts of est_lite.http1, loaded on first use through
# http1's module __getattr__ (http1.digest_auth etc. keep working):
# WWW-Authenticate challenges and Digest (RFC 7235, RFC 7616), needed only
# after a 401, multipart/mixed (RFC 2046, RFC 7030 §4.4.2), needed only
# for serverkeygen, HTTP-dates (a Retry-After in date form) and
# redirections (a 3xx). See docs/http1.md.
from est_lite.errors import LocalProtocolError, RemoteProtocolError, ServerError, const
from est_lite.http1 import RETRY_AFTER_DEFAULT, Part, _check, _headers, _istok, _limit, _only, _text, decode_b64_body

def _tok(s, i):
    while i < len(s) and _istok(s[i]):
        i += 1
    return i


def _ws(s, i):
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _value(s, i):
    # token or quoted-string at s[i:] -> (value, end); lenient
    if s[i : i + 1] != '"':
        j = _tok(s, i)
        return s[i:j], j
    out = []
    i += 1
    while i < len(s) and s[i] != '"':
        if s[i] == "\\":
            i += 1
        out.append(s[i : i + 1])
        i += 1
    return "".join(out), i + 1


def parse_challenges(values):
    """WWW-Authenticate value(s) (str or list) -> [(scheme, {param: value})],
    scheme and param names lower-cased. Lenient (never raises): characters
    that fit no challenge are skipped; a token68 is not kept."""
    if isinstance(values, str):
        values = [values]
    out = []
    for s in values:
        cur = None
        i = 0
        while i < len(s):
            j = _tok(s, i)
            if j == i:
                i += 1
                continue
            k = _ws(s, j)
            if s[k : k + 1] == "=" and cur is not None:
                cur[s[i:j].lower()], i = _value(s, _ws(s, k + 1))
            else:
                cur = {}
                out.append((s[i:j].lower(), cur))
                i = j
    return out


_ALGS = const(" SHA-256 SHA-256-SESS MD5 MD5-SESS ")
_MT_PKCS7 = const("application/pkcs7-mime")
_MT_PKCS8 = const("application/pkcs8")


def pick_digest(challenges):
    """Params of the Digest challenge we answer best (SHA-256 first), or
    None. A challenge we cannot answer (another algorithm, or a qop list
    without "auth", e.g. only auth-int) is passed over, so a Basic offered
    beside it is used instead."""
    best, rank = None, 99
    for scheme, p in challenges:
        r = _ALGS.find(" %s " % p.get("algorithm", "MD5").upper())
        if "qop" in p and "auth" not in p["qop"].replace(" ", "").lower().split(","):
            r = -1
        if scheme == "digest" and 0 <= r < rank:
            best, rank = p, r
    return best


def _q(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def digest_auth(challenge, method, uri, user, password, cnonce, nc=1):
    """Authorization value for HTTP Digest (RFC 7616) answering challenge (a
    params dict from parse_challenges / pick_digest). cnonce: str, or random
    bytes from the port (sent as hex); nc: the nonce count (int).
    MD5, SHA-256 and their -sess variants; qop "auth", or none (RFC 2069)."""
    import hashlib

    g = challenge.get
    try:  # the server's values go back in our header: a control character there is the server's fault
        for k in ("realm", "nonce", "opaque", "algorithm"):
            _check("Digest challenge " + k, g(k, ""), "")
    except LocalProtocolError as e:
        raise RemoteProtocolError(e.msg)
    nonce = g("nonce", "")
    realm = g("realm", "")
    alg = g("algorithm", "MD5")
    a = alg.upper()
    sess = a[-5:] == "-SESS"
    fn = getattr(hashlib, {"MD5": "md5", "SHA-256": "sha256"}.get(a[:-5] if sess else a, "-"), None)
    from binascii import hexlify

    if fn is None:
        raise LocalProtocolError("Digest algorithm %s unavailable (MD5, SHA-256 are)" % alg)

    def H(*x):
        return str(hexlify(fn(":".join(x).encode()).digest()), "ascii")

    if not isinstance(cnonce, str):
        cnonce = str(hexlify(cnonce), "ascii")
    ha1 = H(user, realm, password)
    if sess:
        ha1 = H(ha1, nonce, cnonce)
    ha2 = H(method, uri)
    v = "Digest username=%s, realm=%s, uri=%s, nonce=%s, response=" % (_q(user), _q(realm), _q(uri), _q(nonce))
    if "auth" in g("qop", "").replace(" ", "").lower().split(","):
        ncs = "%08x" % nc
        v += '"%s", qop=auth, nc=%s, cnonce=%s' % (H(ha1, nonce, ncs, cnonce, "auth", ha2), ncs, _q(cnonce))
    elif "qop" in challenge:
        raise RemoteProtocolError("Digest qop %r: no 'auth'" % g("qop"))
    else:
        v += '"%s"' % H(ha1, nonce, ha2)
    if "algorithm" in challenge:
        v += ", algorithm=" + alg
    if "opaque" in challenge:
        v += ", opaque=" + _q(g("opaque"))
    return v


# ---------------------------------------------------------------- multipart


def _delim(boundary):
    b = boundary.encode() if isinstance(boundary, str) else boundary
    if not 0 < len(b) <= 70 or b"\r" in b or b"\n" in b:
        raise RemoteProtocolError("bad boundary %r" % b)
    return b"--" + b


def _mp(m):
    return RemoteProtocolError("multipart body: " + m)


def parse_multipart(body, boundary, max_parts=8):
    """Parts of a multipart body (RFC 2046 §5.1): preamble and epilogue
    ignored, CRLF or bare LF line ends, closing --boundary-- required.
    Each Part's body is a memoryview into body."""
    d = _delim(boundary)
    if not hasattr(body, "find"):
        body = bytes(body)
    mv = memoryview(body)
    j = 0 if body[: len(d)] == d else body.find(b"\n" + d) + 1
    if body[j : j + len(d)] != d:
        raise _mp("no boundary %r" % d)
    parts = []
    while True:
        i = j + len(d)
        if body[i : i + 2] == b"--":
            return parts
        j = body.find(b"\n" + d, i)
        if j < 0:
            raise _mp("no closing boundary")
        j += 1
        e = j - 1 - (body[j - 2] == 13)  # the CRLF before a delimiter is part of it
        a = body.find(b"\n\r\n", i, e + 1)
        b = body.find(b"\n\n", i, e + 1)
        skip = 3
        if b >= 0 and (a < 0 or b < a):
            a, skip = b, 2
        if a < 0:
            raise _mp("no blank line after headers")
        lines = [x[:-1] if x[-1:] == "\r" else x for x in _text(body[i:a]).split("\n")]
        if lines[0].strip(" \t"):
            raise _mp("junk after boundary")
        if len(parts) >= max_parts:
            raise _limit("multipart", "max_parts", max_parts)
        parts.append(Part(_headers(lines[1:]), mv[min(a + skip, e) : e]))


def split_serverkeygen(body, boundary, max_out=8192):
    """(key_der, key_type, certs_der) from a serverkeygen multipart body, in
    any part order. key_type: MT_PKCS8 (plain PKCS#8) or MT_PKCS7_SERVER_KEYGEN
    (CMS-protected key: the caller decides); certs_der: certs-only PKCS#7."""
    key = kt = certs = None
    for p in parse_multipart(body, boundary):
        if p.content_type == _MT_PKCS8:
            key, kt = p, _MT_PKCS8
        elif p.content_type == _MT_PKCS7:
            if p.params.get("smime-type", "").lower() == "server-generated-key":
                key, kt = p, _MT_PKCS7 + "; smime-type=server-generated-key"
            else:
                certs = p
    if key is None or certs is None:
        raise RemoteProtocolError("serverkeygen: need key and certs-only parts")
    return decode_b64_body(key.body, max_out), kt, decode_b64_body(certs.body, max_out)


# ---------------------------------------------------------------- HTTP-date

_MONTHS = const("janfebmaraprmayjunjulaugsepoctnovdec")


def http_date(s):
    """Seconds since 1970-01-01 of an HTTP-date (RFC 9110 §5.6.7: the
    IMF-fixdate 'Sun, 06 Nov 1994 08:49:37 GMT' and the obsolete RFC 850
    'Sunday, 06-Nov-94 08:49:37 GMT' and asctime 'Sun Nov  6 08:49:37 1994'
    forms, which recipients must accept), or None. No clock, no time module."""
    w = (s or "").replace(",", " ").replace("-", " ").split()
    if len(w) == 5:  # asctime: day-name month day time year
        w = [w[0], w[2], w[1], w[4], w[3], "GMT"]
    if len(w) != 6 or w[5] != "GMT" or len(w[4]) != 8 or not 1 <= len(w[1]) <= 2 or len(w[3]) not in (2, 4):
        return None
    t = w[4].split(":")
    m = _MONTHS.find(w[2].lower())
    if len(w[2]) != 3 or m % 3 or len(t) != 3 or not all(map(_only, t + w[1:2] + w[3:4])):
        return None
    y = int(w[3])
    if y < 100:  # RFC 850: a two-digit year (RFC 9110: more than 50 years ahead means the past)
        y += 2000 if y < 70 else 1900
    m = m // 3 + 1
    d = int(w[1])
    hh, mm, ss = int(t[0]), int(t[1]), int(t[2])
    if not 1 <= d <= 31 or hh > 23 or mm > 59 or ss > 60:
        return None
    # days from 1970-01-01 (the proleptic Gregorian calendar, March-based year)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss


def date_delay(retry_after, date):
    """Seconds a Retry-After HTTP-date lies after the same answer's Date
    header (both the server's clock, so the device's own clock, often unset
    before enrollment, plays no part); 0 for a date in the past;
    RETRY_AFTER_DEFAULT when either is missing or malformed."""
    a = http_date(retry_after)
    b = http_date(date)
    if a is None or b is None:
        return RETRY_AFTER_DEFAULT
    return min(max(0, a - b), 999999999)


# ---------------------------------------------------------------- redirections


def follow(op, r):
    """A 301/302/307/308 answer r to HttpOperation op (RFC 7030 §3.2.1:
    redirections to the same origin SHOULD be followed without user input):
    the Location's path becomes op.path, at most 3 times; a Digest answer
    made for the old path is dropped (the next 401 gets a new one).
    Another origin, no Location, or a loop: ServerError naming it."""
    u = r.header("location") or ""
    u = u.split("#")[0]
    if u[:2] == "//":  # a network-path reference: our scheme
        u = "https:" + u
    if u[:8].lower() == "https://":
        a, _, p = u[8:].partition("/")
        a = a.lower()
        h = op.host.lower()
        if a[-4:] == ":443":  # https's default port may be omitted (RFC 3986 §3.2.3)
            a = a[:-4]
        if h[-4:] == ":443":
            h = h[:-4]
        if a == h and "@" not in a:
            u = "/" + p
    if [c for c in u if c <= " " or c >= "\x7f"]:
        raise RemoteProtocolError("redirection to %r: not a URI" % u[:80])
    n = getattr(op, "_hops", 0)
    if u[:1] != "/" or n >= 3:
        raise ServerError("the server answered %d %s: redirected to %s (%s)" % (
            r.status, r.reason, u[:200] or "nowhere", "too many redirections" if u[:1] == "/" else
            "another origin: not followed"), None, r.status, u)
    op._hops = n + 1
    op.path = u
    if op._authz and op._authz[:6] != "Basic ":
        op._authz = None
