"""More server processes on the same port (SO_REUSEPORT), for
`est-lite serve` with `[server] processes` (HTTPS) or `[coaps] processes`
(EST-coaps) above 1. One Python process runs one event loop on one core;
the kernel spreads connections (TCP) or client addresses (UDP) over the
processes listening on the port. Each child loads the same config, opens
the same CA store (SQLite WAL: the processes write to it concurrently) and
serves one protocol until the parent says stop or goes away.

    stop = start_worker_processes("https", 1, config_path, data_dir, host, port,
                                  digest_secret=srv.digest_secret())
    ...
    stop()
"""

from est_lite.errors import LocalProtocolError

KINDS = ("https", "coaps")
# the log line format of est-lite serve and proxy (and of these processes)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _worker_main(kind, config_path, data_dir, host, port, digest_secret, conn, log_level=None):
    import signal

    if log_level is not None:
        # as the parent's `est-lite serve -v`: a spawned process starts with no
        # handler, and its requests' INFO lines were lost
        import logging

        logging.basicConfig(level=log_level, format=LOG_FORMAT)

    from .ca import LocalCA
    from .config import load_config
    from .service import EstService

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .datalock import hold_shared

    cfg = load_config(config_path, data_dir=data_dir)
    lock = hold_shared(cfg.data_dir, "est-lite serve", note=False)  # noqa: F841 - held until this process ends
    ca = LocalCA(cfg.data_dir, synchronous=cfg.synchronous)
    svc = EstService(ca, cfg)
    if kind == "coaps":
        from .coaps_server import EstCoapsServer

        srv = EstCoapsServer.from_config(svc, cfg, port=port, host=host, reuse_port=True)
    else:
        from .https_server import EstHttpsServer

        srv = EstHttpsServer.from_config(svc, cfg, port=port, host=host, reuse_port=True,
                                         digest_secret=digest_secret)
    try:
        srv.start()
        conn.send("ready")
        try:
            conn.recv()  # blocks until the parent says stop or goes away
        except EOFError:
            pass
    finally:
        srv.stop()
        ca.store.close()


def start_worker_processes(kind, n, config_path, data_dir, host, port, *, digest_secret=None, timeout=60.0):
    """Start n more processes serving `kind` ("https" or "coaps") on (host,
    port) from the config file; the caller's own server must use
    reuse_port=True. For HTTPS pass the caller's `digest_secret()`, so a
    Digest nonce issued by one process is accepted by the others. For
    EST-coaps the kernel keeps each client address on one process, so a
    DTLS session and its cookie exchange stay where they started. Returns
    a stop() function (with .pids)."""
    import logging
    import multiprocessing

    root = logging.getLogger()
    # the parent's level, when it has set up logging (est-lite serve does)
    level = root.level if root.handlers else None
    if kind not in KINDS:
        raise LocalProtocolError("worker processes serve https or coaps, not %r" % (kind,))
    mp = multiprocessing.get_context("spawn")
    procs = []
    try:
        for _ in range(n):
            parent, child = mp.Pipe()
            p = mp.Process(target=_worker_main, args=(kind, config_path, data_dir, host, port, digest_secret, child,
                                                      level),
                           daemon=True, name="est-%s-worker" % kind)
            p.start()
            child.close()
            procs.append((p, parent))
        for p, parent in procs:
            try:
                ok = parent.poll(timeout) and parent.recv() == "ready"
            except EOFError:  # it died on the way (its error went to stderr)
                ok = False
            if not ok:
                raise LocalProtocolError("an %s worker process did not start" % kind)
    except BaseException:
        _stop_workers(procs)
        raise

    def stop():
        _stop_workers(procs)

    stop.pids = [p.pid for p, _ in procs]
    return stop


def _stop_workers(procs):
    for p, parent in procs:
        try:
            parent.send("stop")
        except (OSError, EOFError):
            pass
        parent.close()
    for p, _ in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)
