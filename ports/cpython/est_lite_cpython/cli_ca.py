"""`est-lite ca ...`: create and run the reference CA.

    est-lite ca init [--data-dir DIR] [--intermediate] [--user NAME:PASSWORD]
    est-lite ca passwd USER [--password P]      (prompts when omitted)
    est-lite ca list | requests [--status S]
    est-lite ca approve ID | reject ID [--reason TEXT]
    est-lite ca revoke SERIAL [--reason R]
    est-lite ca crl [--out FILE] [--der]
"""

import getpass
import os
import sys
import time

DEFAULT_DATA_DIR = "est-data"


def _data_dir(args):
    if getattr(args, "config", None):
        from .config import load_config

        return load_config(args.config, data_dir=args.data_dir).data_dir
    return args.data_dir or os.environ.get("EST_LITE_DATA") or DEFAULT_DATA_DIR


def _realm(args):
    if getattr(args, "config", None):
        from .config import load_config

        return load_config(args.config, data_dir=args.data_dir).realm
    return args.realm or "est-lite"


def _ca(args):
    from .ca import LocalCA

    return LocalCA(_data_dir(args))


def _passwords(args):
    from .auth import PasswordFile

    if getattr(args, "config", None):
        from .config import load_config

        return PasswordFile(load_config(args.config, data_dir=args.data_dir).password_file)
    return PasswordFile(os.path.join(_data_dir(args), "passwords"))


def cmd_init(args):
    from .ca import init_ca

    d = _data_dir(args)
    ca = init_ca(d, common_name=args.cn, intermediate=args.intermediate, server_names=args.server_name or
                 ("localhost", "127.0.0.1", "::1"), validity_days=args.days, force=args.force)
    print("CA created in %s" % os.path.abspath(d))
    print("  root:   %s  (%s)" % (ca.path("root.pem"), ca.root.subject.rfc4514_string()))
    if ca.issuer is not ca.root:
        print("  issuer: %s  (%s)" % (ca.path("intermediate.pem"), ca.issuer.subject.rfc4514_string()))
    print("  TLS:    %s" % ca.server_cert_file)
    if args.user:
        user, sep, pw = args.user.partition(":")
        if not sep:
            print("est-lite: --user needs NAME:PASSWORD", file=sys.stderr)
            return 2
        _passwords(args).set_password(user, pw, _realm(args))
        print("  user:   %s" % user)
    print("next: est-lite serve --data-dir %s" % d)
    return 0


def cmd_passwd(args):
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
                print("est-lite: passwords differ", file=sys.stderr)
                return 1
    if not pw:
        print("est-lite: empty password", file=sys.stderr)
        return 1
    pf.set_password(args.user, pw, _realm(args))
    print("password set for %s in %s" % (args.user, pf.path))
    return 0


def _t(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def cmd_list(args):
    ca = _ca(args)
    for c in ca.store.list_certificates(limit=args.limit):
        print("%-40s %-8s %s  until %s%s" % (c["serial"], c["label"] or "-", c["subject"], _t(c["not_after"]),
                                            "  REVOKED %s" % _t(c["revoked_at"]) if c["revoked_at"] else ""))
    return 0


def cmd_requests(args):
    ca = _ca(args)
    for r in ca.store.list_requests(args.status):
        print("%5d %-9s %-8s %-14s %s  by %s  %s%s" % (r["id"], r["status"], r["label"] or "-", r["op"], r["subject"],
                                                      r["requester"] or "-", _t(r["created"]),
                                                      "  (%s)" % r["reason"] if r["reason"] else ""))
    return 0


def cmd_decide(args, approve):
    ca = _ca(args)
    r = ca.store.decide(args.id, approve, getattr(args, "reason", None))
    print("request %d %s: %s" % (r["id"], r["status"], r["subject"]))
    return 0


def cmd_revoke(args):
    from .ca import REVOCATION_REASONS

    if args.reason not in REVOCATION_REASONS:
        print("est-lite: reason must be one of %s" % ", ".join(REVOCATION_REASONS), file=sys.stderr)
        return 2
    ca = _ca(args)
    s = ca.revoke(args.serial, args.reason)
    _write_crl(ca, os.path.join(ca.data_dir, "crl.pem"), False)
    print("revoked %s (%s); CRL written to %s" % (s, args.reason, os.path.join(ca.data_dir, "crl.pem")))
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
        with open(out, "wb") as f:
            f.write(data)


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
        q.add_argument("--config", help="server TOML config (its ca.data_dir, realm and password_file)")

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

    q = csub.add_parser("revoke", help="revoke an issued certificate (hex serial)")
    common(q)
    q.add_argument("serial")
    q.add_argument("--reason", default="unspecified")
    q.set_defaults(func=cmd_revoke)

    q = csub.add_parser("crl", help="write the CRL")
    common(q)
    q.add_argument("--out", default="-", help="file (default stdout)")
    q.add_argument("--der", action="store_true")
    q.set_defaults(func=cmd_crl)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
