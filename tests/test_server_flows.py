"""Every EST flow and auth mode of the reference HTTPS server against real
clients: curl, the openssl command line, and stdlib ssl."""

import base64
import datetime
import os
import shutil
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers_server import (
    PASSWORD,
    USER,
    issue_cert,
    make_csr,
    parse_multipart,
    write_identity,
)

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")
need_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")
need_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


def curl(srv, path, *args, data=None, tmp=None):
    """Run curl; returns (status, headers text, body bytes)."""
    out = os.path.join(srv.tmp, "curl.out")
    hdr = os.path.join(srv.tmp, "curl.hdr")
    cmd = [CURL, "-sS", "--cacert", srv.root_pem, "-o", out, "-D", hdr, "-w", "%{http_code}"]
    if data is not None:
        p = os.path.join(srv.tmp, "curl.body")
        with open(p, "wb") as f:
            f.write(data)
        cmd += ["--data-binary", "@" + p, "-H", "Content-Type: application/pkcs10"]
    cmd += list(args) + ["https://localhost:%d%s" % (srv.port, path)]
    r = subprocess.run(cmd, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with open(out, "rb") as f:
        body = f.read()
    with open(hdr) as f:
        headers = f.read()
    return int(r.stdout[-3:]), headers, body


def p7_certs(body):
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))


def openssl_csr(srv, name, subj="/CN=dev-openssl", keyspec=("ec", "-pkeyopt", "ec_paramgen_curve:P-256")):
    key = os.path.join(srv.tmp, name + ".key")
    out = os.path.join(srv.tmp, name + ".csr")
    subprocess.run([OPENSSL, "req", "-new", "-newkey", keyspec[0], *keyspec[1:], "-nodes", "-keyout", key,
                    "-subj", subj, "-outform", "DER", "-out", out], check=True, capture_output=True, timeout=30)
    with open(out, "rb") as f:
        return key, f.read()


