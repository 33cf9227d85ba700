"""`est-lite cacerts|csrattrs|enroll|reenroll|serverkeygen`: the EST client.

    est-lite cacerts  --server https://est.example:8443 --pin sha256:... --out dev1
    est-lite enroll   --server https://est.example:8443 --trust dev1/ca.pem --user alice --password s3cret \\
                      --cn dev-1 --dns dev-1.example --out dev1
    est-lite reenroll --server coaps://est.example --out dev1          # renews the credentials in dev1
    est-lite serverkeygen --server ... --cn dev-2 --out dev2 --json

--out DIR is a credential store (est_lite_cpython.credstore: atomic, 0600)
plus PEM copies cert.pem, key.pem, ca.pem (enroll --csr: only cert.pem, the
key stays with the caller). An enrollment the server has not finished
before --deadline (202 / 5.03: a request waiting for manual approval),
or stopped with Ctrl-C after its CSR went out (exit 130), leaves its key
in DIR/pending-key.pem (0600) and the request in
DIR/pending.json; the same command run again repeats that request (RFC 7030
§4.2.3) and removes them once the certificate is stored. Every failure
exits non-zero with one line on stderr.
"""

import json
import os
import sys

from est_lite.errors import (EstError, LocalProtocolError, RemoteProtocolError, SecurityError, ServerError,
                             TransportError)


def _read(path, what, max_size=1 << 20):
    try:
        with open(path, "rb") as f:
            data = f.read(max_size + 1)
    except OSError as e:
        raise LocalProtocolError("cannot read %s %s: %s" % (what, path, e.strerror or e)) from None
    if not data.strip():
        raise LocalProtocolError("%s %s is empty" % (what, path))
    if len(data) > max_size:
        raise LocalProtocolError("%s %s is larger than %d bytes: not a certificate or key file" % (what, path, max_size))
    return data


def _cert_file(path, what):
    """(DER bytes, cryptography certificate) of the one certificate in a PEM or DER file."""
    certs = _cert_files([path], what)
    if len(certs) != 1:
        raise LocalProtocolError("%s %s holds %d certificates: give the client certificate alone (its CA "
                                 "certificates go in --trust)" % (what, path, len(certs)))
    return certs[0]


def _cert_files(paths, what):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out = []
    for p in paths:
        data = _read(p, what)
        try:
            if b"-----BEGIN" in data:
                if b"-----BEGIN CERTIFICATE-----" not in data:
                    raise ValueError("no BEGIN CERTIFICATE")
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise LocalProtocolError("%s %s is not a PEM or DER X.509 certificate" % (what, p)) from None
        out += [(c.public_bytes(serialization.Encoding.DER), c) for c in certs]
    return out


