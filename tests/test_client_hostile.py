"""Hostile review of the CPython EST client and the `est-lite` client
commands: a hostile user (malformed options and files), a hostile HTTPS
server (a stdlib `ssl` server on 127.0.0.1 answering what a broken or
malicious peer would), the wrong server identity (nothing secret sent), and
a corrupt credential store.

Every failure must be an EstError from the library and, from the CLI, a
non-zero exit with exactly one line on stderr (no traceback); the credential
store keeps its previous generation (loadable, byte for byte) and no stray
files; keys are 0600."""

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as S
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from est_lite.errors import EstError, LimitError, RemoteProtocolError, SecurityError, TransportError
from est_lite_cpython.cli import main
from est_lite_cpython.client import EstClient
from est_lite_cpython.credstore import CredStore, StoreError
from est_lite_cpython.crypto import P256Key

# --- PKI -------------------------------------------------------------------


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(name):
    k = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(_now() - datetime.timedelta(days=1))
         .not_valid_after(_now() + datetime.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(k, hashes.SHA256()))
    return c, k


def issue(ca, cakey, pub, cn, dns=(), ips=(), days=30, before=-1):
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.subject).public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(_now() + datetime.timedelta(days=before))
         .not_valid_after(_now() + datetime.timedelta(days=days)))
    names = [x509.DNSName(s) for s in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(cakey, hashes.SHA256())


def der(c):
    return c.public_bytes(S.Encoding.DER)


def pem(c):
    return c.public_bytes(S.Encoding.PEM)


def pk8(k):
    return k.private_bytes(S.Encoding.DER, S.PrivateFormat.PKCS8, S.NoEncryption())


def p7(certs):
    return pkcs7.serialize_certificates(certs, S.Encoding.DER)


def b64(d):
    return base64.encodebytes(d)


class Pki:
    def __init__(self, tmp):
        self.dir = tmp
        self.ca, self.cak = make_ca("Hostile Test CA")
        self.other, self.otherk = make_ca("Other CA")
        self.skey = ec.generate_private_key(ec.SECP256R1())
        self.scert = issue(self.ca, self.cak, self.skey.public_key(), "localhost", dns=["localhost"],
                           ips=["127.0.0.1"])
        self.ca_pem = os.path.join(tmp, "ca.pem")
        with open(self.ca_pem, "wb") as f:
            f.write(pem(self.ca))
        # the device's current credentials (a store's previous generation)
        self.dkey = P256Key.generate()
        self.dcert = issue(self.ca, self.cak, self.dkey.key.public_key(), "dev-old")

    def seeded_store(self, path):
        s = CredStore(str(path))
        s.save(key=self.dkey.export_pkcs8(), cert=der(self.dcert), ca=[der(self.ca)])
        return s


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(str(tmp_path_factory.mktemp("pki")))


def snapshot(path):
    """{name: (mode, bytes)} of every file in a directory."""
    out = {}
    for n in sorted(os.listdir(path)):
        p = os.path.join(path, n)
        with open(p, "rb") as f:
            out[n] = (os.stat(p).st_mode & 0o777, f.read())
    return out


def assert_unchanged(store, before, pki):
    assert snapshot(store.path) == before  # same files, same bytes, no temp files left
    c = store.load()
    assert c.cert == der(pki.dcert) and c.key == pki.dkey.export_pkcs8()


# --- a hostile HTTPS server ------------------------------------------------


def resp(status, body=b"", ctype="application/pkcs7-mime", extra=(), reason="X"):
    h = ["HTTP/1.1 %d %s" % (status, reason)]
    if ctype:
        h.append("Content-Type: " + ctype)
    h.append("Content-Length: %d" % len(body))
    h += list(extra)
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


class Hostile:
    """A TLS server (stdlib ssl) on 127.0.0.1 presenting `cert` (+ chain).
    For each request, handler(method, path, headers, body, conn) returns the
    bytes to send (and the connection stays open) or None (it wrote what it
    wanted; the connection is closed). Every request is recorded in
    `requests` as (method, path, headers dict, lower-case names). Daemon
    threads, 5 s socket timeouts: it stops by itself."""

    def __init__(self, handler, cert, key, chain=()):
        import tempfile

        d = tempfile.mkdtemp()
        cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        with open(cp, "wb") as f:
            f.write(b"".join(pem(c) for c in (cert,) + tuple(chain)))
        with open(kp, "wb") as f:
            f.write(key.private_bytes(S.Encoding.PEM, S.PrivateFormat.PKCS8, S.NoEncryption()))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cp, kp)
        self.handler = handler
        self.requests = []
        self.tcp = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = "https://localhost:%d" % self.port
        self.stopped = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            self.tcp += 1
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def _conn(self, s):
        s.settimeout(5)
        try:
            t = self.ctx.wrap_socket(s, server_side=True)
        except (OSError, ssl.SSLError):
            s.close()
            return
        try:
            buf = b""
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buf:
                    d = t.recv(4096)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                h = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    h[k.strip().lower()] = v.strip()
                n = int(h.get("content-length", "0"))
                while len(buf) < n:
                    d = t.recv(4096)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:n], buf[n:]
                self.requests.append((method, path, h))
                out = self.handler(method, path, h, body, t)
                if out is None:
                    return
                t.sendall(out)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                t.close()
            except OSError:
                pass

    def authorizations(self):
        return [h["authorization"] for _, _, h in self.requests if "authorization" in h]

    def close(self):
        self.stopped.set()
        self.t.join(2)
        self.sock.close()


@pytest.fixture
def hostile(pki):
    made = []

    def make(enroll=None, cacerts=None, cert=None, key=None, chain=(), auth_free=False):
        """A server whose /cacerts answers the test CA (or `cacerts`),
        /csrattrs 204, 401 Basic to a request without Authorization, and
        `enroll(method, path, headers, body, conn)` to the rest."""

        def handler(method, path, h, body, t):
            if path.endswith("/cacerts"):
                return (cacerts or (lambda *a: resp(200, b64(p7([pki.ca])))))(method, path, h, body, t)
            if path.endswith("/csrattrs"):
                return resp(204, ctype=None)
            if "authorization" not in h and not auth_free:
                return resp(401, extra=['WWW-Authenticate: Basic realm="est"'], ctype=None)
            return enroll(method, path, h, body, t)

        s = Hostile(handler, cert or pki.scert, key or pki.skey, chain)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


