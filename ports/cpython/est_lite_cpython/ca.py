"""The reference CA: a root (and optionally an intermediate) with P-256 keys in
a data directory, certificates issued with `cryptography`, records in the
SQLite `Store`, CRL generated from it.

Data directory layout (written by `init_ca` / `est-lite ca init`)::

    root.pem  root.key            self-signed root (key 0600)
    intermediate.pem/.key         issuing CA when --intermediate was given
    server.pem  server.key        TLS certificate for the EST server
                                  (server.pem holds the chain)
    ca.db                         SQLite store (WAL), 0600
    passwords                     HTTP Basic/Digest users (est-lite ca passwd)

After `rollover_ca` / `est-lite ca rollover` (root CA key update, RFC 4210
§4.4, served in /cacerts as RFC 7030 §4.1.3 asks)::

    root.pem  root.key            the NEW root (NewWithNew) and its key:
                                  same subject name, new key, new SKI
    root-old.pem  root-old.key    the previous root (OldWithOld) and its key
                                  (the key is used for nothing any more;
                                  kept 0600 so nothing is lost)
    root-new-with-old.pem         NewWithOld: the new key signed by the old
                                  one (until the old root expires)
    root-old-with-new.pem         OldWithNew: the old key signed by the new
                                  one (same dates as the old root)
    intermediate.pem              (with an intermediate) the SAME key,
                                  re-certified by the new root
    intermediate-old.pem          its previous certificate
    server.pem  server.key        a new TLS key and certificate, still from
                                  the OLD path (old root key, or the
                                  intermediate under its old certificate):
                                  leaf, (old intermediate,) OldWithNew,
                                  NewWithNew, NewWithOld, OldWithOld (each
                                  certifies the one before it) -- devices
                                  of either root verify it, Mbed TLS ones
                                  included

`finish_rollover_tls` / `est-lite ca rollover --finish` (once devices have
renewed) moves the TLS certificate to the new key: server.pem then holds
leaf, (intermediate,) NewWithOld, OldWithOld, OldWithNew, NewWithNew (each
certifies the one before it) while the old root is valid, and only the
issuing chain after that.

While the rollover writes, rollover.new/ holds the new files; once all are
complete rollover.journal names them and they are renamed into place. A
LocalCA opened with a journal present finishes the renames first: an
interruption before the journal leaves the old CA as it was, one after it
the new one.

`LocalCA` is the default CA *backend* of `EstService`. Any object with the
same three methods can replace it (see docs/server.md), for instance one
that forwards the request to an external CA:

    ca_certs(label) -> [x509.Certificate]      issuing CA first, then its root;
                                               after a rollover NewWithOld,
                                               OldWithOld, OldWithNew follow
    issue(req: IssueRequest) -> x509.Certificate
    is_revoked(cert) -> bool                   for client certs it issued
"""

import datetime
import functools
import logging
import os
import shlex
import time

try:  # CPython's own SHA-1: the SKI hash without the system libcrypto (cold per request)
    from _sha1 import sha1 as _sha1
except ImportError:  # pragma: no cover - builds without the builtin module
    from hashlib import sha1 as _sha1

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from est_lite.der import header as _header
from est_lite.errors import EstError, LocalProtocolError

from .store import DuplicateSerial, Store, restore_hint

# one INFO line per certificate issued (est-lite serve -v shows it): the
# audit trail in the log, as ca list / ca.db hold it
_audit = logging.getLogger("est_lite.ca")

ROOT_CERT = "root.pem"
ROOT_KEY = "root.key"
INT_CERT = "intermediate.pem"
INT_KEY = "intermediate.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
DB_FILE = "ca.db"
PASSWORDS = "passwords"
# root CA key update (rollover_ca)
OLD_ROOT_CERT = "root-old.pem"
OLD_ROOT_KEY = "root-old.key"
NEW_WITH_OLD = "root-new-with-old.pem"
OLD_WITH_NEW = "root-old-with-new.pem"
OLD_INT_CERT = "intermediate-old.pem"
ROLLOVER_STAGE = "rollover.new"
ROLLOVER_JOURNAL = "rollover.journal"
ROLLOVER_FILES = (OLD_ROOT_CERT, OLD_ROOT_KEY, NEW_WITH_OLD, OLD_WITH_NEW, OLD_INT_CERT)

EKU_BY_NAME = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ocspSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    # id-kp-cmcRA (RFC 6402): the certificate of a Registration Authority
    # such as `est-lite proxy` (RFC 7030 §3.7; a server's ra_trust)
    "cmcRA": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28"),
}

_UTC = datetime.timezone.utc


class CaNotValid(EstError):
    """The CA cannot issue now: its certificate (or one above it) expired,
    or this host's clock is before the CA's validity. A server-side fault:
    HTTP 500 / CoAP 5.00 with the reason, nothing issued."""

    http_status = 500
    coap_code = 0xA0


def _utc_text(t):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _dt(t):
    return datetime.datetime.fromtimestamp(int(t), _UTC)