def _key_file(path, what="--key"):
    """(PKCS#8 DER bytes, cryptography private key) from a PEM or DER file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            k = serialization.load_pem_private_key(data, password=None)
        else:
            k = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise LocalProtocolError("%s %s is encrypted: give an unencrypted key" % (what, path)) from None
    except (ValueError, UnsupportedAlgorithm):
        raise LocalProtocolError("%s %s is not a PEM or DER private key (PKCS#8 or SEC1, unencrypted)"
                                 % (what, path)) from None
    try:
        der = k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    except (ValueError, TypeError):
        raise LocalProtocolError("%s %s: this kind of key cannot be used" % (what, path)) from None
    return der, k


def _identity(args):
    """(cert DER, key DER) from --cert/--key, checked to belong together, or (None, None)."""
    if args.key and not args.cert:
        raise LocalProtocolError("--key needs --cert (the client certificate it belongs to)")
    if not args.cert:
        return None, None
    if not args.key:
        raise LocalProtocolError("--cert needs --key")
    from .credstore import pair_mismatch

    cert, _ = _cert_file(args.cert, "--cert")
    key, _ = _key_file(args.key)
    if pair_mismatch(key, cert):
        raise LocalProtocolError("--key %s is not the private key of --cert %s" % (args.key, args.cert))
    return cert, key


def _prepare_out(args):
    """Check --out before anything goes on the network: a directory we can
    write (created 0700 if missing; removed again by _wrap if the command
    fails and leaves it empty)."""
    out = getattr(args, "out", None)
    args._made_out = None
    if not out:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise LocalProtocolError("--out %s is not a directory" % out)
    if not os.path.isdir(out):
        try:
            os.makedirs(out, mode=0o700)
        except OSError as e:
            raise LocalProtocolError("--out %s cannot be created: %s" % (out, e.strerror or e)) from None
        args._made_out = out
    from .credstore import CredStore, write_probe

    CredStore(out).check_dir()  # /tmp itself: others could plant a key or a trust anchor there
    try:
        write_probe(out, 0)
    except OSError as e:
        raise LocalProtocolError("--out %s is not writable: %s" % (out, e.strerror or e)) from None


def _store(args):
    from .credstore import CredStore

    return CredStore(args.out) if args.out else None


def _client(args, cert=None, key=None):
    # cert=False: no client certificate from --cert/--key (reenroll takes them from the store/files itself)
    from .client import EstClient

    trust = None
    if args.trust and args.pin:
        raise LocalProtocolError("give --trust or --pin, not both (a pin is only for the first contact)")
    _check_server_arg(args.server)
    pin = _pin_arg(args.pin) if args.pin else None
    if args.trust:
        trust = _trust_files(args.trust)
    elif not args.pin and args.out:
        # a store from an earlier run supplies the trust anchors
        c = _load_store(args)
        if c is not None and c.ca:
            trust = c.ca
    if trust is None and pin is None:
        raise LocalProtocolError("give --trust CA.pem (the CA certificate the server's chain ends in) or, for a first "
                                 "contact, --pin sha256:HEX (the SHA-256 of that CA certificate; see "
                                 "docs/client-runtime.md, \"Computing --pin\")"
                                 + (", or an --out store from an earlier cacerts/enroll" if args.out else ""))
    if cert is None:
        cert, key = _identity(args)
    elif cert is False:
        cert = key = None
    password = args.password
    if password is not None and not args.user:
        raise LocalProtocolError("--password needs --user")
    if args.user and password is None:
        password = os.environ.get("EST_PASSWORD")
        if password is None:
            raise LocalProtocolError("--user needs --password (or EST_PASSWORD in the environment)")
    crls = [_crl_file(p) for p in args.crl] if args.crl else None
    c = EstClient(args.server, trust=trust, pin=pin, cert=cert, key=key, user=args.user, password=password,
                  label=args.label, server_name=args.server_name, timeout=args.timeout, deadline=args.deadline,
                  proxy=args.proxy, crls=crls, tls_version=args.tls_version)
    if getattr(args, "verbose", False) or _on_terminal():
        c.on_wait = lambda s, left: _say_wait(s, left, c.said)
    return c


def _on_terminal():
    # a person watching: say why nothing happens (a script reading stderr
    # from a pipe keeps its one line unless it asks with -v)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _say_wait(s, left, said=None, max_said=200):
    # said: the server's text with its 202 / 5.03 (e.g. "waiting for manual
    # approval"); None when the server was not reached
    when = "trying again in %.0f s%s" % (s, "" if left is None else " (%.0f s left before --deadline)" % left)
    if said:
        from .cli import one_line

        said = one_line(said)
        said = said if len(said) <= max_said else said[:max_said] + "..."
        print("est-lite: the server says: %s; %s" % (said, when), file=sys.stderr, flush=True)
    else:
        print("est-lite: no result yet (server busy or unreachable): %s" % when, file=sys.stderr, flush=True)


def _check_server_arg(uri):
    # what the library says with its argument names (user=), said with the options
    rest = uri.split("://", 1)[-1]
    if "@" in rest.split("/", 1)[0]:
        raise LocalProtocolError("--server %s has a user name in it: give it with --user (and --password)" % uri)


def _pin_arg(text):
    """--pin as parse_pin takes it, from the forms openssl and sha256sum
    print: 'sha256:HEX', bare HEX, 'AB:CD:...' (openssl x509 -fingerprint
    -sha256 -noout, with or without its 'sha256 Fingerprint=' prefix) or
    'HEX  -' (sha256sum)."""
    from est_lite_mp.client import parse_pin

    t = text.strip()
    if "=" in t and t.split("=", 1)[0].lower().replace(" ", "") in ("sha256fingerprint", "sha2-256fingerprint"):
        t = t.split("=", 1)[1].strip()
    w = t.split()
    if len(w) == 2 and len(w[0]) == 64:
        t = w[0]  # sha256sum's "HEX  -" or "HEX  file"
    try:
        return parse_pin(t)
    except LocalProtocolError:
        raise LocalProtocolError("--pin %r is not a SHA-256 fingerprint: the pin must be sha256:HEX (64 hex "
                                 "digits, colons allowed), e.g. from openssl x509 -in root.pem -outform der | "
                                 "sha256sum" % text) from None


def _crl_file(path):
    from .client import load_crls

    try:
        return load_crls(_read(path, "--crl"))[0]
    except LocalProtocolError as e:
        if "cannot load CRL" not in str(e):
            raise
        raise LocalProtocolError("--crl %s is not a PEM or DER certificate revocation list" % path) from None


def _trust_files(paths):
    return [c for _, c in _cert_files(paths, "--trust")]


def _load_store(args):
    s = _store(args)
    return s.load() if s is not None else None


def _pem(der, kind="CERTIFICATE"):
    import base64

    b = base64.b64encode(der).decode()
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (
        kind, "\n".join(b[i:i + 64] for i in range(0, len(b), 64)), kind)


def _kept_roots(stored, answer):
    """The stored self-issued CA certificates (roots, RFC 4210 link
    certificates) still within their dates and not in `answer` (DER lists)."""
    from est_lite_mp.certs import _fields, seconds, utc_seconds

    t = utc_seconds()
    have = [bytes(c) for c in answer]
    out = []
    for c in stored:
        c = bytes(c)
        f = _fields(c)
        if c in have or bytes(f["subject"]) != bytes(f["issuer"]):
            continue
        if t is None or seconds(f["not_before"]) <= t <= seconds(f["not_after"]):
            out.append(c)
    return out


def _describe(der):
    import hashlib

    from cryptography import x509

    out = {"subject": "?", "issuer": "?", "serial": "?", "not_after": "?", "sha256": hashlib.sha256(der).hexdigest()}
    try:  # for display only: a certificate cryptography cannot fully parse still gets a line
        c = x509.load_der_x509_certificate(der)
        out["subject"], out["issuer"] = c.subject.rfc4514_string(), c.issuer.rfc4514_string()
        out["serial"], out["not_after"] = "%x" % c.serial_number, c.not_valid_after_utc.isoformat()
    except ValueError:
        pass
    return out


def _write_pem_copies(store):
    # convenience PEM files next to the store (each written atomically),
    # after the store's commit: a failure here must not read as a failed enrollment
    from .credstore import write_file_atomic

    for name, data in store.pem_files().items():
        try:
            write_file_atomic(os.path.join(store.path, name), data)
        except OSError as e:
            raise LocalProtocolError("the new credentials are committed in the store %s, but its PEM copy %s could "
                                     "not be written: %s" % (store.path, name, e.strerror or e)) from None


def _emit(args, obj, text):
    if args.json:
        print(json.dumps(obj, indent=1, sort_keys=True))
    else:
        # names in certificates come from the server: no terminal control sequences
        print("".join("?" if (c < " " and c != "\n") or "\x7f" <= c < "\xa0" else c for c in text))


def _builder_args(args):
    names = {}
    for k in ("cn", "o", "ou", "c", "l", "st", "serial_number"):
        v = getattr(args, k, None)
        if v is not None and not v.strip():
            raise LocalProtocolError("--%s is empty" % k.replace("_", "-"))
        if v:
            names[k] = v
    for k in ("dns", "ip", "uri"):
        for v in getattr(args, k, None) or ():
            if not v.strip():
                raise LocalProtocolError("--%s is empty" % k)
    return names


def _request_builder(args, names):
    from est_lite.csr import CsrBuilder

    b = CsrBuilder()
    if names:
        b = b.subject(**names)
    if args.dns or args.ip or args.uri:
        b = b.san(dns=args.dns or [], ip=args.ip or [], uri=args.uri or [])
    return b


# --- a request the server has not finished (202 / 5.03: manual approval) ---

_PENDING_KEY = "pending-key.pem"
_PENDING_REQ = "pending.json"


class _KeyUse:
    """The key given to provision/renew as key_backend; .used once a CSR
    was signed with it (a give-up after that is a request the server holds)."""

    def __init__(self, key):
        self.key, self.used = key, False
        self.public_key = key.public_key

    def sign(self, tbs):
        self.used = True
        return self.key.sign(tbs)

    def export_pkcs8(self):
        return self.key.export_pkcs8()


def _pending_request(args, op, names=None, cert=None):
    # what makes the repeated request the same one for the server (its
    # label, kind, public key and subject): where it goes and what it asks for
    from est_lite_mp.client import parse_server

    scheme, host, port, lab = parse_server(args.server)
    req = {"op": op, "server": "%s://%s:%d" % (scheme, host, port), "label": args.label or lab}
    if op == "enroll":
        req.update(subject=names, dns=args.dns or [], ip=args.ip or [], uri=args.uri or [])
    else:
        import hashlib

        req["cert_sha256"] = hashlib.sha256(cert).hexdigest()  # renews this certificate
    return req


def _pending_key(args, req):
    """(key, True) from a pending request of the same command in --out, or
    (a new key, False). A pending request of another command is refused:
    its key would be lost."""
    from .crypto import P256Key

    kp, rp = os.path.join(args.out, _PENDING_KEY), os.path.join(args.out, _PENDING_REQ)
    if not os.path.exists(kp):
        return P256Key.generate(), False
    try:
        with open(rp) as f:
            old = json.load(f)
        from cryptography.hazmat.primitives import serialization

        der = serialization.load_pem_private_key(_read(kp, "pending key"), password=None).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        key = P256Key.load_der(der)
    except (OSError, ValueError, TypeError, EstError) as e:
        raise LocalProtocolError("--out %s: the pending request (%s, %s) cannot be read (%s): remove both files to "
                                 "start over with a new key" % (args.out, _PENDING_KEY, _PENDING_REQ, e)) from None
    want = old.get("request")
    if want != req:
        what = "%s at %s%s" % (want.get("op") if isinstance(want, dict) else "?",
                               want.get("server") if isinstance(want, dict) else "?",
                               "/" + want["label"] if isinstance(want, dict) and want.get("label") else "")
        raise LocalProtocolError("--out %s holds the key of another request still waiting at the server (%s%s): run "
                                 "the command that made it again to collect its certificate, or remove %s and %s "
                                 "there to start over" % (args.out, what, "; " + old["said"] if old.get("said") else
                                                          "", _PENDING_KEY, _PENDING_REQ))
    return key, True


def _write_pending(args, key, req, said, again):
    # the key (0600, PEM) and the request, in --out
    from .credstore import write_file_atomic

    if not again:
        write_file_atomic(os.path.join(args.out, _PENDING_KEY), _pem(key.export_pkcs8(), "PRIVATE KEY").encode())
    import time

    write_file_atomic(os.path.join(args.out, _PENDING_REQ), json.dumps(
        {"request": req, "said": said, "time": int(time.time())}, indent=1, sort_keys=True).encode())


def _keep_pending(args, key, req, e, again):
    """Write the key (0600, PEM) and the request to --out, and the
    one-line error that says so."""
    _write_pending(args, key, req, e.diagnostic, again)
    return TransportError("%s: %s; the request's key is kept in %s (0600): run the same command again (after "
                          "approval) to collect the certificate" % (req["op"], e.msg, os.path.join(args.out,
                                                                                                   _PENDING_KEY)),
                          e.coap_code, e.http_status, e.diagnostic)


def _drop_pending(args):
    for n in (_PENDING_KEY, _PENDING_REQ):
        try:
            os.remove(os.path.join(args.out, n))
        except FileNotFoundError:
            pass


def _pending_call(args, req, fn):
    """fn(key_backend) with the pending request's key (or a new one); a
    give-up because the server asks to come back later (202 / 5.03, e.g. a
    request waiting for manual approval) after the CSR went out keeps the
    key and the request in --out; success removes them."""
    key, again = _pending_key(args, req)
    use = _KeyUse(key)
    try:
        r = fn(use)
    except TransportError as e:
        if e.coap_code != 0xA3 or not use.used:
            raise
        raise _keep_pending(args, key, req, e, again) from None
    except KeyboardInterrupt:
        # Ctrl-C after the CSR went out (typically during a retry wait for
        # manual approval): the server may hold the request, so its key is
        # kept as after --deadline; the same command collects it later
        if use.used:
            kp = os.path.join(args.out, _PENDING_KEY)
            try:
                if not again:
                    _write_pending(args, key, req, None, again)
            except OSError as e:
                print("est-lite: interrupted; the request's key could not be kept in %s: %s" % (kp, e.strerror or e),
                      file=sys.stderr)
                raise KeyboardInterrupt from None
            print("est-lite: interrupted; the request's key is kept in %s (0600): run the same command again (after "
                  "approval) to collect the certificate" % kp, file=sys.stderr)
        raise
    if again:
        _drop_pending(args)
    return r, again


# --- commands ---


def cmd_cacerts(args):
    store = _store(args)
    old = store.load() if store is not None else None  # a corrupt store: said before any network traffic
    c = _client(args)
    try:
        certs = c.cacerts()
    finally:
        c.close()
    if store is not None and old is not None and old.ca and not args.trust and not args.pin:
        # the server was verified with the store's CA certificates: a new
        # root in the answer is taken under the renewal's rule (RFC 7030
        # §4.1.3 root key update, est_lite_mp.rollover.follow), never as it is
        from est_lite_mp.rollover import follow

        from .client import verify_issued_by
        from .crypto import verify

        ca, note = follow(old.ca, certs, verify, verify_issued_by)
        if note is not None:
            print("est-lite: %s" % note, file=sys.stderr, flush=True)
        if ca is old.ca and note is not None:
            raise SecurityError("the CA certificates in %s are unchanged: %s" % (args.out, note))
        if ca is not old.ca:
            certs = ca
        else:
            # no new root: the answer, plus the stored roots and link
            # certificates (subject = issuer) still within their dates that
            # it lacks: a replayed pre-rollover answer, or one from a server
            # that dropped the previous root early, must not take away an
            # anchor the device still needs (RFC 7030 §4.1.3: the client
            # keeps its trust anchors; only an expired generation goes)
            certs = list(certs) + _kept_roots(old.ca, certs)
    if store is not None:
        store.save(ca=certs, keep=("key", "cert")) if old is not None else store.save(ca=certs)
        _write_pem_copies(store)
    info = [_describe(x) for x in certs]
    _emit(args, {"certs": info, "bootstrapped": c.bootstrapped, "out": args.out},
          "".join(_pem(x) for x in certs) if store is None else
          "%d CA certificate(s) written to %s (%s)" % (len(certs), args.out,
                                                      ", ".join(i["subject"] for i in info)))
    return 0


def cmd_csrattrs(args):
    c = _client(args)
    try:
        ev = c.csrattrs_event()
    finally:
        c.close()
    a = ev.attrs
    if a is None:
        # a 404 is "none" (RFC 7030 §4.5.2), but its text shows a mistyped label
        d = ev.diagnostic
        _emit(args, {"attributes": None, "diagnostic": d},
              "the server asks for no CSR attributes" + ("" if d is None else " (it says: %s)" % d))
        return 0
    obj = {"oids": a.oids, "attributes": [o for o, _ in a.attributes],
           "challenge_password": a.wants_challenge_password, "key_curve": a.key_curve,
           "signature_alg": a.signature_alg, "hash_alg": a.hash_alg,
           "extensions": [{"oid": o, "critical": crit, "value": None if v is None else bytes(v).hex()}
                          for o, crit, v in a.extensions],
           "unparsed": list(a.unparsed)}
    lines = ["challengePassword: %s" % ("asked" if a.wants_challenge_password else "not asked")]
    for k in ("key_curve", "signature_alg", "hash_alg"):
        if obj[k]:
            lines.append("%s: %s" % (k, obj[k]))
    lines += ["OID %s" % o for o in a.oids]
    lines += ["attribute %s" % o for o in obj["attributes"]]
    lines += ["extension %s%s" % (e["oid"], " (value given)" if e["value"] else "") for e in obj["extensions"]]
    _emit(args, obj, "\n".join(lines))
    return 0


def _result(args, store, r, what):
    if store is not None:
        _write_pem_copies(store)
    info = _describe(r.cert)
    obj = {"cert": info, "unmet": list(r.unmet), "generation": r.gen, "out": args.out}
    if what.startswith("re-enrolled"):
        obj["ca_note"] = r.note  # what /cacerts changed (root CA key update), or why nothing; None: nothing to say
    _emit(args, obj,
          "%s: %s, valid until %s, serial %s -> %s%s" % (
              what, info["subject"], info["not_after"], info["serial"], args.out,
              "" if not r.unmet else " (not satisfied: %s)" % "; ".join(r.unmet)))


def _refuse_to_replace(args, creds, cmd):
    """enroll and serverkeygen write a new identity into --out: a store that
    already holds a certificate (and its key) is refused, unless --replace,
    so a mistyped --out never destroys another device's credentials."""
    if creds is None or not creds.cert or getattr(args, "replace", False):
        return
    d = _describe(bytes(creds.cert))
    if _expired(bytes(creds.cert)):
        # a renewal is refused for an expired certificate: the way back is
        # a new first contact into the same store, which is what --replace does
        raise LocalProtocolError("--out %s already holds the certificate of %s (serial %s), which expired on %s by "
                                 "this machine's clock, and its key: a renewal of it would be refused. Add --replace "
                                 "to %s a new one in its place with the first-contact credentials (IDevID or "
                                 "password)" % (args.out, d["subject"], d["serial"], d["not_after"], cmd))
    what = "the certificate of %s (serial %s, valid until %s)" % (d["subject"], d["serial"], d["not_after"][:10])
    raise LocalProtocolError("--out %s already holds %s and its key: %s would replace both. Renew it with "
                             "`est-lite reenroll --out %s`, give another --out, or add --replace to put a new "
                             "identity in its place" % (args.out, what, cmd, args.out))


