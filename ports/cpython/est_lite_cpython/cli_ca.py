"""`est-lite ca ...`: create and run the reference CA.

    est-lite ca init [--data-dir DIR] [--intermediate] [--user NAME:PASSWORD]
    est-lite ca rollover [--days N] [--force] | rollover --finish   (root CA key update, RFC 4210 4.4)
    est-lite ca passwd USER [--password P]      (prompts when omitted)
    est-lite ca issue --cn NAME --out PREFIX [--eku clientAuth,cmcRA] [--dns N] [--ip A] [--days N]
    est-lite ca list | requests [--status S]
    est-lite ca approve ID | reject ID [--reason TEXT]
    est-lite ca revoke SERIAL [--reason R] | revoke --certificate FILE | revoke SERIAL --not-in-store
    est-lite ca crl [--out FILE] [--der]
    est-lite ca backup DEST | verify [BACKUP] | restore BACKUP [--force]   (backup.py)
"""

import getpass
import os
import sys
import time
from shlex import quote  # printed commands run as printed, spaces and all

DEFAULT_DATA_DIR = "est-data"


def _config(args):
    # a server config, or a proxy config (a server config plus [proxy]: its
    # [ca] data_dir holds the proxy's password file)
    from .config import load_config

    return load_config(args.config, data_dir=args.data_dir, skip=("proxy",))


def _data_dir(args):
    if getattr(args, "config", None):
        return _config(args).data_dir
    return args.data_dir or os.environ.get("EST_LITE_DATA") or DEFAULT_DATA_DIR


def _realm(args):
    if getattr(args, "config", None):
        return _config(args).realm
    return args.realm or "est-lite"


def _ca(args):
    from .ca import LocalCA

    return LocalCA(_data_dir(args))


def _passwords(args):
    from .auth import PasswordFile

    if getattr(args, "config", None):
        return PasswordFile(_config(args).password_file)
    return PasswordFile(os.path.join(_data_dir(args), "passwords"))


def _init_user(args):
    """(name, password) of --user, or None; checked before anything is written."""
    from est_lite.errors import LocalProtocolError

    from .auth import check_user

    if args.user is None:
        return None
    user, sep, pw = args.user.partition(":")
    if not sep or not pw:
        raise LocalProtocolError("--user needs NAME:PASSWORD (a name, a colon and a non-empty password), not %r"
                                 % args.user)
    check_user(user)
    return user, pw


def _undo_init(d, before, force):
    # a failed init (a full disk) leaves no part of a CA: the files it made
    # (with --force also those it was replacing: the old CA is gone by then),
    # so the next `ca init` neither finds "a CA already exists" nor half of one
    from .ca import DB_FILE, INT_CERT, INT_KEY, PASSWORDS, ROOT_CERT, ROOT_KEY, SERVER_CERT, SERVER_KEY

    made = (ROOT_KEY, ROOT_CERT, INT_KEY, INT_CERT, SERVER_KEY, SERVER_CERT, DB_FILE, DB_FILE + "-wal",
            DB_FILE + "-shm", PASSWORDS)
    for n in made:
        if before is None or n not in before or force:
            try:
                os.unlink(os.path.join(d, n))
            except OSError:
                pass
    if before is None:  # the directory was made for it
        try:
            os.rmdir(d)
        except OSError:
            pass


def cmd_init(args):
    from est_lite.errors import LocalProtocolError

    from .auth import check_realm
    from .ca import ROOT_KEY, check_data_dir, check_init_args, init_ca, pin_of

    # every argument is checked before the first file is written: a failed
    # init leaves nothing behind that makes the next attempt fail
    d = _data_dir(args)  # (loads --config: a bad config stops here)
    user = _init_user(args)
    realm = _realm(args) if user else None
    if user:
        check_realm(realm)
    names = args.server_name or ("localhost", "127.0.0.1", "::1")
    check_init_args(common_name=args.cn, server_names=names, validity_days=args.days)
    check_data_dir(d)  # before the try below: with --force its undo would remove the CA it refused to replace
    if not args.force and os.path.exists(os.path.join(d, ROOT_KEY)):
        raise LocalProtocolError("a CA already exists in %s (use --force to replace it)" % d)
    from .datalock import exclusive

    with exclusive(d, "est-lite ca init"):  # not under a running server (datalock.py)
        before = set(os.listdir(d)) if os.path.isdir(d) else None
        try:
            ca = init_ca(d, common_name=args.cn, intermediate=args.intermediate, server_names=names,
                         validity_days=args.days, force=args.force)
            if user:
                _passwords(args).set_password(user[0], user[1], realm)
        except BaseException:
            _undo_init(d, before, args.force)
            raise
    # everything is written before the first line is printed: a reader that
    # closes stdout early (| head -1) cannot leave a CA without its user
    print("CA created in %s" % os.path.abspath(d))
    print("  root:   %s  (%s)" % (ca.path("root.pem"), ca.root.subject.rfc4514_string()))
    if ca.issuer is not ca.root:
        print("  issuer: %s  (%s)" % (ca.path("intermediate.pem"), ca.issuer.subject.rfc4514_string()))
    print("  TLS:    %s" % ca.server_cert_file)
    if user:
        print("  user:   %s" % user[0])
    print("  pin:    %s  (the root CA, for a client's --pin)" % pin_of(ca.root))
    print("next: est-lite serve --data-dir %s" % quote(d))
    print("      (EST-coaps too, devices pinning the root: add --coaps-port 5684 --coaps-send-chain all)")
    return 0