def check_issued(srv, cert, *, cn, days, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)):
    """Chains to the CA (openssl verify) and carries the profile's fields."""
    issuer = srv.ca.issuer
    cert.verify_directly_issued_by(issuer)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - datetime.timedelta(days=days)) < datetime.timedelta(minutes=5)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == list(eku)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert srv.ca.store.has_serial(cert.serial_number)
    p = os.path.join(srv.tmp, "leaf.pem")
    with open(p, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    args = [OPENSSL, "verify", "-CAfile", srv.root_pem]
    if srv.ca.issuer is not srv.ca.root:
        ip = os.path.join(srv.tmp, "int.pem")
        with open(ip, "wb") as f:
            f.write(srv.ca.issuer.public_bytes(serialization.Encoding.PEM))
        args += ["-untrusted", ip]
    r = subprocess.run(args + [p], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------------------------ curl


@need_curl
def test_curl_cacerts(est_server):
    st, hdr, body = curl(est_server, "/.well-known/est/cacerts")
    assert st == 200
    assert "application/pkcs7-mime" in hdr and "Content-Length:" in hdr
    assert all(len(ln) <= 64 for ln in body.split(b"\r\n"))
    certs = p7_certs(body)
    assert certs == [est_server.ca.root]


@need_curl
@need_openssl
def test_curl_cacerts_and_enroll_with_intermediate(est_server_factory):
    srv = est_server_factory(intermediate=True)
    st, _, body = curl(srv, "/.well-known/est/cacerts")
    assert st == 200 and set(p7_certs(body)) == {srv.ca.issuer, srv.ca.root}
    _, csr = openssl_csr(srv, "i1")
    st, _, body = curl(srv, "/.well-known/est/simpleenroll", "-u", "%s:%s" % (USER, PASSWORD), data=base64.encodebytes(csr))
    assert st == 200
    check_issued(srv, p7_certs(body)[0], cn="dev-openssl", days=90)


@need_curl
@need_openssl
def test_curl_basic_enroll_openssl_csr(est_server):
    _, csr = openssl_csr(est_server, "b1")
    st, hdr, body = curl(est_server, "/.well-known/est/simpleenroll", "-u", "%s:%s" % (USER, PASSWORD),
                         data=base64.encodebytes(csr))
    assert st == 200, body
    assert "smime-type=certs-only" in hdr
    (cert,) = p7_certs(body)
    check_issued(est_server, cert, cn="dev-openssl", days=90)
    assert est_server.ca.store.list_certificates()[-1]["serial"] == "%x" % cert.serial_number


@need_curl
@need_openssl
@pytest.mark.parametrize("alg", ["SHA-256", "MD5"])
def test_curl_digest_enroll(est_server, alg, monkeypatch):
    # offer only one algorithm so curl must use it
    monkeypatch.setattr(est_server.server.digest, "ALGORITHMS", (alg,))
    _, csr = openssl_csr(est_server, "d1")
    st, hdr, body = curl(est_server, "/.well-known/est/simpleenroll", "--digest", "-u", "%s:%s" % (USER, PASSWORD),
                         data=base64.encodebytes(csr))
    assert st == 200, body
    check_issued(est_server, p7_certs(body)[0], cn="dev-openssl", days=90)
    st, _, body = curl(est_server, "/.well-known/est/simpleenroll", "--digest", "-u", "%s:wrong" % USER,
                       data=base64.encodebytes(csr))
    assert st == 401 and b"wrong user name or password" in body


@need_curl
def test_curl_wrong_password_and_no_auth(est_server):
    _, csr = make_csr()
    n = est_server.ca.store.count_certificates()
    st, hdr, body = curl(est_server, "/.well-known/est/simpleenroll", "-u", "%s:nope" % USER, data=base64.encodebytes(csr))
    assert st == 401 and b"wrong user name or password" in body
    assert 'WWW-Authenticate: Basic realm="est-lite"' in hdr
    assert "WWW-Authenticate: Digest" in hdr and "algorithm=SHA-256" in hdr and "algorithm=MD5" in hdr
    st, hdr, body = curl(est_server, "/.well-known/est/simpleenroll", data=base64.encodebytes(csr))
    assert st == 401 and b"authentication required" in body
    assert "text/plain" in hdr
    assert est_server.ca.store.count_certificates() == n


@need_curl
def test_curl_client_cert_enroll_and_reenroll(est_server):
    srv = est_server
    # get an operational certificate with a password first
    key, csr = make_csr("dev-cc", sans=["dev-cc.example.com"])
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD))
    assert r.status == 200
    (cert,) = r.certs()
    cp, kp = write_identity(srv.tmp, "op", key, cert)
    # enroll another key authenticated by that certificate
    _, csr2 = make_csr("dev-cc-2")
    st, _, body = curl(srv, "/.well-known/est/simpleenroll", "--cert", cp, "--key", kp, data=base64.encodebytes(csr2))
    assert st == 200, body
    # re-enroll (rekey) with the same subject and SAN, TLS 1.2 and 1.3
    for v in ("--tlsv1.2", "--tlsv1.3"):
        _, csr3 = make_csr("dev-cc", sans=["dev-cc.example.com"])
        extra = ["--tls-max", "1.2"] if v == "--tlsv1.2" else []
        st, _, body = curl(srv, "/.well-known/est/simplereenroll", v, *extra, "--cert", cp, "--key", kp,
                           data=base64.encodebytes(csr3))
        assert st == 200, body
        (new,) = p7_certs(body)
        assert new.subject == cert.subject and new.serial_number != cert.serial_number
        assert list(new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
            x509.DNSName("dev-cc.example.com")]
    # changed subject is refused, nothing issued
    n = srv.ca.store.count_certificates()
    _, csr4 = make_csr("someone-else", sans=["dev-cc.example.com"])
    st, _, body = curl(srv, "/.well-known/est/simplereenroll", "--cert", cp, "--key", kp, data=base64.encodebytes(csr4))
    assert st == 400 and b"must keep the subject" in body
    # re-enroll without a client certificate: password is not enough
    st, _, body = curl(srv, "/.well-known/est/simplereenroll", "-u", "%s:%s" % (USER, PASSWORD),
                       data=base64.encodebytes(csr3))
    assert st == 403 and b"client certificate" in body
    assert srv.ca.store.count_certificates() == n


