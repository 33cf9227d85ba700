"""What a newcomer met following the README on the client side, end to end
through `est-lite` (est_lite_cpython.cli.main, in-process) against the
reference server: a request waiting for manual approval collected after
`est-lite ca approve` (HTTPS and CoAPs), the server's text in csrattrs /
401 / 202 messages, option names in errors, the --pin forms openssl and
sha256sum print, enroll --csr, and the hil/demo argument errors."""

import hashlib
import os
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers_cli import cli, main, one_line
from helpers_client import approve_pending
from helpers_coaps import EstBothServer, idevid_files, key_der
from helpers_server import PASSWORD, USER, make_csr

from est_lite_cpython.credstore import CredStore

MANUAL_TOML = """
[profiles.manualc]
manual_approval = true
retry_after = 7
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
pop_exempt_transports = ["coaps"]
"""


@pytest.fixture
def both(tmp_path):
    (tmp_path / "srv").mkdir()
    srv = EstBothServer(tmp_path / "srv", extra_toml=MANUAL_TOML)
    try:
        yield srv
    finally:
        srv.stop()


def _pending(srv):
    return srv.ca.store.list_requests(status="pending")


def _approval_round_trip(srv, capsys, out, argv):
    """enroll gives up (request waiting) -> again, still waiting -> ca approve -> again: collected."""
    kp = os.path.join(out, "pending-key.pem")
    rc, o, err = cli(capsys, *argv)
    one_line(rc, err, 75)  # EX_TEMPFAIL: come back later
    reqs = _pending(srv)
    assert len(reqs) == 1
    rid = reqs[0]["id"]
    # the server's text, where the key is, and what to do
    assert "enrollment request %d is waiting for approval" % rid in err, err
    assert "pending-key.pem (0600): run the same command again (after approval)" in err
    assert os.stat(kp).st_mode & 0o777 == 0o600
    key_pem = open(kp, "rb").read()
    body = b"".join(key_pem.splitlines()[1:-1]).decode()
    assert body[:40] not in err + o  # the key is never printed
    assert CredStore(out).load() is None  # nothing in the store yet
    # again before the approval: the same request (no new one), the same key
    rc, o, err = cli(capsys, *argv)
    one_line(rc, err, 75)
    assert "enrollment request %d is still waiting" % rid in err, err
    assert [r["id"] for r in _pending(srv)] == [rid] and open(kp, "rb").read() == key_pem
    # the operator approves with the CLI
    rc, o, err = cli(capsys, "ca", "approve", "--data-dir", srv.data_dir, rid)
    assert rc == 0 and "request %d approved" % rid in o, err
    rc, o, err = cli(capsys, *argv)
    assert rc == 0 and "enrolled (the request that was waiting): CN=m5" in o, err
    creds = CredStore(out).load()
    key = serialization.load_pem_private_key(key_pem, None)
    cert = x509.load_der_x509_certificate(creds.cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # the kept key's certificate
    assert creds.key == key_der(key)
    assert not os.path.exists(kp) and not os.path.exists(os.path.join(out, "pending.json"))
    assert srv.ca.store.list_requests(status="pending") == [] and len(srv.ca.store.list_requests()) == 1
    return rid


def test_manual_approval_collected_over_https(both, tmp_path, capsys):
    srv = both
    out = str(tmp_path / "m5")
    argv = ("enroll", "--server", "https://127.0.0.1:%d/manual" % srv.port, "--trust", srv.root_pem, "--user", USER,
            "--password", PASSWORD, "--cn", "m5", "--out", out, "--deadline", "3")
    _approval_round_trip(srv, capsys, out, argv)


def test_manual_approval_collected_over_coaps(both, tmp_path, capsys):
    srv = both
    dev = idevid_files(srv, tmp_path)
    out = str(tmp_path / "m5")
    argv = ("enroll", "--server", "coaps://127.0.0.1:%d/manualc" % srv.coaps_port, "--trust", srv.root_pem,
            "--cert", tmp_path / "id.der", "--key", tmp_path / "id.key", "--cn", "m5", "--out", out,
            "--deadline", "3")
    _approval_round_trip(srv, capsys, out, argv)


def test_a_pending_request_is_not_lost_to_another_command(both, tmp_path, capsys):
    srv = both
    out = str(tmp_path / "m6")
    base = ("enroll", "--server", "https://127.0.0.1:%d/manual" % srv.port, "--trust", srv.root_pem, "--user", USER,
            "--password", PASSWORD, "--out", out, "--deadline", "3")
    rc, o, err = cli(capsys, *base, "--cn", "m6")
    one_line(rc, err, 75)
    key_pem = open(os.path.join(out, "pending-key.pem"), "rb").read()
    rc, o, err = cli(capsys, *base, "--cn", "m6-typo")
    one_line(rc, err)
    assert "holds the key of another request still waiting" in err and "enrollment request 1" in err, err
    assert open(os.path.join(out, "pending-key.pem"), "rb").read() == key_pem and len(_pending(srv)) == 1
    # reenroll against a manual profile keeps its new key the same way; a
    # certificate renews on the label that issued it, so r1 is first enrolled
    # on manualc (authenticated by an operational certificate, approved)
    rc, o, err = cli(capsys, "enroll", "--server", "https://127.0.0.1:%d" % srv.port, "--trust", srv.root_pem,
                     "--user", USER, "--password", PASSWORD, "--out", tmp_path / "r0", "--cn", "r0")
    assert rc == 0, err
    first = ("enroll", "--server", "https://127.0.0.1:%d/manualc" % srv.port, "--trust", srv.root_pem,
             "--cert", tmp_path / "r0" / "cert.pem", "--key", tmp_path / "r0" / "key.pem", "--out", tmp_path / "r",
             "--cn", "r1", "--deadline", "3")
    rc, o, err = cli(capsys, *first)
    one_line(rc, err, 75)
    assert approve_pending(srv) == 2  # m6's, still waiting, and r1's
    rc, o, err = cli(capsys, *first)
    assert rc == 0, err
    argv = ("reenroll", "--server", "https://127.0.0.1:%d/manualc" % srv.port, "--out", tmp_path / "r",
            "--deadline", "3")
    rc, o, err = cli(capsys, *argv)
    one_line(rc, err, 75)
    assert "reenroll: " in err and "pending-key.pem (0600)" in err
    rid = [r["id"] for r in _pending(srv) if r["subject"] == "CN=r1"]
    assert len(rid) == 1
    assert cli(capsys, "ca", "approve", "--data-dir", srv.data_dir, rid[0])[0] == 0
    rc, o, err = cli(capsys, *argv)
    assert rc == 0 and "re-enrolled (the request that was waiting): CN=r1" in o, err
    assert not os.path.exists(tmp_path / "r" / "pending-key.pem")


def test_csrattrs_of_an_unknown_label_shows_the_servers_text(both, tmp_path, capsys):
    srv = both
    rc, out, err = cli(capsys, "csrattrs", "--server", "https://127.0.0.1:%d/strickt" % srv.port, "--trust",
                       srv.root_pem)
    assert rc == 0 and out.startswith("the server asks for no CSR attributes (it says: ") and "strickt" in out, err
    dev = idevid_files(srv, tmp_path)
    rc, out, err = cli(capsys, "csrattrs", "--server", "coaps://127.0.0.1:%d/strickt" % srv.coaps_port, "--trust",
                       srv.root_pem, "--cert", tmp_path / "id.der", "--key", tmp_path / "id.key", "--json")
    assert rc == 0, err
    assert '"attributes": null' in out and "strickt" in out, out
    # a label with attributes is unchanged
    rc, out, err = cli(capsys, "csrattrs", "--server", "https://127.0.0.1:%d/strict" % srv.port, "--trust",
                       srv.root_pem)
    assert rc == 0 and "challengePassword: asked" in out, err


def test_https_errors_are_text_and_schemes_are_named_once(both, tmp_path, capsys):
    srv = both
    u = "https://127.0.0.1:%d" % srv.port
    rc, out, err = cli(capsys, "enroll", "--server", u, "--trust", srv.root_pem, "--user", USER, "--password", "bad",
                       "--cn", "x", "--out", tmp_path / "o", "--deadline", "5")
    one_line(rc, err)
    assert "401 Unauthorized: wrong user name or password" in err and "b'" not in err, err
    rc, out, err = cli(capsys, "enroll", "--server", u, "--trust", srv.root_pem, "--cn", "x", "--out",
                       tmp_path / "o", "--deadline", "5")
    one_line(rc, err)
    schemes = re.search(r"requires authentication \(([^)]*)\)", err).group(1).split(", ")
    assert len(schemes) == len(set(schemes)) >= 2, err
    assert "give --user and --password, or --cert and --key" in err


def test_option_names_not_library_arguments(both, tmp_path, capsys):
    srv = both
    rc, out, err = cli(capsys, "cacerts", "--server", "https://127.0.0.1:%d" % srv.port)
    one_line(rc, err)
    assert "--trust" in err and "--pin" in err and "trust=" not in err and "pin=" not in err
    rc, out, err = cli(capsys, "enroll", "--server", "https://alice@127.0.0.1:%d" % srv.port, "--trust",
                       srv.root_pem, "--cn", "x", "--out", tmp_path / "o")
    one_line(rc, err)
    assert "--user" in err and "user=" not in err


def _fingerprint(pem_path):
    c = x509.load_pem_x509_certificate(open(pem_path, "rb").read())
    return hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_pin_forms_of_the_root_ca(both, tmp_path, capsys):
    # docs/client.md: pin the root CA; sha256sum, openssl -fingerprint and bare hex all work
    srv = both
    h = _fingerprint(srv.root_pem)
    colons = ":".join(h[i:i + 2] for i in range(0, 64, 2)).upper()
    for i, pin in enumerate(("sha256:" + h, h, colons, "sha256 Fingerprint=" + colons, "SHA256 Fingerprint=" + colons,
                             h + "  -")):
        out = tmp_path / ("p%d" % i)
        rc, o, err = cli(capsys, "cacerts", "--server", "https://127.0.0.1:%d" % srv.port, "--pin", pin, "--out", out)
        assert rc == 0 and "1 CA certificate(s) written" in o, (pin, err)
    # over CoAPs the pin is checked in the DTLS handshake (the device's certificate goes out in it), so it must
    # be a certificate the server sends there: the reference server sends server.pem, not the root (docs/client.md)
    dev = idevid_files(srv, tmp_path)
    coaps = ("cacerts", "--server", "coaps://127.0.0.1:%d" % srv.coaps_port, "--cert", tmp_path / "id.der", "--key",
             tmp_path / "id.key")
    rc, o, err = cli(capsys, *coaps, "--pin", colons)
    one_line(rc, err)
    assert "does not contain the pinned certificate" in err and "sends in its chain" in err
    rc, o, err = cli(capsys, *coaps, "--pin", _fingerprint(os.path.join(srv.data_dir, "server.pem")) + "  -")
    assert rc == 0 and "BEGIN CERTIFICATE" in o, err
    rc, o, err = cli(capsys, "cacerts", "--server", "https://127.0.0.1:%d" % srv.port, "--pin", h[:-2])
    one_line(rc, err)
    assert "pin must be" in err and "sha256sum" in err


def test_enroll_csr_writes_cert_pem_only_and_says_so(both, tmp_path, capsys):
    srv = both
    key, csr = make_csr("given-1")
    (tmp_path / "c.csr").write_bytes(csr)
    out = tmp_path / "d"
    common = ("--server", "https://127.0.0.1:%d" % srv.port, "--trust", srv.root_pem, "--user", USER, "--password",
              PASSWORD)
    rc, o, err = cli(capsys, "enroll", "--csr", tmp_path / "c.csr", "--out", out, *common)
    assert rc == 0 and "cert.pem only: not a credential store" in o and "reenroll --cert" in o, err
    assert sorted(os.listdir(out)) == ["cert.pem"]
    # reenroll --out d says what to give instead of "the store holds ..."
    rc, o, err = cli(capsys, "reenroll", "--out", out, *common[:4])
    one_line(rc, err)
    assert "no credential store there" in err and "--cert" in err
    # ... and does what it says
    (tmp_path / "k.der").write_bytes(key_der(key))
    rc, o, err = cli(capsys, "reenroll", "--cert", out / "cert.pem", "--key", tmp_path / "k.der", "--out",
                     tmp_path / "store", *common[:4])
    assert rc == 0 and "re-enrolled: CN=given-1" in o, err
    # a store is not overwritten with a lone cert.pem
    rc, o, err = cli(capsys, "enroll", "--csr", tmp_path / "c.csr", "--out", tmp_path / "store", *common)
    one_line(rc, err)
    assert "is a credential store" in err


def test_hil_and_demo_argument_errors(tmp_path, capsys):
    rc, o, err = cli(capsys, "hil", "deploy", "--port", "/dev/ttyNO-SUCH-BOARD")
    one_line(rc, err)
    assert "no serial port /dev/ttyNO-SUCH-BOARD" in err and "internal error" not in err
    empty = tmp_path / "bundle"
    empty.mkdir()
    rc, o, err = cli(capsys, "hil", "deploy", "--port", "/dev/null", "--bundle", empty)
    one_line(rc, err)
    assert "has no package.json" in err and "internal error" not in err
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "x").write_text("")
    rc, o, err = cli(capsys, "demo", "--keep", keep)
    one_line(rc, err)
    assert "not empty" in err and "--force" not in err
    for bad in ("abc", "12", "256KB", "-1K"):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--heap=" + bad])
        assert e.value.code == 2
        assert "heap size" in capsys.readouterr().err