def csr_pub(body):
    return x509.load_der_x509_csr(base64.b64decode(body)).public_key()


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err):
    assert rc not in (0, None), err
    assert err.startswith("est-lite") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not [c for c in err[:-1] if c < " " and c != "\t" or c == "\x7f"], repr(err)


# --- 2. a hostile HTTPS server: enroll answers -------------------------------

OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def trickle_body(length):
    """A handler: a valid head announcing `length` bytes, then one byte
    every 50 ms (each read restarts a per-read timeout), 10 s at most."""

    def handler(m, p, h, b, t):
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: %d\r\n\r\n" % length)
        for _ in range(200):  # the test server stops by itself
            try:
                t.sendall(b"A")
            except OSError:
                return None
            time.sleep(0.05)
        return None

    return handler


_trickle_body = trickle_body(60000)


def _trickle_head(m, p, h, b, t):
    t.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(40):
        try:
            t.sendall(b"X-Slow: 1\r\n")
        except OSError:
            return None
        time.sleep(0.25)
    return None


def _chunked_forever(m, p, h, b, t):
    t.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4\r\nAAAA\r\n")
    time.sleep(8)
    return None


def _huge(m, p, h, b, t):
    t.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n\r\n")
    try:
        for _ in range(64):
            t.sendall(b"QUFB" * 16384)
    except OSError:
        pass
    return None


def _short_then_close(m, p, h, b, t):
    t.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: 5000\r\n\r\nMIIB")
    return None


_EMPTY_P7 = bytes.fromhex("302306092a864886f70d010702a0163014020101310030" "0b06092a864886f70d0107013100")

ENROLL_ANSWERS = {
    # name: (handler(pki) -> handler, error class, words in the message)
    "malformed base64": (lambda pki: lambda *a: resp(200, b"!!!! not base64 ****"), RemoteProtocolError, "base64"),
    "base64 of garbage DER": (lambda pki: lambda *a: resp(200, b64(b"\x30\x03\x02\x01\x05garbage")),
                              RemoteProtocolError, "PKCS#7"),
    "PKCS#7 without a certificate": (lambda pki: lambda *a: resp(200, b64(_EMPTY_P7)), RemoteProtocolError,
                                     "no certificates"),
    "certificate for another key": (lambda pki: lambda *a: resp(200, b64(p7([issue(
        pki.ca, pki.cak, OTHER_KEY.public_key(), "dev")]))), RemoteProtocolError, "public key"),
    "certificate from another CA": (lambda pki: lambda m, p, h, b, t: resp(200, b64(p7([issue(
        pki.other, pki.otherk, csr_pub(b), "dev")]))), SecurityError, "does not chain"),
    "wrong Content-Type": (lambda pki: lambda m, p, h, b, t: resp(200, b64(p7([issue(
        pki.ca, pki.cak, csr_pub(b), "dev")])), ctype="text/html"), RemoteProtocolError, "Content-Type"),
    "200 with no body": (lambda pki: lambda *a: resp(200, b""), RemoteProtocolError, ""),
    "Content-Length larger than the body, then close": (lambda pki: _short_then_close, RemoteProtocolError,
                                                        "closed"),
    "chunked body that never ends": (lambda pki: _chunked_forever, TransportError, "deadline"),
    "endless trickle of body bytes": (lambda pki: _trickle_body, TransportError, "deadline"),
    "endless trickle of header lines": (lambda pki: _trickle_head, TransportError, "deadline"),
    "huge body": (lambda pki: _huge, LimitError, "max_body"),
    "202 Retry-After huge": (lambda pki: lambda *a: resp(202, extra=["Retry-After: 99999999999999999999"],
                                                         ctype=None), TransportError, "deadline"),
    "202 Retry-After negative": (lambda pki: lambda *a: resp(202, extra=["Retry-After: -5"], ctype=None),
                                 TransportError, "deadline"),
    "202 Retry-After as a date": (lambda pki: lambda *a: resp(202, extra=[
        "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT"], ctype=None), TransportError, "deadline"),
    "401 loop": (lambda pki: lambda *a: resp(401, extra=['WWW-Authenticate: Basic realm="x"'], ctype=None),
                 EstError, "401"),
    "redirect": (lambda pki: lambda *a: resp(302, extra=["Location: https://evil.example/"], ctype=None),
                 EstError, "302"),
}


@pytest.mark.parametrize("name", sorted(ENROLL_ANSWERS))
def test_hostile_enroll_answer_library(pki, hostile, tmp_path, name):
    make, cls, words = ENROLL_ANSWERS[name]
    srv = hostile(make(pki))
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    c = EstClient(srv.url, trust=[der(pki.ca)], user="dev", password="pw", timeout=1, deadline=1.5)
    with pytest.raises(cls) as e:
        c.provision(store, cn="dev-new")
    c.close()
    assert words in str(e.value)
    assert_unchanged(store, before, pki)


def test_401_without_credentials_or_challenges_says_so(pki, hostile):
    # the message read "requires authentication ()": `%` bound tighter than
    # the `or "HTTP 401"` meant for an empty challenge list
    srv = hostile(lambda *a: resp(401, ctype=None), auth_free=True)  # answers simpleenroll
    c = EstClient(srv.url, trust=[der(pki.ca)], timeout=2, deadline=3)
    from est_lite.csr import CsrBuilder

    with pytest.raises(SecurityError, match=r"requires authentication \(HTTP 401\): give user/password"):
        c.enroll(CsrBuilder().subject(cn="x").sign(P256Key.generate()))
    c.close()


def test_retry_after_zero_does_not_hammer_the_server(pki, hostile):
    # "202, Retry-After: 0" forever: each retry waits (at least retry_min_s),
    # so a 2.5 s deadline allows a handful of requests (it was thousands)
    n = []
    srv = hostile(lambda *a: n.append(1) or resp(202, extra=["Retry-After: 0"], ctype=None))
    c = EstClient(srv.url, trust=[der(pki.ca)], user="dev", password="pw", timeout=2, deadline=2.5)
    from est_lite.csr import CsrBuilder

    with pytest.raises(TransportError, match="deadline"):
        c.enroll(CsrBuilder().subject(cn="x").sign(P256Key.generate()))
    assert 1 <= len(n) <= 6, len(n)