def _expired(der):
    """True if the certificate's notAfter is past by this machine's clock
    (False when it cannot be read)."""
    import time

    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp() < time.time()
    except ValueError:
        return False


def cmd_enroll(args):
    names = _builder_args(args)
    if args.csr:
        if names or args.dns or args.ip or args.uri:
            raise LocalProtocolError("--csr is enrolled as it is: the subject and SAN options do not apply to it")
        return _enroll_csr(args)
    store = _store(args)
    if store is None:
        raise LocalProtocolError("enroll needs --out DIR for the new key and certificate (or --csr FILE)")
    # a corrupt store, or one holding another identity: said before any network traffic
    _refuse_to_replace(args, store.load(), "enroll")
    _request_builder(args, names)  # bad subject or SAN values: said before any network traffic too
    c = _client(args)
    req = _pending_request(args, "enroll", names)

    def run(key):
        return c.provision(store, subject=None, dns=args.dns or (), ip=args.ip or (), uri=args.uri or (),
                           key_backend=key, **names)

    try:
        r, again = _pending_call(args, req, run)
    finally:
        c.close()
    _result(args, store, r, "enrolled" + (" (the request that was waiting)" if again else ""))
    return 0


def _enroll_csr(args):
    from .credstore import write_file_atomic

    data = _read(args.csr, "--csr")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if b"-----BEGIN" in data:
            data = x509.load_pem_x509_csr(data).public_bytes(serialization.Encoding.DER)
        else:
            x509.load_der_x509_csr(data)
    except ValueError:
        raise LocalProtocolError("--csr %s is not a PEM or DER PKCS#10 certificate request" % args.csr) from None
    if args.out and _load_store(args) is not None:
        raise LocalProtocolError("--out %s is a credential store, and enroll --csr writes only cert.pem (the key is "
                                 "yours, not in the store): give another directory" % args.out)
    c = _client(args)
    try:
        ev = c.enroll(data)
    finally:
        c.close()
    if args.out:
        write_file_atomic(os.path.join(args.out, "cert.pem"), _pem(ev.cert).encode())
    _emit(args, {"cert": _describe(ev.cert), "out": args.out}, _pem(ev.cert) if not args.out else
          "enrolled: %s -> %s (cert.pem only: not a credential store; renew with reenroll --cert %s --key "
          "YOUR-KEY --trust CA.pem)" % (_describe(ev.cert)["subject"], os.path.join(args.out, "cert.pem"),
                                       os.path.join(args.out, "cert.pem")))
    return 0