@pytest.fixture
def down_server(tmp_path):
    """`cacerts` arguments for an HTTPS server that is down (nothing
    listens on the port), with a real CA to trust and a 7 s deadline."""
    import socket

    from est_lite_cpython.ca import init_ca

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    ca = init_ca(str(tmp_path / "ca"))
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
    ca.store.close()
    return ("cacerts", "--server", "https://127.0.0.1:%d" % port, "--trust", str(root), "--deadline", "7",
            "--timeout", "2")


def test_verbose_says_when_a_retry_is_coming(down_server, capsys):
    # a server that is down: the command waited silently until --deadline
    # (86 s with the defaults); -v says each retry on stderr, without -v
    # the failure stays one line
    base = down_server
    rc, o, err = cli(capsys, *base, "-v")
    lines = err.splitlines()
    assert rc == 1 and lines[-1].startswith("est-lite: error: ") and "gave up after" in lines[-1], err
    assert len(lines) >= 2 and all(re.match(r"est-lite: no result yet \(server busy or unreachable\): trying again "
                                            r"in \d+ s \(\d+ s left before --deadline\)$", ln) for ln in lines[:-1]), err
    rc, o, err = cli(capsys, *base)
    one_line(rc, err)


def test_retry_lines_by_default_on_a_terminal(down_server, capsys, monkeypatch):
    # the retry lines of -v without it when a person watches stderr
    from est_lite_cpython import cli_client

    monkeypatch.setattr(cli_client, "_on_terminal", lambda: True)
    rc, o, err = cli(capsys, *down_server)
    lines = err.splitlines()
    assert rc == 1 and "gave up after" in lines[-1] and len(lines) >= 2, err
    assert all(ln.startswith("est-lite: no result yet") for ln in lines[:-1]), err


