# Root CA key update (RFC 7030 §4.1.3, RFC 4210 §4.4) on the client:
# est_lite_mp.provision.renew() calls renew() before re-enrolling (unless
# EstClient.follow_rollover is False) and re-enrolls with the CA
# certificates it returns. Portable; loaded only for a renewal
# (its names and messages are interned only then: MicroPython's qstr pools
# are near their limit during an enrollment). docs/client-runtime.md,
# "Root CA key update".
from est_lite.errors import EstError, RemoteProtocolError, ServerError
from est_lite_mp.certs import SKEW, _fields, _signed_by, name_pairs, seconds, utc_seconds
from est_lite_mp.provision import _pkcs7, drop


def renew(cl, ca, now):
    # RFC 7030 §4.1.3 root key update: /cacerts in the renewal's session
    # (its server chained to `ca`), the rule in follow()
    _pkcs7()
    try:
        got = cl._run(0).certs
    except (RemoteProtocolError, ServerError) as e:
        return ca, "CA certificates unchanged: /cacerts failed: %s" % e
    if got == ca:
        return ca, None  # the answer is what the store holds (the usual case): nothing to parse
    # verify None: the port's ECDSA is loaded only if a new root is offered
    try:
        r = follow(ca, got, None, cl._verify_hook(), now)
    except RemoteProtocolError as e:  # a certificate that does not parse
        r = ca, "CA certificates unchanged: /cacerts: %s" % e
    drop("est_lite_mp.certs", "est_lite_mp.crypto", "est_lite_mp.keys", "est_lite_mp.p256")
    return r


def follow(anchors, got, verify, hook=None, now=None):
    """RFC 7030 §4.1.3 root CA key update on the client: (anchors, note)
    after the /cacerts answer `got` (DER list), fetched over a session
    whose server chained to `anchors`. A self-signed certificate in `got`
    with a key no self-signed anchor has (NewWithNew) is trusted only when
    a certificate of the same subject and key in `got` (NewWithOld) is
    signed by the key of a self-signed anchor (RFC 4210 §4.4), both are in
    their dates and its self-signature holds. Nothing new: `anchors`
    itself (the same list), or a new list of the anchors and the issuing
    CA certificates of `got` that chain to them (not the self-issued link
    certificates), and None or the reason a root was refused.
    Else the anchors still in their dates, then every certificate of `got`
    in its dates that chains to the roots now trusted, and a note.
    verify/hook: as in check_issued (verify None: est_lite_mp.crypto's,
    loaded only when a signature is checked: a new root is offered)."""
    t = utc_seconds(now)
    got = [bytes(c) for c in got]
    F = [_fields(c) for c in got]
    A = [_fields(a) for a in anchors]
    B = bytes
    keys = [B(f["spki"]) for f in A if B(f["subject"]) == B(f["issuer"])]

    def fresh(f):
        return t is None or seconds(f["not_before"]) - SKEW <= t <= seconds(f["not_after"])

    def sig(c, f, a, fa):  # c (fields f) signed by the key of a (fields fa)?
        try:
            if hook is not None:
                return hook(a, c)
            v = verify
            if v is None:
                from est_lite_mp.crypto import verify as v
            return _signed_by(f, a, fa, v)
        except EstError:
            return False

    # (subject, key) of the CA certificates in `got` signed by the key of a
    # trusted root: the NewWithOld candidates (each signature checked once)
    vk = []
    for j, g in enumerate(F):
        if fresh(g) and _ca(g):
            for a, fa in zip(anchors, A):
                if B(fa["subject"]) == B(fa["issuer"]) == B(g["issuer"]) and sig(got[j], g, a, fa):
                    vk.append((B(g["subject"]), B(g["spki"]), j))
                    break
    new = []
    why = None
    for i, f in enumerate(F):
        k = B(f["spki"])
        s = B(f["subject"])
        if s != B(f["issuer"]) or k in keys:
            continue
        ok = False
        for v in vk:  # another certificate of its name and key (NewWithOld)
            ok = ok or v[0] == s and v[1] == k and v[2] != i
        own = sig(got[i], f, got[i], f)  # a root (or a link of the same name)?
        if ok and own and fresh(f) and _ca(f):
            new.append(i)
            keys.append(k)
            continue
        if ok or own:
            why = "a new root %s in /cacerts is not trusted: %s" % (_dn(f), (
                "out of its dates, not a CA certificate or a bad self-signature" if ok else
                "no certificate of its key (NewWithOld) signed by a trusted root as a CA certificate"))
    if not new:
        # no new root: the anchors as they are, and the issuing CA
        # certificates of `got` below them (a trust list of the root alone,
        # behind an intermediate: the issued certificate chains through it)
        out = _below([B(a) for a in anchors], got, F, keys, sig, fresh, False)
        return anchors if len(out) == len(anchors) else out, why
    out = _below([B(a) for a, f in zip(anchors, A) if fresh(f)], got, F, keys, sig, fresh, True)
    return out, "CA root key update: now trusting %s (vouched by the trusted root)%s" % (
        ", ".join([_dn(F[i]) for i in new]), "" if why is None else "; " + why)


