"""`est-lite serve`: run the reference EST server over HTTPS, and over
EST-coaps (RFC 9148) too when the config has a [coaps] section or
--coaps-port is given; both listeners share one EstService and CA.

    est-lite serve --data-dir est-data            # defaults + DIR/server.toml if present
    est-lite serve --config examples/server.toml
    est-lite serve --data-dir est-data --coaps-port 5684
"""

import errno
import logging
import os
import shlex
import signal
import sys

from est_lite.errors import LocalProtocolError


def _listen_error(what, host, port, proto, e, flag):
    """The one line for a listener that cannot start (port in use, address
    not on this host, no permission)."""
    h = "[%s]" % host if host and ":" in host else host
    why = e.strerror or str(e)
    hint = ""
    if e.errno == errno.EADDRINUSE:
        hint = "; another process uses it: stop it or choose another %s (0 = any free port)" % flag
    elif e.errno == errno.EACCES:
        hint = "; ports below 1024 need privileges: choose another %s" % flag
    elif e.errno == errno.EADDRNOTAVAIL:
        hint = "; the address is not one of this host's: choose another --host"
    return LocalProtocolError("cannot serve %s on %s:%s/%s: %s%s" % (what, h, port, proto, why, hint))


def _warn_open_private_files(cfg, extra=()):
    """One warning line per private file (CA and TLS keys, the store, the
    password file; `extra`: the proxy's RA key, its config holding
    upstream_auth) other users may read: the server still starts (e.g. a
    group-readable key may be deliberate), the operator sees the fix."""
    from .ca import open_private_files, private_files

    paths = private_files(cfg.data_dir) + [p for p in (cfg.tls_key, cfg.password_file) + tuple(extra) if p]
    seen = set()
    for path, mode in open_private_files(paths):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            print("est-lite: warning: %s is readable or writable by other users (mode %04o): chmod 600 %s"
                  % (path, mode, path), file=sys.stderr)
    try:
        mode = os.stat(cfg.data_dir).st_mode & 0o7777
    except OSError:
        return
    if mode & 0o022:  # they could replace its keys, certificates or ca.db (ca init makes it 0700)
        print("est-lite: warning: the data directory %s is writable by other users (mode %04o): they could replace "
              "its keys and certificates; chmod 700 %s" % (cfg.data_dir, mode, cfg.data_dir), file=sys.stderr)


TLS_RENEW_DAYS = 30  # warn this long before the TLS server certificate expires


def _days_text(t, now):
    import time

    d = (t - now) / 86400.0
    return "%s (in %d day%s)" % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)), d, "" if int(d) == 1 else "s")


def issue_names(cert, default_cn):
    """(CN, ["--dns N", "--ip A", ...]) of `cert`, shell-quoted, for an
    `est-lite ca issue` line that makes a certificate with the same names
    (default_cn when it has no CN)."""
    from cryptography import x509

    try:
        cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    except IndexError:
        cn = default_cn
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return cn, []
    return cn, (["--dns %s" % shlex.quote(n) for n in sans.get_values_for_type(x509.DNSName)]
                + ["--ip %s" % n for n in sans.get_values_for_type(x509.IPAddress)])


def _tls_renew_command(cfg, cert, ca=None):
    """The `est-lite ca issue` line that makes a TLS server certificate like
    `cert` (same CN, DNS and IP names) in place of the configured one; after
    a root key update of the data directory's CA, `est-lite ca rollover
    --finish` (which keeps the link certificates in server.pem)."""
    q = shlex.quote
    if getattr(ca, "old_root", None) is not None and not cfg.tls_cert:
        return "est-lite ca rollover --finish --data-dir %s; restart est-lite serve" % q(cfg.data_dir)
    cn, names = issue_names(cert, "localhost")
    cert_file = cfg.tls_cert or os.path.join(cfg.data_dir, "server.pem")
    key_file = cfg.tls_key or os.path.join(cfg.data_dir, "server.key")
    prefix = cert_file[:-4] if cert_file.endswith(".pem") else None
    tail = ""
    if prefix is None or key_file != prefix + ".key":
        prefix = os.path.join(cfg.data_dir, "server-new")
        tail = ", then move %s.pem and %s.key to %s and %s" % (prefix, prefix, cert_file, key_file)
    return "est-lite ca issue --data-dir %s --cn %s --eku serverAuth %s --out %s --force%s; restart est-lite serve" % (
        q(cfg.data_dir), q(cn), " ".join(names), q(prefix), tail)