class _FileCreds:
    """The current credentials from --cert/--key for renew_if_needed: load()
    gives them, save() commits the renewed ones to the real store. The store
    is written only once the new certificate is verified (a failed
    re-enrollment leaves it as it was)."""

    def __init__(self, store, creds):
        self.store, self.creds, self.path = store, creds, store.path

    def load(self):
        return self.creds

    def save(self, key=None, cert=None, ca=None, keep=()):
        if key is None and "key" in keep:
            key = self.creds.key
        return self.store.save(key=key, cert=cert, ca=ca)


def cmd_reenroll(args):
    store = _store(args)
    if store is None:
        raise LocalProtocolError("reenroll needs --out DIR (a store from enroll, or where to write the new pair)")
    old = store.load()  # a corrupt store: said before any network traffic
    src = store
    if args.cert or args.key:
        # current credentials from files (checked to belong together)
        from .credstore import Creds

        cert, key = _identity(args)
        if args.keep_key:
            from .crypto import P256Key

            try:
                P256Key.load_der(key)
            except EstError:
                raise LocalProtocolError("--keep-key: --key %s is not a P-256 key (a new P-256 key is made without "
                                         "--keep-key)" % args.key) from None
        ca = old.ca if old is not None else []
        if args.trust:
            from cryptography.hazmat.primitives import serialization

            ca = [x.public_bytes(serialization.Encoding.DER) for x in _trust_files(args.trust)]
        src = _FileCreds(store, Creds(key, cert, ca))
    cur = src.load()
    if cur is None or cur.cert is None or cur.key is None:
        raise LocalProtocolError("--out %s holds no certificate and key to renew (no credential store there; "
                                 "enroll --csr writes only cert.pem): give --cert CERT --key KEY, or enroll with --out "
                                 "first" % args.out)
    c = _client(args, cert=False)  # renew_if_needed authenticates with the current certificate
    c.follow_rollover = not args.no_ca_update
    try:
        if args.keep_key:  # the same key: a repeated request is the same one anyway
            r, again = c.renew_if_needed(src, threshold=float("inf"), rotate_key=False), False
        else:
            r, again = _pending_call(args, _pending_request(args, "reenroll", cert=cur.cert), lambda key: (
                c.renew_if_needed(src, threshold=float("inf"), key_backend=key)))
    except (ServerError, SecurityError) as e:
        # refused (403 / 4.03 naming the expiry, or the DTLS handshake) for
        # an expired certificate: the way back, in the command's terms
        # instead of the library's (docs/client-runtime.md)
        text = str(e).split(" (the certificate being renewed expired", 1)[0]
        if not (_expired(bytes(cur.cert)) or isinstance(e, ServerError) and e.http_status == 403
                and "expired" in text):
            raise
        raise type(e)("%s. The certificate in --out has expired (%s) and cannot be renewed: enroll again with the "
                      "first-contact credentials (IDevID --cert/--key, or --user/--password) and --replace: "
                      "`est-lite enroll --out %s --replace ...`" % (text, _describe(bytes(cur.cert))["not_after"],
                                                                      args.out),
                      e.coap_code, e.http_status, e.diagnostic) from None
    finally:
        c.close()
    if r.note and not args.json:
        print("est-lite: %s" % r.note, file=sys.stderr, flush=True)
    _result(args, store, r, "re-enrolled" + (" (the request that was waiting)" if again else ""))
    return 0


