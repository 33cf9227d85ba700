"""README.md followed as written, by a stranger (brief AK): the library
snippet under "Enroll a device" run verbatim (host, pin and store path
substituted), and what the README promises about a request waiting for
manual approval when the person waiting presses Ctrl-C."""

import hashlib
import os
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers_cli import cli, one_line
from helpers_client import der
from helpers_coaps import EstBothServer, idevid_device, idevid_files, key_der
from helpers_server import PASSWORD, USER
from test_walkthrough_client import both  # noqa: F401 - the fixture: EstBothServer with the manualc label

from est_lite_cpython.credstore import CredStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def library_snippet():
    """The first ```python block after 'The same client as a library'."""
    text = readme()
    at = text.index("The same client as a library")
    m = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert m, "README: no python block after 'The same client as a library'"
    return m.group(1)


# --- the library snippet, as written ---


def test_readme_library_snippet_runs_on_cpython(both, tmp_path):
    srv = both
    code = library_snippet()
    # what a reader substitutes: the server (a label that takes IDevIDs),
    # the pin (the server certificate: the reference server sends only its
    # own over CoAPs unless --coaps-send-chain all, as the README says),
    # and a store directory
    server_der = x509.load_pem_x509_certificate(open(os.path.join(srv.data_dir, "server.pem"), "rb").read())
    pin = "sha256:" + hashlib.sha256(der(server_der)).hexdigest()
    assert code.count('"coaps://est.example"') == 1 and code.count('"/var/lib/est/dev-1"') == 2, code
    code = code.replace('"coaps://est.example"', '"coaps://127.0.0.1:%d/coapsonly"' % srv.coaps_port)
    code = re.sub(r'pin="sha256:[0-9a-f.]+"', 'pin="%s"' % pin, code)
    code = code.replace('"/var/lib/est/dev-1"', repr(str(tmp_path / "dev-1")))
    dev = idevid_device(srv)
    ns = {"idevid_der": der(dev.cert), "idevid_key_der": key_der(dev.key)}
    lines = code.splitlines()
    # the last line's value (renew_if_needed: None when not due) is what the comment promises
    body, last = "\n".join(lines[:-1]), lines[-1].split("#")[0].strip()
    exec(compile(body, "README.md", "exec"), ns)
    assert eval(last, ns) is None
    ns["c"].close()
    creds = CredStore(str(tmp_path / "dev-1")).load()
    cert = x509.load_der_x509_certificate(creds.cert)
    assert cert.subject.rfc4514_string() == "CN=dev-1" and creds.cert == ns["r"].cert
    assert os.stat(tmp_path / "dev-1").st_mode & 0o077 == 0