def test_the_good_server_works(pki, hostile, tmp_path):
    # the control for the tests above: the same server answering properly
    srv = hostile(lambda m, p, h, b, t: resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "dev-new")]))))
    store = pki.seeded_store(tmp_path / "st")
    c = EstClient(srv.url, trust=[der(pki.ca)], user="dev", password="pw", timeout=2, deadline=5)
    r = c.provision(store, cn="dev-new")
    assert r.gen == 2 and store.load().cert == r.cert
    assert srv.authorizations() == ["Basic " + base64.b64encode(b"dev:pw").decode()]
    assert os.stat(os.path.join(store.path, "key.2")).st_mode & 0o777 == 0o600


# --- 4. the credential store ---------------------------------------------------


def _truncate_key(d):
    p = [n for n in os.listdir(d) if n.startswith("key.")][0]
    with open(os.path.join(d, p), "r+b") as f:
        f.truncate(10)


def _garbage_cert(d):
    p = [n for n in os.listdir(d) if n.startswith("cert.")][0]
    with open(os.path.join(d, p), "wb") as f:
        f.write(b"garbage")


def _missing_key(d):
    os.remove(os.path.join(d, [n for n in os.listdir(d) if n.startswith("key.")][0]))


def _dir_for_key(d):
    p = os.path.join(d, [n for n in os.listdir(d) if n.startswith("key.")][0])
    os.remove(p)
    os.mkdir(p)


def _dir_for_manifest(d):
    os.remove(os.path.join(d, "manifest"))
    os.mkdir(os.path.join(d, "manifest"))


def _store_is_a_file(d):
    import shutil

    shutil.rmtree(d)
    with open(d, "w") as f:
        f.write("x")


def _mismatched_pair(d):
    # a pair committed with valid hashes but a key that is not the certificate's
    from est_lite_mp.credstore import CredStore as PortableStore

    c = PortableStore(d).load()
    PortableStore(d).save(key=P256Key.generate().export_pkcs8(), cert=c.cert, ca=c.ca)


CORRUPTIONS = {"truncated key file": (_truncate_key, "hash"), "garbage certificate": (_garbage_cert, "hash"),
               "missing key file": (_missing_key, "missing"), "directory instead of the key": (_dir_for_key,
                                                                                               "directory"),
               "directory instead of the manifest": (_dir_for_manifest, "directory"),
               "store path is a file": (_store_is_a_file, "not a directory"),
               "key of another certificate": (_mismatched_pair, "does not belong")}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_store_is_reported_never_loaded(pki, tmp_path, capsys, name):
    spoil, words = CORRUPTIONS[name]
    d = str(tmp_path / "st")
    pki.seeded_store(d)
    spoil(d)
    with pytest.raises(StoreError, match=words):
        CredStore(d).load()
    # nothing is sent on the strength of a corrupt store (the URL has no server)
    c = EstClient("https://127.0.0.1:9", trust=[der(pki.ca)], timeout=1, deadline=1)
    with pytest.raises(StoreError):
        c.renew_if_needed(CredStore(d), threshold=float("inf"))
    rc, out, err = cli(capsys, "reenroll", "--server", "https://127.0.0.1:9", "--trust", pki.ca_pem, "--out", d,
                       "--deadline", "1")
    one_line_error(rc, err)
    assert "credential store" in err or "is not a directory" in err


def test_a_failed_save_keeps_the_previous_generation(pki, tmp_path):
    s = pki.seeded_store(tmp_path / "st")
    os.mkdir(os.path.join(s.path, "manifest.tmp"))  # the commit cannot happen
    before = {n: v for n, v in snapshot_files(s.path).items()}
    k = P256Key.generate()
    with pytest.raises(StoreError, match="cannot write"):
        s.save(key=k.export_pkcs8(), cert=der(issue(pki.ca, pki.cak, k.key.public_key(), "n")), ca=[der(pki.ca)])
    assert snapshot_files(s.path) == before  # the parts it had written are removed
    assert s.load().cert == der(pki.dcert)


def snapshot_files(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in os.listdir(path)
            if os.path.isfile(os.path.join(path, n))}


def test_save_refuses_a_key_that_is_not_the_certificates(pki, tmp_path):
    s = pki.seeded_store(tmp_path / "st")
    before = snapshot(s.path)
    with pytest.raises(EstError, match="does not belong"):
        s.save(key=P256Key.generate().export_pkcs8(), cert=der(pki.dcert), ca=[der(pki.ca)])
    assert_unchanged(s, before, pki)


def test_store_writes_through_no_planted_file(pki, tmp_path):
    # a symlink left at manifest.tmp (the one name a save reuses) is replaced, not written through
    d = tmp_path / "st"
    s = pki.seeded_store(d)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(str(victim), str(d / "manifest.tmp"))
    assert s.save(key=pki.dkey.export_pkcs8(), cert=der(pki.dcert), ca=[der(pki.ca)]) == 2
    assert victim.read_bytes() == b"keep"
    assert s.load().gen == 2 and sorted(os.listdir(str(d))) == ["ca.2", "cert.2", "key.2", "manifest"]
    assert os.stat(str(d / "key.2")).st_mode & 0o777 == 0o600


# --- library arguments -----------------------------------------------------------


@pytest.mark.parametrize("server,words", [
    ("https://user@localhost:8443", "user info"),
    ("https://localhost:8443?x=1", "query"),
    ("https://localhost:8443#top", "fragment"),
    ("https://::1:8443", "brackets"),
    ("coaps://fe80::1", "brackets"),
    (" https://localhost", "space"),
    ("https://local host", "space"),
    ("https://localhost\n:8443", "control"),
    ("https://" + "a" * 64 + ".example", "not a valid host name"),
    ("coaps://a..b", "not a valid host name"),
])
def test_server_uri_rejected(pki, server, words):
    with pytest.raises(EstError, match=words):
        EstClient(server, trust=[der(pki.ca)])