def load_pem_file(path, what):
    """The certificate ("... certificate") or unencrypted private key ("...
    key") in the PEM file `path`. A file that cannot be read (missing,
    permissions, a directory) or does not hold one raises LocalProtocolError
    naming the file and `what` it should be: a damaged data directory is an
    operator's matter, not a bug."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LocalProtocolError("cannot read the %s %s: %s; %s" % (what, path, e.strerror or e,
                                                                     restore_hint(os.path.dirname(path) or "."))) from None
    try:
        if what.endswith("key"):
            return serialization.load_pem_private_key(data, None)
        return x509.load_pem_x509_certificate(data)
    except TypeError as e:  # an encrypted key: "Password was not given but private key is encrypted"
        raise LocalProtocolError("the %s %s cannot be used: %s (est-lite needs it unencrypted, 0600)"
                                 % (what, path, e)) from None
    except ValueError:
        raise LocalProtocolError("the %s %s is damaged or not a PEM %s: %s"
                                 % (what, path, "private key" if what.endswith("key") else "certificate",
                                    restore_hint(os.path.dirname(path) or "."))) from None


def open_private_files(paths):
    """[(path, mode)] of the existing files among `paths` that users other
    than the owner may read or write (mode & 0o077): private keys, the
    store and the password file copied without their modes (`cp -r`)."""
    out = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & 0o077:
            out.append((path, mode & 0o777))
    return out


def private_files(data_dir):
    """The files of a CA data directory only its owner should read."""
    return [os.path.join(data_dir, f) for f in (ROOT_KEY, INT_KEY, SERVER_KEY, DB_FILE, PASSWORDS, OLD_ROOT_KEY)]


def _create(path, mode):
    """The fd of `path` made anew with exactly `mode`, whatever the umask.
    What was at that name (a file, a symlink to /etc/..., a hard link, a
    FIFO) is removed first, never written through or waited on: a data
    directory or --out in a directory other users can write (/tmp) must
    not make est-lite write a key into someone else's file."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_private(path, data, mode=0o600):
    """Write a new file readable by its owner only (0600) from the first
    byte on (mode=0o644: a certificate, not writable by others whatever the
    umask). Never writes through what was at that name (_create); a file
    that cannot be written is one LocalProtocolError naming it."""
    try:
        fd = _create(path, mode)
        try:
            _write_all(fd, data)
        except BaseException:  # never a half-written key left (a full disk)
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        os.close(fd)
    except OSError as e:
        raise LocalProtocolError("cannot write %s: %s" % (path, e.strerror or e)) from None


def _key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_cert(subject, issuer, pub, signer_key, issuer_pub, now, days, path_len, not_before=None, not_after=None):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_dt(now - 300 if not_before is None else not_before))
        .not_valid_after(_dt(now + days * 86400 if not_after is None else not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False)
    )
    return b.sign(signer_key, hashes.SHA256())


