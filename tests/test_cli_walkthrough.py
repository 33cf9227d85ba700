"""What a new user tripped over running every `est-lite` command of
README.md and docs/ (brief AD): which step of a command failed, the
client-certificate hint of a refused DTLS handshake, where --pin is
explained, [proxy] in a config read by `ca`, `hil run --host` that is not
an address of this machine, a closed stdout, the usage hint of a
subcommand, the server's text in the retry lines. In-process through
est_lite_cpython.cli.main unless a real stdout pipe is needed."""

import os
import re

import pytest
from helpers_client import der
from helpers_coaps import EstBothServer, idevid_files, key_der
from helpers_server import PASSWORD, USER
from test_walkthrough_client import cli, one_line

from est_lite_cpython.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def both(tmp_path):
    (tmp_path / "srv").mkdir()
    srv = EstBothServer(tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.stop()


# --- 1. the step of the command that failed, in the user's terms ---


def test_enroll_says_which_of_its_steps_failed(est_server, tmp_path, capsys):
    url = "https://localhost:%d/factory" % est_server.port
    rc, o, err = cli(capsys, "enroll", "--server", url, "--trust", est_server.root_pem, "--user", USER, "--password",
                     PASSWORD, "--cn", "x", "--out", tmp_path / "o")
    one_line(rc, err)
    assert err == ("est-lite: error: enroll: fetching the CA certificates (/cacerts): the server answered 404 Not "
                   "Found: unknown EST label 'factory'\n"), err
    # the command's own operation keeps its short form
    rc, o, err = cli(capsys, "cacerts", "--server", url, "--trust", est_server.root_pem)
    one_line(rc, err)
    assert err.startswith("est-lite: error: cacerts: the server answered 404"), err
    rc, o, err = cli(capsys, "serverkeygen", "--server", url, "--trust", est_server.root_pem, "--user", USER,
                     "--password", PASSWORD, "--cn", "x", "--out", tmp_path / "s")
    one_line(rc, err)
    assert err.startswith("est-lite: error: serverkeygen: the server answered 404"), err


def test_steps_are_named_with_the_transports_path():
    from est_lite_cpython.cli_client import _step

    m = "csrattrs: the server answered 500 Internal Server Error: boom"
    assert _step("enroll", "https://h", m) == ("enroll: fetching the CSR attributes (/csrattrs): the server "
                                               "answered 500 Internal Server Error: boom")
    assert _step("enroll", "coaps://h", "csrattrs: DER: truncated at offset 0") == (
        "enroll: fetching the CSR attributes (/att): DER: truncated at offset 0")
    assert _step("serverkeygen", "COAPS://h", "cacerts: x") == "serverkeygen: fetching the CA certificates (/crts): x"
    assert _step("reenroll", "https://h", "enroll: x") == "reenroll: requesting the certificate (/simpleenroll): x"
    for same in ("enroll: the server answered 401", "--out d: not a directory", "bootstrap refused: x"):
        assert _step("enroll", "https://h", same) == same


# --- 2. a DTLS handshake refused for want of a client certificate ---


def test_coaps_without_a_client_certificate_hints_at_cert_and_key(both, tmp_path, capsys):
    url = "coaps://127.0.0.1:%d" % both.coaps_port
    rc, o, err = cli(capsys, "cacerts", "--server", url, "--trust", both.root_pem, "--deadline", "20")
    one_line(rc, err)
    assert "handshake failure" in err and err.endswith(
        "(EST-coaps servers usually require a client certificate: give --cert and --key)\n"), err
    # library users read the argument names
    from est_lite.errors import SecurityError
    from est_lite_cpython.client import EstClient

    c = EstClient(url, trust=[open(both.root_pem, "rb").read()], deadline=20)
    with pytest.raises(SecurityError) as e:
        c.cacerts()
    c.close()
    assert str(e.value).endswith("a client certificate: give cert= and key=)"), e.value
    # with a certificate the handshake goes through (the hint is not a check made before it)
    dev = idevid_files(both, tmp_path)
    rc, o, err = cli(capsys, "cacerts", "--server", url, "--trust", both.root_pem, "--cert", tmp_path / "id.der",
                     "--key", tmp_path / "id.key")
    assert rc == 0 and "BEGIN CERTIFICATE" in o, err


def test_a_refused_client_certificate_gets_no_hint(both, tmp_path, capsys):
    # a certificate was given: the hint would send the user in circles
    from cryptography.hazmat.primitives.asymmetric import ec
    from helpers_server import issue_cert, make_vendor_ca

    (tmp_path / "other").mkdir()
    other = make_vendor_ca(str(tmp_path / "other"), name="Unknown CA")
    key, cert = issue_cert(other["cert"], other["key"], "stranger", key=ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "s.der").write_bytes(der(cert))
    (tmp_path / "s.key").write_bytes(key_der(key))
    rc, o, err = cli(capsys, "cacerts", "--server", "coaps://127.0.0.1:%d" % both.coaps_port, "--trust",
                     both.root_pem, "--cert", tmp_path / "s.der", "--key", tmp_path / "s.key", "--deadline", "20")
    one_line(rc, err)
    assert "DTLS handshake" in err and "usually require a client certificate" not in err, err


# --- 3, 4. where --pin is explained; its help true for both transports ---


def test_missing_trust_points_to_computing_pin(capsys):
    rc, o, err = cli(capsys, "cacerts", "--server", "https://127.0.0.1:1")
    one_line(rc, err)
    assert 'see docs/client-runtime.md, "Computing --pin"' in err, err
    assert "### Computing `--pin`" in open(os.path.join(ROOT, "docs", "client-runtime.md")).read()


@pytest.mark.parametrize("command", ["cacerts", "csrattrs", "enroll", "reenroll", "serverkeygen"])
def test_pin_help_covers_https_and_coaps(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--pin sha256:HEX first contact")
    pin = text[start:text.index("--server-name SERVER_NAME", start)]
    assert "root CA" in pin and "CoAPs" in pin and "DTLS handshake" in pin and "--coaps-send-chain all" in pin, pin
    assert "server's root CA certificate (DER)" not in pin


# --- 5. `ca` commands read a proxy config (a server config plus [proxy]) ---

PROXY_TOML = """
[ca]
data_dir = "proxy-data"

[server]
listen = "127.0.0.1"
port = 8444

[trust.idevid]
certs = ["vendor.pem"]

[profiles.default]
auth = ["cert", "basic"]
client_cert_trust = ["ca", "idevid"]

[proxy]
upstream = "https://est.example.com:8443"
ra_cert = "ra.pem"
ra_key = "ra.key"
"""


def _proxy_config(tmp_path, extra=""):
    from helpers_server import make_vendor_ca

    make_vendor_ca(str(tmp_path))  # vendor.pem
    p = tmp_path / "proxy.toml"
    p.write_text(PROXY_TOML + extra)
    return p


def test_ca_passwd_with_a_proxy_config(tmp_path, capsys):
    from est_lite_cpython.auth import PasswordFile

    cfg = _proxy_config(tmp_path)
    rc, o, err = cli(capsys, "ca", "passwd", "--config", cfg, "alice", "--password", "s3cret")
    assert rc == 0, err
    pw = PasswordFile(str(tmp_path / "proxy-data" / "passwords"))
    assert pw.check("alice", "s3cret") and not pw.check("alice", "wrong")
    assert os.stat(tmp_path / "proxy-data").st_mode & 0o777 == 0o700  # made for the password file


def test_proxy_config_sections_stay_checked(tmp_path, capsys):
    from est_lite_cpython.config import ConfigError, load_config

    cfg = _proxy_config(tmp_path, "\n[bogus]\nx = 1\n")
    rc, o, err = cli(capsys, "ca", "passwd", "--config", cfg, "alice", "--password", "s3cret")
    one_line(rc, err)
    assert "unknown section(s) bogus" in err, err
    assert not (tmp_path / "proxy-data").exists()
    # a server started from a proxy config would issue from a local CA instead of the upstream: said, not done
    cfg = _proxy_config(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg))
    assert "[proxy] is the section of est-lite proxy" in str(e.value)
    assert load_config(str(cfg), skip=("proxy",)).data_dir == str(tmp_path / "proxy-data")


# --- 6. hil run --host that is not an address of this machine ---


def test_hil_run_host_not_on_this_machine(capsys, monkeypatch):
    import socket

    from est_lite_cpython import cli_hil

    sent = []
    for name in ("connect", "connect_ex", "send", "sendall", "sendto", "sendmsg"):
        monkeypatch.setattr(socket.socket, name, lambda self, *a, _n=name: sent.append(_n) or 1 / 0)
    started = []
    monkeypatch.setattr(cli_hil._sub("bundle"), "build", lambda *a, **k: started.append("bundle") or 1 / 0)
    monkeypatch.setattr(cli_hil._sub("refserver").RefServer, "start", lambda *a, **k: started.append("server") or 1 / 0)
    monkeypatch.setattr(cli_hil._sub("boards"), "SerialBoard", lambda *a, **k: started.append("board") or 1 / 0)
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is never an address of a machine: binding it fails, nothing is sent
    rc, o, err = cli(capsys, "hil", "run", "enroll_coaps", "--port", "/dev/ttyACM0", "--host", "192.0.2.1")
    one_line(rc, err)
    assert "--host 192.0.2.1" in err and "must be an address of this machine that the board can reach" in err, err
    assert "internal error" not in err and sent == [] and started == []


# --- 7. stdout closed by its reader (est-lite ... | head -1) ---


def _closed_stdout_run(argv, timeout=120):
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes: every write gets EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "est_lite_cpython.cli", *map(str, argv)], stdout=w,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=timeout)
    finally:
        os.close(w)
    return p.returncode, p.stderr


