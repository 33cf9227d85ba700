from _util import raises

from est_lite import numbers as n
from est_lite.errors import EstError, LocalProtocolError


def test_paths_long_and_short():
    assert n.https_path(n.OP_CACERTS) == "/.well-known/est/cacerts"
    assert n.https_path(n.OP_SIMPLEENROLL, "arbitraryLabel1") == "/.well-known/est/arbitraryLabel1/simpleenroll"
    assert n.coap_path(n.OP_SIMPLEENROLL) == [".well-known", "est", "sen"]
    assert n.coap_path(n.OP_SIMPLEREENROLL, "lab") == [".well-known", "est", "lab", "sren"]
    assert n.coap_path(n.OP_SERVERKEYGEN, skc=True)[-1] == "skc"
    assert n.coap_path(n.OP_CSRATTRS)[-1] == "att"
    assert n.coap_path(n.OP_CACERTS)[-1] == "crts"


def test_operation_names_case_insensitive():
    assert n.op_from_name("SimpleEnroll") == n.OP_SIMPLEENROLL
    assert n.op_from_name(b"CRTS") == n.OP_CACERTS
    assert n.op_from_name("skc") == n.OP_SERVERKEYGEN
    assert n.op_from_name("nothing") == -1
    assert n.op_from_name(b"\xff") == -1


def test_bad_labels_rejected():
    for bad in ("simpleenroll", "SEN", "a/b", "a b", "..", "x" * 64, "caf\xe9", "a?b"):
        e = raises(LocalProtocolError, n.https_path, n.OP_CACERTS, bad)
        assert isinstance(e, EstError)
        assert str(e)
    assert n.check_label("") is None
    assert n.check_label(b"ok-1") == "ok-1"


def test_parse_path():
    assert n.parse_path([".well-known", "est", "CACERTS"]) == (n.OP_CACERTS, None, False)
    assert n.parse_path([".well-known", "est", "l1", "sen"]) == (n.OP_SIMPLEENROLL, "l1", True)
    e = raises(LocalProtocolError, n.parse_path, [".well-known", "est", "sen", "sen"])
    assert "operation name" in str(e)
    e = raises(LocalProtocolError, n.parse_path, [".well-known", "est", "nope"])
    assert e.http_status == 404 and e.coap_code == n.NOT_FOUND


def test_codes_and_options():
    assert n.code_str(n.CONTENT) == "2.05"
    assert n.code_str(n.REQUEST_ENTITY_TOO_LARGE) == "4.13"
    assert n.code_str(n.SERVICE_UNAVAILABLE) == "5.03"
    assert n.is_critical(n.URI_PATH) and not n.is_critical(n.CONTENT_FORMAT)
    assert n.is_critical(n.BLOCK1) and n.is_critical(n.BLOCK2)
    assert n.is_no_cache_key(n.SIZE1)
    assert n.is_success(n.CHANGED) and not n.is_success(n.BAD_REQUEST)