def test_enroll_into_a_store_holding_another_identity_needs_replace(both, tmp_path, capsys):
    """enroll (and serverkeygen) --out DIR that already holds a certificate
    and key: refused before any request, the store untouched, unless
    --replace (was: the other device's key and certificate replaced without
    a word)."""
    srv = both
    out = str(tmp_path / "dev")
    base = ("--server", "https://127.0.0.1:%d" % srv.port, "--trust", srv.root_pem, "--user", USER,
            "--password", PASSWORD, "--out", out, "--deadline", "5")
    # README's order: cacerts into the directory first (CA certificates only), then enroll there
    rc, o, err = cli(capsys, "cacerts", *base)
    assert rc == 0, err
    rc, o, err = cli(capsys, "enroll", *base, "--cn", "dev-a")
    assert rc == 0, err
    first = CredStore(out).load()
    issued = srv.ca.store.count_certificates()
    for cmd in ("enroll", "serverkeygen"):
        rc, o, err = cli(capsys, cmd, *base, "--cn", "dev-b")
        one_line(rc, err)
        assert "already holds the certificate of CN=dev-a" in err and "est-lite reenroll --out" in err, err
        assert "--replace" in err
    assert srv.ca.store.count_certificates() == issued  # nothing asked of the server
    now = CredStore(out).load()
    assert (now.key, now.cert) == (first.key, first.cert)
    rc, o, err = cli(capsys, "enroll", *base, "--cn", "dev-b", "--replace")
    assert rc == 0, err
    cert = x509.load_der_x509_certificate(CredStore(out).load().cert)
    assert cert.subject.rfc4514_string() == "CN=dev-b"
    # renewing what is there is still reenroll's job, with no --replace
    rc, o, err = cli(capsys, "reenroll", *base)
    assert rc == 0, err