@pytest.mark.parametrize("name", ["a" * 64, "a..b", "\u00fc" * 70, "x\x00y", "x y"])
def test_server_name_that_no_tls_layer_takes_is_refused(pki, name):
    # these raised UnicodeError (idna) or TypeError (NUL) from inside connect()
    with pytest.raises(EstError, match="host name"):
        EstClient("https://localhost:9", trust=[der(pki.ca)], server_name=name)


@pytest.mark.parametrize("kw", [dict(timeout=0), dict(timeout=-1), dict(timeout=float("nan")),
                                dict(timeout=1e30), dict(deadline=-1), dict(deadline=float("inf")),
                                dict(timeout="5")])
def test_timeouts_must_be_sane(pki, kw):
    with pytest.raises(EstError, match="seconds"):
        EstClient("https://localhost:8443", trust=[der(pki.ca)], **kw)


# --- 1. a hostile user: CLI options and files ---------------------------------------


@pytest.fixture(scope="module")
def files(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    f = {}

    def put(name, data):
        p = d / name
        p.write_bytes(data)
        f[name] = str(p)

    put("empty", b"")
    put("garbage", b"hello, this is not a certificate\n" * 3)
    put("badpem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    put("dev.pem", pem(pki.dcert))
    put("dev.der", der(pki.dcert))
    put("dev.key", pki.dkey.key.private_bytes(S.Encoding.PEM, S.PrivateFormat.PKCS8, S.NoEncryption()))
    put("dev.key.der", pki.dkey.export_pkcs8())
    put("dev.sec1", pki.dkey.key.private_bytes(S.Encoding.PEM, S.PrivateFormat.TraditionalOpenSSL,
                                                S.NoEncryption()))
    put("enc.key", pki.dkey.key.private_bytes(S.Encoding.PEM, S.PrivateFormat.PKCS8,
                                               S.BestAvailableEncryption(b"pw")))
    rk = rsa.generate_private_key(65537, 2048)
    put("rsa.key", pk8(rk))
    put("rsa.pem", pem(issue(pki.ca, pki.cak, rk.public_key(), "rsa-dev")))
    pk = ec.generate_private_key(ec.SECP384R1())
    put("p384.key", pk8(pk))
    put("p384.pem", pem(issue(pki.ca, pki.cak, pk.public_key(), "p384-dev")))
    put("two.pem", pem(pki.dcert) + pem(pki.ca))
    put("afile", b"x")
    os.mkdir(str(d / "adir"))
    f["adir"] = str(d / "adir")
    f["missing"] = str(d / "missing")
    return f


USER_INPUT = [
    # (argv after the command, words of the one-line error); {url} is a live server, {port} its port
    ("cacerts --server localhost:{port} --trust {ca}", "coaps:// or https://"),
    ("cacerts --server http://localhost:{port} --trust {ca}", "coaps:// or https://"),
    ("cacerts --server coaps:// --trust {ca}", "no host"),
    ("cacerts --server https://localhost:0 --trust {ca}", "bad port"),
    ("cacerts --server https://localhost:65536 --trust {ca}", "bad port"),
    ("cacerts --server https://localhost:{port}/a/b --trust {ca}", "label"),
    ("cacerts --server https://localhost:{port}/simpleenroll --trust {ca}", "operation name"),
    ("cacerts --server {url} --label a/b --trust {ca}", "one path segment"),
    ("cacerts --server {url} --label CACerts --trust {ca}", "operation name"),
    ("cacerts --server https://::1:{port} --trust {ca}", "brackets"),
    ("cacerts --server https://[::1:{port} --trust {ca}", "port"),
    ("cacerts --server https://user@localhost:{port} --trust {ca}", "give it with --user"),
    ("cacerts --server {url} --pin md5:" + "ab" * 32, "pin must be"),
    ("cacerts --server {url} --pin sha256:" + "a" * 63, "pin must be"),
    ("cacerts --server {url} --pin sha256:" + "zz" * 32, "pin must be"),
    ("cacerts --server {url} --pin sha256:" + "ab" * 32 + " --trust {ca}", "not both"),
    ("cacerts --server {url}", "give --trust CA.pem"),
    ("cacerts --server {url} --trust {missing}", "cannot read --trust"),
    ("cacerts --server {url} --trust {empty}", "is empty"),
    ("cacerts --server {url} --trust {garbage}", "not a PEM or DER X.509 certificate"),
    ("cacerts --server {url} --trust {badpem}", "not a PEM or DER X.509 certificate"),
    ("cacerts --server {url} --trust {dev.key}", "not a PEM or DER X.509 certificate"),
    ("cacerts --server {url} --trust {adir}", "Is a directory"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem}", "--cert needs --key"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --key {dev.key}", "--key needs --cert"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {garbage} --key {dev.key}",
     "not a PEM or DER X.509 certificate"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {two.pem} --key {dev.key}", "2 certificates"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem} --key {empty}", "is empty"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem} --key {garbage}",
     "not a PEM or DER private key"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem} --key {enc.key}", "encrypted"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem} --key {rsa.key}",
     "not the private key"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.pem} --key {p384.key}",
     "not the private key"),
    ("enroll --server {url} --trust {ca} --cn x --out {out} --cert {dev.der} --key {missing}", "cannot read --key"),
    ("reenroll --server {url} --trust {ca} --out {out} --cert {rsa.pem} --key {rsa.key} --keep-key", "P-256"),
    ("reenroll --server {url} --trust {ca} --out {out} --cert {p384.pem} --key {p384.key} --keep-key", "P-256"),
    ("reenroll --server {url} --trust {ca} --out {out} --cert {dev.pem}", "--cert needs --key"),
    ("enroll --server {url} --trust {ca} --cn x --out {afile}", "not a directory"),
    ("enroll --server {url} --trust {ca} --cn x --out {afile}/sub", "cannot be created"),
    ("serverkeygen --server {url} --trust {ca} --cn x --out {afile}", "not a directory"),
    ("serverkeygen --server {url} --trust {ca} --cn x", "needs --out"),
    ("enroll --server {url} --trust {ca} --out {out} --cn {sp}", "--cn is empty"),
    ("enroll --server {url} --trust {ca} --out {out} --cn " + "x" * 300, "cn"),
    ("enroll --server {url} --trust {ca} --out {out} --cn x --c USA", "2 letters"),
    ("enroll --server {url} --trust {ca} --out {out} --cn x --dns {sp}", "--dns is empty"),
    ("enroll --server {url} --trust {ca} --out {out} --cn x --ip 999.1.1.1", "IP address"),
    ("enroll --server {url} --trust {ca} --out {out} --csr {garbage}", "PKCS#10"),
    ("cacerts --server {url} --trust {ca} --timeout 0", "timeout"),
    ("cacerts --server {url} --trust {ca} --deadline -1", "deadline"),
    ("cacerts --server {url} --trust {ca} --timeout 1e30", "timeout"),
    ("cacerts --server {url} --trust {ca} --timeout soon", "invalid float"),
    ("cacerts --server {url} --trust {ca} --user alice --password pw{nl}X-Injected:1", "control characters"),
    ("cacerts --server {url} --trust {ca} --crl {garbage}", "not a PEM or DER certificate revocation list"),
    ("cacerts --server {url} --trust {ca} --crl {empty}", "is empty"),
    ("cacerts --server {url} --trust {ca} --server-name " + "a" * 64, "not a valid host name"),
    ("cacerts --server {url} --trust {ca} --server-name a..b", "not a valid host name"),
    ("cacerts --server https://" + "a" * 64 + ".example --trust {ca}", "not a valid host name"),
    ("enroll --server {url} --trust {ca} --out {out} --cn x --password pw", "--password needs --user"),
    ("enroll --server {url} --trust {ca} --cn x --csr {garbage}", "do not apply"),
    ("cacerts --trust {ca}", "--server"),
    ("enroll --server {url} --trust {ca} --no-such-option", "unrecognized"),
    ("coaps-only --server {url}", "invalid choice"),
]