def _below(out, got, F, keys, sig, fresh, links):
    # out, then the certificates of `got` that chain to it: only CA
    # certificates, each signed by a CA certificate (RFC 5280 §6.1.4 (k),
    # (n): a leaf of the old root is no issuer of anything); self-issued
    # ones (the link certificates of a key update) only when `links`
    B = bytes
    todo = [i for i in range(len(F)) if got[i] not in out and fresh(F[i]) and _ca(F[i])
            and (links or B(F[i]["subject"]) != B(F[i]["issuer"]))]
    more = True
    while more:  # what chains to the roots trusted now (at most len(got) rounds)
        more = False
        for i in todo[:]:
            f = F[i]
            ok = B(f["subject"]) == B(f["issuer"]) and B(f["spki"]) in keys
            for c in out:
                if ok:
                    break
                fc = _fields(c)
                # an issuer of pathLen 0 certifies no CA but a self-issued one (RFC 5280 §6.1.4 (l))
                ok = B(fc["subject"]) == B(f["issuer"]) and (_ca(fc) > 1 or B(f["subject"]) == B(f["issuer"])) \
                    and sig(got[i], f, c, fc)
            if ok:
                out.append(got[i])
                todo.remove(i)
                more = True
    return out


def _ca(f):
    # RFC 5280 §6.1.4 (k), (n): a certificate that certifies other keys has
    # basicConstraints cA TRUE and, if it has a keyUsage, keyCertSign
    from est_lite import der
    from est_lite.pkcs7 import cert_extensions

    ca = False
    try:
        for o, _, v in cert_extensions(f):
            if o == "2.5.29.19":
                s, e = der.read(v, 0, 0x30)
                ca = e - s > 2 and v[s] == 1 and v[s + 1] == 1 and v[s + 2] == 0xFF
                if ca:  # 1: pathLenConstraint 0, 2: more or none
                    ca = 1 if e - s == 6 and v[s + 3] == 2 and v[s + 4] == 1 and not v[s + 5] else 2
            elif o == "2.5.29.15":
                s, e = der.read(v, 0, 3)
                u, s, e = der.read_bit_string(v, s, e)
                if e == s or not v[s] & 4:
                    return False
    except EstError:
        return False
    return ca


def _dn(f):
    # "CN=name key <hash>": old and new roots share a name
    import hashlib

    n = "?"
    try:
        for o, v in name_pairs(f["subject"]):
            if o == "2.5.4.3":
                n = str(v[2:], "utf-8")
    except (EstError, UnicodeError, ValueError):
        pass
    return "CN=%s key %s" % (n, hashlib.sha256(bytes(f["spki"])).digest().hex()[:16])
