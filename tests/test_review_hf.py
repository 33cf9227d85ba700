"""Second reader's findings on the local-attack, full-disk and conformance
changes (89bad43..): each test failed on the code it names."""

import os

from helpers_cli import cli, one_line


def _files(d):
    # keys and certificates by content; ca.db by name (closing the first
    # command's store checkpoints its WAL into it)
    return dict((n, b"" if n.startswith("ca.db") else open(os.path.join(str(d), n), "rb").read())
                for n in sorted(os.listdir(str(d))) if n not in ("server.lock", "ca.db-wal", "ca.db-shm"))


def test_ca_init_force_refused_for_a_world_writable_dir_keeps_the_ca(tmp_path, capsys):
    """`ca init --force` in a data directory that became 0777: the refusal
    ('writable by every user') came from inside init, and the clean-up of
    a failed init removed, with --force, every CA file there: the CA it
    had refused to replace was gone (root.key included)."""
    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    before = _files(d)
    assert "root.key" in before and "ca.db" in before
    os.chmod(str(d), 0o777)
    rc, out, err = cli(capsys, "ca", "init", "--data-dir", d, "--force")
    one_line(rc, err)
    assert "writable by every user (mode 0777)" in err
    assert _files(d) == before


def test_ca_issue_force_keeps_the_previous_pair_when_the_new_one_cannot_be_written(tmp_path, capsys, monkeypatch):
    """`ca issue --out PREFIX --force` on a disk that fills between the
    key and the certificate: the previous PREFIX.key was unlinked before
    the new one was written, and the clean-up then removed the new key and
    the previous PREFIX.pem: no pair at all where one was (and the message
    blamed space for any error). Now both are written under temporary
    names and renamed: the previous pair stays, nothing else is left."""
    import errno

    from est_lite_cpython import ca as ca_mod

    d, out = tmp_path / "ca", tmp_path / "out"
    out.mkdir()
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    assert cli(capsys, "ca", "issue", "--data-dir", d, "--cn", "ra", "--out", out / "ra")[0] == 0
    before = _files(out)
    write_all = ca_mod._write_all
    calls = []

    def second_fails(fd, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(fd, data)

    monkeypatch.setattr(ca_mod, "_write_all", second_fails)
    rc, _out, err = cli(capsys, "ca", "issue", "--data-dir", d, "--cn", "ra", "--out", out / "ra", "--force")
    one_line(rc, err)
    assert "no space on the disk" in err and "revoke" in err and str(out / "ra.pem") in err
    assert _files(out) == before  # the previous pair, nothing half-written or temporary
    monkeypatch.setattr(ca_mod, "_write_all", write_all)
    assert cli(capsys, "ca", "issue", "--data-dir", d, "--cn", "ra", "--out", out / "ra", "--force")[0] == 0
    after = _files(out)
    assert sorted(after) == ["ra.key", "ra.pem"] and after != before
    assert os.stat(str(out / "ra.key")).st_mode & 0o777 == 0o600


def test_password_file_write_failing_leaves_no_half_temporary_file(tmp_path, capsys, monkeypatch):
    """ca.write_private (passwords.tmp, then renamed; the CA's keys) left
    the part it had written when the write failed (a full disk): a
    half-written passwords.tmp with Digest HA1 values stayed beside the
    password file. Now the file it made is removed; passwords unchanged."""
    import errno

    from est_lite_cpython import ca as ca_mod

    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    assert cli(capsys, "ca", "passwd", "--data-dir", d, "alice", "--password", "s3cret-pw-1")[0] == 0
    before = _files(d)

    def full(fd, data):
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ca_mod, "_write_all", full)
    rc, _out, err = cli(capsys, "ca", "passwd", "--data-dir", d, "bob", "--password", "s3cret-pw-2")
    one_line(rc, err)
    assert "No space left on device" in err
    assert _files(d) == before  # no passwords.tmp, passwords as it was


def _odd_key_csr(cn):
    """A CSR whose public key is of an algorithm nobody knows (its key and
    signature are what a serverkeygen server MUST ignore)."""
    from helpers_server import make_csr

    _k, csr = make_csr(cn)
    ec_oid = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
    assert csr.count(ec_oid) == 1
    return csr.replace(ec_oid, bytes.fromhex("06072a8648ce3d0209"))


def test_serverkeygen_with_manual_approval_and_a_key_the_server_cannot_read(est_server):
    """Since serverkeygen ignores the CSR's key (56ce913), a key of an
    unknown algorithm passes its checks; manual approval then read it for
    the request's fingerprint: UnsupportedAlgorithm, a 500 'internal
    server error' and a traceback in the log. Now 202, then the key."""
    from helpers_server import PASSWORD, USER

    srv = est_server
    odd = _odd_key_csr("skg-odd-key")
    r = srv.request("POST", srv.path("serverkeygen", "manual"), odd, auth=(USER, PASSWORD))
    assert r.status == 202, (r.status, r.text)
    rid = int(r.text.split("request ")[1].split()[0])
    srv.ca.store.decide(rid, True)
    r = srv.request("POST", srv.path("serverkeygen", "manual"), odd, auth=(USER, PASSWORD))
    assert r.status == 200, (r.status, r.text)


