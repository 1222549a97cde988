#!/usr/bin/env bash
# The README's walkthrough ("Walkthrough: the AWS demo, on your machine"),
# followed literally in one shell, with the nbdfuse + loop variant of step 5.
# Every command of the README's walkthrough blocks appears below verbatim
# (tests/walkthrough.rs checks that); what is added is only what a person
# does by looking: checking that each step did what the README says.
#
# Needs root, fuse3, libnbd-bin (nbdfuse), e2fsprogs, and `envol` on PATH.
# It uses the README's fixed names: 127.0.0.1:4599, /tmp/demo.sock,
# /tmp/denied.sock, /tmp/demo, /mnt/demo; HOME and the working directory are
# a scratch directory (WALKTHROUGH_DIR, default: a new temporary one).
# Prints "WALKTHROUGH: PASS" at the end on success.
set -uo pipefail

scratch=${WALKTHROUGH_DIR:-$(mktemp -d)}
mkdir -p "$scratch/home"
cd "$scratch" || exit 1
export HOME=$scratch/home
# Only what the walkthrough sets up may be used: no ambient AWS settings.
for v in $(env | grep -o '^AWS_[A-Z_]*'); do unset "$v"; done

step=0
fail() {
    echo "WALKTHROUGH: FAIL at step $step: $*" >&2
    exit 1
}
# The pause a person makes before typing on: until a path exists.
wait_for() {
    local test=$1 path=$2
    for _ in $(seq 1 600); do
        [ "$test" "$path" ] && return 0
        sleep 0.1
    done
    fail "$path did not appear"
}
# The pause before talking to a server started with `&`.
wait_for_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nothing listens on 127.0.0.1:$1"
}
cleanup() {
    mountpoint -q /mnt/demo && umount /mnt/demo
    [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
    mountpoint -q /tmp/demo && fusermount3 -u /tmp/demo
    [ -n "${SERVE_PID:-}" ] && kill "$SERVE_PID" 2>/dev/null
    [ -n "${KMS_PID:-}" ] && kill "$KMS_PID" 2>/dev/null
    wait
}
trap cleanup EXIT

for tool in envol nbdfuse fusermount3 losetup mkfs.ext4 mount; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ "$(id -u)" = 0 ] || fail "the walkthrough runs as root (mount, losetup)"
(exec 3<>/dev/tcp/127.0.0.1/4599) 2>/dev/null && fail "127.0.0.1:4599 is in use: the walkthrough's KMS needs it"
rm -f /tmp/demo.sock /tmp/denied.sock

echo "== 1. The KMS"
step=1
envol kms init --data ~/envol-kms --profile envol-root --endpoint http://127.0.0.1:4599 || fail "kms init"
envol kms serve --data ~/envol-kms &            # AWS KMS JSON API on 127.0.0.1:4599
KMS_PID=$!
grep -q '^\[envol-root\]' ~/.aws/credentials || fail "no envol-root profile"

echo "== 2. Users"
step=2
envol kms user add myadmin    --data ~/envol-kms --profile myadmin    --endpoint http://127.0.0.1:4599 || fail "user add myadmin"
envol kms user add S3DemoUser --data ~/envol-kms --profile S3DemoUser --endpoint http://127.0.0.1:4599 || fail "user add S3DemoUser"

echo "== 3. A key whose policy allows myadmin"
step=3
wait_for_port 4599
envol key create --alias DemoKey --allow myadmin --description "envol demo" --profile envol-root || fail "key create"

echo "== 4. A volume"
step=4
envol volume create demo.vol --size 1G --key alias/DemoKey --profile myadmin || fail "volume create"
envol volume info demo.vol          # no KMS call: uuid, key ARN, wrapped key, superblock copies
[ $? = 0 ] || fail "volume info"

echo "== 5. Attach as myadmin, format, mount, write (nbdfuse + loop)"
step=5
envol serve demo.vol --socket /tmp/demo.sock --profile myadmin &
SERVE_PID=$!
until [ -S /tmp/demo.sock ]; do sleep 0.1; done   # attached and listening
mkdir -p /tmp/demo && nbdfuse /tmp/demo/disk 'nbd+unix:///demo?socket=/tmp/demo.sock' &
until [ -f /tmp/demo/disk ]; do sleep 0.1; done
LOOP=$(losetup -f --show /tmp/demo/disk)
[ -n "$LOOP" ] || fail "losetup"
mkfs.ext4 $LOOP && mkdir -p /mnt/demo && mount $LOOP /mnt/demo
mountpoint -q /mnt/demo || fail "mount"
echo "hello, encrypted world" > /mnt/demo/hello.txt
sync
[ "$(cat /mnt/demo/hello.txt)" = "hello, encrypted world" ] || fail "hello.txt"

echo "== 6. S3DemoUser is refused"
step=6
envol serve demo.vol --socket /tmp/denied.sock --profile S3DemoUser 2>denied.err
status=$?
cat denied.err
[ $status != 0 ] || fail "S3DemoUser was served"
[ "$(wc -l <denied.err)" = 1 ] || fail "not one line"
grep -q "AccessDeniedException: User: arn:aws:iam::.*:user/S3DemoUser is not authorized to perform: kms:Decrypt" denied.err ||
    fail "not the README's AccessDeniedException"
grep -q "(the key policy does not allow this caller)" denied.err || fail "no hint"
count=$(grep -c "hello, encrypted world" demo.vol)      # 0
[ "$count" = 0 ] || fail "plaintext in demo.vol"

echo "== 7. Clean up: disable, then delete the key"
step=7
umount /mnt/demo                      # then: nbd-client -d /dev/nbd0, or losetup -d $LOOP; fusermount3 -u /tmp/demo
losetup -d $LOOP; fusermount3 -u /tmp/demo
LOOP=
kill $SERVE_PID; wait $SERVE_PID      # the server finishes in-flight requests, flushes, wipes the key
[ $? = 0 ] || fail "envol serve did not stop cleanly"
SERVE_PID=
envol key disable alias/DemoKey --profile envol-root || fail "key disable"
envol serve demo.vol --socket /tmp/demo.sock --profile myadmin 2>disabled.err
status=$?
cat disabled.err
[ $status != 0 ] || fail "served under a disabled key"
[ "$(wc -l <disabled.err)" = 1 ] || fail "not one line"
grep -q "DisabledException: .* is disabled\." disabled.err || fail "not the README's DisabledException"
grep -q "(the key is disabled: ask a principal allowed kms:EnableKey on it to run \`envol key enable arn:aws:kms:[^\`]*\`)" disabled.err ||
    fail "not the README's hint"
envol key schedule-deletion alias/DemoKey --days 7 --profile envol-root || fail "schedule-deletion"
envol key describe alias/DemoKey --profile envol-root | grep -q "PendingDeletion" || fail "not pending deletion"
kill $KMS_PID                         # stop the KMS
wait $KMS_PID || fail "the KMS did not stop cleanly"
KMS_PID=

echo "WALKTHROUGH: PASS"
