"""Device benchmarks of the MicroPython client runtime (issue #6).

    python bench/device.py [--runs 15] [--loss 0.2] [--delay-ms 0] [--ack-timeout 2] [--skip-lossy]
                           [--no-adaptive] [--rto-initial-ms 1000] [--rto-min-ms 20] [--no-rtt-share] [--seed 7]
                           [--close-session] [--phases]

Against the reference server (hil.refserver, in this process) over
EST-coaps, the MicroPython unix port running est_lite + est_lite_mp as .mpy
with the P-256 table read from a file (est_lite_mp.tablefile):

- heap: a full CoAPs enrollment -- EstClient.provision(): cacerts, csrattrs,
  key generation, CSR honouring the attributes, enroll, verification of the
  issued certificate, commit to a credential store -- at the smallest
  `-X heapsize` (1 KB steps) that completes it `--heap-tries` (3) times
  in a row, and every size up to 8 KB above it too
  (`min_heapsize_passing`; bisection, then checked upwards: passing is not
  monotone in the heap size, see _mp.heap_search), minus the same for an
  empty module (`heap_peak_bytes`, the issue's definition). The smallest
  size seen to pass below it is `lowest_heapsize_passing`. The .mpy code is loaded into
  the GC heap on the unix port, so this counts the loaded code too; the
  same measured with the modules in a ROMFS image (vfs.VfsRom: bytecode in
  place, as from a device's flash) is `romfs_heap_peak_bytes` (the image is
  in the heap as well and is subtracted with the empty-script baseline).
- size: `.mpy` of the core (est_lite) and the MicroPython port (est_lite_mp)
  together, without the build-time generator and the P-256 table data
  (`mpy_total_bytes`); the subset a CoAPs-only device loads
  (`coaps_device_mpy_bytes`); per module in `mpy_modules`.
- loss: enrollment time (inside the device process, from EstClient() to the
  committed store) through hil.lossy.LossyRelay on loopback, lossless and
  with `--loss` datagram loss in both directions, `--runs` each, in the same
  run: `lossless_median_ms`, `lossy_median_ms`, `loss_ratio`. The device
  uses RTT-based timers (EstClient.adaptive, est_lite_mp.client.Rto) unless
  --no-adaptive; --rto-initial-ms / --rto-min-ms set their initial value
  and floor.

The last line is one JSON object.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import _mp  # noqa: E402

HEAP_TARGET = 16 * 1024
MPY_TARGET = 24 * 1024
LOSS_TARGET = 3.0

DRIVER = r"""
import gc, json, sys, time
gc.collect()