def _san_for_names(names):
    import ipaddress

    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
            continue
        except ValueError:
            pass
        labels = n.split(".") if isinstance(n, str) else [""]
        if not n or len(n) > 253 or not all(
                0 < len(lab) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_*") for c in lab) for lab in labels):
            raise LocalProtocolError("TLS server name %r is neither an IP address nor a DNS name "
                                     "(ASCII letters, digits, '-', dot-separated)" % (n,))
        out.append(x509.DNSName(n))
    return out


def pin_of(cert):
    """The bootstrap pin of a certificate as `--pin` takes it: sha256:<hex of
    the SHA-256 of its DER>."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def check_init_args(*, common_name="est-lite Root CA", server_names=("localhost",), validity_days=3650):
    """LocalProtocolError (one line) for arguments init_ca cannot use; it
    writes nothing, so a caller can check everything first."""
    if not isinstance(common_name, str) or not common_name.strip() or len(common_name) > 64:
        raise LocalProtocolError("the CA common name must be 1..64 characters, not %r" % (common_name,))
    if not isinstance(validity_days, int) or not 1 <= validity_days <= 36500:
        raise LocalProtocolError("the CA validity must be 1..36500 days, not %r" % (validity_days,))
    names = list(server_names)
    if not names:
        raise LocalProtocolError("give at least one TLS server name")
    for n in names:
        _san_for_names([n])


def check_data_dir(data_dir):
    """LocalProtocolError if data_dir exists and every user may write it
    (/tmp itself, a 0777 directory); writes nothing (`ca init` checks it
    before anything it might have to undo)."""
    if os.path.isdir(data_dir) and os.stat(data_dir).st_mode & 0o002:  # /tmp itself, a 0777 directory
        raise LocalProtocolError("%s is writable by every user (mode %04o): anyone could replace the CA's keys and "
                                 "certificates there; chmod 700 %s if it is yours, else give a directory of its own "
                                 "(est-lite creates it 0700)" % (data_dir, os.stat(data_dir).st_mode & 0o7777, data_dir))


def init_ca(
    data_dir,
    *,
    common_name="est-lite Root CA",
    organization="est-lite",
    intermediate=False,
    server_names=("localhost", "127.0.0.1", "::1"),
    validity_days=3650,
    force=False,
    now=None,
    root_path_len=None,
):
    """Create a CA in data_dir: P-256 root, optional intermediate, a TLS
    server certificate for server_names, an empty store. Refuses to overwrite
    an existing CA unless force=True. Returns the LocalCA.

    The root carries no pathLenConstraint (root_path_len=None) unless asked:
    the depth is bounded below it (the intermediate's pathLen 0, leaves
    CA:FALSE), and Mbed TLS (MicroPython's `tls`) counts the self-issued
    NewWithOld of a later root key update against the old root's pathLen,
    where RFC 5280 6.1.4 (l) does not, so a device that trusts only the old
    root could not verify the new key's chain (docs/server.md). Roots made
    before 2026-11-29 have 0 (1 with an intermediate)."""
    now = int(time.time() if now is None else now)
    check_init_args(common_name=common_name, server_names=server_names, validity_days=validity_days)
    if os.path.exists(os.path.join(data_dir, ROOT_KEY)) and not force:
        raise LocalProtocolError("a CA already exists in %s (use --force to replace it)" % data_dir)
    check_data_dir(data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if force:
        for f in (ROOT_CERT, ROOT_KEY, INT_CERT, INT_KEY, SERVER_CERT, SERVER_KEY, DB_FILE, DB_FILE + "-wal",
                  DB_FILE + "-shm", ROLLOVER_JOURNAL) + ROLLOVER_FILES:
            p = os.path.join(data_dir, f)
            if os.path.exists(p):
                os.unlink(p)
        _remove_stage(data_dir)
    root_key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    root_name = x509.Name(attrs)
    root = _ca_cert(root_name, root_name, root_key.public_key(), root_key, root_key.public_key(), now, validity_days, root_path_len)
    write_private(os.path.join(data_dir, ROOT_KEY), _key_pem(root_key))
    write_private(os.path.join(data_dir, ROOT_CERT), _cert_pem(root), 0o644)
    issuer_key, issuer = root_key, root
    if intermediate:
        ikey = ec.generate_private_key(ec.SECP256R1())
        icn = common_name.replace("Root CA", "Issuing CA") if "Root CA" in common_name else common_name + " Issuing CA"
        iattrs = [x509.NameAttribute(NameOID.COMMON_NAME, icn)]
        if organization:
            iattrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        icert = _ca_cert(x509.Name(iattrs), root_name, ikey.public_key(), root_key, root_key.public_key(), now, validity_days, 0)
        write_private(os.path.join(data_dir, INT_KEY), _key_pem(ikey))
        write_private(os.path.join(data_dir, INT_CERT), _cert_pem(icert), 0o644)
        issuer_key, issuer = ikey, icert
    ca = LocalCA(data_dir, new_store=True)
    # the EST server's own TLS certificate, recorded in the store like any other
    skey = ec.generate_private_key(ec.SECP256R1())
    names = list(server_names) or ["localhost"]
    sname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    clock, ca.clock = ca.clock, (lambda: now)  # the TLS certificate starts with the CA
    try:
        scert = ca.issue_raw(
            skey.public_key(),
            sname,
            sans=_san_for_names(names),
            days=min(validity_days, 825),
            eku=("serverAuth",),
            label="",
            requester="est-lite ca init",
        )
    finally:
        ca.clock = clock
    write_private(os.path.join(data_dir, SERVER_KEY), _key_pem(skey))
    write_private(os.path.join(data_dir, SERVER_CERT), _cert_pem(scert) + (_cert_pem(issuer) if intermediate else b""),
                  0o644)
    return ca


# ---------------------------------------------------------------- root CA key update (RFC 4210 §4.4)


def _remove_stage(data_dir):
    """Remove an unfinished rollover's staging directory (no journal: the
    old CA is the valid one)."""
    stage = os.path.join(data_dir, ROLLOVER_STAGE)
    if os.path.islink(stage):  # never empty the directory a link planted there points to
        os.unlink(stage)
    elif os.path.isdir(stage):
        for f in os.listdir(stage):
            os.unlink(os.path.join(stage, f))
        os.rmdir(stage)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_synced(path, data, private=False):
    fd = _create(path, 0o600 if private else 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def finish_rollover(data_dir):
    """Complete a rollover whose files are all staged (rollover.journal
    exists): rename each named file of rollover.new/ into data_dir, then
    remove the journal. Idempotent: a file already moved is skipped, so an
    interruption here is finished by the next call (every LocalCA does)."""
    journal = os.path.join(data_dir, ROLLOVER_JOURNAL)
    stage = os.path.join(data_dir, ROLLOVER_STAGE)
    try:
        with open(journal) as f:
            names = [n for n in f.read().split() if n]
    except OSError as e:
        raise LocalProtocolError("cannot read %s to finish the root CA rollover: %s"
                                 % (journal, e.strerror or e)) from None
    for n in names:
        if os.path.basename(n) != n or n.startswith("."):
            raise LocalProtocolError("%s is damaged (file name %r): restore the CA from a backup" % (journal, n))
        src = os.path.join(stage, n)
        if os.path.exists(src):
            os.replace(src, os.path.join(data_dir, n))
    _fsync_dir(data_dir)
    os.unlink(journal)
    _remove_stage(data_dir)
    _fsync_dir(data_dir)


def _path_len(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _commit(data_dir, files):
    """Write files [(name, bytes, private)] into data_dir all or nothing:
    staged in rollover.new/ (synced), then the journal naming them (the
    commit point), then renamed into place (finish_rollover). An error
    before the journal removes the staging and leaves data_dir as it was."""
    p = lambda f: os.path.join(data_dir, f)  # noqa: E731
    stage = p(ROLLOVER_STAGE)
    _remove_stage(data_dir)  # a previous attempt that stopped before its journal
    os.mkdir(stage, 0o700)
    try:
        for n, data, private in files:
            _write_synced(os.path.join(stage, n), data, private)
        _fsync_dir(stage)
        tmp = p(ROLLOVER_JOURNAL + ".tmp")
        _write_synced(tmp, ("\n".join(n for n, _, _ in files) + "\n").encode())
        os.replace(tmp, p(ROLLOVER_JOURNAL))  # the commit point
        _fsync_dir(data_dir)
    except BaseException:
        if not os.path.exists(p(ROLLOVER_JOURNAL)):
            try:
                _remove_stage(data_dir)
                if os.path.exists(p(ROLLOVER_JOURNAL + ".tmp")):
                    os.unlink(p(ROLLOVER_JOURNAL + ".tmp"))
            except OSError:
                pass
        raise
    finish_rollover(data_dir)


def _tls_names(ca):
    """(subject, [GeneralName]) of the CA's current TLS server certificate,
    or those of `ca init` when server.pem is missing or damaged."""
    try:
        with open(ca.server_cert_file, "rb") as f:
            cur = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), _san_for_names(
            ("localhost", "127.0.0.1", "::1"))
    try:
        sans = list(cur.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    return cur.subject, sans


def _tls_files(ca, chain_after, now, days, requester):
    """[(server.pem, ...), (server.key, ...)]: a new key and a serverAuth
    certificate from `ca` (recorded in its store) for the current names,
    server.pem holding it and then chain_after."""
    subject, sans = _tls_names(ca)
    skey = ec.generate_private_key(ec.SECP256R1())
    clock, ca.clock = ca.clock, (lambda: now)
    try:
        scert = ca.issue_raw(skey.public_key(), subject, sans=sans, days=days, eku=("serverAuth",), label="",
                             requester=requester)
    finally:
        ca.clock = clock
    return [(SERVER_CERT, b"".join(_cert_pem(c) for c in [scert] + list(chain_after)), False),
            (SERVER_KEY, _key_pem(skey), True)]


def rollover_ca(data_dir, *, validity_days=3650, force=False, now=None):
    """Root CA key update (RFC 4210 §4.4) of the CA in data_dir: a new P-256
    root key and, all with the root's subject name unchanged,
    NewWithNew (the new self-signed root, validity_days), NewWithOld (the
    new key signed by the old, until the old root expires), OldWithNew (the
    old key signed by the new, the old root's dates); a new certificate
    from the new root for the SAME intermediate key (--intermediate CAs).
    New certificates are issued by the new key (or the intermediate,
    re-certified) from then on.

    The TLS server gets a new key and certificate still on the OLD path
    (the old root key, or the intermediate under its old certificate), its
    server.pem [leaf, (old intermediate,) OldWithNew, NewWithNew, NewWithOld,
    OldWithOld]: a device that trusts only the old root verifies it as before
    (OpenSSL and Mbed TLS look at trusted certificates first; Mbed TLS, unlike
    OpenSSL, counts a self-issued NewWithOld against the old root's
    pathLenConstraint, which roots of `init_ca` had before 2026-11-29, and
    then cannot use the new-key path), one that trusts
    only the new root goes through OldWithNew; a pin of either root is met on
    a path of signatures (dtls_client.check_pin). `finish_rollover_tls` later
    moves the TLS certificate to the new key.

    The new root, NewWithOld and OldWithNew have no pathLenConstraint (for
    the same Mbed TLS count). Files are staged and committed under a
    journal (module docstring). Refuses a second rollover while the previous
    root's files are there unless force=True (which drops that older
    generation), and a CA whose root has expired. Returns the new LocalCA."""
    now = int(time.time() if now is None else now)
    if not isinstance(validity_days, int) or not 1 <= validity_days <= 36500:
        raise LocalProtocolError("the new root's validity must be 1..36500 days, not %r" % (validity_days,))
    ca = LocalCA(data_dir)  # "no CA in ...", and finishes an interrupted rollover
    try:
        p = ca.path
        if ca.old_root is not None and not force:
            raise LocalProtocolError(
                "the root CA key in %s was already rolled over on %s (%s holds the previous root, served in /cacerts "
                "until it expires on %s); --force rolls over again and drops that previous generation"
                % (ca.data_dir, _utc_text(ca.root.not_valid_before_utc.timestamp() + 300), p(OLD_ROOT_CERT),
                   _utc_text(ca.old_root.not_valid_after_utc.timestamp())))
        old_root = ca.root
        old_na = int(old_root.not_valid_after_utc.timestamp())
        if old_na <= now:
            raise LocalProtocolError(
                "the root CA certificate %s expired on %s: a key update needs it valid (devices check the new key "
                "with it); start a new CA with `est-lite ca init --force --data-dir %s` and give devices its pin"
                % (p(ROOT_CERT), _utc_text(old_na), ca.data_dir))
        old_key = load_pem_file(p(ROOT_KEY), "root CA private key")
        old_pub = old_root.public_key()
        if old_key.public_key() != old_pub:
            raise LocalProtocolError("%s does not belong to %s: restore the CA from a backup" % (p(ROOT_KEY),
                                                                                                p(ROOT_CERT)))
        name = old_root.subject
        new_key = ec.generate_private_key(ec.SECP256R1())
        new_pub = new_key.public_key()
        nwn = _ca_cert(name, name, new_pub, new_key, new_pub, now, validity_days, None)
        new_na = int(nwn.not_valid_after_utc.timestamp())
        # NewWithOld: from NewWithNew's notBefore to the old root's end (no later than the new root's)
        nwo = _ca_cert(name, name, new_pub, old_key, old_pub, now, 0, None, not_before=now - 300,
                       not_after=min(old_na, new_na))
        # OldWithNew: the old root's dates (RFC 4210 §4.4)
        own = _ca_cert(name, name, old_pub, new_key, new_pub, now, 0, None,
                       not_before=int(old_root.not_valid_before_utc.timestamp()), not_after=old_na)
        files = [  # (name, bytes, private)
            (OLD_ROOT_CERT, _cert_pem(old_root), False),
            (OLD_ROOT_KEY, _key_pem(old_key), True),
            (NEW_WITH_OLD, _cert_pem(nwo), False),
            (OLD_WITH_NEW, _cert_pem(own), False),
            (ROOT_CERT, _cert_pem(nwn), False),
            (ROOT_KEY, _key_pem(new_key), True),
        ]
        old_mid = []
        if ca.issuer is not ca.root:
            old_int = ca.issuer
            old_mid = [old_int]
            inew = _ca_cert(old_int.subject, name, ca._key.public_key(), new_key, new_pub, now, validity_days,
                            _path_len(old_int))
            files += [(OLD_INT_CERT, _cert_pem(old_int), False), (INT_CERT, _cert_pem(inew), False)]
        # the TLS certificate on the old path (cut at the old root's end by issue_raw); each certificate of
        # server.pem certifies the one before it (NewWithOld has NewWithNew's key, OldWithOld signed it)
        files += _tls_files(ca, old_mid + [own, nwn, nwo, old_root], now, min(validity_days, 825),
                            "est-lite ca rollover")
        _commit(ca.data_dir, files)
    finally:
        ca.store.close()
    return LocalCA(ca.data_dir)


def finish_rollover_tls(data_dir, *, days=825, now=None):
    """After rollover_ca: a new TLS server key and certificate from the NEW
    key (the new root, or the intermediate under its new certificate);
    server.pem [leaf, (intermediate,) NewWithOld, OldWithOld, OldWithNew,
    NewWithNew] while the old root is valid (each certifies the one before
    it: OpenSSL clients of either root and a pin of either root verify it;
    Mbed TLS clients that trust only the old root too, unless that root
    has a pathLenConstraint, as `init_ca` made them before 2026-11-29), [leaf,
    (intermediate)] once it has expired. Returns the LocalCA."""
    now = int(time.time() if now is None else now)
    ca = LocalCA(data_dir)
    try:
        if ca.old_root is None:
            raise LocalProtocolError("no root CA key update to finish in %s: run `est-lite ca rollover` first"
                                     % ca.data_dir)
        mid = ca.chain[:-1]
        links = []
        if now < ca._old_until:
            nwo, oldwithold, own = ca.rollover_certs
            links = [nwo, oldwithold, own, ca.root]
        _commit(ca.data_dir, _tls_files(ca, mid + links, now, days, "est-lite ca rollover --finish"))
    finally:
        ca.store.close()
    return LocalCA(ca.data_dir)


class IssueRequest:
    """What the service asks a CA backend to certify.

    `public_key` and `subject` may be given as None together with the
    request's `csr` (and `spki_der` for the key): they are then built from
    it on first use, so a backend that reads only the DER hints below (the
    built-in LocalCA) never makes the cryptography objects. A backend that
    reads `req.public_key` / `req.subject` sees the same objects as ever."""

    def __init__(self, public_key, subject, *, sans=(), label="", profile=None, csr=None, requester=None,
                 request_id=None, op="simpleenroll", renewing=None, spki_der=None, subject_der=None,
                 subject_text=None):
        self._public_key = public_key  # cryptography public key (or None: from spki_der)
        self._subject = subject  # x509.Name (or None: the CSR's subject)
        self.sans = list(sans)  # [x509.GeneralName]
        self.label = label or ""
        self.profile = profile  # config.Profile (validity_days, eku, ...)
        self.csr = csr  # x509.CertificateSigningRequest as received (None if none)
        self.requester = requester  # text identifying the authenticated client
        self.request_id = request_id  # approval request id, if any
        self.op = op
        self.renewing = renewing  # x509.Certificate being renewed (simplereenroll)
        # optional DER of the same fields, sliced from the CSR by the service
        # (backends may ignore them): SubjectPublicKeyInfo of public_key, Name
        # of subject, and subject.rfc4514_string()
        self.spki_der = spki_der
        self.subject_der = subject_der
        self.subject_text = subject_text

    @property
    def public_key(self):
        k = self._public_key
        if k is None:
            k = self._public_key = serialization.load_der_public_key(self.spki_der)
        return k

    @public_key.setter
    def public_key(self, k):
        self._public_key = k
        self.spki_der = None

    @property
    def subject(self):
        n = self._subject
        if n is None:
            n = self._subject = self.csr.subject
        return n

    @subject.setter
    def subject(self, n):
        self._subject = n
        self.subject_der = self.subject_text = None


class LocalCA:
    """The built-in CA backend over a data directory."""

    def __init__(self, data_dir, *, store=None, synchronous="NORMAL", clock=time.time, new_store=False):
        """new_store=True creates the store (ca.db) if it is missing; by
        default a missing store is an error: a CA without its store would
        start again with no record of what it issued, revoked or has
        pending, so revoked certificates would pass again (init_ca passes
        True)."""
        self.data_dir = str(data_dir)
        self.clock = clock
        p = lambda f: os.path.join(self.data_dir, f)  # noqa: E731
        if os.path.exists(p(ROLLOVER_JOURNAL)):  # a root key update interrupted after its commit point
            finish_rollover(self.data_dir)
        if not os.path.exists(p(ROOT_CERT)):
            raise LocalProtocolError("no CA in %s: run `est-lite ca init --data-dir %s` first" % (data_dir, data_dir))
        self.root = load_pem_file(p(ROOT_CERT), "root CA certificate")
        if os.path.exists(p(INT_CERT)):
            self.issuer = load_pem_file(p(INT_CERT), "intermediate CA certificate")
            self._key = load_pem_file(p(INT_KEY), "intermediate CA private key")
            self.chain = [self.issuer, self.root]
        else:
            self.issuer = self.root
            self._key = load_pem_file(p(ROOT_KEY), "root CA private key")
            self.chain = [self.root]
        if store is None and not new_store and not os.path.exists(p(DB_FILE)):
            raise LocalProtocolError(
                "the CA store %s is missing: without it this CA would forget every certificate it issued, every "
                "revocation and every pending request (revoked certificates would be accepted again); %s; or start "
                "a new CA with `est-lite ca init --force --data-dir %s`"
                % (p(DB_FILE), restore_hint(self.data_dir), shlex.quote(self.data_dir)))
        self.store = store if store is not None else Store(p(DB_FILE), synchronous=synchronous, clock=clock)
        self._ski = x509.SubjectKeyIdentifier.from_public_key(self.issuer.public_key())
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer.public_key())
        self._issuer_der = self.issuer.public_bytes(serialization.Encoding.DER)
        # the fixed parts of every certificate, DER-encoded once (see _issue_der)
        self._mine = {}  # DER of certificates whose signature by the issuing CA verified (issued_by_me)
        self._fast = isinstance(self._key, ec.EllipticCurvePrivateKey)
        # a certificate never outlives, nor predates, any CA above it: the
        # earliest notAfter and the latest notBefore of the chain
        self._ca_after = min(int(c.not_valid_after_utc.timestamp()) for c in self.chain)
        self._ca_before = max(int(c.not_valid_before_utc.timestamp()) for c in self.chain)
        self._issuer_name_der = self.issuer.subject.public_bytes()
        self._aki_ext_der = _ext_der(_OID_AKI, False, self._aki.public_bytes())
        self._alg_issuer_der = _ALG_ECDSA_SHA256 + self._issuer_name_der
        self._ext_head_ec = _BC_LEAF_DER + _KU_EC_DER + self._aki_ext_der
        self._ext_head_other = _BC_LEAF_DER + _KU_OTHER_DER + self._aki_ext_der
        self._validity = (None, None, b"")  # (not_before, not_after, Validity DER) of the last certificate
        self._ext_cache = {}  # (extensions before the SKI, EKU names) -> _ext_wrap(...)
        # after a root key update (rollover_ca): the previous root and the
        # link certificates, served by ca_certs until the previous root expires
        self.old_root = None
        self.rollover_certs = []  # [NewWithOld, OldWithOld, OldWithNew]
        self._old_until = None
        self._issuers = (self.issuer,)  # the certificates whose keys issued what the store holds
        if os.path.exists(p(OLD_ROOT_CERT)):
            self.old_root = load_pem_file(p(OLD_ROOT_CERT), "previous root CA certificate")
            self.rollover_certs = [load_pem_file(p(NEW_WITH_OLD), "NewWithOld link certificate"), self.old_root,
                                   load_pem_file(p(OLD_WITH_NEW), "OldWithNew link certificate")]
            self._old_until = int(self.old_root.not_valid_after_utc.timestamp())
            if self.issuer is self.root:  # the old root key issued the previous generation
                self._issuers = (self.issuer, self.old_root)

    # -- paths --
    def path(self, name):
        return os.path.join(self.data_dir, name)

    @property
    def server_cert_file(self):
        return self.path(SERVER_CERT)

    @property
    def server_key_file(self):
        return self.path(SERVER_KEY)

    # -- backend interface --
    def ca_certs(self, label=None):
        """The issuing CA first, then its root (NewWithNew after a rollover);
        after a root key update, until the previous root expires, then
        NewWithOld, OldWithOld (the previous root) and OldWithNew."""
        if self._old_until is None or self.clock() > self._old_until:
            return list(self.chain)
        return self.chain + self.rollover_certs

    @property
    def ca_certs_until(self):
        """When ca_certs() will change by itself (the previous root's expiry
        after a rollover), else None: a cache of its answer holds until then."""
        if self._old_until is None or self.clock() > self._old_until:
            return None
        return self._old_until

    def issue(self, req):
        return self._issue_req(req, False)

    def issue_der(self, req):
        """issue() returning the certificate's DER instead of an
        x509.Certificate (no certificate object is built on the hand-DER
        path; EstService uses this when the backend has it). A subclass or
        instance that replaces issue() is honoured: its certificate's DER."""
        if getattr(self.issue, "__func__", None) is not LocalCA.issue:
            return self.issue(req).public_bytes(serialization.Encoding.DER)
        return self._issue_req(req, True)

    def _issue_req(self, req, as_der):
        prof = req.profile
        days = prof.validity_days if prof is not None else 365
        eku = prof.eku if prof is not None else ("clientAuth",)
        return self.issue_raw(
            req._public_key if req.spki_der is not None else req.public_key,
            req._subject if req.subject_der is not None else req.subject,
            sans=req.sans,
            days=days,
            eku=eku,
            label=req.label,
            requester=req.requester,
            request_id=req.request_id,
            spki_der=req.spki_der,
            subject_der=req.subject_der,
            subject_text=req.subject_text,
            as_der=as_der,
            _req=req,
        )

    def is_revoked(self, cert):
        return self.store.is_revoked(cert.serial_number)

    def issued_by_me(self, cert):
        """True if the issuing key signed cert; after a rollover without an
        intermediate also the previous root key (same name, another key:
        the signature decides)."""
        if cert.issuer != self.issuer.subject:
            return False
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in self._mine:  # verified before: the same bytes verify the same way
            return True
        for issuer in self._issuers:
            try:
                cert.verify_directly_issued_by(issuer)
                break
            except (ValueError, TypeError, InvalidSignature):
                continue
        else:
            return False
        if len(self._mine) >= 4096:
            self._mine.clear()
        self._mine[der] = True
        return True

    # -- issuing --
    def issue_raw(self, public_key, subject, *, sans=(), days=365, eku=("clientAuth",), label="", requester=None,
                  request_id=None, _tries=5, fast=None, spki_der=None, subject_der=None, subject_text=None,
                  as_der=False, _req=None):
        """Issue and store a certificate; returns the x509.Certificate (its
        DER with as_der=True). fast=None picks the hand-assembled DER path
        when the CA key is an EC key (the same certificate fields as the
        CertificateBuilder path, fast=False, in a fraction of the Python
        objects). spki_der / subject_der / subject_text: the DER of
        public_key and subject and the subject's RFC 4514 text when the
        caller has them (public_key / subject may then be None)."""
        now = int(self.clock())
        not_after = now + int(days) * 86400
        if not_after > self._ca_after:  # cut at the CA's expiry (docs/server.md "Lifetimes")
            not_after = self._ca_after
            if not_after <= now:
                raise CaNotValid("this CA cannot issue: its certificate expired on %s; renew the CA (est-lite ca "
                                 "init --force starts a new one)" % _utc_text(self._ca_after))
        not_before = now - 60  # a minute back: a device whose clock is a little behind accepts it at once
        if not_before < self._ca_before:
            if now < self._ca_before:
                raise CaNotValid("this CA cannot issue: its certificate is valid only from %s and this host's clock "
                                 "says %s; set the clock" % (_utc_text(self._ca_before), _utc_text(now)))
            not_before = self._ca_before
        eku = tuple(eku or ())
        if fast is None:
            fast = self._fast
        for _ in range(_tries):
            if fast:
                serial, der, subject_text = self._issue_der(public_key, subject, sans, eku, not_before, not_after,
                                                            spki_der=spki_der, subject_der=subject_der,
                                                            subject_text=subject_text)
                after = None
                if _audit.isEnabledFor(logging.INFO):  # logged once the certificate is in the store
                    after = functools.partial(_audit.info, "issued serial %x: %s, until %s, label %r, to %s", serial,
                                              subject_text, _utc_text(not_after), label or "", requester or "-")
                try:
                    self.store.add_issued(serial, der, subject_text, not_before, not_after, label=label,
                                          requester=requester, request_id=request_id, after=after)
                except DuplicateSerial:
                    continue  # 2**-159 odds; draw a new serial
                return der if as_der else x509.load_der_x509_certificate(der)
            if _req is not None:  # the builder needs the objects
                public_key, subject = _req.public_key, _req.subject
            elif public_key is None or subject is None:
                if public_key is None:
                    public_key = serialization.load_der_public_key(spki_der)
                if subject is None:
                    raise LocalProtocolError("issue_raw without the hand-DER path needs the subject as an x509.Name")
            cert = self._issue_builder(public_key, subject, sans, eku, not_before, not_after)
            after = None
            if _audit.isEnabledFor(logging.INFO):
                after = functools.partial(_audit.info, "issued serial %x: %s, until %s, label %r, to %s",
                                          cert.serial_number, cert.subject.rfc4514_string(), _utc_text(not_after),
                                          label or "", requester or "-")
            try:
                self.store.add_certificate(cert, label=label, requester=requester, request_id=request_id,
                                           after=after)
            except DuplicateSerial:
                continue
            return cert.public_bytes(serialization.Encoding.DER) if as_der else cert
        raise LocalProtocolError("could not draw a unique serial number in %d tries" % _tries)

    def _issue_builder(self, public_key, subject, sans, eku, not_before, not_after):
        """The certificate through cryptography's CertificateBuilder (any CA
        key type; the reference the DER path is tested against)."""
        ku = _KU_EC if isinstance(public_key, ec.EllipticCurvePublicKey) else _KU_OTHER
        eku_ext = _eku_ext(eku)
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_dt(not_before))
            .not_valid_after(_dt(not_after))
            .add_extension(_BC_LEAF, critical=True)
            .add_extension(ku, critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if eku_ext is not None:
            b = b.add_extension(eku_ext, critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=len(subject) == 0)
        return b.sign(self._key, hashes.SHA256())

    def _issue_der(self, public_key, subject, sans, eku, not_before, not_after, *, spki_der=None, subject_der=None,
                   subject_text=None):
        """(serial, certificate DER, subject RFC 4514 text): the TBSCertificate
        assembled from precomputed DER pieces (version, signature algorithm and
        issuer name, BasicConstraints + KeyUsage + AKI, the validity of this
        second) and the request's subject and public key (their DER, as given
        or encoded here), signed with ecdsa-with-SHA256 by the CA key. Field
        for field what _issue_builder makes (tests/test_ca_fastpath.py
        compares them)."""
        serial = int.from_bytes(os.urandom(20), "big") >> 1  # x509.random_serial_number()
        if spki_der is None:
            spki_der = public_key.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        point = ec_spki_point(spki_der)
        if point is not None:
            head = self._ext_head_ec  # BasicConstraints, KeyUsage (EC), AKI
            ski = _sha1(point).digest()
        else:
            if public_key is None:
                public_key = serialization.load_der_public_key(spki_der)
            if isinstance(public_key, ec.EllipticCurvePublicKey):  # a curve without a fixed SPKI prefix here
                point = public_key.public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
                ski = _sha1(point).digest()
                head = self._ext_head_ec
            else:
                ski = x509.SubjectKeyIdentifier.from_public_key(public_key).public_bytes()[2:]
                head = self._ext_head_other
        if subject_der is None:
            subject_der = subject.public_bytes()
        if subject_text is None:
            subject_text = subject.rfc4514_string()
        if sans:
            tail = _eku_der(eku) if eku else b""
            # RFC 5280 4.2.1.6: critical when the subject is empty
            tail += _ext_der(_OID_SAN, subject_der == b"\x30\x00",
                             x509.SubjectAlternativeName(list(sans)).public_bytes())
            ext = _ext_wrap(head + _SKI_EXT_HEAD, tail)
        else:  # the same extensions around each SKI: headers cached per (key class, EKU)
            ext = self._ext_cache.get((head, eku))
            if ext is None:
                ext = self._ext_cache[(head, eku)] = _ext_wrap(head + _SKI_EXT_HEAD, _eku_der(eku) if eku else b"")
        v = self._validity
        if v[0] != not_before or v[1] != not_after:  # one entry: every enrollment of this second shares it
            v = self._validity = (not_before, not_after, _tlv(0x30, _der_time(not_before) + _der_time(not_after)))
        sb = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # INTEGER: minimal two's complement
        tbs = b"".join((_V3_SERIAL_HEAD, bytes((0x02, len(sb))), sb, self._alg_issuer_der, v[2], subject_der, spki_der,
                        ext[0], ski, ext[1]))
        tbs = _header(0x30, len(tbs)) + tbs
        sig = self._key.sign(tbs, _ECDSA_SHA256)
        n = len(sig) + 1
        hbit = _header(0x03, n)
        n += len(tbs) + len(_ALG_ECDSA_SHA256) + len(hbit)
        return serial, b"".join((_header(0x30, n), tbs, _ALG_ECDSA_SHA256, hbit, b"\x00", sig)), subject_text

    # -- revocation --
    def revoke(self, serial, reason="unspecified"):
        return self.store.revoke(serial, reason)

    def crl(self, *, next_update_days=7):
        """A CRL signed by the issuing CA listing every revocation in the store."""
        now = int(self.clock())
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuer.subject)
            .last_update(_dt(now - 60))
            .next_update(_dt(now + next_update_days * 86400))
            .add_extension(x509.CRLNumber(self.store.next_crl_number()), critical=False)
            .add_extension(self._aki, critical=False)
        )
        for serial, when, reason in self.store.revocations():
            rb = x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(_dt(when))
            flag = _REASONS.get(reason)
            if flag is not None:
                rb = rb.add_extension(x509.CRLReason(flag), critical=False)
            b = b.add_revoked_certificate(rb.build())
        return b.sign(self._key, hashes.SHA256())