@need_curl
def test_curl_idevid_enroll(est_server):
    srv = est_server
    k, c = issue_cert(srv.vendor["cert"], srv.vendor["key"], "idevid-0001")
    cp, kp = write_identity(srv.tmp, "idevid", k, c)
    _, csr = make_csr("ldevid-0001")
    st, _, body = curl(srv, "/.well-known/est/certonly/simpleenroll", "--cert", cp, "--key", kp,
                       data=base64.encodebytes(csr))
    assert st == 200, body
    # an IDevID cannot re-enroll (reenroll_trust is the operational CA only)
    st, _, body = curl(srv, "/.well-known/est/certonly/simplereenroll", "--cert", cp, "--key", kp,
                       data=base64.encodebytes(csr))
    assert st == 403 and b"not issued by a CA trusted" in body
    # a self-made certificate is not trusted; password-less label answers 403
    from helpers_server import make_vendor_ca

    other = make_vendor_ca(os.path.join(srv.tmp), name="Rogue CA")
    k2, c2 = issue_cert(other["cert"], other["key"], "rogue")
    cp2, kp2 = write_identity(srv.tmp, "rogue", k2, c2)
    st, _, body = curl(srv, "/.well-known/est/certonly/simpleenroll", "--cert", cp2, "--key", kp2,
                       data=base64.encodebytes(csr))
    assert st == 403 and b"not issued by a CA trusted" in body


@need_curl
def test_curl_serverkeygen(est_server):
    _, csr = make_csr("skg-1")
    st, hdr, body = curl(est_server, "/.well-known/est/serverkeygen", "-u", "%s:%s" % (USER, PASSWORD),
                         data=base64.encodebytes(csr))
    assert st == 200, body
    from helpers_server import Response

    r = Response(200, [("content-type", l.split(":", 1)[1].strip()) for l in hdr.splitlines()
                       if l.lower().startswith("content-type:")], body)
    assert r.header("content-type").startswith("multipart/mixed; boundary=")
    parts = parse_multipart(r)
    key = serialization.load_der_private_key(parts["application/pkcs8"], None)
    (cert,) = pkcs7.load_der_pkcs7_certificates(parts["application/pkcs7-mime; smime-type=certs-only"])
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    check_issued(est_server, cert, cn="skg-1", days=90)
    # disabled on the strict profile
    _, csr = make_csr("skg-2", org="ACME", sans=["a.example.com"])
    st, _, body = curl(est_server, "/.well-known/est/strict/serverkeygen", "-u", "%s:%s" % (USER, PASSWORD),
                       data=base64.encodebytes(csr))
    assert st == 403 and b"serverkeygen is disabled" in body


@need_curl
def test_curl_csrattrs(est_server):
    st, hdr, body = curl(est_server, "/.well-known/est/csrattrs")
    assert st == 200 and "application/csrattrs" in hdr
    d = base64.b64decode(b"".join(body.split()))
    assert d.startswith(b"\x30")
    assert bytes.fromhex("06082a8648ce3d040302") in d  # ecdsa-with-SHA256
    assert bytes.fromhex("06082a8648ce3d030107") in d  # inside Attribute ecPublicKey {P-256}
    st, _, body = curl(est_server, "/.well-known/est/strict/csrattrs")
    d = base64.b64decode(b"".join(body.split()))
    assert bytes.fromhex("06092a864886f70d010907") in d  # challengePassword
    assert bytes.fromhex("06092a864886f70d01090e") in d  # extensionRequest
    # certonly requires authentication for csrattrs too
    st, _, body = curl(est_server, "/.well-known/est/certonly/csrattrs")
    assert st == 403 and b"authentication required" in body