@pytest.mark.parametrize("line,words", USER_INPUT)
@pytest.mark.parametrize("out_exists", [True, False])
def test_bad_user_input(pki, files, hostile, tmp_path, capsys, line, words, out_exists):
    srv = hostile(lambda *a: resp(500, b"should not be asked"))
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
    fmt = dict(files, url=srv.url, port=srv.port, ca=pki.ca_pem, out=str(out), sp=" ", nl="\r\n")
    argv = []
    for tok in line.split(" "):
        for k in sorted(fmt, key=len, reverse=True):
            tok = tok.replace("{%s}" % k, str(fmt[k]))
        argv.append(tok)
    with pytest.raises(SystemExit) if words in ("invalid float", "--server", "unrecognized", "invalid choice") \
            else _nothing() as ex:
        rc, o, err = cli(capsys, *argv)
    if ex is not None and hasattr(ex, "value"):
        rc = ex.value.code
        o, err = capsys.readouterr()
    one_line_error(rc, err)
    assert words in err, err
    assert srv.tcp == 0  # refused before any network traffic
    assert (os.listdir(str(out)) == []) if out_exists else not out.exists()  # nothing written in --out


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_der_and_pem_inputs_are_equivalent(pki, files, hostile, tmp_path, capsys):
    # the control of the file cases above: DER or PEM, PKCS#8 or SEC1, all accepted
    srv = hostile(lambda m, p, h, b, t: resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "dev-new")]))),
                  auth_free=True)
    for i, (c, k) in enumerate([("dev.pem", "dev.key"), ("dev.der", "dev.key.der"), ("dev.pem", "dev.sec1")]):
        d = tmp_path / ("o%d" % i)
        rc, out, err = cli(capsys, "reenroll", "--server", srv.url, "--trust", pki.ca_pem, "--cert", files[c],
                           "--key", files[k], "--out", d, "--deadline", "5")
        assert rc == 0, err
        assert CredStore(str(d)).load().gen == 1


# --- 2. a hostile HTTPS server, through the CLI -----------------------------------


@pytest.mark.parametrize("name", sorted(ENROLL_ANSWERS))
def test_hostile_enroll_answer_cli(pki, hostile, tmp_path, capsys, name):
    make, cls, words = ENROLL_ANSWERS[name]
    srv = hostile(make(pki))
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    rc, out, err = cli(capsys, "enroll", "--server", srv.url, "--trust", pki.ca_pem, "--user", "dev", "--password",
                       "pw", "--cn", "dev-new", "--out", store.path, "--replace", "--timeout", "1", "--deadline", "1.5")
    one_line_error(rc, err)
    assert words in err
    if name.startswith("202"):
        # a request the server holds: its key is kept next to the store for the next run, the store is unchanged
        assert "pending-key.pem (0600): run the same command again" in err
        for n in ("pending-key.pem", "pending.json"):
            assert os.stat(os.path.join(store.path, n)).st_mode & 0o777 == 0o600
            os.remove(os.path.join(store.path, n))
    assert_unchanged(store, before, pki)


def test_server_error_text_cannot_write_to_the_terminal(pki, hostile, tmp_path, capsys):
    srv = hostile(lambda *a: resp(500, b"bad\r\nthing \x1b[2J\x1b]0;owned\x07 \x00 happened", ctype="text/plain"))
    rc, out, err = cli(capsys, "enroll", "--server", srv.url, "--trust", pki.ca_pem, "--user", "dev", "--password",
                       "pw", "--cn", "x", "--out", tmp_path / "o", "--deadline", "3")
    one_line_error(rc, err)  # no ESC, BEL, NUL or line break from the server's text
    assert "500" in err and "happened" in err


