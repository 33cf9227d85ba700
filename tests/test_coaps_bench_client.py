"""bench/server.py's EST-coaps load generator (coaps_enroller) is a real
client: it enrolls over a full DTLS handshake with the cookie exchange, the
server's certificate is verified (CA and name) by OpenSSL, its answer must be
a 2.04 certs-only certificate, and each session ends with close_notify."""

import datetime
import importlib.util
import pathlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers_coaps import EstBothServer, der, idevid_device, key_der
from helpers_server import make_csr

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_server_under_test", str(ROOT / "bench" / "server.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = EstBothServer(tmp_path_factory.mktemp("coaps-bench-client"))
    yield s
    s.stop()


def _enroller(srv, root=None, **kw):
    dev = idevid_device(srv, "bench-client-1")
    return _bench().coaps_enroller(srv.coaps_port, der(root or srv.ca.root), der(dev.cert), key_der(dev.key), **kw)


def test_enrolls_and_closes_the_session(srv):
    one = _enroller(srv)
    before = srv.coaps_stats()
    issued = srv.issued_count()
    for i in range(3):
        assert one(make_csr("bench-client-enroll-%d" % i)[1]) is True
    after = srv.coaps_stats()
    assert srv.issued_count() == issued + 3
    assert after["dtls_handshakes"] - before["dtls_handshakes"] == 3
    assert after["dtls_hello_verify_sent"] - before["dtls_hello_verify_sent"] >= 3  # cookie exchange each time
    assert after["dtls_sessions"] == 0  # close_notify ended every session


def test_refuses_a_server_outside_its_trust(srv):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone Else's Root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(key, hashes.SHA256()))
    one = _enroller(srv, root=other)
    issued = srv.issued_count()
    with pytest.raises(OSError, match="certificate verify failed"):
        one(make_csr("bench-client-wrong-ca")[1])
    assert srv.issued_count() == issued


def test_checks_the_server_name(srv):
    one = _enroller(srv, server_name=b"not-this-server.example")
    with pytest.raises(OSError, match="certificate verify failed"):
        one(make_csr("bench-client-wrong-name")[1])


def test_an_error_answer_is_not_an_enrollment(srv):
    one = _enroller(srv)
    assert one(b"\x30\x03\x02\x01\x00") is False  # not a CSR: 4.00, counted as an error by the bench


def test_identities_one_per_session(srv):
    """identities=: each session presents the next IDevID (a fleet, each
    device its own certificate), seen by the server as the requester."""

    devs = [idevid_device(srv, "bench-fleet-%d" % i) for i in range(3)]
    ids = [(d.cert, d.key) for d in devs]  # cryptography objects, as bench/server.py makes them
    one = _enroller(srv, identities=ids)
    for i in range(3):
        assert one(make_csr("bench-fleet-enroll-%d" % i)[1]) is True
    rows = srv.ca.store._db().execute("SELECT requester FROM certs ORDER BY rowid DESC LIMIT 3").fetchall()
    seen = sorted(r[0] for r in rows)
    assert len(seen) == 3 and all("bench-fleet-%d" % i in seen[i] for i in range(3)), seen