def test_csrattrs_empty_is_204(est_server_factory):
    srv = est_server_factory(extra_toml='\n[profiles.bare]\ncsrattrs = []\n')
    r = srv.request("GET", srv.path("csrattrs", "bare"))
    assert r.status == 204 and r.header("content-length") == "0"


def test_csrattrs_der_rfc7030_example():
    # RFC 7030 section 4.5.2 example: challengePassword, ecPublicKey {secp384r1},
    # extensionRequest {macAddress}, ecdsa-with-SHA384
    from est_lite_cpython.service import csrattrs_der

    want = base64.b64decode("MEEGCSqGSIb3DQEJBzASBgcqhkjOPQIBMQcGBSuBBAAiMBYGCSqGSIb3DQEJDjEJ"
                            "BgcrBgEBAQEWBggqhkjOPQQDAw==")
    got = csrattrs_der(["challengePassword", "ecPublicKey:P-384", "extensionRequest:macAddress", "ecdsa-with-SHA384"])
    assert got == want
    assert csrattrs_der(["rsaEncryption:2048", "1.2.3.4"]) == bytes.fromhex(
        "3018" "3011" "06092a864886f70d010101" "3104" "02020800" "06032a0304")
    assert csrattrs_der([]) == b""


@need_curl
def test_curl_fullcmc_not_implemented_and_case_insensitive(est_server):
    st, _, body = curl(est_server, "/.well-known/est/fullcmc", "-u", "%s:%s" % (USER, PASSWORD), data=b"MAA=")
    assert st == 501 and b"not implemented" in body
    st, _, body = curl(est_server, "/.well-known/est/CACerts")
    assert st == 200 and p7_certs(body) == [est_server.ca.root]
    _, csr = make_csr("ci")
    st, _, body = curl(est_server, "/.well-known/est/strict/SimpleEnroll", "-u", "%s:%s" % (USER, PASSWORD),
                       data=base64.encodebytes(make_csr("ci", org="ACME", sans=["ci.example.com"])[1]))
    assert st == 200, body
    cert = p7_certs(body)[0]
    check_issued(est_server, cert, cn="ci", days=30, eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "ACME"


@need_curl
def test_curl_labels(est_server):
    st, _, body = curl(est_server, "/.well-known/est/nosuchlabel/cacerts")
    assert st == 404 and b"unknown EST label" in body
    st, _, body = curl(est_server, "/.well-known/est/simpleenroll/cacerts")
    assert st == 404 and b"operation name" in body
    st, _, body = curl(est_server, "/.well-known/est/a/b/cacerts")
    assert st == 404
    st, _, body = curl(est_server, "/.well-known/est/crts")
    assert st == 404 and b"EST-coaps" in body
    st, hdr, body = curl(est_server, "/.well-known/est/simpleenroll")
    assert st == 405 and "Allow: POST" in hdr


# ------------------------------------------------------------------ openssl s_client


def s_client(srv, request, *extra):
    r = subprocess.run([OPENSSL, "s_client", "-quiet", "-connect", "127.0.0.1:%d" % srv.port, "-servername", "localhost",
                        "-CAfile", srv.root_pem, "-verify_return_error", *extra],
                       input=request, capture_output=True, timeout=30)
    from helpers_server import Response

    assert b"HTTP/1.1" in r.stdout, r.stderr
    return Response.parse(r.stdout[r.stdout.index(b"HTTP/1.1"):])


@need_openssl
@pytest.mark.parametrize("ver", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_flows(est_server, ver):
    srv = est_server
    r = s_client(srv, b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", ver)
    assert r.status == 200 and r.certs() == [srv.ca.root]
    keyf, csr = openssl_csr(srv, "sc", subj="/CN=s-client")
    body = base64.b64encode(csr)  # one long line: tolerated
    auth = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode())
    req = (b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic " + auth +
           b"\r\nContent-Type: application/pkcs10\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    r = s_client(srv, req, ver)
    assert r.status == 200, r.text
    (cert,) = r.certs()
    check_issued(srv, cert, cn="s-client", days=90)
    # the issued certificate now authenticates openssl for re-enroll
    cp = os.path.join(srv.tmp, "sc.crt")
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    subj = "/CN=s-client"
    _, csr2 = openssl_csr(srv, "sc2", subj=subj)
    body = base64.encodebytes(csr2)
    req = (b"POST /.well-known/est/simplereenroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
           b"Connection: close\r\n\r\n" % len(body) + body)
    r = s_client(srv, req, ver, "-cert", cp, "-key", keyf)
    assert r.status == 200, r.text
    assert r.certs()[0].subject == cert.subject


@need_openssl
def test_openssl_rsa_csr_and_key_size_policy(est_server):
    srv = est_server
    _, csr = openssl_csr(srv, "rsa2048", subj="/CN=rsa-dev", keyspec=("rsa:2048",))
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    assert isinstance(r.certs()[0].public_key(), rsa.RSAPublicKey)
    _, csr = openssl_csr(srv, "rsa1024", subj="/CN=rsa-weak", keyspec=("rsa:1024",))
    r = srv.request("POST", srv.path("simpleenroll"), csr, auth=(USER, PASSWORD))
    assert r.status == 400 and "key type rsa:1024 is not allowed" in r.text


# ------------------------------------------------------------------ stdlib ssl, misc


def test_keep_alive_several_requests_one_connection(est_server):
    import socket

    from helpers_server import Response

    srv = est_server
    ctx = srv.tls_client_context()
    auth = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode())
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            reqs = []
            for i in range(3):
                body = base64.encodebytes(make_csr("ka-%d" % i)[1])
                reqs.append(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth +
                            b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            t.sendall(b"".join(reqs))  # pipelined
            buf = b""
            got = []
            while len(got) < 3:
                d = t.recv(65536)
                assert d
                buf += d
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    n = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
                    if len(rest) < n:
                        break
                    got.append(Response.parse(head + b"\r\n\r\n" + rest[:n]))
                    buf = rest[n:]
            assert [r.status for r in got] == [200, 200, 200]
            assert [r.certs()[0].subject.rfc4514_string() for r in got] == ["CN=ka-0", "CN=ka-1", "CN=ka-2"]


def test_private_files_are_0600(est_server):
    d = est_server.data_dir
    for name in ("root.key", "server.key", "passwords", "ca.db"):
        mode = os.stat(os.path.join(d, name)).st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
    assert os.stat(d).st_mode & 0o077 == 0


def test_ca_init_intermediate_keys_0600(tmp_path):
    from est_lite_cpython.ca import init_ca

    init_ca(str(tmp_path / "d"), intermediate=True)
    for name in ("root.key", "intermediate.key", "server.key"):
        assert os.stat(tmp_path / "d" / name).st_mode & 0o777 == 0o600


def test_cli_init_then_serve_quick_default(tmp_path):
    """`est-lite ca init` + `est-lite serve --data-dir` work together with no config."""
    import socket
    import ssl
    import time

    d = str(tmp_path / "est")
    cli = [sys.executable, "-m", "est_lite_cpython.cli"]
    r = subprocess.run(cli + ["ca", "init", "--data-dir", d, "--user", "bob:pw"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    pf = str(tmp_path / "port")
    p = subprocess.Popen(cli + ["serve", "--data-dir", d, "--port", "0", "--port-file", pf],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            time.sleep(0.05)
        port = int(open(pf).read())
        ctx = ssl.create_default_context(cafile=os.path.join(d, "root.pem"))
        body = base64.encodebytes(make_csr("quick")[1])
        auth = base64.b64encode(b"bob:pw")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Authorization: Basic " + auth + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                from helpers_server import Response

                resp = Response.read(t)
        assert resp.status == 200, resp.text
        assert resp.certs()[0].subject.rfc4514_string() == "CN=quick"
    finally:
        p.terminate()
        p.wait(timeout=10)
    out = p.stdout.read().decode()
    assert "/.well-known/est/" in out