def test_ca_init_into_a_closed_pipe_is_quiet_and_complete(tmp_path):
    from est_lite_cpython.auth import PasswordFile

    d = tmp_path / "pipeca"
    rc, err = _closed_stdout_run(["ca", "init", "--data-dir", d, "--user", "alice:s3cret"])
    assert rc == 141 and err == "", (rc, err)
    # the CA and its user were written before the first line was printed
    assert {"root.pem", "root.key", "server.pem", "server.key", "passwords"} <= set(os.listdir(d))
    assert PasswordFile(str(d / "passwords")).check("alice", "s3cret")


class _ClosedStdout:
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_client_command_into_a_closed_stdout(est_server, capsys, monkeypatch):
    # a client command's OSError wrapper (cli_client._wrap) leaves a closed stdout to main
    import sys

    monkeypatch.setattr(sys, "stdout", _ClosedStdout())
    rc = main(["cacerts", "--server", "https://localhost:%d" % est_server.port, "--trust", est_server.root_pem])
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert rc == 141 and err == "", (rc, err)


# --- 8. usage errors: exit 2, the hint names the subcommand's help ---


@pytest.mark.parametrize("argv,prog,what", [
    (["reenroll", "--server", "https://h", "--cn", "x"], "est-lite reenroll", "unrecognized arguments: --cn x"),
    (["reenroll", "--cn", "x"], "est-lite reenroll", "the following arguments are required: --server"),
    (["ca", "passwd", "alice", "--bogus"], "est-lite ca passwd", "unrecognized arguments: --bogus"),
    (["ca", "--bogus"], "est-lite ca", "unrecognized arguments: --bogus"),
    (["no-such-command"], "est-lite", "argument COMMAND: invalid choice"),
])
def test_usage_errors_name_the_subcommands_help(argv, prog, what, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("%s: error: %s" % (prog, what)) and err.endswith("(see %s --help)\n" % prog), err


# --- 9. -v during an approval wait quotes the server ---

WAIT_TOML = """
[profiles.waith]
manual_approval = true
retry_after = 1

[profiles.waitc]
manual_approval = true
retry_after = 1
auth = ["cert"]
client_cert_trust = ["ca", "idevid"]
pop_exempt_transports = ["coaps"]
"""

_SAYS = re.compile(r"est-lite: the server says: (.+); trying again in \d+ s \(\d+ s left before --deadline\)$")


@pytest.mark.parametrize("transport", ["https", "coaps"])
def test_verbose_quotes_the_server_while_waiting(transport, tmp_path, capsys):
    (tmp_path / "srv").mkdir()
    srv = EstBothServer(tmp_path / "srv", extra_toml=WAIT_TOML)
    try:
        if transport == "https":
            argv = ["--server", "https://127.0.0.1:%d/waith" % srv.port, "--user", USER, "--password", PASSWORD]
        else:
            dev = idevid_files(srv, tmp_path)
            argv = ["--server", "coaps://127.0.0.1:%d/waitc" % srv.coaps_port, "--cert", tmp_path / "id.der",
                    "--key", tmp_path / "id.key"]
        rc, o, err = cli(capsys, "enroll", *argv, "--trust", srv.root_pem, "--cn", "w1", "--out", tmp_path / "o",
                         "--deadline", "4", "-v")
        lines = err.splitlines()
        assert rc == 75 and lines[-1].startswith("est-lite: error: enroll: ") and len(lines) >= 2, err
        for ln in lines[:-1]:
            m = _SAYS.match(ln)
            assert m and "waiting for approval" in m.group(1), err
    finally:
        srv.stop()


def test_retry_line_without_the_servers_text(capsys):
    from est_lite_cpython.cli_client import _say_wait

    _say_wait(8.2, 22.4)
    _say_wait(8, None, "line one\n\x1b[2Jline two " + "x" * 300)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("est-lite: no result yet (server busy or unreachable): trying again in 8 s (22 s left before "
                      "--deadline)")
    assert err[1].startswith("est-lite: the server says: line one ?[2Jline two xxx") and err[1].endswith(
        "...; trying again in 8 s") and len(err) == 2
