"""Scenarios: JSON files in hil/scenarios/ that run unchanged on a virtual
board and on a real one. A scenario names the transport, the steps the
board runs (hil/device/hil_runner.py), an optional lossy link, what the
host does meanwhile (approve a held request), and what must hold after:

    {"transport": "coaps", "label": "manual", "link": {"loss": 0.15, ...},
     "host": {"approve_after_s": 3},
     "steps": [{"do": "wipe"}, {"do": "provision"}, {"do": "check"}],
     "expect": {"issued": 1, "renewed": true, "approved": 1}}

    scn = load("enroll_coaps")
    res = run(scn, board, server)          # board: hil.boards.*, server: hil.refserver.RefServer
    res.ok, res.problems, res.creds        # creds: what the board's store holds, checked on the host

The host checks every run independently of the board's own report: it
reads the credential store back from the board's flash, loads it with the
CPython store code, and verifies with `cryptography` that the key belongs
to the certificate, that the certificate was issued by the server's CA and
is in its store, and that the CA certificates are the server's.
"""

import json
import os
import pathlib
import tempfile
import threading
import time

SCENARIO_DIR = pathlib.Path(__file__).resolve().parent / "scenarios"
STORE = "est"


def names():
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def _check_steps(scn):
    if not (isinstance(scn.get("steps"), list) and all(isinstance(st, dict) and "do" in st for st in scn["steps"])):
        raise ValueError('scenario %s: "steps" must be a list of {"do": ...} (see hil/scenarios/*.json)' % scn["name"])


def load(name):
    """A scenario by name (hil/scenarios/NAME.json) or path."""
    p = pathlib.Path(name)
    if not p.exists():
        p = SCENARIO_DIR / (name + ".json")
    if not p.is_file():
        raise ValueError("no scenario %r (known: %s)" % (name, ", ".join(names())))
    try:
        scn = json.loads(p.read_text())
    except (OSError, UnicodeError, ValueError) as e:
        raise ValueError("scenario %s: not a readable JSON file: %s" % (p, e)) from None
    if not isinstance(scn, dict):
        raise ValueError("scenario %s: not a JSON object" % p)
    scn.setdefault("name", p.stem)
    if scn.get("transport") not in ("coaps", "https"):
        raise ValueError("scenario %s: transport must be coaps or https" % scn["name"])
    if not scn.get("powercut"):
        _check_steps(scn)
    link = scn.get("link")
    if link:
        if scn["transport"] != "coaps":
            raise ValueError("scenario %s: a lossy link is a UDP relay: it needs transport coaps" % scn["name"])
        try:
            _link_relay(link, ("127.0.0.1", 1))  # checks the numbers now, not when the run gets there
        except ValueError as e:
            raise ValueError("scenario %s: %s" % (scn["name"], e)) from None
    return scn


def _link_relay(link, upstream, seed=None, listen=("127.0.0.1", 0)):
    from .lossy import LossyRelay

    try:
        return LossyRelay(upstream, loss=link.get("loss", 0), dup=link.get("dup", 0), reorder=link.get("reorder", 0),
                          delay=tuple(link.get("delay", (0, 0))), seed=seed, listen=listen)
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError("link %s: %s" % (json.dumps(link), e)) from None


# -- the board's store, seen from the host --


def read_store(board, store=STORE):
    """The credentials in the board's store (est_lite_cpython.credstore
    Creds, or None when empty), read back file by file from its flash.
    Raises StoreError when the store is broken."""
    from est_lite_cpython.credstore import CredStore

    with tempfile.TemporaryDirectory() as d:
        names = ["manifest", "manifest.tmp"]
        m = board.get(store + "/manifest")
        if m is not None:
            for line in m.decode("utf-8", "replace").splitlines():
                w = line.split()
                if len(w) == 3 and w[0] in ("key", "cert", "ca"):
                    names.append(w[1])
        for n in names:
            data = m if n == "manifest" else board.get(store + "/" + n)
            if data is not None:
                with open(os.path.join(d, n), "wb") as f:
                    f.write(data)
        return CredStore(d).load()


