# Easy provisioning and renewal for est_lite_mp.client.EstClient (both
# ports), loaded only when used. On MicroPython the modules of a finished
# phase are dropped (sys.modules) so the heap holds one phase's code at a
# time: cacerts/csrattrs, key + CSR, enroll, verification, store.
import gc
import sys

from est_lite.errors import LocalProtocolError, SecurityError, ServerError, const

_MP = sys.implementation.name == "micropython"


class Result:
    """What provision() / renew() did: cert, chain, ca (DER), public_key,
    unmet (CSR attributes not satisfied), gen (store generation), note
    (renew(): what the CA certificates of /cacerts changed, or why they
    changed nothing; None when there was nothing to say)."""

    def __init__(self, cert, chain, ca, public_key, unmet, gen, note=None):
        self.cert = cert
        self.chain = chain
        self.ca = ca
        self.public_key = public_key
        self.unmet = unmet
        self.gen = gen
        self.note = note


def drop(*names):
    """MicroPython: forget modules so their code can be collected (they are
    imported again when needed). Never est_lite.errors (its classes are
    caught by the caller)."""
    if not _MP:
        return
    for n in names:
        if n in sys.modules:
            del sys.modules[n]
            i = n.rfind(".")
            p = sys.modules.get(n[:i])
            if p is not None:
                try:
                    delattr(p, n[i + 1:])
                except AttributeError:
                    pass
    gc.collect()


_SESSION = const(("est_lite.client", "est_lite.numbers", "est_lite.paths", "est_lite.coap", "est_lite.pkcs7",
                  "est_lite.csrattrs", "est_lite.der", "est_lite.cbor", "est_lite.client_http", "est_lite.http1"))
_CRYPTO = const(("est_lite.csr", "est_lite.csr_ext", "est_lite.csrattrs", "est_lite_mp.crypto", "est_lite_mp.keys",
                 "est_lite_mp.p256"))


def _builder(subject, names, dns, ip, uri):
    from est_lite.csr import CsrBuilder

    b = CsrBuilder()
    if subject or names:
        b = b.subject(subject, **names)
    if dns or ip or uri:
        b = b.san(dns=list(dns), ip=list(ip), uri=list(uri))
    return b


# Everything the phases import. MicroPython interns every name of a loaded
# module in a qstr pool that grows by doubling blocks (640 entries, 7 KB on
# the 64-bit unix port) and is never freed or moved: allocated in the
# middle of an enrollment it needs a big free block in a fragmented heap
# (it was what ran out of memory). _warm() imports each module once,
# dropping it, so the names are interned while the heap is still empty.
_ALL = const(("est_lite.client", "est_lite.coap", "est_lite.pkcs7", "est_lite_mp.dtls", "est_lite.csrattrs",
              "est_lite.csr", "est_lite.csr_ext", "est_lite_mp.crypto", "est_lite_mp.certs", "est_lite_mp.storeops"))


def _warm():
    if not _MP:
        return
    for n in _ALL:
        if n not in sys.modules:
            had = list(sys.modules)
            __import__(n)
            drop(*[m for m in sys.modules if m not in had])
    drop("est_lite_mp.p256")  # loaded by tablefile.install; needed from the key generation on


def provision(cl, store, subject, names, dns, ip, uri, key_backend, pop, now):
    _warm()
    _pkcs7()
    ca = cl.cacerts()
    return _enroll(cl, store, (subject, names, dns, ip, uri), key_backend, pop, now, ca, False)


# Each phase runs in its own function and hands back plain data: MicroPython's
# GC scans the C stack conservatively, and a live frame's value stack keeps
# stale pointers (an event, a key) that would pin a dropped module's code.


class _NoDecode:
    # stands in for est_lite.csrattrs while the session phase fetches the
    # attributes: only the DER is kept, decoded in the CSR phase
    # (_builder_for, same errors) without the session code loaded
    @staticmethod
    def decode(der):
        return None