def _rollover_step(d, fn, *a, **kw):
    # fn(*a, **kw), a file it cannot write (a full disk) as one line: its
    # files are staged and committed by one journal (ca._commit), so before
    # the journal nothing changed; after it, the next LocalCA finishes
    from est_lite.errors import LocalProtocolError

    from .ca import ROLLOVER_JOURNAL

    try:
        return fn(*a, **kw)
    except OSError as e:
        from .credstore import NO_SPACE_ERRNOS

        full = e.errno in NO_SPACE_ERRNOS
        why = "%s%s" % ("no space on the disk: " if full else "", e.strerror or e)
        fix = "free some space" if full else "fix that (%s)" % (getattr(e, "filename", None) or d)
        if os.path.exists(os.path.join(d, ROLLOVER_JOURNAL)):
            raise LocalProtocolError("ca rollover in %s: committed, but its files could not all be put in place (%s): "
                                     "%s, then any est-lite ca command (or serve) finishes it"
                                     % (d, why, fix)) from None
        raise LocalProtocolError("ca rollover in %s: cannot write its files (%s); the CA is as it was (the store "
                                 "keeps the unused TLS certificate made for it): %s and run it again"
                                 % (d, why, fix)) from None


def cmd_rollover(args):
    """Root CA key update (ca.rollover_ca), or with --finish the TLS
    certificate moved to the new key (ca.finish_rollover_tls)."""
    from .ca import _path_len, _utc_text, finish_rollover_tls, pin_of, rollover_ca

    d = _data_dir(args)
    if args.finish:
        ca = _rollover_step(d, finish_rollover_tls, d)
        try:
            until = ca.ca_certs_until
            print("TLS certificate of %s now from the new root key: %s" % (os.path.abspath(d), ca.server_cert_file))
            if until is not None:
                print("  chain:  leaf, NewWithOld, OldWithOld, OldWithNew, NewWithNew until the old root expires "
                      "on %s" % _utc_text(until))
            if ca.old_root is not None and _path_len(ca.old_root) is not None:
                # roots of `ca init` before 2026-11-29: Mbed TLS counts NewWithOld against their pathLen
                print("next: restart est-lite serve. Devices that still trust only the old root and verify with "
                      "Mbed TLS (MicroPython) no longer accept the server (the old root has a pathLenConstraint, "
                      "docs/server.md); OpenSSL clients of either root do")
            else:
                print("next: restart est-lite serve. Clients of either root accept the server, MicroPython (Mbed "
                      "TLS) ones included")
        finally:
            ca.store.close()
        return 0
    from .datalock import exclusive

    with exclusive(d, "est-lite ca rollover"):  # a running server would go on issuing from the old key
        ca = _rollover_step(d, rollover_ca, d, validity_days=args.days, force=args.force)
    try:
        until = ca.ca_certs_until
        print("root CA key of %s rolled over (RFC 4210 root CA key update)" % os.path.abspath(d))
        print("  new root:  %s  (%s, valid until %s)" % (ca.path("root.pem"), ca.root.subject.rfc4514_string(),
                                                         _utc_text(ca.root.not_valid_after_utc.timestamp())))
        print("  old root:  %s  (in /cacerts with NewWithOld and OldWithNew until %s)"
              % (ca.path("root-old.pem"), _utc_text(until)))
        if ca.issuer is not ca.root:
            print("  issuer:    %s  (the same key, certified by the new root)" % ca.path("intermediate.pem"))
        print("  TLS:       %s  (a new key, still on the old root's path: devices of either root verify it)"
              % ca.server_cert_file)
        print("  pin:       %s  (the new root: for devices' first contacts from now on)" % pin_of(ca.root))
        print("  old pin:   %s  (still met until %s over HTTPS, and CoAPs with send_chain all)"
              % (pin_of(ca.old_root), _utc_text(until)))
        print("devices: nothing to do for est-lite clients, which take the new root from /cacerts at their next "
              "renewal; new devices get the new pin")
        print("an est-lite proxy in front: append %s to its TLS certificate (server.tls_cert) and restart it, "
              "or devices that trust only the new root refuse it (docs/proxy.md)" % ca.path("root-old-with-new.pem"))
        print("next: start est-lite serve again; once devices have renewed: est-lite ca rollover --finish --data-dir %s"
              % quote(d))
    finally:
        ca.store.close()
    return 0