def _skg_answer(pki, kind):
    def mp(parts, boundary="bnd", close=True):
        out = [b"--%s\r\nContent-Type: %s\r\nContent-Transfer-Encoding: base64\r\n\r\n%s" % (
            boundary.encode(), ct.encode(), b64(body)) for ct, body in parts]
        if close:
            out.append(b"--%s--\r\n" % boundary.encode())
        return b"".join(out)

    def handler(m, p, h, b, t):
        k = ec.generate_private_key(ec.SECP256R1())
        c = issue(pki.ca, pki.cak, k.public_key(), "skg")
        ct = "multipart/mixed; boundary=bnd"
        key, certs = ("application/pkcs8", pk8(k)), ("application/pkcs7-mime; smime-type=certs-only", p7([c]))
        if kind == "good":
            return resp(200, mp([key, certs]), ctype=ct)
        if kind == "missing certs part":
            return resp(200, mp([key]), ctype=ct)
        if kind == "missing key part":
            return resp(200, mp([certs]), ctype=ct)
        if kind == "key not matching the certificate":
            return resp(200, mp([("application/pkcs8", pk8(ec.generate_private_key(ec.SECP256R1()))), certs]),
                        ctype=ct)
        if kind in ("RSA key", "P-384 key"):
            k2 = rsa.generate_private_key(65537, 2048) if kind == "RSA key" else ec.generate_private_key(
                ec.SECP384R1())
            return resp(200, mp([("application/pkcs8", pk8(k2)), ("application/pkcs7-mime", p7([issue(
                pki.ca, pki.cak, k2.public_key(), "skg")]))]), ctype=ct)
        if kind == "garbage key":
            return resp(200, mp([("application/pkcs8", b"\x30\x03\x02\x01\x00"), certs]), ctype=ct)
        if kind == "boundary not in the body":
            return resp(200, mp([key, certs]), ctype="multipart/mixed; boundary=other")
        if kind == "no boundary parameter":
            return resp(200, mp([key, certs]), ctype="multipart/mixed")
        if kind == "boundary too long":
            return resp(200, mp([key, certs], boundary="x" * 80), ctype="multipart/mixed; boundary=" + "x" * 80)
        if kind == "no closing boundary":
            return resp(200, mp([key, certs], close=False), ctype=ct)
        if kind == "encrypted (CMS) key":
            return resp(200, mp([("application/pkcs7-mime; smime-type=server-generated-key", b"\x30\x00"), certs]),
                        ctype=ct)
        if kind == "certificate from another CA":
            return resp(200, mp([key, ("application/pkcs7-mime", p7([issue(pki.other, pki.otherk, k.public_key(),
                                                                            "skg")]))]), ctype=ct)
    return handler


SKG = {"missing certs part": "need key and certs", "missing key part": "need key and certs",
       "key not matching the certificate": "not for the key", "RSA key": "P-256", "P-384 key": "P-256",
       "garbage key": "P-256", "boundary not in the body": "boundary", "no boundary parameter": "boundary",
       "boundary too long": "boundary", "no closing boundary": "closing boundary",
       "encrypted (CMS) key": "encrypted", "certificate from another CA": "does not chain"}


@pytest.mark.parametrize("kind", sorted(SKG))
def test_hostile_serverkeygen_answer(pki, hostile, tmp_path, capsys, kind):
    srv = hostile(_skg_answer(pki, kind))
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    rc, out, err = cli(capsys, "serverkeygen", "--server", srv.url, "--trust", pki.ca_pem, "--user", "dev",
                       "--password", "pw", "--cn", "skg", "--out", store.path, "--replace", "--deadline", "3")
    one_line_error(rc, err)
    assert SKG[kind] in err
    assert "PRIVATE KEY" not in out + err
    assert_unchanged(store, before, pki)


# --- 3. the wrong server identity: nothing secret is sent ---------------------------


def _impostor(pki, kind):
    k = ec.generate_private_key(ec.SECP256R1())
    if kind == "certificate for another name":
        return issue(pki.ca, pki.cak, k.public_key(), "elsewhere", dns=["elsewhere.example"]), k
    if kind == "expired certificate":
        return issue(pki.ca, pki.cak, k.public_key(), "localhost", dns=["localhost"], days=-1, before=-30), k
    if kind == "not yet valid certificate":
        return issue(pki.ca, pki.cak, k.public_key(), "localhost", dns=["localhost"], days=60, before=30), k
    ss, sk = make_ca("localhost")  # self-signed, not in the trust anchors
    if kind == "self-signed certificate":
        return ss, sk
    return issue(pki.other, pki.otherk, k.public_key(), "localhost", dns=["localhost"]), k


IMPOSTORS = ["certificate for another name", "expired certificate", "not yet valid certificate",
             "self-signed certificate", "certificate from another CA"]


@pytest.mark.parametrize("kind", IMPOSTORS)
def test_wrong_server_identity_gets_no_credentials(pki, hostile, tmp_path, capsys, kind):
    cert, key = _impostor(pki, kind)
    srv = hostile(lambda m, p, h, b, t: resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "x")]))),
                  cert=cert, key=key)
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    c = EstClient(srv.url, trust=[der(pki.ca)], user="dev", password="pw", timeout=2, deadline=2)
    with pytest.raises(SecurityError):
        c.provision(store, cn="x")
    c = EstClient(srv.url, trust=[der(pki.ca)], cert=der(pki.dcert), key=pki.dkey.export_pkcs8(), timeout=2,
                  deadline=2)
    with pytest.raises(SecurityError):
        c.renew_if_needed(store, threshold=float("inf"))
    rc, out, err = cli(capsys, "enroll", "--server", srv.url, "--trust", pki.ca_pem, "--user", "dev", "--password",
                       "pw", "--cn", "x", "--out", store.path, "--replace", "--deadline", "2")
    one_line_error(rc, err)
    assert srv.tcp >= 3 and srv.requests == [] and srv.authorizations() == []  # refused in the handshake
    assert_unchanged(store, before, pki)


# --- 4. file modes after every write path ------------------------------------------


def _modes(d):
    return {n: os.stat(os.path.join(d, n)).st_mode & 0o777 for n in os.listdir(d)}


