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
import os
import shlex
import signal
import sys

RENEW_DAYS = 30  # warn this long before the RA or the TLS/DTLS server certificate expires


def _renew_command(cert_file, key_file, cert, eku):
    """How to renew `cert` (the RA's or the proxy's server certificate) when
    the upstream is est-lite: the `est-lite ca issue` line to run on the
    upstream CA's host, and where its output goes here."""
    from .cli_serve import issue_names

    cn, names = issue_names(cert, "est-proxy")
    prefix = os.path.splitext(os.path.basename(cert_file))[0] + "-new"
    q = shlex.quote
    return ("on the upstream CA's host: est-lite ca issue --data-dir UPSTREAM-DATA-DIR --cn %s --eku %s%s --out %s "
            "--force; then copy %s.pem to %s and %s.key to %s and restart est-lite proxy (another CA: issue it "
            "there with the same names and extendedKeyUsage)" % (
                q(cn), eku, "".join(" " + n for n in names), q(prefix), prefix, q(cert_file), prefix, q(key_file)))


def check_proxy_lifetimes(cfg, pcfg, *, now=None, crls=None):
    """([warning lines], error line or None) about the proxy's own
    credentials at start: its RA certificate (proxy.ra_cert), its TLS and
    DTLS server certificate (server.tls_cert) and the upstream CRL files.
    Expired (or not yet valid) -> the error, naming the file and how to
    renew it; ending within RENEW_DAYS -> a warning, as is an upstream CRL
    past its nextUpdate. `crls`: [(path, CRL)] already loaded (else read
    from pcfg.upstream_crl)."""
    import time

    from cryptography import x509

    from .cli_serve import _days_text
    from .proxy import _load_certs

    now = time.time() if now is None else now
    warnings = []
    for what, cert_file, key_file, eku, consequence in (
            ("RA certificate", pcfg.ra_cert, pcfg.ra_key, "clientAuth,cmcRA",
             "the upstream refuses the proxy, and devices get 5.03 'the RA cannot reach its CA'"),
            ("TLS/DTLS server certificate", cfg.tls_cert, cfg.tls_key, "serverAuth",
             "devices refuse the handshake")):
        if not cert_file:
            continue
        try:
            cert = _load_certs(cert_file)[0]
        except (OSError, ValueError, IndexError):
            continue  # the servers say what is wrong with it when they load it
        end = cert.not_valid_after_utc.timestamp()
        begin = cert.not_valid_before_utc.timestamp()
        how = _renew_command(cert_file, key_file, cert, eku)
        if end <= now:
            return warnings, ("the proxy's %s %s expired on %s: %s; renew it: %s"
                              % (what, cert_file, _days_text(end, now)[:20], consequence, how))
        if begin > now:
            return warnings, ("the proxy's %s %s is valid only from %s and this host's clock is before it: set the "
                              "clock (or renew it: %s)" % (what, cert_file, _days_text(begin, now)[:20], how))
        if end - now < RENEW_DAYS * 86400:
            warnings.append("the proxy's %s %s expires on %s; renew it before then: %s"
                            % (what, cert_file, _days_text(end, now), how))
    if crls is None:
        crls = []
        for path in pcfg.upstream_crl:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                crls.append((path, x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
                             else x509.load_der_x509_crl(data)))
            except (OSError, ValueError):
                continue  # the proxy refuses to start with it (UpstreamCA.load_crls)
    for path, crl in crls:
        nu = crl.next_update_utc
        if nu is not None and nu.timestamp() <= now:
            warnings.append("the upstream CRL %s is past its nextUpdate (%s): %s; copy a current one from the "
                            "upstream (est-lite ca crl --out FILE there)" % (
                                path, _days_text(nu.timestamp(), now)[:20],
                                "devices of its CA get 5.03 until then (upstream_crl_stale = \"refuse\")"
                                if pcfg.upstream_crl_stale == "refuse" else "revocations since are not seen"))
    return warnings, None


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
    warnings, error = check_proxy_lifetimes(cfg, pcfg)
    for w in warnings:
        print("est-lite: warning: " + w, file=sys.stderr)
    from .cli_serve import _warn_open_private_files

    # the RA key, and the config when it holds the upstream password, as serve warns for its keys
    _warn_open_private_files(cfg, (pcfg.ra_key, args.config if pcfg.upstream_auth else None))
    if error is not None:
        from est_lite.errors import LocalProtocolError

        raise LocalProtocolError(error)
    from .datalock import hold_shared

    _lock = hold_shared(cfg.data_dir, "est-lite proxy")  # noqa: F841 - ca restore refuses while it runs (datalock.py)
    svc = proxy_from_config(cfg, pcfg)
    if _lock is None:  # the data directory did not exist before (proxy_from_config makes it for its state)
        _lock = hold_shared(cfg.data_dir, "est-lite proxy")  # noqa: F841
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
        _write_port_file(args.coaps_port_file, coaps.port)
    if https is not None and args.port_file:
        _write_port_file(args.port_file, https.port)

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
    st = dict(svc.upstream.stats) if getattr(svc, "upstream", None) is not None else {}
    if st.get("requests"):
        # where a device's time went: this much of it was the upstream's
        print("upstream: %d requests, %d failed; %.1f s in all, mean %.1f ms, max %.1f ms" % (
            st["requests"], st["errors"], st["seconds"], 1000.0 * st["seconds"] / st["requests"],
            1000.0 * st["max_s"]), file=sys.stderr)
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


def _write_port_file(path, port):
    # written whole (a reader polling it never sees it empty) and never through
    # a symlink or file left at that name: --port-file is often in /tmp
    from .credstore import write_file_atomic

    try:
        write_file_atomic(path, b"%d\n" % port, 0o644, ".%d.tmp" % os.getpid())
    except OSError as e:  # one line, not "internal error"
        from est_lite.errors import LocalProtocolError

        raise LocalProtocolError("cannot write the port file %s: %s" % (path, e.strerror or e)) from None