def cmd_serverkeygen(args):
    from .credstore import StoreError
    from .crypto import P256Key

    store = _store(args)
    if store is None:
        raise LocalProtocolError("serverkeygen needs --out DIR: the server-generated key is only written to a "
                                 "store (0600), never printed")
    # a corrupt store, or one holding another identity: said before any network traffic
    _refuse_to_replace(args, store.load(), "serverkeygen")
    store.check_writable()  # a full disk: said before the server makes a key that could not be kept
    names = _builder_args(args)
    b = _request_builder(args, names)
    if not names and not (args.dns or args.ip or args.uri):
        raise LocalProtocolError("give --cn (or other subject names) or a SAN")
    csr = b.sign(P256Key.generate())  # the server makes the real key; this one only signs the request
    c = _client(args)
    try:
        ca = c.cacerts() if c.trust is None else None
        ev = c.serverkeygen(csr)
        ca = ca or c.trust
    finally:
        c.close()
    if ev.key_type != 284:
        raise RemoteProtocolError("the server returned an encrypted key (CMS, content format %d): not supported"
                                  % ev.key_type)
    try:
        key = P256Key.load_der(ev.key_der)
    except EstError as e:
        raise RemoteProtocolError("serverkeygen: the key the server generated is not a usable P-256 key (%s)"
                                  % e) from None
    from est_lite_mp import certs as X

    from .client import verify_issued_by

    try:
        X.check_issued(ev.cert, ev.chain, ca, key.public_key, None, verify_issued_by)
    except SecurityError as e:
        if "public key" in str(e):
            raise SecurityError("serverkeygen: the server's certificate is not for the key it sent") from None
        raise
    info = _describe(ev.cert)
    try:
        gen = store.save(key=key.export_pkcs8(), cert=ev.cert, ca=ca)
    except StoreError as e:  # the disk filled up after check_writable(): the key exists nowhere else
        raise StoreError("%s; the server-generated key was not kept, so its certificate (serial %s) is unusable: "
                         "free some space and run serverkeygen again (and revoke that serial)"
                         % (e, info["serial"])) from None
    _write_pem_copies(store)
    _emit(args, {"cert": info, "generation": gen, "out": args.out},
          "server-generated key and certificate: %s, valid until %s -> %s" % (
              info["subject"], info["not_after"], args.out))
    return 0