def test_keys_are_0600_after_every_write_path(pki, hostile, tmp_path, capsys, files):
    issue_for = lambda m, p, h, b, t: resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "dev")])))  # noqa
    srv = hostile(issue_for, auth_free=True)
    d = tmp_path / "o"
    d.mkdir()
    (d / "key.pem.tmp").write_bytes(b"planted")  # a leftover with loose bits must not become key.pem
    os.chmod(str(d / "key.pem.tmp"), 0o644)
    old = os.umask(0o022)
    try:
        base = ["--server", srv.url, "--trust", pki.ca_pem, "--out", d, "--deadline", "5"]
        for argv in (["enroll", "--cn", "dev"], ["reenroll"], ["reenroll", "--keep-key"],
                     ["reenroll", "--cert", files["dev.pem"], "--key", files["dev.key"]]):
            rc, out, err = cli(capsys, *(argv + base))
            assert rc == 0, err
            assert "PRIVATE KEY" not in out
            m = _modes(str(d))
            keys = [n for n in m if n.startswith("key")]
            assert keys and all(m[n] == 0o600 for n in keys), m
            assert not [n for n in m if n.endswith(".tmp")], m
        # renewal through the library
        c = EstClient(srv.url, trust=[der(pki.ca)], deadline=5)
        assert c.renew_if_needed(CredStore(str(d)), threshold=float("inf")) is not None
        m = _modes(str(d))
        assert all(m[n] == 0o600 for n in m if n.startswith("key")), m
        # serverkeygen
        srv2 = hostile(_skg_answer(pki, "good"), auth_free=True)
        rc, out, err = cli(capsys, "serverkeygen", "--server", srv2.url, "--trust", pki.ca_pem, "--cn", "skg",
                           "--out", d, "--replace", "--deadline", "5")
        assert rc == 0 and "PRIVATE KEY" not in out, err
        m = _modes(str(d))
        assert all(m[n] == 0o600 for n in m if n.startswith("key")), m
    finally:
        os.umask(old)


def test_reenroll_from_files_leaves_the_store_alone_when_it_fails(pki, hostile, tmp_path, capsys, files):
    # it used to commit --cert/--key to the store first, then ask the server
    srv = hostile(lambda *a: resp(500, b"no"), auth_free=True)
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    k = P256Key.generate()
    cp, kp = tmp_path / "other.pem", tmp_path / "other.key"
    cp.write_bytes(pem(issue(pki.ca, pki.cak, k.key.public_key(), "other")))
    kp.write_bytes(k.export_pkcs8())
    rc, out, err = cli(capsys, "reenroll", "--server", srv.url, "--trust", pki.ca_pem, "--cert", cp, "--key", kp,
                       "--out", store.path, "--deadline", "3")
    one_line_error(rc, err)
    assert "500" in err
    assert_unchanged(store, before, pki)


# --- a hostile CoAPs server (DTLS, pyOpenSSL server of the project) ---------------------


@pytest.fixture(scope="module")
def dtls_pki():
    from helpers_dtls import Pki as DtlsPki

    return DtlsPki()


@pytest.mark.parametrize("mode", ["empty ACK, then silence", "garbage datagrams"])
def test_coaps_server_cannot_hold_the_client_past_its_deadline(dtls_pki, tmp_path, capsys, mode):
    # an empty ACK makes the core wait up to 93 s for the separate response;
    # answering garbage made the retransmission timers grow past an hour
    from helpers_dtls import ServerThread

    got = []

    def handler(peer, data):
        got.append(data)
        peer.send(b"\x60\x00" + bytes(data[2:4]) if mode.startswith("empty") else b"\xff" * 40)

    st = ServerThread(dtls_pki, handler=handler)
    try:
        c = EstClient("coaps://127.0.0.1:%d" % st.port, trust=[dtls_pki.ca.root.cert], cert=dtls_pki.client.cert,
                      key=dtls_pki.client.key, timeout=2, deadline=2)
        with pytest.raises(TransportError, match="before the deadline"):
            c.cacerts()
        c.close()
        assert got  # the request did arrive: the client gave up at its deadline, not for lack of a server
    finally:
        st.stop()


def test_a_trickling_proxy_stops_at_the_deadline(pki):
    # an HTTP CONNECT proxy that answers one header byte every 50 ms
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    lst.settimeout(5)
    seen = []

    def run():
        try:
            s, _ = lst.accept()
        except OSError:
            return
        seen.append(s.recv(4096))
        try:
            s.sendall(b"HTTP/1.1 200 Connection established\r\n")
            for _ in range(400):  # 20 s at most: stops by itself
                s.sendall(b"X")
                time.sleep(0.05)
        except OSError:
            pass
        finally:
            s.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        c = EstClient("https://localhost:9", trust=[der(pki.ca)], proxy="http://127.0.0.1:%d" % lst.getsockname()[1],
                      timeout=2, deadline=2)
        with pytest.raises(TransportError, match="before the deadline"):
            c.cacerts()
        assert seen and seen[0].startswith(b"CONNECT localhost:9 ")
    finally:
        lst.close()


# --- hostile /cacerts and /csrattrs answers ----------------------------------------------

GET_ANSWERS = {
    "malformed base64": (lambda *a: resp(200, b"!!!! not base64 ****"), "base64"),
    "base64 of garbage DER": (lambda *a: resp(200, b64(b"\x30\x03\x02\x01\x05garbage")), ""),
    "PKCS#7 without a certificate": (lambda *a: resp(200, b64(_EMPTY_P7)), "no certificates"),
    "wrong Content-Type": (lambda *a: resp(200, b64(_EMPTY_P7), ctype="text/html"), "Content-Type"),
    "200 with no body": (lambda *a: resp(200, b""), ""),
    "huge body": (_huge, "max_body"),
    "endless trickle of body bytes": (_trickle_body, "deadline"),
    "500 with a long text": (lambda *a: resp(500, b"x" * 3000 + b"\n" * 50, ctype="text/plain"), "500"),
}


@pytest.mark.parametrize("how", ["--trust", "--pin"])
@pytest.mark.parametrize("name", sorted(GET_ANSWERS))
def test_hostile_cacerts_answer(pki, hostile, tmp_path, capsys, name, how):
    answer, words = GET_ANSWERS[name]
    srv = hostile(None, cacerts=answer)
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    from est_lite_cpython.dtls import fingerprint

    trust = [how, pki.ca_pem if how == "--trust" else "sha256:" + fingerprint(pki.ca).hex()]
    rc, out, err = cli(capsys, "cacerts", "--server", srv.url, *trust, "--out", store.path, "--timeout", "1",
                       "--deadline", "1.5")
    one_line_error(rc, err)
    assert words in err
    assert_unchanged(store, before, pki)