def _ku(is_ec):
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not is_ec,
                         data_encipherment=False, key_agreement=is_ec, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


_KU_EC = _ku(True)
_KU_OTHER = _ku(False)
_BC_LEAF = x509.BasicConstraints(ca=False, path_length=None)
_EKU_CACHE = {}


def _eku_ext(eku):
    """x509.ExtendedKeyUsage for a tuple of names (cached), None for ()."""
    if not eku:
        return None
    ext = _EKU_CACHE.get(eku)
    if ext is None:
        try:
            ext = _EKU_CACHE[eku] = x509.ExtendedKeyUsage([EKU_BY_NAME[e] for e in eku])
        except KeyError as e:
            raise LocalProtocolError("unknown extended key usage %s (known: %s)" % (
                e.args[0], ", ".join(EKU_BY_NAME))) from None
    return ext


# -- DER pieces of the hand-assembled certificate (LocalCA._issue_der) --

def _der_len(n):
    if n < 0x80:
        return bytes((n,))
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(b),)) + b


def _tlv(tag, body):
    return bytes((tag,)) + _der_len(len(body)) + body


def _ext_wrap(before, after):
    """(the [3] extensions DER up to the 20-byte SKI key id, the DER after
    it): before ends with _SKI_EXT_HEAD."""
    n = len(before) + 20 + len(after)
    h30 = _header(0x30, n)
    return _header(0xA3, n + len(h30)) + h30 + before, after


