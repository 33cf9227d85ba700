"""`est-lite proxy`: EST-coaps and EST-over-HTTPS front ends for devices,
forwarding to an upstream EST server over HTTPS as a Registration Authority.

    est-lite proxy --config proxy.toml
    est-lite proxy --config proxy.toml --coaps-port 5684 --port 8444

The config is a server config (see examples/server.toml: [server] with the
proxy's own tls_cert/tls_key, [coaps], [trust.*], [profiles.*] that
authenticate devices) plus a [proxy] section (see docs/proxy.md):

    [proxy]
    upstream = "https://est.example.com:8443"
    upstream_ca = "upstream-root.pem"     # verifies the upstream server
    ra_cert = "ra.pem"                    # TLS client certificate with id-kp-cmcRA
    ra_key = "ra.key"
    upstream_crl = "upstream-crl.pem"     # the upstream CA's CRL: revoked devices stop at the proxy
    upstream_crl_stale = "refuse"         # that CRL past its nextUpdate: its devices get 503 / 5.03 ("use": go on)
    state = "proxy-state.sqlite"          # which device sent each request waiting for approval, kept across
                                          # restarts (default: proxy-state.sqlite in [ca] data_dir)
"""

import logging
import signal
import sys


def cmd_proxy(args):
    from .coaps_server import EstCoapsServer
    from .https_server import EstHttpsServer
    from .cli_serve import _listen_error
    from .proxy import load_proxy_config, proxy_from_config

    import threading

    # before anything starts: a SIGTERM while the proxy starts stops it
    # once started (as a SIGTERM later does), not by the signal's default action
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    cfg, pcfg = load_proxy_config(args.config)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    if not cfg.tls_cert or not cfg.tls_key:
        from .config import ConfigError

        raise ConfigError("the proxy needs its own TLS certificate: set server.tls_cert and server.tls_key")
    svc = proxy_from_config(cfg, pcfg)
    svc.prefetch()  # the upstream's CA certificates: the DTLS handshake needs them
    https = None
    if not args.no_https:
        https = EstHttpsServer.from_config(svc, cfg, port=args.port, host=args.host)
        try:
            https.start()
        except OSError as e:  # the same one line as serve's (port in use, address not on this host)
            https.stop()
            raise _listen_error("HTTPS", https.host, https.requested_port, "tcp", e, "--port") from None
    coaps = None
    if not args.no_coaps:
        try:
            coaps = EstCoapsServer.from_config(svc, cfg, port=args.coaps_port, host=args.host)
            try:
                coaps.start()
            except OSError as e:
                raise _listen_error("EST-coaps", coaps.host, coaps.requested_port, "udp", e,
                                    "--coaps-port") from None
        except BaseException:
            if https is not None:
                https.stop()
            raise
    print("est-lite proxy -> %s (RA)%s%s" % (
        pcfg.upstream, "; devices over %s/.well-known/est/" % https.url if https else "",
        "; devices over %s/.well-known/est/" % coaps.url if coaps else ""), flush=True)
    if coaps is not None and args.coaps_port_file:
        with open(args.coaps_port_file, "w") as f:
            f.write("%d\n" % coaps.port)
    if https is not None and args.port_file:
        with open(args.port_file, "w") as f:
            f.write("%d\n" % https.port)

    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if coaps is not None:
            coaps.stop()
        if https is not None:
            https.stop()
    print("stopped", file=sys.stderr)
    return 0


def register(sub):
    p = sub.add_parser("proxy", help="EST-coaps/HTTPS proxy forwarding to an upstream EST server as an RA")
    p.add_argument("--config", required=True, help="TOML: a server config plus a [proxy] section")
    p.add_argument("--host", help="listen address for both front ends (overrides the config)")
    p.add_argument("--port", type=int, help="HTTPS port, 0 = any free one (overrides [server] port)")
    p.add_argument("--coaps-port", type=int, help="EST-coaps UDP port, 0 = any free one (overrides [coaps] port)")
    p.add_argument("--no-https", action="store_true", help="serve devices over EST-coaps only")
    p.add_argument("--no-coaps", action="store_true", help="serve devices over HTTPS only")
    p.add_argument("--port-file", help="write the HTTPS port here once listening")
    p.add_argument("--coaps-port-file", help="write the EST-coaps port here once listening")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_proxy)
