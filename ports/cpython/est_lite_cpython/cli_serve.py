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


def _warn_open_private_files(cfg):
    """One warning line per private file (CA and TLS keys, the store, the
    password file) other users may read: the server still starts (e.g. a
    group-readable key may be deliberate), the operator sees the fix."""
    from .ca import open_private_files, private_files

    paths = private_files(cfg.data_dir) + [p for p in (cfg.tls_key, cfg.password_file) if p]
    seen = set()
    for path, mode in open_private_files(paths):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            print("est-lite: warning: %s is readable or writable by other users (mode %04o): chmod 600 %s"
                  % (path, mode, path), file=sys.stderr)


def cmd_serve(args):
    from .config import load_config
    from .https_server import server_from_config

    data_dir = args.data_dir or (None if args.config else os.environ.get("EST_LITE_DATA") or "est-data")
    cfg = load_config(args.config, data_dir=data_dir)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    hprocs = getattr(cfg, "processes", 1)
    if getattr(args, "coaps_send_chain", None):
        cfg.coaps_send_chain = args.coaps_send_chain
    srv = server_from_config(cfg, port=args.port, host=args.host, reuse_port=hprocs > 1)
    _warn_open_private_files(cfg)
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
            with open(args.coaps_port_file, "w") as f:
                f.write("%d\n" % coaps.port)
        if args.port_file:
            with open(args.port_file, "w") as f:
                f.write("%d\n" % port)
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
