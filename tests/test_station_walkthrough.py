"""Walkthrough of two CPython users of the client Python API
(docs/client-runtime.md), against the reference server and the RA:

A. a gateway that keeps its certificate fresh unattended: pinned first
   contact, renewals in a loop, bad days (server down, manual approval,
   revoked certificate, a re-keyed CA, a process killed while saving),
   a CONNECT proxy and a CRL of the server's certificate;
B. a factory station provisioning 20 devices in parallel threads, each
   with its own IDevID and store, half with serverkeygen, with a few bad
   devices, directly and through `est-lite proxy` (HTTPS and CoAPs)."""

import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from helpers_client import CREDSTORE_KILLER, ConnectProxy, approve_pending, der, load_cert, point
from helpers_server import PASSWORD, USER, EstTestServer, issue_cert, key_pem, make_vendor_ca, pem

from est_lite.csr import CsrBuilder
from est_lite.errors import EstError, LocalProtocolError, SecurityError, ServerError, TransportError
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore, StoreError
from est_lite_cpython.crypto import P256Key
from est_lite_cpython.dtls import fingerprint


def pin_of(srv):
    return "sha256:" + fingerprint(der(srv.ca.root)).hex()


def files(store):
    return sorted(n for n in os.listdir(store.path))


# --- A. the gateway ---


def test_gateway_pinned_first_contact_then_renewals(est_server, tmp_path):
    srv = est_server
    url = "https://localhost:%d" % srv.port
    store = CredStore(str(tmp_path / "gw"))
    c = EstClient(url, pin=pin_of(srv), user=USER, password=PASSWORD)
    r = c.provision(store, cn="gw-1", dns=["gw-1.example"], deadline=60)
    c.close()
    assert r.gen == 1 and c.bootstrapped and files(store) == ["ca.1", "cert.1", "key.1", "manifest"]
    first = store.load()
    assert first.ca == [der(srv.ca.root)]
    prev = first
    for n in range(2, 5):
        # the documented loop body: a client with the pin only; the trust
        # anchors of a renewal are then the store's CA certificates
        c = EstClient(url, pin=pin_of(srv))
        assert c.renew_if_needed(store) is None  # a fresh 90-day certificate: not due
        r = c.renew_if_needed(store, threshold=10 ** 9)
        c.close()
        got = store.load()
        assert r.gen == got.gen == n and got.key != prev.key and got.cert != prev.cert  # key rotated
        cert = load_cert(got.cert)
        cert.verify_directly_issued_by(srv.ca.issuer)
        assert point(cert) == P256Key.load_der(got.key).public_key
        assert cert.subject.rfc4514_string() == "CN=gw-1"
        # the store layout of the docs: one generation, 0600 files in a 0700 directory
        assert files(store) == ["ca.%d" % n, "cert.%d" % n, "key.%d" % n, "manifest"]
        for f in files(store):
            assert stat.S_IMODE(os.stat(os.path.join(store.path, f)).st_mode) == 0o600, f
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
        prev = got


def test_gateway_old_pair_in_force_until_the_new_one_is_committed(est_server, tmp_path):
    srv = est_server
    store = CredStore(str(tmp_path / "gw"))
    EstClient("https://localhost:%d" % srv.port, pin=pin_of(srv), user=USER, password=PASSWORD).provision(
        store, cn="gw-2")
    old = store.load()
    seen = []

    class Watch(CredStore):
        def _rename(self, a, b):  # the commit: the old manifest still names the old pair just before it
            seen.append(CredStore(self.path)._load())
            return super()._rename(a, b)

    EstClient("https://localhost:%d" % srv.port, pin=pin_of(srv)).renew_if_needed(Watch(store.path),
                                                                                 threshold=10 ** 9)
    assert seen and (seen[0].key, seen[0].cert) == (old.key, old.cert)
    assert store.load().gen == 2