def _common(p):
    p.add_argument("--server", required=True, help="https://host[:port][/label] or coaps://host[:port][/label]")
    p.add_argument("--label", help="EST label (path segment)")
    p.add_argument("--trust", action="append", metavar="PEM", help="CA certificate(s) the server must chain to")
    p.add_argument("--pin", metavar="sha256:HEX",
                   help="first contact: SHA-256 of a certificate (DER), e.g. openssl x509 -in X.pem -outform der "
                        "| sha256sum. HTTPS: the server's root CA; CoAPs: one the server sends in the DTLS "
                        "handshake (its own, or the root with serve --coaps-send-chain all). The received CAs "
                        "become the trust anchors (docs/client-runtime.md, \"Computing --pin\")")
    p.add_argument("--server-name", help="name/IP the server certificate must cover (default: the URI host)")
    p.add_argument("--cert", help="client certificate (PEM/DER) for TLS/DTLS")
    p.add_argument("--key", help="its private key (PEM/DER)")
    p.add_argument("--user", help="HTTP Basic/Digest user (HTTPS only)")
    p.add_argument("--password", help="HTTP password (or EST_PASSWORD in the environment)")
    p.add_argument("--proxy", help="HTTP CONNECT proxy, http://[user:pw@]host:port (HTTPS only)")
    p.add_argument("--crl", action="append", metavar="FILE", help="CRL (PEM/DER) to check the server's chain")
    p.add_argument("--tls-version", choices=("1.2", "1.3"), help="force a TLS version (HTTPS)")
    p.add_argument("--timeout", type=float, default=30, help="seconds per handshake/request (default 30)")
    p.add_argument("--deadline", type=float, default=120,
                   help="overall seconds, retries after 202/5.03 and link failures included (default 120)")
    p.add_argument("--out", metavar="DIR", help="credential store directory (key, cert, CA; PEM copies); with "
                                                "enroll --csr only DIR/cert.pem is written")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr when a retry is coming (server busy or unreachable), instead of waiting "
                        "silently; the default when stderr is a terminal")


