#!/bin/bash
# micro-ceph.sh - a throw-away single-node Ceph (mon + mgr + 1 OSD [+ radosgw]) on 127.0.0.1
# for envol's RBD and snapshot tests and benchmarks: no systemd, cephx on, everything under
# one directory.
#
#   scripts/micro-ceph.sh up   DIR   # bring up (~10 s); writes DIR/env (source it: CEPH_CONF,
#                                    # CEPH_ARGS, ENVOL_TEST_RBD_POOL; with WITH_RGW=1 also
#                                    # ENVOL_TEST_S3_ENDPOINT, ENVOL_TEST_S3_ACCESS_KEY,
#                                    # ENVOL_TEST_S3_SECRET_KEY); pool `rbd` is ready
#   scripts/micro-ceph.sh down DIR   # stop the daemons by PID file, remove DIR
#
# Needs Debian's ceph-mon ceph-osd ceph-mgr ceph-common, and radosgw and curl for
# WITH_RGW=1 (scripts/test.sh installs them).
# Knobs (env): OBJECTSTORE=bluestore|memstore (default bluestore, on a sparse file)
#              BLOCK_SIZE_GB=10  MON_PORT=3300 MON_V1_PORT=6789 (two clusters side by side
#              need different ports)  WITH_MGR=1  OSD_MEMORY_TARGET=1073741824
#              WATCH_TIMEOUT=5 (seconds: see `osd client watch timeout` below)
#              WITH_RGW=0|1 (radosgw's S3 on 127.0.0.1:RGW_PORT, default 7480, with one user
#              whose keys are S3_ACCESS_KEY / S3_SECRET_KEY; ~10 s more at bring-up)
#
# Pitfalls this script encodes (each cost time once):
# - the bluestore block file lives outside the OSD data directory (ELOOP otherwise);
# - `mon data avail warn = 1` and `mon warn on pool no redundancy = false`, or a nearly
#   full disk and size-1 pools keep the cluster out of HEALTH_OK;
# - daemons stop in the order OSD, manager, monitor: an OSD whose monitor is gone takes
#   ~5 s to exit;
# - PID 1 of a container may reap lazily: a zombie counts as stopped;
# - radosgw stops first (it is a client of the OSD); the first bucket creation makes the
#   bucket index pools (~5 s): bring-up pays it with a warm-up bucket;
# - the S3 keys go to ENVOL_TEST_S3_* rather than AWS_ACCESS_KEY_ID: the KMS tests sign with
#   their own credentials, and envol's S3 client has its own (--s3-profile).
set -euo pipefail

cmd=${1:?usage: $0 up|down DIR}
DIR=${2:?usage: $0 up|down DIR}
OBJECTSTORE=${OBJECTSTORE:-bluestore}
BLOCK_SIZE_GB=${BLOCK_SIZE_GB:-10}
WITH_MGR=${WITH_MGR:-1}
MON_PORT=${MON_PORT:-3300}
MON_V1_PORT=${MON_V1_PORT:-6789}
OSD_MEMORY_TARGET=${OSD_MEMORY_TARGET:-1073741824}
WATCH_TIMEOUT=${WATCH_TIMEOUT:-5}
WITH_RGW=${WITH_RGW:-0}
RGW_PORT=${RGW_PORT:-7480}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-MICROCEPHACCESSKEY00}
S3_SECRET_KEY=${S3_SECRET_KEY:-microcephsecretkey0000000000000000000000}

t0=$(date +%s%N)
ts() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '[%3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }

# bounded wait: wait_for SECONDS DESCRIPTION COMMAND...
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timeout after ${secs}s waiting for: $what" >&2; return 1
        fi
        sleep 0.5
    done
    ts "ready: $what"
}

gone() {  # reaped, or a zombie (PID 1 here reaps lazily)
    local st; st=$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)
    [ -z "$st" ] || [ "$st" = Z ]
}

stop_daemons() {
    # stop in dependency order (an OSD stopped after its mon hangs ~5s); 5s grace each, then SIGKILL
    local n pid
    for n in client.rgw.r osd.0 mgr.x mon.a; do
        [ -e "$DIR/run/$n.pid" ] || continue
        pid=$(cat "$DIR/run/$n.pid" 2>/dev/null || true)
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 1 50); do gone "$pid" && break; sleep 0.1; done
        gone "$pid" || { kill -KILL "$pid" 2>/dev/null; echo "SIGKILLed $n ($pid)"; }
    done
}

down() {
    stop_daemons
    rm -rf "${DIR:?}"
    ts "down"
}

if [ "$cmd" = down ]; then down; exit 0; fi
[ "$cmd" = up ] || { echo "unknown command $cmd" >&2; exit 2; }

[ -e "$DIR" ] && { echo "$DIR exists; run '$0 down $DIR' first" >&2; exit 1; }
mkdir -p "$DIR"/{log,run,mon,osd,mgr,rgw,crash}
DIR=$(cd "$DIR" && pwd)
# on any failure during bring-up: stop what was started, keep DIR/log for inspection
trap 'rc=$?; echo "micro-ceph up FAILED (rc=$rc); daemons stopped, logs in $DIR/log" >&2; stop_daemons; exit $rc' ERR
FSID=$(cat /proc/sys/kernel/random/uuid)
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
export CEPH_CONF=$DIR/ceph.conf
MON_ADDRS="[v2:127.0.0.1:${MON_PORT},v1:127.0.0.1:${MON_V1_PORT}]"

