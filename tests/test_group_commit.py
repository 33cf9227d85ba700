"""Group commit of issued certificates (store.GroupCommit): the HTTPS event
loop writes the certificates it issued in one pass in one transaction and
holds their answers until that transaction has committed. What a client
received must still be in the store, a failed write must reach exactly the
clients whose certificates it held, and other threads keep writing at once."""

import base64
import os
import socket
import threading
import time

import pytest
from cryptography import x509
from helpers_server import BASE_CONFIG, PASSWORD, USER, Response, make_csr

from est_lite_cpython.ca import init_ca
from est_lite_cpython.store import DuplicateSerial, GroupCommit, Store, StoreError, current_group, serial_hex


def _issue(ca, n=1):
    key = make_csr()[0].public_key()
    return [ca.issue_raw(key, x509.Name([]), days=1) for _ in range(n)]


def _stored(path):
    """Rows in the file as another connection sees them."""
    st = Store(path)
    try:
        return set(st.all_serials())
    finally:
        st.close()


def test_rows_wait_for_flush_then_go_in_one_transaction(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    before = _stored(ca.store.path)
    statements = []
    ca.store._wdb().set_trace_callback(statements.append)
    logged = []
    group = GroupCommit()
    group.install()
    try:
        assert current_group() is group
        certs = _issue(ca, 3)
        key = make_csr()[0].public_key()
        serial = ca.store.add_issued(0x1234, b"\x30\x00", "CN=x", 1, 2, after=lambda: logged.append("x"))
        assert serial == "1234"
        assert len(group.rows) == 4
        assert _stored(ca.store.path) == before and logged == [] and statements == []  # nothing written yet
        errors = group.flush()
    finally:
        group.uninstall()
    assert errors == [None] * 4 and group.errors == errors and group.rows == []
    assert group.error(0, 4) is None
    assert logged == ["x"]
    after = _stored(ca.store.path)
    assert after - before == {serial_hex(c.serial_number) for c in certs} | {"1234"}
    # one transaction: BEGIN IMMEDIATE, the four inserts, COMMIT
    kinds = [s.split()[0].upper() for s in statements]
    assert kinds == ["BEGIN", "INSERT", "INSERT", "INSERT", "INSERT", "COMMIT"], statements
    # uninstalled: a write per certificate again, durable on return
    assert current_group() is None
    c = ca.issue_raw(key, x509.Name([]), days=1)
    assert serial_hex(c.serial_number) in _stored(ca.store.path)
    ca.store.close()


def test_a_taken_serial_fails_only_its_row(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    st = ca.store
    st.add_issued(0xABC, b"\x30\x00", "CN=first", 1, 2)
    logged = []
    group = GroupCommit()
    group.install()
    try:
        for serial in (0x1, 0xABC, 0x2):
            st.add_issued(serial, b"\x30\x01", "CN=%x" % serial, 1, 2, after=lambda s=serial: logged.append(s))
        errors = group.flush()
    finally:
        group.uninstall()
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], DuplicateSerial) and "abc" in str(errors[1]) and "try again" in str(errors[1])
    assert group.error(0, 1) is None and group.error(0, 3) is errors[1]
    assert logged == [0x1, 0x2]
    assert {"1", "2", "abc"} <= _stored(st.path)
    assert st.get_certificate(0xABC) == b"\x30\x00"  # the first one kept
    st.close()