def _subject(p):
    p.add_argument("--cn", help="subject common name")
    p.add_argument("--o", help="subject organization")
    p.add_argument("--ou", help="subject organizational unit")
    p.add_argument("--c", help="subject country (2 letters)")
    p.add_argument("--l", help="subject locality")
    p.add_argument("--st", help="subject state")
    p.add_argument("--serial-number", dest="serial_number", help="subject serialNumber")
    p.add_argument("--dns", action="append", help="subjectAltName DNS name (repeatable)")
    p.add_argument("--ip", action="append", help="subjectAltName IP address (repeatable)")
    p.add_argument("--uri", action="append", help="subjectAltName URI (repeatable)")


_OPTION_NAMES = (("give user/password or a client certificate", "give --user and --password, or --cert and --key"),
                 ("give cert= and key=", "give --cert and --key"))

# the core puts the EST operation that failed in front of its message
# ("cacerts: the server answered 404 ..."); a command runs several (enroll:
# cacerts, csrattrs, then enroll), so a step other than the command is said
# in the user's terms: "enroll: fetching the CA certificates (/cacerts): ..."
# (the operation numbers index est_lite.paths' HTTP and CoAP names)
_STEPS = {"cacerts": ("fetching the CA certificates", 0),
          "csrattrs": ("fetching the CSR attributes", 1),
          "enroll": ("requesting the certificate", 2),
          "reenroll": ("renewing the certificate", 3),
          "serverkeygen": ("requesting a server-generated key", 4)}