def _attrs_der(cl):
    cl._bootstrap()
    if not _MP:
        return cl._run(1).der
    import est_lite

    had = "est_lite.csrattrs" in sys.modules
    if not had:
        sys.modules["est_lite.csrattrs"] = est_lite.csrattrs = _NoDecode
    try:
        return cl._run(1).der
    finally:
        if not had:
            drop("est_lite.csrattrs")


def _builder_for(what, der, ask):
    # -> (CsrBuilder following the CSR attributes, ask for PoP, unmet)
    b = _builder(*what) if isinstance(what, tuple) else what
    attrs = None
    if der:
        from est_lite import csrattrs
        from est_lite.errors import RemoteProtocolError

        try:
            attrs = csrattrs.decode(der)
        except RemoteProtocolError as e:  # decoded here, after the csrattrs operation: say which answer
            raise type(e)(e.msg if e.msg.startswith("csrattrs") else "csrattrs: " + e.msg)
        b = b.apply_csrattrs(attrs)
    elif b._subject is None and not b._exts:
        raise LocalProtocolError("give cn= (or other subject names) or a SAN for the certificate request")
    if ask is None:
        ask = attrs is not None and attrs.wants_challenge_password
    unmet = [u for u in b.unmet if not (ask and u.startswith("challengePassword"))]
    return b, ask, unmet


def _info(what, der, pk, pop):
    b, ask, unmet = _builder_for(what, der, pop)
    return b.request_info(pk), unmet


def _keygen(cl, key_backend, keep):
    key = cl._make_key(key_backend)
    kd = getattr(key, "export_pkcs8", None)  # (no function of its own: one interned name less)
    kd = kd() if kd is not None else None
    return (key if keep or kd is None else None), key.public_key, kd


def _sign(cl, der, info):  # der: the exported key
    return cl._crypto().P256Key.load_der(der).sign(info)


def _make_csr(cl, what, der, key_backend, pop):
    # -> (csr bytes or callable binding -> bytes, public key, exported key, unmet)
    lean = _MP and cl.binding is None
    key, pk, kd = _keygen(cl, key_backend, not lean)
    if key is None:
        # MicroPython: the CSR code and the key code are never loaded at
        # the same time (key -> request info -> signature -> DER)
        drop(*_CRYPTO)
        info, unmet = _info(what, der, pk, pop)
        drop(*_CRYPTO)
        sig = _sign(cl, kd, info)
        drop(*_CRYPTO)
        from est_lite import der as D

        return D.seq(info, D.seq(D.oid(D.OID_ECDSA_SHA256)), D.bit_string(sig)), pk, kd, unmet
    b, ask, unmet = _builder_for(what, der, pop)
    if ask and cl._session().binding is not None:
        def csr(binding):  # PoP: bound to the session that carries it
            x = b.challenge_password(binding) if binding else b
            return x.sign(key)
    else:
        csr = b.sign(key)
    return csr, pk, kd, unmet


def _pkcs7():
    # the answer's decoder loaded before the session's code and buffers,
    # rather than into whatever free blocks are left when the answer is in
    from est_lite import pkcs7  # noqa: F401


def _issue(cl, op, csr, pk):
    _pkcs7()
    ev = cl._run(op, csr, pk)
    return ev.cert, ev.chain


def _check(cl, cert, chain, ca, pk, now):
    from est_lite_mp import certs

    certs.check_issued(cert, chain, ca, pk, cl._crypto().verify, cl._verify_hook(), now)


def _low(b):
    # MicroPython: a copy made once a phase's modules are unloaded goes to
    # the lowest free block that fits (first fit), and the original, left
    # among the unloaded code, is freed with it: what a phase hands on does
    # not split the space the next phase loads its code into
    return bytes(memoryview(b)) if _MP and isinstance(b, (bytes, bytearray)) else b