def test_gateway_bad_days(est_server, tmp_path):
    srv = est_server
    url = "https://localhost:%d" % srv.port
    store = CredStore(str(tmp_path / "gw"))

    class Approving(EstClient):
        def _sleep(self, s):  # the operator approves during the Retry-After wait
            approve_pending(srv)

    # a certificate renews on the label that issued it: the gateway enrolls on the
    # manual-approval label from the start
    Approving(url + "/manual", pin=pin_of(srv), user=USER, password=PASSWORD).provision(store, cn="gw-3")
    before = store.load()

    # server down: a TransportError within the deadline, the pair intact, the next attempt works
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    down = s.getsockname()[1]
    s.close()
    with pytest.raises(TransportError, match="cannot connect to localhost:%d.*deadline" % down):
        EstClient("https://localhost:%d" % down, pin=pin_of(srv), deadline=2).renew_if_needed(store,
                                                                                             threshold=10 ** 9)
    assert (store.load().gen, store.load().key) == (before.gen, before.key)
    assert Approving(url + "/manual", pin=pin_of(srv)).renew_if_needed(store, threshold=10 ** 9).gen == 2

    # manual approval: 202 past the deadline is "come back later" (0xA3); the same key
    # given back later collects the certificate (docs: "Retry-After and deadlines")
    key = P256Key.generate()
    with pytest.raises(TransportError, match="waiting for approval") as e:
        EstClient(url + "/manual", pin=pin_of(srv), deadline=2).renew_if_needed(store, threshold=10 ** 9,
                                                                                 key_backend=key)
    assert e.value.coap_code == 0xA3 and store.load().gen == 2
    assert approve_pending(srv) == 1
    r = EstClient(url + "/manual", pin=pin_of(srv)).renew_if_needed(store, threshold=10 ** 9, key_backend=key)
    assert r.gen == 3 and store.load().key == key.export_pkcs8()

    # revoked: a ServerError naming it, nothing replaced
    cur = store.load()
    srv.ca.revoke(load_cert(cur.cert).serial_number)
    with pytest.raises(ServerError, match="revoked") as e:
        EstClient(url + "/manual", pin=pin_of(srv), deadline=5).renew_if_needed(store, threshold=10 ** 9)
    assert e.value.http_status == 403
    after = store.load()
    assert (after.gen, after.key, after.cert) == (cur.gen, cur.key, cur.cert)


def test_gateway_after_the_ca_was_rekeyed(est_server_factory, tmp_path):
    # renewal never fetches /cacerts: its trust anchors are the store's CA
    # certificates, so a server whose CA has a new key is refused in the
    # handshake (nothing sent, nothing replaced); documented recovery: a
    # new first contact (pin of the new root) with provision() into the
    # same store, which commits a new generation with the new CA
    old, new = est_server_factory(), est_server_factory()
    store = CredStore(str(tmp_path / "gw"))
    EstClient("https://localhost:%d" % old.port, pin=pin_of(old), user=USER, password=PASSWORD).provision(
        store, cn="gw-4")
    before = store.load()
    url = "https://localhost:%d" % new.port  # "the same server", its CA re-keyed
    with pytest.raises(SecurityError, match="TLS handshake .* refused: server certificate"):
        EstClient(url, pin=pin_of(old), deadline=5).renew_if_needed(store, threshold=10 ** 9)
    assert (store.load().gen, store.load().cert) == (before.gen, before.cert)
    r = EstClient(url, pin=pin_of(new), user=USER, password=PASSWORD).provision(store, cn="gw-4")
    got = store.load()
    assert r.gen == got.gen == 2 and got.ca == [der(new.ca.root)]


_KILLER = r"""
import sys

path, k = sys.argv[1], int(sys.argv[2])
key, cert, ca = [open(p, "rb").read() for p in sys.argv[3:6]]
""" + CREDSTORE_KILLER + r"""
CredStore(path).save(key=key, cert=cert, ca=[ca])
"""


@pytest.mark.parametrize("fresh", [False, True])
def test_gateway_killed_while_saving(tmp_path, fresh):
    # SIGKILL at every file operation of a save (a write cut in half
    # included): the next start loads the old pair or the new one, never a
    # half-written one, and the next save works
    vendor = make_vendor_ca(str(tmp_path))
    pairs = []
    for cn in ("old", "new"):
        k, c = issue_cert(vendor["cert"], vendor["key"], cn)
        pairs.append((P256Key.load_der(_pkcs8(k)).export_pkcs8(), der(c)))
    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("key", pairs[1][0]), ("cert", pairs[1][1]), ("ca", der(vendor["cert"]))):
        (src / name).write_bytes(data)
    killed = 0
    for k in range(1, 30):
        path = str(tmp_path / ("s%d" % k))
        if not fresh:
            CredStore(path).save(key=pairs[0][0], cert=pairs[0][1], ca=[der(vendor["cert"])])
        p = subprocess.run([sys.executable, "-c", _KILLER, path, str(k), str(src / "key"), str(src / "cert"),
                            str(src / "ca")], capture_output=True, timeout=60)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, p.stderr.decode()
        killed += 1
        got = CredStore(path).load()
        if got is None:
            assert fresh
        else:
            assert (got.key, got.cert) in pairs
            assert got.ca == [der(vendor["cert"])]
        g = CredStore(path).save(key=pairs[1][0], cert=pairs[1][1], ca=[der(vendor["cert"])])
        again = CredStore(path).load()
        assert again.gen == g and (again.key, again.cert) == pairs[1]
    assert killed >= 6 and p.returncode == 0  # every operation of the save was cut once