def check_lifetimes(cfg, ca, *, now=None):
    """([warning lines], error line or None) about the CA's and the TLS
    server certificate's lifetimes and the trust sets' CRLs at start:
    an expired (or not yet valid) CA or TLS certificate is an error, one
    that ends within the longest profile validity (CA) or TLS_RENEW_DAYS
    (TLS) a warning, as is a CRL past its nextUpdate."""
    import time

    from cryptography import x509

    now = time.time() if now is None else now
    warnings = []
    try:
        # the issuing chain (LocalCA.chain): after a root key update ca_certs()
        # also holds the previous generation, which ends earlier by design
        chain = list(getattr(ca, "chain", None) or ca.ca_certs(None))
    except Exception:  # noqa: BLE001 - another backend (e.g. an upstream CA) may not know its chain offline
        chain = []
    if chain:
        first = min(chain, key=lambda c: c.not_valid_after_utc)
        end = first.not_valid_after_utc.timestamp()
        late = max(chain, key=lambda c: c.not_valid_before_utc)
        who = "the CA certificate %s" % first.subject.rfc4514_string()
        if end <= now:
            return warnings, ("%s expired on %s: this server cannot issue certificates; renew the CA "
                              "(`est-lite ca init --force` starts a new one)" % (who, _days_text(end, now)[:20]))
        if late.not_valid_before_utc.timestamp() > now:
            return warnings, ("the CA certificate %s is valid only from %s and this host's clock is before it: "
                              "set the clock" % (late.subject.rfc4514_string(),
                                                 _days_text(late.not_valid_before_utc.timestamp(), now)[:20]))
        longest = max([p.validity_days for p in cfg.profiles.values()] or [0])
        if end - now < longest * 86400:
            warnings.append("%s expires on %s: certificates issued from now on end then, before their profile's "
                            "validity_days (up to %d); plan the CA's renewal (`est-lite ca rollover` makes a new root "
                            "key that devices of the old root still accept; docs/server.md)"
                            % (who, _days_text(end, now), longest))
    cert_file = cfg.tls_cert or os.path.join(cfg.data_dir, "server.pem")
    try:
        with open(cert_file, "rb") as f:
            tls = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        tls = None  # server_from_config has said what is wrong with it
    if tls is not None and getattr(ca, "old_root", None) is not None and not cfg.tls_cert:
        # after a root key update server.pem carries the link certificates, which end with the old root
        try:
            with open(cert_file, "rb") as f:
                gone = [c for c in x509.load_pem_x509_certificates(f.read())[1:]
                        if c.not_valid_after_utc.timestamp() <= now]
        except (OSError, ValueError):
            gone = []
        if gone:
            warnings.append("%s carries %d certificate(s) of the previous root that expired on %s (a pinned first "
                            "contact is refused); run est-lite ca rollover --finish --data-dir %s and restart"
                            % (cert_file, len(gone), _days_text(gone[0].not_valid_after_utc.timestamp(), now)[:20],
                               shlex.quote(cfg.data_dir)))
    if tls is not None:
        end = tls.not_valid_after_utc.timestamp()
        if end <= now:
            return warnings, ("the TLS server certificate %s expired on %s: clients refuse the handshake; renew it: %s"
                              % (cert_file, _days_text(end, now)[:20], _tls_renew_command(cfg, tls, ca)))
        if end - now < TLS_RENEW_DAYS * 86400:
            warnings.append("the TLS server certificate %s expires on %s; renew it before then: %s"
                            % (cert_file, _days_text(end, now), _tls_renew_command(cfg, tls, ca)))
    for name, t in sorted(getattr(cfg, "trust", {}).items()):
        for crl in t.crls:
            nu = crl.next_update_utc
            if nu is not None and nu.timestamp() <= now:
                warnings.append("the CRL of %s in trust set %s is past its nextUpdate (%s): revocations published "
                                "since are unknown to this server until a current CRL is configured"
                                % (crl.issuer.rfc4514_string(), name, _days_text(nu.timestamp(), now)[:20]))
    return warnings, None