def verify_creds(creds, server):
    """Check a store's credentials against the server's CA with
    cryptography; returns a description (subject, issuer, validity,
    fingerprint, serial). Raises ValueError saying what is wrong."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if creds.key is None or creds.cert is None or not creds.ca:
        raise ValueError("incomplete store: key %s, certificate %s, %d CA certificates"
                         % (creds.key is not None, creds.cert is not None, len(creds.ca)))
    cert = x509.load_der_x509_certificate(creds.cert)
    key = serialization.load_der_private_key(creds.key, None)
    if key.public_key() != cert.public_key():
        raise ValueError("the stored key does not belong to the stored certificate")
    ca = server.ca
    try:
        cert.verify_directly_issued_by(ca.issuer)
    except (ValueError, TypeError, Exception) as e:  # InvalidSignature has no common base with ValueError
        raise ValueError("the stored certificate was not issued by the server's CA: %s" % e)
    if not ca.store.has_serial(cert.serial_number):
        raise ValueError("the stored certificate (serial %x) is not in the CA's store" % cert.serial_number)
    if server.root_der not in creds.ca:
        raise ValueError("the stored CA certificates do not include the server's root")
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "serial": "%x" % cert.serial_number, "sha256": hashlib.sha256(creds.cert).hexdigest(), "gen": creds.gen}


# -- running --


def provision_board(board, server, cn):
    """The factory step: the board's IDevID (certificate and key, DER) in
    its flash. Returns the config keys that name them."""
    cert, key = server.factory.idevid(cn)
    board.put("idevid.der", cert)
    board.put("idevid.key", key)
    return {"idevid": ["idevid.der", "idevid.key"]}


def device_config(scn, server, cn, url=None, steps=None, run_id=None):
    cfg = {"run": run_id or scn["name"], "server": url or server.url(scn["transport"], scn.get("label")),
           "pin": server.pin, "idevid": ["idevid.der", "idevid.key"], "store": STORE, "cn": cn,
           "timeout": scn.get("timeout", 20), "deadline": scn.get("deadline", 120),
           "steps": steps if steps is not None else scn["steps"]}
    return cfg


class ScenarioResult:
    def __init__(self, name, board, run, problems, creds, issued, elapsed, relay_stats=None):
        self.name = name
        self.board = board
        self.run = run
        self.problems = problems
        self.creds = creds
        self.issued = issued
        self.elapsed = elapsed
        self.relay_stats = relay_stats

    @property
    def ok(self):
        return not self.problems

    def summary(self):
        d = {"scenario": self.name, "board": self.board, "ok": self.ok, "problems": self.problems,
             "elapsed_s": round(self.elapsed, 2), "issued": self.issued,
             "steps": [{k: s.get(k) for k in ("do", "ok", "ms", "error", "msg") if s.get(k) is not None}
                       for s in self.run.steps]}
        if self.creds:
            d["credentials"] = self.creds
        if self.relay_stats:
            d["link"] = self.relay_stats
        return d


class _Approver:
    # approves the held request once it is pending and `after` seconds passed
    def __init__(self, server, label, after):
        self.server, self.label, self.after = server, label, after
        self.approved = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()

    def _run(self):
        t0 = time.monotonic()
        while not self._stop.wait(0.2):
            if time.monotonic() - t0 >= self.after and self.server.pending(self.label):
                self.approved += self.server.approve_pending(self.label)

    def stop(self):
        self._stop.set()
        self._t.join(5)


def run(scn, board, server, cn=None, timeout=900, seed=None):
    """Run scenario `scn` (a dict from load()) on `board` against `server`
    (a started RefServer; the board must hold the bundle). Returns a
    ScenarioResult; .problems lists everything that did not hold."""
    if isinstance(scn, str):
        scn = load(scn)
    if scn.get("powercut"):
        raise ValueError("scenario %s is a power-cut campaign: run it with hil.powercut" % scn["name"])
    _check_steps(scn)  # (a scenario given as a dict was not checked by load()), before the board is provisioned
    cn = cn or "hil-%s" % board.name
    t0 = time.monotonic()
    provision_board(board, server, cn)
    relay = None
    url = None
    link = scn.get("link")
    if link:
        if scn["transport"] != "coaps":
            raise ValueError("a lossy link is a UDP relay: it needs transport coaps")
        # on the server's address (--host): a real board reaches the relay
        # where it would reach the server, and ::1 works as 127.0.0.1 does
        relay = _link_relay(link, (server.host, server.coaps_port), seed=seed, listen=(server.host, 0))
        host, port = relay.start()
        url = "coaps://%s:%d%s" % ("[%s]" % host if ":" in host else host, port,
                                   "/" + scn["label"] if scn.get("label") else "")
    approver = None
    if scn.get("host", {}).get("approve_after_s") is not None:
        approver = _Approver(server, scn.get("label") or "", scn["host"]["approve_after_s"])
        approver.start()
    issued0 = server.issued_count()
    try:
        res = board.run(device_config(scn, server, cn, url), timeout=timeout)
    finally:
        if approver is not None:
            approver.stop()
        if relay is not None:
            relay.stop()
    problems = []
    if not res.ok:
        problems.append(res.failure())
    creds = None
    try:
        c = read_store(board)
        if c is None:
            problems.append("the board's store is empty after the run")
        else:
            creds = verify_creds(c, server)
    except Exception as e:  # noqa: BLE001 - every failure of the check is a finding
        problems.append("store check on the host: %s: %s" % (type(e).__name__, e))
    exp = scn.get("expect", {})
    issued = server.issued_count() - issued0
    if "issued" in exp and issued != exp["issued"]:
        problems.append("the CA issued %d certificates, expected %d" % (issued, exp["issued"]))
    steps = res.steps
    last_fp = None
    for s in steps:
        if s.get("cert"):
            last_fp = s["cert"]
        if s.get("do") == "renew" and exp.get("renewed"):
            if not s.get("renewed") or s.get("cert") == s.get("old"):
                problems.append("renew did not replace the certificate")
    if creds and last_fp and creds["sha256"] != last_fp:
        problems.append("the store's certificate is not the one the board reported")
    if approver is not None and approver.approved != exp.get("approved", 1):
        problems.append("%d requests were approved, expected %d" % (approver.approved, exp.get("approved", 1)))
    return ScenarioResult(scn["name"], board.name, res, problems, creds, issued, time.monotonic() - t0,
                          relay.stats if relay is not None else None)