def _pkcs8(k):
    from cryptography.hazmat.primitives import serialization

    return k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def test_gateway_renewal_through_a_connect_proxy_with_a_crl(est_server, tmp_path):
    from test_client_runtime_https import _crl

    srv = est_server
    store = CredStore(str(tmp_path / "gw"))
    proxy = ConnectProxy()
    try:
        via = "http://127.0.0.1:%d" % proxy.port
        url = "https://localhost:%d" % srv.port
        EstClient(url, pin=pin_of(srv), user=USER, password=PASSWORD, proxy=via).provision(store, cn="gw-5")
        r = EstClient(url, pin=pin_of(srv), proxy=via, crls=[_crl(srv, [12345])]).renew_if_needed(
            store, threshold=10 ** 9)
        assert r.gen == 2 and len(proxy.requests) >= 2
        leaf = x509.load_pem_x509_certificate(open(srv.ca.server_cert_file, "rb").read())
        n = len(proxy.requests)
        with pytest.raises(SecurityError, match="revoked"):
            EstClient(url, pin=pin_of(srv), proxy=via, crls=[_crl(srv, [leaf.serial_number])],
                      deadline=5).renew_if_needed(store, threshold=10 ** 9)
        assert len(proxy.requests) == n + 1 and store.load().gen == 2
    finally:
        proxy.close()


def test_store_that_cannot_be_written_is_refused_before_contacting_the_server(tmp_path):
    # before: the server was contacted first (here: a closed port, a
    # TransportError; with a server, a certificate issued, then lost with
    # its key when the save failed)
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (tmp_path / "afile").write_bytes(b"")
    vendor = make_vendor_ca(str(tmp_path))
    c = EstClient("https://127.0.0.1:%d" % port, trust=der(vendor["cert"]), deadline=None)
    with pytest.raises(StoreError, match="afile is not a directory"):
        c.provision(CredStore(str(tmp_path / "afile" / "dev")), cn="x")
    with pytest.raises(StoreError, match="afile is not a directory"):
        c.renew_if_needed(CredStore(str(tmp_path / "afile")))
    assert (tmp_path / "afile").read_bytes() == b""


def test_one_client_is_used_by_one_thread_at_a_time(est_server):
    # before: a client shared by threads interleaved its session (raw
    # AttributeErrors, "TLS handshake failed: wrong version number" as a SecurityError)
    srv = est_server
    inside, release = threading.Event(), threading.Event()

    class Waits(EstClient):
        def _sleep(self, s):  # the 202 wait of thread A: the client is in use
            inside.set()
            release.wait(30)
            raise TransportError("stopped by the test")

    c = Waits("https://localhost:%d/manual" % srv.port, trust=der(srv.ca.root), user=USER, password=PASSWORD)
    out = []

    def a():
        try:
            c.enroll(CsrBuilder().subject(cn="t-a").sign(P256Key.generate()))
        except EstError as e:
            out.append(e)

    t = threading.Thread(target=a)
    t.start()
    try:
        assert inside.wait(30)
        for call in (c.cacerts, c.csrattrs, c.close):
            with pytest.raises(LocalProtocolError, match="in use by another thread.*one EstClient per thread"):
                call()
    finally:
        release.set()
        t.join(30)
    assert [str(e) for e in out] == ["stopped by the test"]
    assert c.cacerts() == [der(srv.ca.root)]  # free again, from this thread
    c.close()


# --- B. the factory station ---


def _station(srv, tmp_path, url, root, ids, *, bad_store=None, dup=None):
    """Provision len(ids) devices in parallel threads, one EstClient each:
    even ones with serverkeygen (the docs' snippet), odd ones with
    provision(). Returns {i: ("ok", gen) | (error type, message)}."""
    from est_lite_mp import certs as X

    from est_lite_cpython.client import verify_issued_by

    res = {}

    def work(i):
        k, c = ids[i]
        cn = "dev-%d" % (dup[0] if dup and i == dup[1] else i)
        path = os.path.join(str(tmp_path), "afile" if i == bad_store else "", "dev%d" % i)
        cl = EstClient(url, trust=[root], cert=pem(c), key=key_pem(k), deadline=30)
        try:
            store = CredStore(path)
            if i % 2 == 0:
                store.check_writable()
                ev = cl.serverkeygen(CsrBuilder().subject(cn=cn).sign(P256Key.generate()))
                key = P256Key.load_der(ev.key_der)
                X.check_issued(ev.cert, ev.chain, cl.trust, key.public_key, None, verify_issued_by)
                res[i] = ("ok", store.save(key=key.export_pkcs8(), cert=ev.cert, ca=cl.trust))
            else:
                res[i] = ("ok", cl.provision(store, cn=cn).gen)
        except EstError as e:
            res[i] = (type(e).__name__, str(e))
        except Exception as e:  # noqa: BLE001 - what the test must not see
            res[i] = ("RAW", repr(e))
        finally:
            cl.close()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(ids))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return res