def cmd_issue(args):
    """A key pair and a certificate from this CA for a server-side identity
    the EST protocol does not enroll: the RA certificate of `est-lite proxy`
    (--eku clientAuth,cmcRA) or its TLS server certificate (--eku serverAuth
    --dns/--ip)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from est_lite.errors import LocalProtocolError

    from .ca import EKU_BY_NAME, _cert_pem, _key_pem, _san_for_names, pin_of

    eku = tuple(e.strip() for e in args.eku.split(",") if e.strip())
    for e in eku:
        if e not in EKU_BY_NAME:
            raise LocalProtocolError("--eku: unknown %r (known: %s)" % (e, ", ".join(EKU_BY_NAME)))
    if not eku:
        raise LocalProtocolError("--eku needs at least one extended key usage")
    if not args.cn.strip() or len(args.cn) > 64:
        raise LocalProtocolError("--cn must be 1..64 characters")
    if not 1 <= args.days <= 36500:
        raise LocalProtocolError("--days must be 1..36500")
    for a in args.ip or ():
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise LocalProtocolError("--ip %r is not an IP address" % a) from None
    sans = _san_for_names(list(args.dns or ()) + list(args.ip or ()))
    cert_path, key_path = args.out + ".pem", args.out + ".key"
    for f in (cert_path, key_path):
        if os.path.exists(f) and not args.force:
            raise LocalProtocolError("%s exists (use --force to replace it)" % f)
    from .store import no_room

    full = no_room(os.path.dirname(os.path.abspath(key_path)))
    if full:  # said before a certificate is issued whose key could not be kept
        raise LocalProtocolError("cannot write %s: no space on the disk (%s): nothing issued; free some space and "
                                 "try again" % (key_path, full))
    ca = _ca(args)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_raw(key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.cn)]),
                        sans=sans, days=args.days, eku=eku, label="", requester="est-lite ca issue")
    # leaf first, then the issuing CAs below the root (a TLS chain file); 0644 whatever the umask, never
    # written through a symlink or hard link left at that name (ca._create). Both are written under temporary
    # names, then renamed: with --force the previous pair stays as it was until the new one is complete
    from .ca import _create, _write_all

    tmps, path = [], key_path
    try:
        for path, data, mode in ((key_path, _key_pem(key), 0o600),
                                 (cert_path, b"".join(_cert_pem(c) for c in [cert] + ca.chain[:-1]), 0o644)):
            tmps.append("%s.%d.tmp" % (path, os.getpid()))
            fd = _create(tmps[-1], mode)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        for path, tmp in zip((key_path, cert_path), tmps):
            os.replace(tmp, path)
    except OSError as e:  # the disk filled up in between: no half pair left, the previous one untouched
        for f in tmps:
            try:
                os.unlink(f)
            except OSError:
                pass
        from .credstore import NO_SPACE_ERRNOS

        full = e.errno in NO_SPACE_ERRNOS
        raise LocalProtocolError("cannot write %s: %s%s; the certificate (serial %x) is recorded in the CA store but "
                                 "its key was not kept: revoke it (est-lite ca revoke %x) and issue again once %s"
                                 % (path, "no space on the disk: " if full else "", e.strerror or e, cert.serial_number,
                                    cert.serial_number, "there is space" if full else "that is fixed")) from None
    print("issued %s (%s), serial %x, until %s" % (cert.subject.rfc4514_string(), ", ".join(eku), cert.serial_number,
                                                   cert.not_valid_after_utc.strftime("%Y-%m-%d")))
    print("  cert:   %s" % cert_path)
    print("  key:    %s  (0600)" % key_path)
    print("  pin:    %s" % pin_of(cert))
    return 0


def cmd_passwd(args):
    from est_lite.errors import LocalProtocolError

    pf = _passwords(args)
    if args.delete:
        pf.remove(args.user)
        print("removed %s" % args.user)
        return 0
    pw = args.password
    if pw is None:
        if not sys.stdin.isatty():
            pw = sys.stdin.readline().rstrip("\n")
        else:
            pw = getpass.getpass("password for %s: " % args.user)
            if getpass.getpass("again: ") != pw:
                raise LocalProtocolError("the two passwords differ; nothing changed")
    if not pw:
        raise LocalProtocolError("empty password for %s; nothing changed" % args.user)
    from .auth import check_realm, check_user

    realm = _realm(args)
    check_user(args.user)
    check_realm(realm)  # (both before the directory is made)
    d = os.path.dirname(os.path.abspath(pf.path))
    if not os.path.isdir(d):  # e.g. a proxy's data_dir before its first start
        try:
            os.makedirs(d, mode=0o700)
        except OSError as e:
            raise LocalProtocolError("cannot create %s for the password file: %s" % (d, e.strerror or e)) from None
    pf.set_password(args.user, pw, realm)
    print("password set for %s in %s" % (args.user, pf.path))
    return 0


def _t(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def cmd_list(args):
    ca = _ca(args)
    rows = ca.store.list_certificates(limit=args.limit)
    if not rows and not ca.store.revocations_without_certificate():
        print("no certificates issued in %s" % ca.data_dir)
        return 0
    for c in rows:
        print("%-40s %-8s %s  until %s%s" % (c["serial"], c["label"] or "-", c["subject"], _t(c["not_after"]),
                                            "  REVOKED %s" % _t(c["revoked_at"]) if c["revoked_at"] else ""))
    for serial, when, reason in ca.store.revocations_without_certificate():
        print("%-40s %-8s %s  REVOKED %s (%s)" % (serial, "-", "(certificate not in the store: ca revoke "
                                                  "--not-in-store)", _t(when), reason))
    return 0


def cmd_requests(args):
    ca = _ca(args)
    rows = ca.store.list_requests(args.status)
    if not rows:
        print("no %senrollment requests in %s" % (args.status + " " if args.status else "", ca.data_dir))
        return 0
    for r in rows:
        print("%5d %-9s %-8s %-14s %s  by %s  %s%s" % (r["id"], r["status"], r["label"] or "-", r["op"], r["subject"],
                                                      r["requester"] or "-", _t(r["created"]),
                                                      "  (%s)" % r["reason"] if r["reason"] else ""))
    return 0


def cmd_decide(args, approve):
    ca = _ca(args)
    r = ca.store.decide(args.id, approve, getattr(args, "reason", None))
    print("request %d %s: %s" % (r["id"], r["status"], r["subject"]))
    return 0


def _revocation_reason(text):
    # argparse type: a wrong --reason is a usage error like any other
    # (one line naming `est-lite ca revoke --help`, exit 2)
    import argparse

    from .ca import REVOCATION_REASONS

    if text not in REVOCATION_REASONS:
        raise argparse.ArgumentTypeError("%r is not a revocation reason (one of %s)"
                                         % (text, ", ".join(REVOCATION_REASONS)))
    return text


def _load_certificate_file(path):
    """The first certificate of a PEM or DER file, or one LocalProtocolError."""
    from cryptography import x509

    from est_lite.errors import LocalProtocolError

    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise LocalProtocolError("cannot read %s: %s" % (path, e.strerror or e)) from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise LocalProtocolError("%s holds no certificate (PEM or DER)" % path) from None


def cmd_revoke(args):
    from est_lite.errors import LocalProtocolError

    from .store import serial_hex

    if args.serial is None and args.certificate is None:
        raise LocalProtocolError("ca revoke needs a SERIAL (hex) or --certificate FILE")
    if args.certificate is not None and args.not_in_store:
        raise LocalProtocolError("--certificate imports the certificate: --not-in-store is for a serial without one")
    ca = _ca(args)
    note = None
    if args.certificate is not None:
        # a certificate this CA issued that its store lacks (issued after the
        # backup it was restored from): checked by signature, imported, revoked
        cert = _load_certificate_file(args.certificate)
        if args.serial is not None and serial_hex(args.serial) != "%x" % cert.serial_number:
            raise LocalProtocolError("%s has serial %x, not %s" % (args.certificate, cert.serial_number,
                                                                   serial_hex(args.serial)))
        from .backup import _is_ca_cert

        if _is_ca_cert(cert):
            raise LocalProtocolError("%s is a CA certificate (%s): ca revoke is for the certificates this CA issued "
                                     "to devices and servers" % (args.certificate, cert.subject.rfc4514_string()))
        if not ca.issued_by_me(cert):
            raise LocalProtocolError("%s (%s, serial %x) was not issued by this CA (issuer %s, key of %s%s): not "
                                     "revoked" % (args.certificate, cert.subject.rfc4514_string(), cert.serial_number,
                                                  cert.issuer.rfc4514_string(), ca.issuer.subject.rfc4514_string(),
                                                  " or its previous root" if ca.old_root is not None else ""))
        serial, added = ca.store.import_certificate(cert)
        if added:
            note = "imported %s (%s) into the store" % (serial, cert.subject.rfc4514_string())
    else:
        serial = args.serial
    prior = ca.store.revocation(serial)  # (checks the serial's spelling too)
    if args.certificate is None and not args.not_in_store and not ca.store.has_serial(serial):
        # the store's own refusal, with the two ways out as runnable lines of this directory
        h, d = serial_hex(serial), quote(os.path.abspath(ca.data_dir))
        raise LocalProtocolError(
            "no certificate with serial %s was issued by this CA (not in its store; if it was issued after the backup "
            "this store was restored from: est-lite ca revoke --certificate FILE --reason %s --data-dir %s, or est-lite "
            "ca revoke %s --not-in-store --reason %s --data-dir %s)" % (h, args.reason, d, h, args.reason, d))
    s = ca.store.revoke(serial, args.reason, not_in_store=args.not_in_store)
    if args.not_in_store and not ca.store.has_serial(s) and not prior:
        note = "recorded without a certificate (--not-in-store): the CRL lists it and the server refuses it"
    crl = os.path.join(ca.data_dir, "crl.pem")
    _write_crl(ca, crl, False)
    if note:
        print(note)
    if prior:  # the first revocation stands (date and reason in the CRL); say so rather than echo --reason
        print("%s was already revoked on %s UTC (%s); CRL written to %s" % (s, _t(prior[0]), prior[1], crl))
    else:
        print("revoked %s (%s); CRL written to %s" % (s, args.reason, crl))
    return 0


def _write_crl(ca, out, der):
    from cryptography.hazmat.primitives.serialization import Encoding

    data = ca.crl().public_bytes(Encoding.DER if der else Encoding.PEM)
    if out == "-":
        if der:
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data.decode())
    else:
        _write_replace(out, data)


def _write_replace(path, data):
    """Write `path` as a whole (credstore.write_file_atomic), so a reader (a
    web server publishing the CRL, a proxy's upstream_crl re-read when the
    file changes) never sees half a file, and a failed write leaves the
    previous one."""
    from est_lite.errors import LocalProtocolError

    from .credstore import write_file_atomic

    try:
        write_file_atomic(path, data, 0o644, ".%d.tmp" % os.getpid())  # two `ca` commands may run at once
    except OSError as e:
        raise LocalProtocolError("cannot write %s: %s" % (path, e.strerror or e)) from None


def cmd_crl(args):
    ca = _ca(args)
    _write_crl(ca, args.out, args.der)
    if args.out != "-":
        print("CRL with %d revocation(s) written to %s" % (len(ca.store.revocations()), args.out))
    return 0


def register(sub):
    p = sub.add_parser("ca", help="create and operate the reference CA")
    csub = p.add_subparsers(dest="ca_command", metavar="CA_COMMAND")

    def common(q):
        q.add_argument("--data-dir", help="CA data directory (default $EST_LITE_DATA or ./est-data)")
        q.add_argument("--config", help="server (or proxy) TOML config: its ca.data_dir, realm and password_file")

    q = csub.add_parser("init", help="create root (and intermediate) CA, TLS server cert, store")
    common(q)
    q.add_argument("--cn", default="est-lite Root CA", help="root common name")
    q.add_argument("--intermediate", action="store_true", help="issue from an intermediate CA")
    q.add_argument("--server-name", action="append", help="TLS server name/IP (repeat; default localhost, 127.0.0.1, ::1)")
    q.add_argument("--days", type=int, default=3650, help="CA validity in days")
    q.add_argument("--user", help="also create an HTTP user NAME:PASSWORD")
    q.add_argument("--realm", default=None, help="HTTP realm for --user (default est-lite)")
    q.add_argument("--force", action="store_true", help="replace an existing CA (destroys it)")
    q.set_defaults(func=cmd_init)

    q = csub.add_parser("rollover", help="root CA key update: a new root key, link certificates for devices of the "
                                         "old root (RFC 4210 4.4, in /cacerts), the TLS certificate renewed")
    common(q)
    q.add_argument("--days", type=int, default=3650, help="the new root's validity in days")
    q.add_argument("--force", action="store_true",
                   help="roll over again although a previous rollover's old root is still served (drops it)")
    q.add_argument("--finish", action="store_true",
                   help="after a rollover: move the TLS certificate to the new key (once devices have renewed)")
    q.set_defaults(func=cmd_rollover)

    q = csub.add_parser("issue", help="issue a key and certificate from this CA, e.g. the RA certificate of "
                                      "est-lite proxy (--eku clientAuth,cmcRA) or a TLS server certificate")
    common(q)
    q.add_argument("--cn", required=True, help="subject common name")
    q.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.pem (certificate, then the issuing "
                                                                    "CAs below the root) and PREFIX.key (0600)")
    q.add_argument("--eku", default="clientAuth",
                   help="comma-separated: clientAuth serverAuth cmcRA codeSigning emailProtection ocspSigning "
                        "timeStamping (default clientAuth)")
    q.add_argument("--dns", action="append", help="DNS subjectAltName (repeat)")
    q.add_argument("--ip", action="append", help="IP subjectAltName (repeat)")
    q.add_argument("--days", type=int, default=365, help="validity in days (default 365, capped by the CA's)")
    q.add_argument("--force", action="store_true", help="replace existing PREFIX.pem / PREFIX.key")
    q.set_defaults(func=cmd_issue)

    q = csub.add_parser("passwd", help="set (or --delete) an HTTP Basic/Digest user's password")
    common(q)
    q.add_argument("user")
    q.add_argument("--password", help="the password (else prompted, or read from stdin)")
    q.add_argument("--realm", default=None, help="HTTP realm (default est-lite)")
    q.add_argument("--delete", action="store_true")
    q.set_defaults(func=cmd_passwd)

    q = csub.add_parser("list", help="list issued certificates")
    common(q)
    q.add_argument("--limit", type=int, default=1000)
    q.set_defaults(func=cmd_list)

    q = csub.add_parser("requests", help="list enrollment requests (manual approval)")
    common(q)
    q.add_argument("--status", choices=("pending", "approved", "rejected", "issued"))
    q.set_defaults(func=cmd_requests)

    q = csub.add_parser("approve", help="approve a pending enrollment request")
    common(q)
    q.add_argument("id", type=int)
    q.set_defaults(func=lambda a: cmd_decide(a, True))

    q = csub.add_parser("reject", help="reject a pending enrollment request")
    common(q)
    q.add_argument("id", type=int)
    q.add_argument("--reason", default=None)
    q.set_defaults(func=lambda a: cmd_decide(a, False))

    q = csub.add_parser("revoke", help="revoke an issued certificate (hex serial, or --certificate FILE)")
    common(q)
    q.add_argument("serial", nargs="?", help="the certificate's serial number in hex")
    q.add_argument("--certificate", metavar="FILE",
                   help="the certificate itself (PEM or DER), e.g. one issued after the backup this store was "
                        "restored from: checked to be signed by this CA, imported into the store, revoked")
    q.add_argument("--not-in-store", action="store_true",
                   help="revoke SERIAL although the store has no certificate with it (issued after the restored "
                        "backup; you vouch this CA issued it): the CRL lists it, the server refuses it")
    q.add_argument("--reason", default="unspecified", type=_revocation_reason,
                   help="the CRL reason code, e.g. keyCompromise, superseded (default unspecified)")
    q.set_defaults(func=cmd_revoke)

    q = csub.add_parser("crl", help="write the CRL")
    common(q)
    q.add_argument("--out", default="-", help="file (default stdout)")
    q.add_argument("--der", action="store_true")
    q.set_defaults(func=cmd_crl)

    from .backup import register as register_backup

    register_backup(csub, common)  # backup, verify, restore

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