def _step(command, server, m):
    from est_lite import paths

    op, sep, rest = m.partition(": ")
    if not sep or op not in _STEPS or op == command or not command:
        return m
    what, n = _STEPS[op]
    names = paths.COAP_NAMES if server.lower().startswith("coaps:") else paths.HTTP_NAMES
    return "%s: %s (/%s): %s" % (command, what, names[n], rest)


def _wrap(fn):
    def run(args):
        ok = False
        try:
            _prepare_out(args)
            rc = fn(args)
            ok = True
            return rc
        except EstError as e:
            m = " ".join(str(e).split())  # one line on stderr
            for lib, opt in _OPTION_NAMES:  # the library's argument names, as the command's options
                m = m.replace(lib, opt)
            m = _step(getattr(args, "command", None), args.server, m)
            e.msg = m
            e.args = (e.msg,)
            raise
        except BrokenPipeError:
            raise  # stdout closed by its reader: cli.main ends quietly
        except OSError as e:
            raise LocalProtocolError("%s: %s" % (e.filename or "I/O", e.strerror or e)) from None
        finally:
            made = getattr(args, "_made_out", None)
            if not ok and made:
                try:
                    os.rmdir(made)  # only if the failed command left it empty
                except OSError:
                    pass
    return run


def register(sub):
    p = sub.add_parser("cacerts", help="EST client: fetch the CA certificates")
    _common(p)
    p.set_defaults(func=_wrap(cmd_cacerts))
    p = sub.add_parser("csrattrs", help="EST client: show the CSR attributes the server wants")
    _common(p)
    p.set_defaults(func=_wrap(cmd_csrattrs))
    p = sub.add_parser("enroll", help="EST client: new key, CSR (honouring csrattrs), certificate into --out")
    _common(p)
    _subject(p)
    p.add_argument("--csr", help="enroll this CSR (PEM/DER) as it is instead")
    p.add_argument("--replace", action="store_true",
                   help="--out already holds a certificate and key: replace them with the new identity "
                        "(without it, enroll refuses; renewing is reenroll)")
    p.set_defaults(func=_wrap(cmd_enroll))
    p = sub.add_parser("reenroll", help="EST client: renew the certificate in --out (or --cert/--key)")
    _common(p)
    p.add_argument("--keep-key", action="store_true", help="keep the key (default: a new key)")
    p.add_argument("--no-ca-update", action="store_true",
                   help="do not fetch /cacerts to follow a root CA key update (RFC 7030 4.1.3): the CA "
                        "certificates in --out stay as they are (default: a new root vouched for by the trusted "
                        "one is added)")
    p.set_defaults(func=_wrap(cmd_reenroll))
    p = sub.add_parser("serverkeygen", help="EST client: key and certificate made by the server")
    _common(p)
    _subject(p)
    p.add_argument("--replace", action="store_true",
                   help="--out already holds a certificate and key: replace them (without it, serverkeygen refuses)")
    p.set_defaults(func=_wrap(cmd_serverkeygen))


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main())