def test_proxy_serverkeygen_with_a_key_it_cannot_read(tmp_path):
    """The same through the proxy (its RA forwards serverkeygen): the
    request's key for the owner binding read the CSR's key, and
    UnsupportedAlgorithm was not among the errors caught: 5.00 and a
    traceback. Now the upstream's key and certificate come back."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from helpers_coaps import CoapsSession, idevid_device
    from helpers_proxy import ProxyHarness
    from test_proxy_rfc7030 import Stub

    (tmp_path / "stub").mkdir()
    stub = Stub(tmp_path / "stub")
    sign = stub.ca.sign_csr

    def sign_csr(csr):  # the stub signs every CSR before it looks at the operation
        from cryptography.exceptions import UnsupportedAlgorithm

        try:
            csr.public_key()
        except UnsupportedAlgorithm:
            return None  # serverkeygen: the stub then signs a CSR of the key it makes
        return sign(csr)

    stub.ca.sign_csr = sign_csr
    try:
        px = ProxyHarness(tmp_path / "px", stub, stub.url, upstream_root_pem=stub.root_pem,
                          vendor_pem=os.path.join(stub.tmp, "vendor.pem"), https=False)
        try:
            dev = idevid_device(stub, "odd-dev")
            with px.dtls_client(dev, [stub.ca.root]) as dc:
                ev = CoapsSession(dc).serverkeygen(_odd_key_csr("odd-dev"))
            cert = x509.load_der_x509_certificate(ev.cert)
            assert cert.public_key() == serialization.load_der_private_key(ev.key_der, None).public_key()
            assert cert.subject.rfc4514_string() == "CN=odd-dev"
        finally:
            px.stop()
    finally:
        stub.stop()


def test_serve_port_file_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """--port-file in a directory that does not exist (or is not
    writable): 'internal error: FileNotFoundError ... please report it',
    exit 70; now one line naming the port file, exit 1."""
    import subprocess
    import sys

    d = tmp_path / "ca"
    assert cli(capsys, "ca", "init", "--data-dir", d)[0] == 0
    pf = tmp_path / "missing" / "port"
    p = subprocess.run([sys.executable, "-c", "import sys; from est_lite_cpython.cli import main; sys.exit(main())",
                        "serve", "--data-dir", str(d), "--host", "127.0.0.1", "--port", "0", "--port-file", str(pf)],
                       capture_output=True, text=True, timeout=60)
    err = p.stderr.replace("stopped\n", "")
    one_line(p.returncode, err)
    assert "cannot write the port file %s" % pf in err


def test_world_writable_refusals_say_how_to_fix_an_existing_directory(tmp_path, capsys):
    """A data directory or store made 0777 by hand (a common fix for a
    container that could not write its volume) holds the operator's CA or
    credentials: 'give a directory of its own' alone did not say that
    chmod 700 is enough."""
    from est_lite_cpython.credstore import CredStore, StoreError

    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(str(d), 0o777)
    rc, _out, err = cli(capsys, "ca", "init", "--data-dir", d)
    one_line(rc, err)
    assert "chmod 700 %s" % d in err
    try:
        CredStore(str(d)).load()
    except StoreError as e:
        assert "chmod 700 %s" % d in str(e)
    else:
        raise AssertionError("a world-writable store was loaded")


def test_serverkeygen_approval_of_a_key_the_server_cannot_read_is_found_again_with_new_attributes(est_server):
    """A request whose key the server cannot read is recognised, as any
    other, by its label, subject and key (the SubjectPublicKeyInfo as sent):
    not by the whole request info, whose attributes a client may make anew
    for each attempt (a challengePassword linked to each TLS connection).
    With the request info, each retry was a new request waiting for
    approval, and the approved one could never be collected."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from helpers_server import PASSWORD, USER, make_csr

    key = ec.generate_private_key(ec.SECP256R1())
    ec_oid = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey -> an algorithm nobody knows
    odd = [make_csr("skg-odd-retry", key, sans=sans)[1].replace(ec_oid, bytes.fromhex("06072a8648ce3d0209"))
           for sans in (["a.example"], ["a.example", "b.example"])]
    assert odd[0] != odd[1]
    srv = est_server
    r = srv.request("POST", srv.path("serverkeygen", "manual"), odd[0], auth=(USER, PASSWORD))
    assert r.status == 202, (r.status, r.text)
    rid = int(r.text.split("request ")[1].split()[0])
    srv.ca.store.decide(rid, True)
    r = srv.request("POST", srv.path("serverkeygen", "manual"), odd[1], auth=(USER, PASSWORD))
    assert r.status == 200, (r.status, r.text)