def cmd_serve(args):
    from .config import load_config
    from .https_server import server_from_config

    data_dir = args.data_dir or (None if args.config else os.environ.get("EST_LITE_DATA") or "est-data")
    cfg = load_config(args.config, data_dir=data_dir)
    from .serve_procs import LOG_FORMAT

    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format=LOG_FORMAT)
    hprocs = getattr(cfg, "processes", 1)
    from .datalock import hold_shared

    # held (shared) while serving, by every process of this server: ca restore,
    # init --force and rollover refuse while it is held (datalock.py)
    _lock = hold_shared(cfg.data_dir, "est-lite serve")  # noqa: F841 - the lock lives as long as the fd
    if getattr(args, "coaps_send_chain", None):
        cfg.coaps_send_chain = args.coaps_send_chain
    srv = server_from_config(cfg, port=args.port, host=args.host, reuse_port=hprocs > 1)
    _warn_open_private_files(cfg)
    warnings, error = check_lifetimes(cfg, srv.service.ca)
    for w in warnings:
        print("est-lite: warning: " + w, file=sys.stderr)
    if error is not None:
        srv.stop()
        raise LocalProtocolError(error)
    serving = []

    def _term(signum, frame):
        # installed before the first listener starts: a SIGTERM that comes
        # while the server starts (a supervisor stopping it as soon as the
        # banner or port file appears) stops it like Ctrl-C, instead of
        # the default action killing the process before "stopped"
        if serving:
            srv._stopping.set()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        port = srv.start()
    except OSError as e:
        srv.stop()
        raise _listen_error("HTTPS", srv.host, srv.requested_port, "tcp", e, "--port") from None
    coaps = None
    stop_workers = None
    stop_https_workers = None
    if hprocs > 1:  # more processes on the same TCP port (SO_REUSEPORT), one event loop each
        from .serve_procs import start_worker_processes

        try:
            stop_https_workers = start_worker_processes("https", hprocs - 1, args.config, args.data_dir or data_dir,
                                                        srv.host, port, digest_secret=srv.digest_secret())
        except BaseException:
            srv.stop()
            raise
    if getattr(args, "coaps_port", None) is not None or cfg.coaps_enabled:
        from .coaps_server import EstCoapsServer

        procs = cfg.coaps_processes
        try:
            coaps = EstCoapsServer.from_config(srv.service, cfg, port=args.coaps_port, host=args.host,
                                               reuse_port=procs > 1)
            try:
                coaps.start()
            except OSError as e:
                raise _listen_error("EST-coaps", coaps.host, coaps.requested_port, "udp", e,
                                    "--coaps-port") from None
            if procs > 1:  # more processes on the same UDP port (SO_REUSEPORT)
                from .coaps_server import start_worker_processes

                stop_workers = start_worker_processes(procs - 1, args.config, args.data_dir or data_dir,
                                                      coaps.host, coaps.port)
        except BaseException:
            if coaps is not None:
                coaps.stop()
            if stop_https_workers is not None:
                stop_https_workers()
            srv.stop()
            raise
    labels = ", ".join(sorted(k or "(default)" for k in cfg.profiles))
    try:
        print("est-lite EST server on %s/.well-known/est/ (labels: %s; data %s)" % (srv.url, labels, cfg.data_dir),
              flush=True)
        if coaps is not None:
            print("est-lite EST-coaps server on %s/.well-known/est/" % coaps.url, flush=True)
        if coaps is not None and getattr(args, "coaps_port_file", None):
            _write_port_file(args.coaps_port_file, coaps.port)
        if args.port_file:
            _write_port_file(args.port_file, port)
        serving.append(True)
        srv.serve_forever()
    except KeyboardInterrupt:
        srv.stop()
    finally:
        if stop_workers is not None:
            stop_workers()
        if stop_https_workers is not None:
            stop_https_workers()
        if coaps is not None:
            coaps.stop()
    print("stopped", file=sys.stderr)
    return 0


def register(sub):
    p = sub.add_parser("serve", help="run the EST server (HTTPS, and EST-coaps with [coaps] or --coaps-port)")
    p.add_argument("--config", help="TOML config (see examples/server.toml)")
    p.add_argument("--data-dir", help="CA data directory (overrides the config's ca.data_dir)")
    p.add_argument("--host", help="listen address (overrides the config)")
    p.add_argument("--port", type=int, help="TCP port, 0 = any free one (overrides the config)")
    p.add_argument("--port-file", help="write the port number here once listening")
    p.add_argument("--coaps-port", type=int,
                   help="also serve EST-coaps on this UDP port (0 = any free one; overrides [coaps] port)")
    p.add_argument("--coaps-port-file", help="write the EST-coaps UDP port here once listening")
    p.add_argument("--coaps-send-chain", choices=("intermediates", "none", "all"),
                   help="certificates the DTLS server sends after its own (overrides [coaps] send_chain): "
                        "'all' = up to and including the root, so devices can pin the root CA on first contact")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log to stderr: -v each request and handshake failure (INFO), -vv debug detail")
    p.set_defaults(func=cmd_serve)


def _write_port_file(path, port):
    # written whole (a reader polling it never sees it empty) and never through
    # a symlink or file left at that name: --port-file is often in /tmp
    from .credstore import write_file_atomic

    try:
        write_file_atomic(path, b"%d\n" % port, 0o644, ".%d.tmp" % os.getpid())
    except OSError as e:  # one line, not "internal error"
        from est_lite.errors import LocalProtocolError

        raise LocalProtocolError("cannot write the port file %s: %s" % (path, e.strerror or e)) from None