def test_a_replaced_store_fails_every_row_and_writes_nothing(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    db = ca.store.path
    other = Store(str(tmp_path / "other.db"))
    other.close()
    group = GroupCommit()
    group.install()
    try:
        certs = _issue(ca, 2)
        os.replace(str(tmp_path / "other.db"), db)
        errors = group.flush()
    finally:
        group.uninstall()
    assert len(errors) == 2 and all(isinstance(e, StoreError) for e in errors)
    assert "was removed or replaced while this server ran: nothing was written" in str(errors[0])
    assert not {serial_hex(c.serial_number) for c in certs} & _stored(db)
    ca.store.close()


def test_one_group_per_thread(tmp_path):
    ca = init_ca(str(tmp_path / "ca"))
    group = GroupCommit()
    group.install()
    try:
        with pytest.raises(Exception) as ei:
            GroupCommit().install()
        assert "already installed" in str(ei.value)
        out = []
        t = threading.Thread(target=lambda: out.extend(_issue(ca)))
        t.start()
        t.join()
        # the other thread has no group: its certificate is written at once
        assert serial_hex(out[0].serial_number) in _stored(ca.store.path) and group.rows == []
    finally:
        group.uninstall()
    ca.store.close()


# -- the HTTPS event loop --


def _connect(srv):
    ctx = srv.tls_client_context()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return ctx.wrap_socket(s, server_hostname="localhost")


def _request(cn):
    body = base64.encodebytes(make_csr(cn)[1])
    auth = base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
    return ("POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            "Content-Type: application/pkcs10\r\nContent-Length: %d\r\nAuthorization: Basic %s\r\n\r\n"
            % (len(body), auth)).encode() + body


def _wrap_insert(store, hook):
    real = store._insert_group

    def insert(rows):
        return hook(rows, real)

    store._insert_group = insert


def test_https_answers_leave_after_their_commit_and_share_it(est_server):
    """Nine clients: the first one's commit is held while eight more send
    their requests on connections whose handshakes are done. The eight are
    read in one pass of the loop and written in one transaction; no client
    has an answer before the commit that wrote its certificate."""
    srv = est_server
    answered = []
    commits = []  # (rows, answers received when the commit began)
    in_first, go = threading.Event(), threading.Event()

    def hook(rows, real):
        commits.append((len(rows), len(answered)))
        if len(commits) == 1:
            in_first.set()
            go.wait(10)
        time.sleep(0.2)  # an answer sent before this commit would arrive meanwhile
        out = real(rows)
        commits[-1] += (len(answered),)
        return out

    _wrap_insert(srv.ca.store, hook)
    conns = [_connect(srv) for _ in range(9)]  # handshakes done (client side)
    results = [None] * 9

    def read(i):
        results[i] = Response.read(conns[i])
        answered.append(i)

    readers = []
    try:
        conns[0].sendall(_request("gc-0"))
        readers.append(threading.Thread(target=read, args=(0,)))
        readers[-1].start()
        assert in_first.wait(10)
        for i in range(1, 9):
            conns[i].sendall(_request("gc-%d" % i))
            readers.append(threading.Thread(target=read, args=(i,)))
            readers[-1].start()
        time.sleep(0.5)  # all eight requests are in the server's socket buffers
        go.set()
        for t in readers:
            t.join(20)
    finally:
        for c in conns:
            c.close()
    assert [r.status for r in results] == [200] * 9, [(r.status, r.text) for r in results if r]
    # no answer before its commit: none during the first, at most the
    # first's during the second (it went out before the second began, but
    # its reader thread may not have run yet: 0 or 1)
    assert [c[0] for c in commits] == [1, 8], commits
    assert commits[0][1:] == (0, 0) and commits[1][1] <= 1 and commits[1][2] <= 1, commits
    stored = set(srv.ca.store.all_serials())
    for r in results:
        assert serial_hex(r.certs()[0].serial_number) in stored


def _fail_first_commit(store):
    """The first group commit of `store` fails every row (as a full disk
    would; nothing written), the later ones write."""
    fail = [True]

    def hook(rows, real):
        if fail[0]:
            fail[0] = False
            return [StoreError("the CA store ca.db: no space on the disk (test): nothing was written")] * len(rows)
        return real(rows)

    _wrap_insert(store, hook)


def test_https_failed_commit_answers_500_and_the_server_goes_on(est_server):
    srv = est_server
    before = set(srv.ca.store.all_serials())
    _fail_first_commit(srv.ca.store)
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("gc-fail")[1], auth=(USER, PASSWORD))
    assert r.status == 500 and "no space on the disk" in r.text, (r.status, r.text)
    assert b"BEGIN" not in r.body and not r.header("content-transfer-encoding")
    assert set(srv.ca.store.all_serials()) == before
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("gc-ok")[1], auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    assert serial_hex(r.certs()[0].serial_number) in set(srv.ca.store.all_serials())


def test_https_threads_mode_writes_at_once(est_server_factory):
    """io = "threads": no group; each certificate is written before its
    answer by the worker that issued it."""
    srv = est_server_factory(config_text=BASE_CONFIG.replace("workers = 8", 'workers = 8\nio = "threads"'))
    assert srv.server.io == "threads"
    calls = []
    _wrap_insert(srv.ca.store, lambda rows, real: calls.append(rows) or real(rows))
    r = srv.request("POST", srv.path("simpleenroll"), make_csr("gc-threads")[1], auth=(USER, PASSWORD))
    assert r.status == 200, r.text
    assert calls == []
    assert serial_hex(r.certs()[0].serial_number) in set(srv.ca.store.all_serials())


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name in ("est_lite.server", "est_lite.ca")]