cat > "$CEPH_CONF" <<EOF
[global]
fsid = $FSID
mon host = $MON_ADDRS
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keyring.\$name
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
# One admin socket per client process and connection (\$pid.\$cctid): envol
# opens several Ceph clients, and a second server on the same host takes an
# image over; with one fixed path per name, a forced take-over of a stopped
# server took ~10 s instead of < 1 s (tests/rbd_failover.rs).
admin socket = $DIR/run/\$name.\$pid.\$cctid.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = false
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# How long an OSD keeps a client's watch on an object (an RBD image's header) after the
# client stops pinging it. Ceph's default is 30 s; 5 s here so that a paused (SIGSTOPped)
# or killed server's watch expires quickly, and envol serve --take-over (which breaks a
# lock only once the holder's watch is gone) can be tested in seconds. Clients ping every
# every objecter tick interval (Ceph's default 5 s: as long as the timeout), so clients
# of this cluster ping every second, well inside it.
osd client watch timeout = $WATCH_TIMEOUT
objecter tick interval = 1

[mon.a]
mon data = $DIR/mon
mon cluster log file = $DIR/log/mon-cluster.log

[mgr.x]
mgr data = $DIR/mgr

[osd.0]
osd data = $DIR/osd
osd objectstore = $OBJECTSTORE
osd memory target = $OSD_MEMORY_TARGET
bluestore block path = $DIR/osd.block
bluestore block create = true
bluestore block size = $(( BLOCK_SIZE_GB * 1024 * 1024 * 1024 ))
bluestore fsck on mkfs = false
bluestore fsck on mount = false
memstore device bytes = $(( BLOCK_SIZE_GB * 1024 * 1024 * 1024 ))
osd class load list = *
osd class default list = *

[client.rgw.r]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $DIR/rgw
rgw enable usage log = false
rgw thread pool size = 64
EOF

# keyrings
ceph-authtool --create-keyring "$DIR/keyring.mon.a" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/keyring.client.admin" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/keyring.osd.0" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/keyring.mgr.x" --gen-key -n mgr.x \
    --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool --create-keyring "$DIR/keyring.client.rgw.r" --gen-key -n client.rgw.r \
    --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
cp "$DIR/keyring.mon.a" "$DIR/mon-seed.keyring"
for k in client.admin osd.0 mgr.x client.rgw.r; do
    ceph-authtool "$DIR/mon-seed.keyring" --import-keyring "$DIR/keyring.$k" >/dev/null
done

# monitor
monmaptool --create --fsid "$FSID" --addv a "$MON_ADDRS" "$DIR/monmap" >/dev/null
ceph-mon --id a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/mon-seed.keyring"
ts "mon mkfs done"
ceph-mon --id a
wait_for 30 "mon quorum" timeout 5 ceph mon stat

# osd: register, mkfs, start
ceph osd new "$OSD_UUID" 0 >/dev/null   # id 0, key already in mon keyring via import
ceph-osd --id 0 --mkfs --osd-uuid "$OSD_UUID" >"$DIR/log/osd-mkfs.out" 2>&1 \
    || { tail -5 "$DIR/log/osd-mkfs.out" >&2; exit 1; }
ts "osd mkfs done ($OBJECTSTORE)"
ceph-osd --id 0
if [ "$WITH_MGR" = 1 ]; then ceph-mgr --id x; fi
wait_for 60 "osd.0 up" sh -c 'ceph osd dump --format=json | grep -q "\"up\":1"'
ts "cluster up (osd.0 up)"
if [ "$WITH_MGR" = 1 ]; then
    wait_for 60 "mgr active" sh -c 'ceph mgr stat --format=json | grep -q "\"available\": *true"'
fi
if [ "${WAIT_HEALTH_OK:-1}" = 1 ]; then
    wait_for 90 "HEALTH_OK" sh -c 'ceph health | grep -q HEALTH_OK' || { ceph health detail >&2; exit 1; }
fi

# the pool envol's tests and benchmark use
ceph osd pool create rbd 8 >/dev/null 2>&1
rbd pool init rbd
ts "pool rbd created"

s3_curl() {  # s3_curl METHOD PATH: one signed request to radosgw as the test user
    curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -X "$1" "http://127.0.0.1:$RGW_PORT/$2" >/dev/null
}
if [ "$WITH_RGW" = 1 ]; then
    radosgw --id rgw.r
    wait_for 90 "radosgw S3 on 127.0.0.1:$RGW_PORT" sh -c "curl -sf http://127.0.0.1:$RGW_PORT/ | grep -q ListAllMyBucketsResult"
    radosgw-admin user create --uid=test --display-name="Test User" \
        --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
    ts "rgw user created"
    s3_curl PUT micro-ceph-warmup
    s3_curl DELETE micro-ceph-warmup
    ts "rgw warm-up bucket created and deleted"
fi

cat > "$DIR/env" <<EOF
export CEPH_CONF=$CEPH_CONF
export CEPH_ARGS="--conf $CEPH_CONF"
export ENVOL_TEST_RBD_POOL=rbd
EOF
if [ "$WITH_RGW" = 1 ]; then
    cat >> "$DIR/env" <<EOF
export ENVOL_TEST_S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
export ENVOL_TEST_S3_ACCESS_KEY=$S3_ACCESS_KEY
export ENVOL_TEST_S3_SECRET_KEY=$S3_SECRET_KEY
EOF
fi
ts "up: source $DIR/env"
