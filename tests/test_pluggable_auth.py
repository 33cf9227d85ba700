"""A pluggable authenticator that checks passwords elsewhere (RADIUS,
LDAP) and has no HA1 to give (docs/server.md, "Authenticator"): with
`digest_ha1 = None` the server offers HTTP Basic only, so the project's own
client (which prefers Digest when offered) enrolls with Basic, and a Digest
answer sent anyway is refused with a Basic challenge."""

import base64

from helpers_client import root_der
from helpers_server import make_csr

from est_lite.csr import CsrBuilder
from est_lite_cpython.auth import DefaultAuthenticator
from est_lite_cpython.client import EstClient
from est_lite_cpython.crypto import P256Key


class LdapLike(DefaultAuthenticator):
    digest_ha1 = None  # no HA1 from the directory: HTTP Basic only

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked = []

    def verify_password(self, user, password, label):
        self.asked.append((user, label))
        return (user, password) == ("ldap-dev", "from-the-directory")


def plug(srv):
    auth = LdapLike(srv.ca, srv.config)
    srv.service.authenticator = auth
    return auth


def challenges(resp):
    return [v.split(" ", 1)[0].lower() for v in resp.headers_all("www-authenticate")]


def test_no_digest_ha1_offers_basic_only(est_server):
    srv = est_server
    plug(srv)
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("ldap-1")[1])
    assert r.status == 401, (r.status, r.text)
    assert challenges(r) == ["basic"]


def test_the_default_authenticator_still_offers_both(est_server):
    r = est_server.request("POST", est_server.path("simpleenroll"), make_csr("ldap-2")[1])
    assert r.status == 401
    assert challenges(r)[0] == "basic" and "digest" in challenges(r)


def test_est_client_enrolls_through_it_with_basic(est_server):
    srv = est_server
    auth = plug(srv)
    c = EstClient("https://localhost:%d" % srv.port, trust=root_der(srv), user="ldap-dev",
                  password="from-the-directory")
    try:
        k = P256Key.generate()
        ev = c.enroll(CsrBuilder().subject(cn="ldap-3").sign(k), k.public_key)
    finally:
        c.close()
    assert ev.cert and ("ldap-dev", "") in [(u, lbl or "") for u, lbl in auth.asked]


def test_a_digest_answer_is_refused_with_a_basic_challenge(est_server):
    srv = est_server
    auth = plug(srv)
    digest = ('Digest username="ldap-dev", realm="est-lite", nonce="x", uri="/.well-known/est/simpleenroll", '
              'response="00", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="y"')
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("ldap-4")[1], headers={"Authorization": digest})
    assert r.status == 401 and "Digest is not offered" in r.text, (r.status, r.text)
    assert challenges(r) == ["basic"]
    assert auth.asked == []  # nothing reached the directory
    ok = srv.request("POST", srv.path("simpleenroll"), make_csr("ldap-4")[1],
                     headers={"Authorization": "Basic " + base64.b64encode(b"ldap-dev:from-the-directory").decode()})
    assert ok.status == 200, (ok.status, ok.text)