def test_https_access_line_says_ok_only_once_the_certificate_is_stored(est_server, caplog):
    """The '-> ok' line of an enrollment comes after the certificate's
    commit and its 'issued serial' line, as with a write per certificate;
    a request whose commit failed has no '-> ok' line (on 84f5b26 the line
    was written before the commit: 'ok' for a client answered 500)."""
    import logging

    srv = est_server
    _fail_first_commit(srv.ca.store)
    with caplog.at_level(logging.INFO, logger="est_lite"):
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("gc-log-fail")[1], auth=(USER, PASSWORD))
        assert r.status == 500, r.text
        failed = _lines(caplog)
        caplog.clear()
        r = srv.request("POST", srv.path("simpleenroll"), make_csr("gc-log-ok")[1], auth=(USER, PASSWORD))
        assert r.status == 200, r.text
        ok = _lines(caplog)
    assert not [m for m in failed if "simpleenroll -> ok" in m], failed
    assert [m for m in failed if "-> 500" in m or "internal error" in m], failed
    assert not [m for m in failed if "issued serial" in m], failed
    issued = [i for i, m in enumerate(ok) if m.startswith("issued serial") and "CN=gc-log-ok" in m]
    done = [i for i, m in enumerate(ok) if "simpleenroll -> ok" in m]
    assert len(issued) == 1 and len(done) == 1 and issued[0] < done[0], ok


def test_rows_written_one_by_one_keep_their_own_outcome(tmp_path):
    """After a taken serial the rows go one by one, each its own commit:
    one that then fails (here a full disk: PRAGMA max_page_count) fails
    alone; the row written before it is durable, so it is None (its answer
    goes out and its audit line is written). On 84f5b26 every row was
    reported failed, the written one too: a stored certificate with no
    'issued serial' line, whose client was answered 500."""
    ca = init_ca(str(tmp_path / "ca"))
    st = ca.store
    st.add_issued(0xABC, b"\x30\x00", "CN=first", 1, 2)
    db = st._wdb()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute("PRAGMA max_page_count=%d" % (pages + 2))
    logged = []
    group = GroupCommit()
    group.install()
    try:
        for serial, der in ((0x1, b"\x30\x01"), (0xABC, b"\x30\x02"), (0x2, b"\x30" * 200000)):
            st.add_issued(serial, der, "CN=%x" % serial, 1, 2, after=lambda s=serial: logged.append(s))
        errors = group.flush()
    finally:
        group.uninstall()
    db.execute("PRAGMA max_page_count=1073741823")
    assert errors[0] is None, errors
    assert isinstance(errors[1], DuplicateSerial), errors
    assert isinstance(errors[2], StoreError) and "no space on the disk" in str(errors[2]), errors
    assert logged == [0x1]
    stored = _stored(st.path)
    assert "1" in stored and "2" not in stored
    st.close()


def test_https_pipelined_enrollments_each_wait_for_their_own_commit(est_server):
    """Two enrollments pipelined in one send on one connection: the second
    is read after the first's answer went out (after the first commit) and
    has a commit of its own; neither answer is on the wire before the
    commit that stored its certificate."""
    srv = est_server
    got = []  # the bytes the client received, as they came
    commits = []  # (serials in the commit, answers received by its end)

    def hook(rows, real):
        time.sleep(0.2)  # an answer sent before this commit would arrive meanwhile
        out = real(rows)
        commits.append(([r[0] for r in rows], b"".join(got).count(b"HTTP/1.1 ")))
        return out

    _wrap_insert(srv.ca.store, hook)
    c = _connect(srv)
    first = _request("gc-pipe-1").replace(b"Connection: close\r\n", b"")
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: c.recv(65536), b"")))
    try:
        c.sendall(first + _request("gc-pipe-2"))
        reader.start()
        reader.join(20)
    finally:
        c.close()
    data = b"".join(got)
    answers = []
    while data:
        r = Response.parse(data)
        answers.append(r)
        head = data.index(b"\r\n\r\n") + 4
        data = data[head + int(r.header("content-length")):]
    assert [r.status for r in answers] == [200, 200], [(r.status, r.text) for r in answers]
    serials = [serial_hex(r.certs()[0].serial_number) for r in answers]
    assert [s for s, _ in commits] == [[serials[0]], [serials[1]]], (commits, serials)
    assert [n for _, n in commits] == [0, 1] or [n for _, n in commits] == [0, 0], commits
    assert set(serials) <= set(srv.ca.store.all_serials())