def test_readme_library_snippet_runs_on_micropython_in_the_heap_it_names(tmp_path):
    """The MicroPython variant as the README gives it: the imports in the
    snippet's comments, the table file installed first, the root pinned
    (the server sends its chain up to the root: --coaps-send-chain all),
    the .mpy packages on the path, in the -X heapsize the README names.
    Without the table file (the README said nothing) it needs 160K+."""
    import subprocess

    from helpers_mp import MICROPYTHON, MISSING, MPY_CROSS, compile_packages

    if MICROPYTHON is None or MPY_CROSS is None:
        pytest.fail(MISSING)
    text = readme()
    para = text[text.index("The same client as a library"):text.index("## Run a server")]
    heap = re.search(r"-X heapsize=(\d+K)`", para)
    install = re.search(r"`(from est_lite_mp import tablefile; tablefile.install\(\"/p256_table.bin\"\))`", para)
    assert heap and install, "README: the MicroPython snippet's table file and heap are not said"
    code = library_snippet()
    for cp, mp in re.findall(r"^(from est_lite_cpython\S+ import \w+) +# +(?:MicroPython: )?(from est_lite_mp\S+ import "
                             r"\w+)$", code, re.M):
        code = code.replace(cp, mp)
    code = re.sub(r"  +#.*", "", code)  # MicroPython would parse them, but keep the lines short
    assert "est_lite_cpython" not in code and code.count("est_lite_mp.") == 2, code
    (tmp_path / "srv").mkdir()
    srv = EstBothServer(tmp_path / "srv", extra_toml='[coaps]\nsend_chain = "all"\n')
    try:
        root = x509.load_pem_x509_certificate(open(srv.root_pem, "rb").read())
        pin = "sha256:" + hashlib.sha256(der(root)).hexdigest()
        code = code.replace('"coaps://est.example"', '"coaps://127.0.0.1:%d/coapsonly"' % srv.coaps_port)
        code = re.sub(r'pin="sha256:[0-9a-f.]+"', 'pin="%s"' % pin, code)
        code = code.replace('"/var/lib/est/dev-1"', repr(str(tmp_path / "dev-1")))
        lines = code.rstrip().splitlines()
        lines[-1] = "print('RENEW', %s)" % lines[-1]
        dev = idevid_files(srv, tmp_path)
        head = ("%s\nidevid_der = open('id.der', 'rb').read()\nidevid_key_der = open('id.key', 'rb').read()\n"
                % install.group(1).replace("/p256_table.bin", str(tmp_path / "p256_table.bin")))
        (tmp_path / "snippet.py").write_text(head + "\n".join(lines) + "\nprint('GEN', r.gen)\n")
        compile_packages(tmp_path / "lib")
        from est_lite_mp import tablefile

        tablefile.write(str(tmp_path / "p256_table.bin"))
        p = subprocess.run([MICROPYTHON, "-X", "heapsize=" + heap.group(1), "snippet.py"], cwd=str(tmp_path),
                           env=dict(os.environ, MICROPYPATH="lib"), capture_output=True, text=True, timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and "GEN 1" in out and "RENEW None" in out, out
        creds = CredStore(str(tmp_path / "dev-1")).load()
        assert x509.load_der_x509_certificate(creds.cert).subject.rfc4514_string() == "CN=dev-1"
    finally:
        srv.stop()


# --- Ctrl-C while a request waits for approval ---


def test_ctrl_c_during_the_approval_wait_keeps_the_key(both, tmp_path, capsys, monkeypatch):
    """README: a request waiting for manual approval survives; the same
    command collects it after `est-lite ca approve`. A person who stops
    the wait with Ctrl-C (exit 130) must not lose the key of the request
    the server now holds."""
    from est_lite_cpython.client import EstClient

    srv = both
    dev = idevid_files(srv, tmp_path)
    out = str(tmp_path / "m7")
    argv = ("enroll", "--server", "coaps://127.0.0.1:%d/manualc" % srv.coaps_port, "--trust", srv.root_pem,
            "--cert", tmp_path / "id.der", "--key", tmp_path / "id.key", "--cn", "m7", "--out", out)

    def interrupted(self, s):
        raise KeyboardInterrupt  # Ctrl-C during the retry wait after the server's 5.03

    monkeypatch.setattr(EstClient, "_sleep", interrupted)
    rc, o, err = cli(capsys, *argv)
    monkeypatch.undo()
    assert rc == 130, err
    reqs = srv.ca.store.list_requests(status="pending")
    assert len(reqs) == 1
    kp = os.path.join(out, "pending-key.pem")
    assert os.path.exists(kp), "the key of request %d is lost" % reqs[0]["id"]
    assert os.stat(kp).st_mode & 0o777 == 0o600
    assert err.count("\n") == 1 and "interrupted" in err and kp in err, err
    key_pem = open(kp, "rb").read()
    assert b"".join(key_pem.splitlines()[1:-1]).decode()[:40] not in err + o
    # the operator approves; the same command collects that request's certificate
    assert cli(capsys, "ca", "approve", "--data-dir", srv.data_dir, reqs[0]["id"])[0] == 0
    rc, o, err = cli(capsys, *argv, "--deadline", "3")
    assert rc == 0 and "enrolled (the request that was waiting): CN=m7" in o, err
    cert = x509.load_der_x509_certificate(CredStore(out).load().cert)
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert not os.path.exists(kp) and len(srv.ca.store.list_requests()) == 1


def test_ctrl_c_before_the_request_went_out_keeps_nothing(both, tmp_path, capsys, monkeypatch):
    from est_lite_cpython.client import EstClient

    srv = both
    out = tmp_path / "m8"

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt  # Ctrl-C before anything was signed

    monkeypatch.setattr(EstClient, "provision", interrupted)
    rc, o, err = cli(capsys, "enroll", "--server", "https://127.0.0.1:%d/manual" % srv.port, "--trust",
                     srv.root_pem, "--user", USER, "--password", PASSWORD, "--cn", "m8", "--out", out)
    assert rc == 130 and err == "", err
    assert not os.path.exists(out / "pending-key.pem") and srv.ca.store.list_requests() == []


def test_exit_status_75_then_collected_as_the_readme_says(both, tmp_path, capsys):
    # the README's promise without Ctrl-C, as a reader meets it: 75, then 0 after approval
    srv = both
    out = str(tmp_path / "m9")
    argv = ("enroll", "--server", "https://127.0.0.1:%d/manual" % srv.port, "--trust", srv.root_pem, "--user", USER,
            "--password", PASSWORD, "--cn", "m9", "--out", out, "--deadline", "2")
    rc, o, err = cli(capsys, *argv)
    one_line(rc, err, 75)
    rid = srv.ca.store.list_requests(status="pending")[0]["id"]
    assert cli(capsys, "ca", "approve", "--data-dir", srv.data_dir, rid)[0] == 0
    rc, o, err = cli(capsys, *argv)
    assert rc == 0 and "(the request that was waiting)" in o, err


# --- "Enroll a device": every command of the block, in order ---


def _shell_block(after):
    text = readme()
    at = text.index(after)
    m = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    assert m, "README: no sh block after %r" % after
    return [ln.split("  #")[0].strip() for ln in m.group(1).splitlines() if ln.startswith("est-lite ")]


def test_readme_enroll_block_runs_against_a_default_server(tmp_path, capsys, monkeypatch):
    """The block as a newcomer runs it against `est-lite serve --data-dir
    est-data --coaps-port ...` with the default profile, the pin `ca init`
    prints and the stand-in IDevID the README says `ca issue` writes."""
    import shlex

    (tmp_path / "srv").mkdir()
    srv = EstBothServer(tmp_path / "srv", config_text='[server]\nlisten = "127.0.0.1"\nport = 0\n[trust.idevid]\ncerts = ["vendor.pem"]\n[profiles.default]\n')
    try:
        monkeypatch.chdir(tmp_path)
        root = x509.load_pem_x509_certificate(open(srv.root_pem, "rb").read())
        pin = "sha256:" + hashlib.sha256(der(root)).hexdigest()
        rc, o, err = cli(capsys, "ca", "issue", "--data-dir", srv.data_dir, "--cn", "idevid-1", "--out", "idevid")
        assert rc == 0 and os.path.exists("idevid.pem") and os.stat("idevid.key").st_mode & 0o777 == 0o600, err
        os.symlink(srv.root_pem, "root.pem")
        lines = _shell_block("## Enroll a device")
        assert len(lines) == 6, lines
        for line in lines:
            line = (line.replace("https://est.example:8443", "https://127.0.0.1:%d" % srv.port)
                    .replace("coaps://est.example", "coaps://127.0.0.1:%d" % srv.coaps_port)
                    .replace("sha256:6e35...ce6", pin))
            assert "est.example" not in line and "..." not in line, line
            argv = shlex.split(line)[1:]
            rc, o, err = cli(capsys, *argv)
            assert rc == 0 and err == "", (line, rc, err)
            if "--out" in argv and argv[0] != "cacerts":
                d = argv[argv.index("--out") + 1]
                assert os.stat(os.path.join(d, "key.pem")).st_mode & 0o777 == 0o600, line
                assert CredStore(d).load().cert is not None, line
            if "--json" in argv:
                assert o.startswith("{") and o.rstrip().endswith("}"), o
    finally:
        srv.stop()