def _rd(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


def main():
    f = open(sys.argv[1])
    cfg = json.load(f)
    f.close()
    from est_lite_mp import tablefile
    tablefile.install(cfg["table"])
    from est_lite_mp.client import EstClient
    from est_lite_mp.credstore import CredStore
    trust = [_rd(cfg["trust"])]
    cert = _rd(cfg["cert"])
    key = _rd(cfg["key"])
    times = []
    for i in range(cfg["runs"]):
        store = CredStore(cfg["store"] + "-%d" % i)
        gc.collect()
        t0 = time.ticks_ms()
        c = EstClient(cfg["server"], trust=trust, cert=cert, key=key, deadline=cfg["deadline"])
        c.ack_timeout = cfg["ack_timeout"]
        c.adaptive = cfg["adaptive"]
        c.rto_initial_ms = cfg["rto_initial_ms"]
        c.rto_min_ms = cfg["rto_min_ms"]
        c.rtt_keep_s = cfg["rtt_keep_s"]
        c.keep_session = cfg.get("keep_session", True)
        c.provision(store, cn="bench-%d" % i)
        c.close()
        times.append(time.ticks_diff(time.ticks_ms(), t0))
        c = store = None
        gc.collect()
    print("TIMES " + json.dumps(times))
    print("DONE")


main()
"""

# --phases: live heap (gc.mem_alloc() after gc.collect(), minus the value at
# the start of the script) at the phase boundaries of provision(), with the
# qstr pool's size (micropython.qstr_info(): interned names, never freed) and
# the modules loaded; the provision functions are wrapped in place.
PHASES = r"""
import gc, json, sys, micropython
gc.collect()
B = gc.mem_alloc()


def m(label):
    gc.collect()
    a = gc.mem_alloc() - B
    micropython.qstr_info()
    # printed at once, not collected: a growing list would be live heap too
    print("ROW " + json.dumps([label, a, [n for n in sys.modules if n.startswith("est_lite")]]))


def _rd(p):
    f = open(p, "rb")
    d = f.read()
    f.close()
    return d


def main():
    f = open(sys.argv[1])
    cfg = json.load(f)
    f.close()
    if cfg.get("imports"):
        # the module's names interned first (imported and unloaded once), so
        # the second import measures its objects, not the qstr pool's growth
        n = cfg["imports"]
        import est_lite.errors, est_lite_mp  # noqa: E401
        had = list(sys.modules)
        __import__(n)
        for k in [k for k in sys.modules if k not in had]:
            del sys.modules[k]
            i = k.rfind(".")
            if i > 0 and k[:i] in sys.modules:
                delattr(sys.modules[k[:i]], k[i + 1:])
        m("before")
        __import__(n)
        m("import " + n)
        return
    from est_lite_mp import tablefile
    tablefile.install(cfg["table"])
    m("table file installed")
    from est_lite_mp.client import EstClient
    from est_lite_mp.credstore import CredStore
    m("client, credstore imported")
    c = EstClient(cfg["server"], trust=[_rd(cfg["trust"])], cert=_rd(cfg["cert"]), key=_rd(cfg["key"]),
                  deadline=600)
    store = CredStore(cfg["store"])
    m("client made")
    from est_lite_mp import provision as P
    m("provision imported")

    def wrap(name, what):
        f = getattr(P, name)

        def w(*a):
            m(what + " (start)")
            r = f(*a)
            m(what + " (end, result live)")
            return r

        setattr(P, name, w)

    for n, what in (("_warm", "warm"), ("_attrs_der", "csrattrs"), ("_keygen", "key generation"), ("_info", "request info (CSR)"),
                    ("_sign", "signature"), ("_issue", "enroll"), ("_check", "verification")):
        wrap(n, what)
    sv = store.save

    def save(**kw):
        m("store (start)")
        return sv(**kw)

    store.save = save
    cc = c.cacerts

    def cacerts():
        r = cc()
        m("cacerts (end, session open)")
        return r

    c.cacerts = cacerts
    r = c.provision(store, cn="phases")
    m("provision returned")
    r = None
    c.close()
    c = store = None
    m("all dropped")
    print("PHASES")


main()
"""

EMPTY = "print('DONE')\n"
ROM_PRELUDE = ("import vfs,sys\nf=open(%r,'rb');_i=f.read();f.close();del f\n"
               "vfs.mount(vfs.VfsRom(_i),'/rom');sys.path.insert(0,'/rom')\n")

# SOURCE_NAMES: the .mpy files are compiled with `mpy-cross -s <module name>`.
# MicroPython interns the source name stored in a .mpy (tracebacks print it)
# when the module is loaded, and the module's dotted name anyway: with the
# module name as the source name that is one name, not two (about 20 fewer
# qstrs in an enrollment; a traceback reads File "est_lite_mp.client", line
# N). hil/bundle.py builds the device bundle with plain paths.

# what a CoAPs-only device loads for provision()
COAPS_DEVICE = ["est_lite/" + m for m in ("__init__", "errors", "numbers", "coap", "client", "der", "pkcs7", "csr",
                                          "csr_ext", "csrattrs")] + \
               ["est_lite_mp/" + m for m in ("__init__", "client", "dtls", "crypto", "keys", "p256", "credstore",
                                             "provision", "certs", "tablefile", "storeops")]


def build_lib(d):
    """est_lite, est_lite_mp, the drivers as .mpy in d; the table file."""
    lib = pathlib.Path(d) / "lib"
    sizes = {}
    for pkg, src in (("est_lite", _mp.ROOT / "est_lite"), ("est_lite_mp", _mp.ROOT / "ports" / "micropython" /
                                                           "est_lite_mp")):
        (lib / pkg).mkdir(parents=True)
        for py in sorted(src.glob("*.py")):
            if py.name.startswith("gen_"):
                continue
            out = lib / pkg / (py.stem + ".mpy")
            # source name = the module's name, which the import interns anyway
            # (a path would be one more qstr per module; see SOURCE_NAMES)
            name = pkg if py.stem == "__init__" else pkg + "." + py.stem
            subprocess.run([_mp.MPY_CROSS, "-s", name, "-o", str(out), str(py)], check=True)
            sizes[pkg + "/" + py.stem] = out.stat().st_size
    for name, text in (("bench_enroll", DRIVER), ("bench_empty", EMPTY), ("bench_phases", PHASES)):
        src = pathlib.Path(d) / (name + ".py")
        src.write_text(text)
        subprocess.run([_mp.MPY_CROSS, "-s", name, "-o", str(lib / (name + ".mpy")), str(src)], check=True)
    table = pathlib.Path(d) / "p256_table.bin"
    sys.path.insert(0, str(_mp.ROOT / "ports" / "micropython"))
    from est_lite_mp import tablefile

    tablefile.write(str(table))
    return lib, table, sizes


def run_module(lib, module, args, heap=None, rom=None, timeout=600):
    cmd = [_mp.MICROPYTHON]
    if heap:
        cmd += ["-X", "heapsize=%d" % heap]
    env = dict(os.environ, MICROPYPATH=str(lib))
    if rom:
        cmd += ["-c", ROM_PRELUDE % rom + "sys.argv.clear();sys.argv.extend([%r]+%r)\nimport %s\n" % (module, list(args), module)]
        env["MICROPYPATH"] = ""
    else:
        cmd += ["-m", module] + list(args)
    # cwd: `-m`/`-c` put '' (the current directory) first on MicroPython's
    # sys.path; run from the repo root, the core would be imported from its
    # .py sources (compiled in the heap) instead of the .mpy files in lib
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(lib))


def min_heap(lib, module, args, rom=None, lo=2, hi=1024, tries=1):
    """(smallest heapsize, smallest seen to pass), bytes, in KB steps, at
    which the module prints DONE `tries` times in a row (_mp.heap_search:
    the first is the one from which every size 8 KB up passes too). One run
    is not enough for an enrollment: the key, the signatures and the serial
    number are random, so their sizes and the heap's fragmentation differ
    between runs, and a size that passed once can fail with a MemoryError
    the next time."""

    def ok(kb):
        for _ in range(tries):
            try:
                p = run_module(lib, module, args, kb * 1024, rom)
            except subprocess.TimeoutExpired:
                return False
            if p.returncode != 0 or "DONE" not in p.stdout:
                return False
        return True

    try:
        n, low = _mp.heap_search(ok, lo, hi)
    except RuntimeError:
        p = run_module(lib, module, args, hi * 1024, rom)
        raise RuntimeError("%s fails even with %d KB: %s%s" % (module, hi, p.stdout, p.stderr))
    return n * 1024, low * 1024


def _phases_run(lib, rom, cfgpath):
    p = run_module(lib, "bench_phases", [cfgpath], 1024 * 1024, rom)
    if p.returncode != 0 or "ROW " not in p.stdout:
        raise RuntimeError("phases driver failed: %s%s" % (p.stdout[-2000:], p.stderr[-2000:]))
    qs = [int(ln.split("n_total_bytes=")[1]) for ln in p.stdout.splitlines() if "n_total_bytes=" in ln]
    rows = [json.loads(ln[4:]) for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
    return [dict(label=r[0], live=r[1], qstr_pool=q, modules=sorted(r[2])) for r, q in zip(rows, qs)]


def phases(lib, d, cfgpath):
    """Live heap at provision()'s phase boundaries and the import cost of
    each module (alone, with what it imports, its names already interned),
    modules in a ROMFS image."""
    rom = os.path.join(d, "lib-phases.romfs")
    subprocess.run(["mpremote", "romfs", "-o", rom, "build", str(lib)], check=True, capture_output=True)
    rows = _phases_run(lib, rom, cfgpath)
    print("%-36s %8s %8s  modules" % ("phase boundary", "live B", "qstr B"))
    for r in rows:
        print("%-36s %8d %8d  %s" % (r["label"], r["live"], r["qstr_pool"],
                                     " ".join(m.replace("est_lite_mp.", "mp.").replace("est_lite.", "core.")
                                              for m in r["modules"] if "." in m)))
    imports = {}
    for pkg in ("est_lite", "est_lite_mp"):
        for mpy in sorted((lib / pkg).glob("*.mpy")):
            name = pkg + "." + mpy.stem
            if mpy.stem in ("__init__", "p256_table"):
                continue
            p = os.path.join(d, "imp.json")
            with open(p, "w") as f:
                json.dump({"imports": name}, f)
            r = _phases_run(lib, rom, p)
            imports[name] = dict(live=r[1]["live"] - r[0]["live"], qstr_pool=r[1]["qstr_pool"] - r[0]["qstr_pool"],
                                 pulls=[m for m in r[1]["modules"] if m not in r[0]["modules"] and m != name])
    print("%-28s %8s %8s  (names already interned; with what it imports)" % ("import", "live B", "qstr B"))
    for k, v in imports.items():
        print("%-28s %8d %8d  %s" % (k, v["live"], v["qstr_pool"], " ".join(v["pulls"])))
    return dict(boundaries=rows, imports=imports)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="enrollments per link condition (default 15)")
    ap.add_argument("--loss", type=float, default=0.2, help="datagram loss each way (default 0.2)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way link delay of the relay (default 0)")
    ap.add_argument("--ack-timeout", type=float, default=2.0, help="CoAP ACK_TIMEOUT of the device (default 2, RFC 7252)")
    ap.add_argument("--no-adaptive", action="store_true",
                    help="RFC 7252 fixed ACK_TIMEOUT and Mbed TLS handshake timers only (the client before issue #6)")
    ap.add_argument("--rto-initial-ms", type=int, default=1000,
                    help="handshake resend timer before any RTT sample (default 1000, RFC 6347/8961)")
    ap.add_argument("--rto-min-ms", type=int, default=20, help="floor of the measured RTO (default 20)")
    ap.add_argument("--no-rtt-share", action="store_true",
                    help="every enrollment starts with no RTT knowledge (EstClient.rtt_keep_s = 0): first contact")
    ap.add_argument("--close-session", dest="keep_session", action="store_false",
                    help="EstClient.keep_session = False: the cacerts/csrattrs session is closed while the key "
                         "and the CSR are made and the enroll opens a new one (default: one DTLS session for the "
                         "whole provision())")
    ap.add_argument("--heap-tries", type=int, default=3,
                    help="an enrollment must complete this many times in a row at a heap size (default 3)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-lossy", action="store_true")
    ap.add_argument("--skip-heap", action="store_true")
    ap.add_argument("--phases", action="store_true",
                    help="only the live-heap breakdown of provision() with the modules in a ROMFS image")
    a = ap.parse_args()
    _mp.need_tools()
    from hil.lossy import LossyRelay
    from hil.refserver import RefServer

    res = {}
    with tempfile.TemporaryDirectory() as d:
        lib, table, sizes = build_lib(d)
        table_mpy = sizes.pop("est_lite_mp/p256_table")
        total = sum(sizes.values())
        dev = sum(sizes[m] for m in COAPS_DEVICE)
        res.update(mpy_total_bytes=total, mpy_target_bytes=MPY_TARGET, coaps_device_mpy_bytes=dev,
                   mpy_core_bytes=sum(v for k, v in sizes.items() if k.startswith("est_lite/")),
                   mpy_port_bytes=sum(v for k, v in sizes.items() if k.startswith("est_lite_mp/")),
                   p256_table_mpy_bytes=table_mpy, p256_table_file_bytes=table.stat().st_size, mpy_modules=sizes)
        print("mpy: core + port %d B (target %d), CoAPs device subset %d B" % (total, MPY_TARGET, dev), flush=True)

        srv = RefServer(os.path.join(d, "srv"), validity_days=30).start()
        try:
            cert, key = srv.factory.idevid("bench-device")
            files = {}
            for name, data in (("cert", cert), ("key", key), ("trust", srv.root_der)):
                files[name] = os.path.join(d, name + ".der")
                with open(files[name], "wb") as f:
                    f.write(data)

            def cfg(server, runs, name, ack_timeout=2.0, adaptive=True):
                p = os.path.join(d, name + ".json")
                store = os.path.join(d, "store-" + name + "-" + os.urandom(4).hex())
                with open(p, "w") as f:
                    json.dump(dict(files, server=server, runs=runs, store=store, table=str(table), deadline=600,
                                   ack_timeout=ack_timeout, adaptive=adaptive, rto_initial_ms=a.rto_initial_ms,
                                   rto_min_ms=a.rto_min_ms, rtt_keep_s=0 if a.no_rtt_share else 600,
                                   keep_session=a.keep_session), f)
                return p

            if a.phases:
                res["phases"] = phases(lib, d, cfg(srv.url("coaps"), 1, "phases"))
                a.skip_heap = a.skip_lossy = True
            if not a.skip_heap:
                heap_cfg = cfg(srv.url("coaps"), 1, "heap")

                class Fresh(list):  # a new store directory for every bisection step
                    def __iter__(self):
                        with open(heap_cfg) as f:
                            c = json.load(f)
                        c["store"] = os.path.join(d, "store-h-" + os.urandom(4).hex())
                        with open(heap_cfg, "w") as f:
                            json.dump(c, f)
                        return iter([heap_cfg])

                base, _ = min_heap(lib, "bench_empty", [])
                need, low = min_heap(lib, "bench_enroll", Fresh(), tries=a.heap_tries)
                res.update(min_heapsize_passing=need, empty_baseline_heapsize=base, heap_peak_bytes=need - base,
                           heap_tries=a.heap_tries, lowest_heapsize_passing=low,
                           heap_target_bytes=HEAP_TARGET, passes_32k=need <= 32 * 1024)
                print("heap: full CoAPs enrollment needs -X heapsize=%d (empty %d): peak %d B" % (need, base,
                                                                                                   need - base),
                      flush=True)
                rom = os.path.join(d, "lib.romfs")
                p = subprocess.run(["mpremote", "romfs", "-o", rom, "build", str(lib)], capture_output=True,
                                   text=True)
                if p.returncode == 0:
                    rbase, _ = min_heap(lib, "bench_empty", [], rom=rom)
                    rneed, rlow = min_heap(lib, "bench_enroll", Fresh(), rom=rom, tries=a.heap_tries)
                    res.update(romfs_min_heapsize=rneed, romfs_baseline_heapsize=rbase, romfs_lowest_heapsize=rlow,
                               romfs_heap_peak_bytes=rneed - rbase, romfs_image_bytes=os.path.getsize(rom))
                    print("heap (ROMFS image in place): %d B" % (rneed - rbase), flush=True)
                else:
                    res["romfs_error"] = (p.stderr or p.stdout).strip()[-300:]

            if not a.skip_lossy:
                for name, loss in (("lossless", 0.0), ("lossy", a.loss)):
                    relay = LossyRelay(("127.0.0.1", srv.coaps_port), loss=loss, seed=a.seed,
                                       delay=(a.delay_ms / 1000.0, a.delay_ms / 1000.0))
                    host, port = relay.start()
                    try:
                        p = run_module(lib, "bench_enroll", [cfg("coaps://%s:%d" % (host, port), a.runs, name,
                                                                 a.ack_timeout, not a.no_adaptive)], 1024 * 1024,
                                     timeout=3600)
                    finally:
                        relay.stop()
                    if p.returncode != 0 or "TIMES " not in p.stdout:
                        raise RuntimeError("%s enrollments failed: %s%s" % (name, p.stdout, p.stderr))
                    times = json.loads(p.stdout.split("TIMES ", 1)[1].splitlines()[0])
                    res[name + "_median_ms"] = statistics.median(times)
                    res[name + "_ms"] = times
                    res[name + "_relay"] = relay.stats
                    print("%s: median %.0f ms of %s" % (name, statistics.median(times), times), flush=True)
                res.update(loss_ratio=round(res["lossy_median_ms"] / res["lossless_median_ms"], 2),
                           loss_target_ratio=LOSS_TARGET, loss=a.loss, delay_ms=a.delay_ms,
                           ack_timeout_s=a.ack_timeout, runs=a.runs, adaptive=not a.no_adaptive,
                           rto_initial_ms=a.rto_initial_ms, rto_min_ms=a.rto_min_ms, seed=a.seed,
                           rtt_shared=not a.no_rtt_share, keep_session=a.keep_session)
        finally:
            srv.stop()
    print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    main()