def _idevids(srv, tmp_path, n, unknown):
    (tmp_path / "other").mkdir()
    other = make_vendor_ca(str(tmp_path / "other"), "Unknown vendor")
    out = []
    for i in range(n):
        v = other if i == unknown else srv.vendor
        out.append(issue_cert(v["cert"], v["key"], "idevid-%d" % i))
    return out


def _proxy_command(up, d):
    # `est-lite proxy --config proxy.toml` as docs/proxy.md runs it; -> (process, https port, coaps port)
    import time

    from helpers_proxy import write_proxy_dir

    write_proxy_dir(up, d)
    pf, cpf = d / "port", d / "cport"
    proc = subprocess.Popen([sys.executable, "-m", "est_lite_cpython.cli", "proxy", "--config", str(d / "proxy.toml"),
                             "--port-file", str(pf), "--coaps-port-file", str(cpf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while not (pf.exists() and pf.read_text().strip() and cpf.exists() and cpf.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            proc.wait(15)
            raise AssertionError("est-lite proxy did not start: %s" % proc.stderr.read().decode())
        time.sleep(0.05)
    return proc, int(pf.read_text()), int(cpf.read_text())


@pytest.mark.parametrize("via", ["server-https", "server-coaps", "ra-https", "ra-coaps", "ra-command-coaps"])
def test_factory_station_twenty_devices_in_threads(tmp_path, via):
    from helpers_coaps import EstBothServer
    from helpers_proxy import ProxyHarness

    (tmp_path / "ca").mkdir()
    srv = EstBothServer(tmp_path / "ca")
    px = proc = None
    try:
        if via == "server-https":
            url = "https://localhost:%d" % srv.port
        elif via == "server-coaps":
            url = "coaps://localhost:%d" % srv.coaps_port
        elif via == "ra-command-coaps":
            proc, _, cport = _proxy_command(srv, tmp_path / "px")
            url = "coaps://localhost:%d" % cport
        else:
            px = ProxyHarness(tmp_path / "px", srv, srv.url.replace("127.0.0.1", "localhost"),
                              upstream_root_pem=srv.root_pem, vendor_pem=os.path.join(srv.tmp, "vendor.pem"))
            url = ("https://localhost:%d" % px.port) if via == "ra-https" else ("coaps://localhost:%d"
                                                                               % px.coaps_port)
        (tmp_path / "afile").write_bytes(b"")
        n0 = srv.ca.store.count_certificates()
        ids = _idevids(srv, tmp_path, 20, unknown=3)
        res = _station(srv, tmp_path, url, der(srv.ca.root), ids, bad_store=5, dup=(7, 9))
        assert sorted(res) == list(range(20))
        assert sorted(i for i in res if res[i][0] != "ok") == [3, 5], res
        # the unknown IDevID: refused by the server (HTTPS: 403) or in the DTLS handshake
        kind, msg = res[3]
        if via.endswith("coaps"):
            assert kind == "SecurityError" and "does not accept our client certificate" in msg, msg
        else:
            assert kind == "ServerError" and "403" in msg and "CN=idevid-3" in msg, msg
        assert res[5][0] == "StoreError" and "afile is not a directory" in res[5][1]
        assert not os.path.exists(str(tmp_path / "dev3"))  # nothing on disk for the failed ones
        # 18 certificates, none for the device whose store could not be written; the
        # duplicate subject (dev-7 twice) is the server's policy: the reference server issues it
        assert srv.ca.store.count_certificates() - n0 == 18
        for i in res:
            if res[i][0] == "ok":
                got = CredStore(str(tmp_path / ("dev%d" % i))).load()
                cert = load_cert(got.cert)
                cert.verify_directly_issued_by(srv.ca.issuer)
                assert point(cert) == P256Key.load_der(got.key).public_key and got.ca == [der(srv.ca.root)]
                assert cert.subject.rfc4514_string() == "CN=dev-%d" % (7 if i == 9 else i)
    finally:
        if px is not None:
            px.stop()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        srv.stop()


def test_retry_after_a_wait_in_which_the_server_closed_the_idle_connection(tmp_path):
    # a Retry-After wait shorter than EstClient.idle_close keeps the TLS
    # connection; servers close idle ones (the reference server after
    # io_timeout_s, 10 s by default): before, the retry was written into
    # the closed connection and the renewal ended in "RemoteProtocolError:
    # reenroll: connection closed before a response" instead of retrying
    import select

    from helpers_server import BASE_CONFIG

    srv = EstTestServer(tmp_path, config_text=BASE_CONFIG.replace("io_timeout_s = 5", "io_timeout_s = 0.3"))
    try:
        url = "https://localhost:%d" % srv.port
        store = CredStore(str(tmp_path / "gw"))
        class Approving(EstClient):
            def _sleep(self, s):
                approve_pending(srv)

        # enrolled on the label it renews on (a certificate renews on the label that issued it)
        Approving(url + "/manual", trust=der(srv.ca.root), user=USER, password=PASSWORD).provision(store, cn="gw-6")
        kept = []

        class Waits(EstClient):
            def _sleep(self, s):  # instead of the 7 s: approve, then wait until the server closed
                assert approve_pending(srv) == 1
                kept.append(self._t is not None)
                if self._t is not None:
                    select.select([self._t.sock], [], [], 20)

        r = Waits(url + "/manual", trust=der(srv.ca.root)).renew_if_needed(store, threshold=10 ** 9)
        assert kept == [True] and r.gen == store.load().gen == 2
    finally:
        srv.stop()


def _doc_block(marker):
    import re

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "client-runtime.md")).read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def test_the_documented_gateway_and_serverkeygen_snippets_run(est_server, tmp_path, capsys):
    srv = est_server
    url = "https://localhost:%d" % srv.port
    gw = _doc_block('CredStore("/var/lib/est/gw-1")')
    gw = (gw.replace("https://est.example:8443", url).replace('"sha256:6e35..."', repr(pin_of(srv)))
          .replace('user="gw-1", password="s3cret"', "user=%r, password=%r" % (USER, PASSWORD))
          .replace("/var/lib/est/gw-1", str(tmp_path / "gw")).replace("time.sleep(6 * 3600)", "break"))
    exec(compile(gw, "gateway snippet", "exec"), {})  # first contact and one (not due) round
    assert CredStore(str(tmp_path / "gw")).load().gen == 1 and "failed" not in capsys.readouterr().out
    k, c = issue_cert(srv.vendor["cert"], srv.vendor["key"], "idevid-doc")
    skg = _doc_block('CredStore("/srv/station/dev-7")').replace("https://est.example:8443", url).replace(
        "/srv/station/dev-7", str(tmp_path / "dev-7"))
    exec(compile(skg, "serverkeygen snippet", "exec"), {"root_der": der(srv.ca.root), "idevid_pem": pem(c),
                                                         "idevid_key_pem": key_pem(k)})
    got = CredStore(str(tmp_path / "dev-7")).load()
    assert load_cert(got.cert).subject.rfc4514_string() == "CN=dev-7" and got.ca == [der(srv.ca.root)]
    assert point(load_cert(got.cert)) == P256Key.load_der(got.key).public_key


def test_the_documented_proxy_library_snippet_runs(tmp_path):
    import re

    from helpers_proxy import write_proxy_dir

    (tmp_path / "up").mkdir()
    up = EstTestServer(tmp_path / "up")
    ns = {}
    try:
        cfg = write_proxy_dir(up, tmp_path / "px")
        text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "proxy.md")).read()
        (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "proxy_from_config" in b]
        exec(compile(code.replace('"proxy.toml"', repr(str(cfg))), "proxy.md snippet", "exec"), ns)
        k, c = issue_cert(up.vendor["cert"], up.vendor["key"], "idevid-px")
        for url in ("https://localhost:%d" % ns["ports"][0], "coaps://localhost:%d" % ns["ports"][1]):
            cl = EstClient(url, trust=der(up.ca.root), cert=pem(c), key=key_pem(k))
            ev = cl.enroll(CsrBuilder().subject(cn="via-ra").sign(P256Key.generate()))
            cl.close()
            assert up.ca.store.has_serial(load_cert(ev.cert).serial_number)
    finally:
        for name in ("coaps", "https"):
            if name in ns:
                ns[name].stop()
        up.stop()
