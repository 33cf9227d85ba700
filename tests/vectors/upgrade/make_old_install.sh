#!/bin/bash
# Builds an est-lite install with the code of an OLD commit, as an operator
# and a fleet had it, and packs what tests/test_upgrade.py needs into
# tests/vectors/upgrade/HASH.tar.gz. See README.md here.
#
#   git worktree add /tmp/old-HASH HASH
#   python -m venv /tmp/venv-HASH && /tmp/venv-HASH/bin/pip install -e '/tmp/old-HASH[server]'
#   tests/vectors/upgrade/make_old_install.sh HASH
#
# Needs micropython and mpy-cross on PATH (the MicroPython stores), openssl.
set -u
H=$1; V=/tmp/venv-$H/bin; O=/tmp/old-$H; A=/tmp/art-$H
OUT=$(cd "$(dirname "$0")" && pwd)/$H.tar.gz
rm -rf $A; mkdir -p $A; cd $A
E=$V/est-lite
$E ca init --data-dir ca-root --user alice:s3cret >/dev/null || exit 1
$E ca init --data-dir ca-int --intermediate --user alice:s3cret >/dev/null || exit 1
$E ca passwd --data-dir ca-int bob --password hunter22 >/dev/null || exit 1
cat > server.toml <<T
[server]
listen = "127.0.0.1"
port = 0
[ca]
data_dir = "ca-int"
[coaps]
port = 0
[profiles.default]
auth = ["basic", "digest", "cert"]
[profiles.factory]
auth = ["basic", "cert"]
manual_approval = true
retry_after = 1
T
$E serve --config server.toml --port-file https.port --coaps-port-file coaps.port > serve.log 2>&1 &
SERVE=$!
for i in $(seq 100); do [ -s https.port ] && [ -s coaps.port ] && break; sleep 0.2; done
HP=$(cat https.port); CP=$(cat coaps.port)
T="--trust ca-int/root.pem"
$E enroll --server https://127.0.0.1:$HP $T --user alice --password s3cret --cn dev-https --out dev-https || exit 1
$E enroll --server coaps://127.0.0.1:$CP $T --cert dev-https/cert.pem --key dev-https/key.pem --cn dev-coaps \
   --out dev-coaps || exit 1
$E enroll --server https://127.0.0.1:$HP $T --user alice --password s3cret --cn dev-revoked --out dev-revoked || exit 1
# request 1 stays pending (manual approval); newer code keeps dev-pending/pending-key.pem + pending.json
$E enroll --server https://127.0.0.1:$HP/factory $T --user alice --password s3cret --cn dev-pending \
   --out dev-pending --deadline 3
# MicroPython stores, provisioned by the old est_lite_mp under the unix port
mkdir -p mplib/est_lite mplib/est_lite_mp
for pkg in est_lite:$O/est_lite est_lite_mp:$O/ports/micropython/est_lite_mp; do
  p=${pkg%%:*}; src=${pkg#*:}
  for py in $src/*.py; do b=$(basename $py .py); case $b in gen_*) continue;; esac
    mpy-cross -o mplib/$p/$b.mpy $py || exit 1; done
done
(cd /tmp && $V/python -c "from est_lite_mp import tablefile; tablefile.write('$A/mplib/p256_table.bin')")
openssl x509 -in ca-int/root.pem -outform DER -out mplib/root.der
cat > mplib/mp-https.json <<J
{"server": "https://127.0.0.1:$HP", "trust": ["root.der"], "user": "alice", "password": "s3cret",
 "table": "p256_table.bin", "store": "mp-https", "cn": "mp-https", "steps": ["provision", "load"]}
J
cat > mplib/mp-coaps.json <<J
{"server": "coaps://127.0.0.1:$CP", "trust": ["root.der"], "cert": "$A/dev-https/cert.1", "key": "$A/dev-https/key.1",
 "table": "p256_table.bin", "store": "mp-coaps", "cn": "mp-coaps", "steps": ["provision", "load"]}
J
for j in mp-https mp-coaps; do
  (cd mplib && MICROPYPATH=.:.frozen micropython -X heapsize=256K $O/tests/mp_scripts/client_run.py $j.json) || exit 1
  mv mplib/$j .
done
SER=$(openssl x509 -in dev-revoked/cert.pem -noout -serial | cut -d= -f2)
$E ca revoke --data-dir ca-int $SER || exit 1
$E ca crl --data-dir ca-int --out ca-int/crl.pem && $E ca crl --data-dir ca-int --out ca-int/crl.pem || exit 1  # CRL number 3
FILES="server.toml ca-int dev-https dev-coaps dev-revoked dev-pending mp-https mp-coaps"
if $E ca issue --help >/dev/null 2>&1 && $E proxy --help | grep -q config; then
  # an RA (est-lite proxy) with its state file: one device's request waits for the upstream's approval
  $E ca issue --data-dir ca-int --cn est-proxy-ra --eku clientAuth,cmcRA --out ra >/dev/null || exit 1
  $E ca issue --data-dir ca-int --cn localhost --eku serverAuth --dns localhost --ip 127.0.0.1 --out proxy >/dev/null \
     || exit 1
  cat > proxy.toml <<T
[ca]
data_dir = "proxy-data"
[server]
listen = "127.0.0.1"
port = 0
tls_cert = "proxy.pem"
tls_key = "proxy.key"
[coaps]
port = 0
[profiles.default]
auth = ["cert", "basic"]
client_cert_trust = ["ca"]
pop_exempt_transports = ["coaps"]
[profiles.factory]
auth = ["cert", "basic"]
client_cert_trust = ["ca"]
[proxy]
upstream = "https://127.0.0.1:$HP"
upstream_ca = "ca-int/root.pem"
ra_cert = "ra.pem"
ra_key = "ra.key"
T
  $E ca passwd --config proxy.toml carol --password pw-carol >/dev/null || exit 1
  $E proxy --config proxy.toml --port-file pxh.port --coaps-port-file pxc.port > proxy.log 2>&1 &
  PROXY=$!
  for i in $(seq 100); do [ -s pxh.port ] && [ -s pxc.port ] && break; sleep 0.2; done
  $E enroll --server https://127.0.0.1:$(cat pxh.port) $T --user carol --password pw-carol --cn dev-proxy \
     --out dev-proxy || exit 1
  $E enroll --server coaps://127.0.0.1:$(cat pxc.port)/factory $T --cert dev-https/cert.pem --key dev-https/key.pem \
     --cn dev-proxy-pending --out dev-proxy-pending --deadline 3
  kill $PROXY; wait $PROXY
  FILES="$FILES proxy.toml ra.pem ra.key proxy.pem proxy.key proxy-data dev-proxy dev-proxy-pending"
fi
kill $SERVE; wait $SERVE
$E ca requests --data-dir ca-int
FILES=$(for f in $FILES; do [ -e $f ] && echo $f; done)
git -C $O log -1 --format='%H %ad %s' --date=iso | cut -c1-120 > made-by.txt
tar --sort=name --owner=0 --group=0 --numeric-owner -czf $OUT made-by.txt $FILES
ls -l $OUT