def _der_int(v):
    """INTEGER of a non-negative int (minimal two's complement)."""
    return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _der_time(t):
    """UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5)."""
    g = time.gmtime(t)
    rest = (g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
    if g.tm_year < 2050:
        return _tlv(0x17, b"%02d%02d%02d%02d%02d%02dZ" % ((g.tm_year % 100,) + rest))
    return _tlv(0x18, b"%04d%02d%02d%02d%02d%02dZ" % ((g.tm_year,) + rest))


def _ext_der(oid_der, critical, value):
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }"""
    return _tlv(0x30, oid_der + (b"\x01\x01\xff" if critical else b"") + _tlv(0x04, value))


_OID_SKI = b"\x06\x03\x55\x1d\x0e"
_OID_KU = b"\x06\x03\x55\x1d\x0f"
_OID_SAN = b"\x06\x03\x55\x1d\x11"
_OID_BC = b"\x06\x03\x55\x1d\x13"
_OID_EKU = b"\x06\x03\x55\x1d\x25"
_OID_AKI = b"\x06\x03\x55\x1d\x23"
_ALG_ECDSA_SHA256 = b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"  # ecdsa-with-SHA256, no parameters
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_BC_LEAF_DER = _ext_der(_OID_BC, True, _BC_LEAF.public_bytes())
_KU_EC_DER = _ext_der(_OID_KU, True, _KU_EC.public_bytes())
_KU_OTHER_DER = _ext_der(_OID_KU, True, _KU_OTHER.public_bytes())
_EKU_DER = {}
_V3_SERIAL_HEAD = b"\xa0\x03\x02\x01\x02"  # [0] version v3 (the serial INTEGER follows)
# SubjectKeyIdentifier extension up to the 20-byte SHA-1 key id (RFC 5280 4.2.1.2 method 1)
_SKI_EXT_HEAD = b"\x30\x1d" + _OID_SKI + b"\x04\x16\x04\x14"
# SubjectPublicKeyInfo DER of the named-curve EC keys up to the uncompressed point
# (the bytes cryptography writes): prefix -> point length
EC_SPKI_PREFIXES = {
    bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200"): ("ec:P-256", 65),
    bytes.fromhex("3076301006072a8648ce3d020106052b81040022036200"): ("ec:P-384", 97),
    bytes.fromhex("30819b301006072a8648ce3d020106052b8104002303818600"): ("ec:P-521", 133),
}
_EC_SPKI_BY_LEN = {len(p) + n: (p, kt) for p, (kt, n) in EC_SPKI_PREFIXES.items()}


def ec_spki_key_type(spki):
    """'ec:P-256' / 'ec:P-384' / 'ec:P-521' when spki (bytes) is the
    SubjectPublicKeyInfo of a named-curve EC key with an uncompressed point
    exactly as cryptography encodes it, else None."""
    e = _EC_SPKI_BY_LEN.get(len(spki))
    if e is None or spki[len(e[0])] != 4 or spki[:len(e[0])] != e[0]:
        return None
    return e[1]


def ec_spki_point(spki):
    """The uncompressed point of such an EC SubjectPublicKeyInfo (the bytes
    the SKI hashes), or None for any other key or encoding."""
    e = _EC_SPKI_BY_LEN.get(len(spki))
    if e is None or spki[len(e[0])] != 4 or spki[:len(e[0])] != e[0]:
        return None
    return spki[len(e[0]):]


def _eku_der(eku):
    der = _EKU_DER.get(eku)
    if der is None:
        der = _EKU_DER[eku] = _ext_der(_OID_EKU, False, _eku_ext(eku).public_bytes())
    return der

_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
REVOCATION_REASONS = tuple(_REASONS)