def _enroll(cl, store, what, key_backend, pop, now, ca, renew, note=None):
    drop("est_lite.pkcs7", "est_lite.der")
    der = _attrs_der(cl)
    if _MP and not cl.keep_session and cl.binding is None:
        cl.close()  # no session while the key and the CSR are made: enroll opens a new one
        drop("est_lite_mp.dtls")
    drop(*_SESSION)
    der = _low(der)
    csr, pk, kd, unmet = _make_csr(cl, what, der, key_backend, pop)
    der = None
    if not callable(csr):
        drop("est_lite.der", *_CRYPTO)
    csr, pk, kd = _low(csr), _low(pk), _low(kd)
    cert, chain = _issue(cl, 3 if renew else 2, csr, pk)
    csr = None
    cl.close()  # frees the session before the signature check
    drop("est_lite_mp.dtls", *_SESSION)
    drop(*_CRYPTO)
    cert, chain = _low(cert), [_low(c) for c in chain]
    try:
        _check(cl, cert, chain, ca, pk, now)
    except SecurityError as e:
        if note is None:
            raise
        raise SecurityError("%s (the CA certificates: %s)" % (e, note))
    drop("est_lite_mp.certs", "est_lite.pkcs7", "est_lite.der", *_CRYPTO)
    gen = store.save(key=kd, cert=cert, ca=ca, keep=("key",) if kd is None else ())
    drop("est_lite_mp.storeops")
    return Result(cert, chain, ca, pk, unmet, gen, note)


def renew(cl, store, threshold, rotate_key, key_backend, now):
    from est_lite_mp import certs

    c = store.load()
    if c is None or c.cert is None or c.key is None:
        raise LocalProtocolError("the store holds no certificate and key to renew (a key kept in a key backend "
                                 "cannot authenticate TLS here)")
    nb, na, subj, san = certs.renewal_info(c.cert)
    t = certs.utc_seconds(now)
    if t is None:
        # clock not set: due only for a threshold of the whole lifetime or
        # more (est-lite reenroll: always), whatever the time is
        if threshold is None or threshold < na - nb:
            raise LocalProtocolError("renewal needs the time: set the clock or pass now=")
        t = nb
    if threshold is None:
        threshold = (na - nb) // 3
    if na - t > threshold:
        return None
    if cl.trust is None:
        if not c.ca:
            raise LocalProtocolError("the store holds no CA certificates and no trust= was given")
        cl.trust = c.ca
    drop("est_lite_mp.certs", "est_lite.pkcs7")
    _warm()
    cl.close()
    saved = cl.cert, cl.key
    cl.cert, cl.key = c.cert, c.key
    from est_lite.csr import CsrBuilder

    b = CsrBuilder().subject(subj) if subj else CsrBuilder()
    if san is not None:
        b = b.extension("2.5.29.17", san[1], critical=san[0])
    if key_backend is None and not rotate_key:
        key_backend = cl._crypto().P256Key.load_der(c.key)
    c = None
    try:
        ca, note = cl.trust, None
        if getattr(cl, "follow_rollover", True):
            # est_lite_mp.rollover (loaded this way, its names are interned
            # only here, not in an enrollment: the qstr pools are full there)
            try:
                __import__("est_lite_mp.rollover")
            except ImportError:  # a device bundle without it: renew as before, and say so
                note = "CA certificates not checked for a root key update: est_lite_mp.rollover is not installed"
            else:
                ca, note = sys.modules["est_lite_mp.rollover"].renew(cl, ca, now)
                drop("est_lite_mp.rollover")
        return _enroll(cl, store, b, key_backend, None, now, ca, True, note)
    except (SecurityError, ServerError) as e:
        # refused (403 / 4.03, or the (D)TLS handshake) with a certificate
        # that has expired: no renewal gets past that, say the way back
        if t <= na or "device's clock" in str(e):
            raise
        from est_lite_mp import certs

        raise type(e)("%s (the certificate being renewed expired on %s UTC by this device's clock: provision() "
                      "again with the first-contact credentials)" % (e, certs._text(na)), e.coap_code, e.http_status,
                      e.diagnostic)
    finally:
        cl.close()
        cl.cert, cl.key = saved