@pytest.mark.parametrize("name", sorted(GET_ANSWERS))
def test_hostile_csrattrs_answer_during_provision(pki, hostile, tmp_path, name):
    answer, words = GET_ANSWERS[name]
    if name == "PKCS#7 without a certificate":
        words = "unexpected content format"  # a PKCS#7 where CSR attributes belong
    issued = []

    def handler(m, p, h, b, t):
        if p.endswith("/csrattrs"):
            return answer(m, p, h, b, t)
        issued.append(p)
        return resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "x")])))

    srv = hostile(handler, auth_free=True)
    srv.handler = lambda m, p, h, b, t: (resp(200, b64(p7([pki.ca]))) if p.endswith("/cacerts") else
                                         handler(m, p, h, b, t))
    store = pki.seeded_store(tmp_path / "st")
    before = snapshot(store.path)
    c = EstClient(srv.url, trust=[der(pki.ca)], timeout=1, deadline=1.5)
    with pytest.raises(EstError) as e:
        c.provision(store, cn="x")
    c.close()
    assert words in str(e.value) and not issued  # nothing enrolled on the strength of a bad answer
    assert_unchanged(store, before, pki)


def test_a_pem_copy_that_cannot_be_written_says_the_store_is_committed(pki, hostile, tmp_path, capsys):
    srv = hostile(lambda m, p, h, b, t: resp(200, b64(p7([issue(pki.ca, pki.cak, csr_pub(b), "dev")]))),
                  auth_free=True)
    d = tmp_path / "o"
    d.mkdir()
    (d / "cert.pem.tmp").mkdir()  # in the way of the PEM copy
    rc, out, err = cli(capsys, "enroll", "--server", srv.url, "--trust", pki.ca_pem, "--cn", "dev", "--out", d,
                       "--deadline", "5")
    one_line_error(rc, err)
    assert "committed" in err and CredStore(str(d)).load().gen == 1


@pytest.mark.parametrize("kw,words", [
    (dict(trust="\u00e9"), "trust"),
    (dict(trust=[b""]), "certificate"),
    (dict(cert=b"garbage", key=b"garbage"), "certificate"),
    (dict(cert="cert", key="key"), "certificate"),
    (dict(user=5, password="x"), "user must be a str"),
    (dict(user="u", password=5), "password must be a str"),
    (dict(proxy=5), "proxy"),
    (dict(proxy="ftp://p:1"), "http://"),
    (dict(tls_version="1.4"), "tls_version"),
    (dict(mtu=0), "mtu"),
    (dict(chain=[b"garbage"]), "certificate"),
])
def test_bad_library_arguments_are_refused_at_construction(pki, kw, words):
    # several were only noticed inside connect() (TypeError, UnicodeEncodeError) or never with no server
    kw.setdefault("trust", [der(pki.ca)])
    with pytest.raises(EstError, match=words):
        EstClient("https://localhost:9", **kw)


def test_a_client_key_of_another_certificate_is_refused_at_construction(pki):
    with pytest.raises(EstError, match="does not match"):
        EstClient("coaps://localhost:9", trust=[der(pki.ca)], cert=der(pki.dcert),
                  key=P256Key.generate().export_pkcs8())


@pytest.mark.parametrize("line,words", [("gen x", "unknown line 'gen x'"),
                                        ("key ../outside {h}", "unknown line 'key ../outside"),
                                        ("key /etc/hostname {h}", "unknown line 'key /etc/hostname")])
def test_a_crafted_manifest_with_a_valid_hash_is_refused(tmp_path, line, words):
    # the manifest's closing hash catches accidents, not a crafted file: its names and numbers are checked too
    import hashlib

    d = tmp_path / "st"
    d.mkdir()
    (tmp_path / "outside").write_bytes(b"k")
    body = "est-lite-store 1\n%s\n" % line.format(h=hashlib.sha256(b"k").hexdigest())
    (d / "manifest").write_text(body + "end " + hashlib.sha256(body.encode()).hexdigest() + "\n")
    with pytest.raises(StoreError, match=words):
        CredStore(str(d)).load()


def test_a_trickled_tls_handshake_stops_at_the_deadline(pki, hostile):
    # a relay passing the server's handshake bytes one every 20 ms: each read
    # is quick, the whole handshake took 14 s against a 2 s deadline
    srv = hostile(None)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(5)

    def relay():
        try:
            c, _ = lst.accept()
        except OSError:
            return
        u = socket.create_connection(("127.0.0.1", srv.port), timeout=5)

        def up():
            try:
                while True:
                    d = c.recv(4096)
                    if not d:
                        return
                    u.sendall(d)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        try:
            for _ in range(100):  # at most 100 chunks, 20 s: stops by itself
                d = u.recv(4096)
                if not d:
                    break
                for i in range(len(d)):
                    c.sendall(d[i:i + 1])
                    time.sleep(0.02)
        except OSError:
            pass
        finally:
            c.close()
            u.close()

    threading.Thread(target=relay, daemon=True).start()
    try:
        c = EstClient("https://localhost:%d" % lst.getsockname()[1], trust=[der(pki.ca)], user="dev", password="pw",
                      timeout=2, deadline=2)
        with pytest.raises(TransportError, match="did not finish"):
            c.cacerts()
        assert srv.requests == []
    finally:
        lst.close()


def test_concurrent_saves_do_not_interleave(pki, tmp_path):
    # four writers, 15 saves each: without the directory lock most saves
    # failed ('did not read back as written') as they picked the same generation
    pairs = []
    for i in range(4):
        k = P256Key.generate()
        pairs.append((k.export_pkcs8(), der(issue(pki.ca, pki.cak, k.key.public_key(), "d%d" % i))))
    d = str(tmp_path / "st")
    errors = []

    def writer(i):
        s = CredStore(d)
        for _ in range(15):
            try:
                s.save(key=pairs[i][0], cert=pairs[i][1], ca=[der(pki.ca)])
                s.load()
            except EstError as e:
                errors.append(str(e))

    ts = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert errors == []
    c = CredStore(d).load()
    assert c.gen == 60 and (c.key, c.cert) in pairs
    assert sorted(os.listdir(d)) == ["ca.60", "cert.60", "key.60", "manifest"]


@pytest.mark.parametrize("path", ["", "/", "//", None])
def test_a_store_path_that_would_be_the_root_directory_is_refused(path):
    with pytest.raises(EstError, match="credential store path"):
        CredStore(path)
