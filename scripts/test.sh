#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
# Used as-is by CI (.ci/run) and by developers: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

export DEBIAN_FRONTEND=noninteractive
# Fresh package lists always: the kernel-client test fetches its QEMU guest's
# packages with `apt-get download` (nothing of it is installed on the host).
echo "== apt-get update"
apt-get update -qq
# Real clients and tools the tests drive. Never qemu-system-x86 here: it
# would replace the newer qemu-utils of the base image (the guest brings its
# own QEMU).
packages=(
    libnbd-bin      # nbdinfo, nbdcopy, nbdfuse
    python3-libnbd  # nbdsh
    fuse3           # fusermount3 for nbdfuse
    qemu-utils      # qemu-io, qemu-img
    e2fsprogs       # mkfs.ext4, e2fsck, resize2fs, dumpe2fs, debugfs
    fio             # ioengine=nbd integrity runs, the benchmark harness
    jq              # the benchmark harness (bench_harness test)
    openssl         # test certificates
    libssl-dev pkg-config  # the openssl crate (benchmark's OpenSSL contender)
    python3 dpkg    # the kernel-client harness (tests/e2e)
    util-linux      # setpriv, prlimit, unshare (tests/secrets_in_memory.rs, tests/rbd_backend.rs; essential, listed for clarity)
    # The throw-away Ceph cluster of the RBD tests (scripts/micro-ceph.sh) and
    # librbd, which envol opens at run time. No -dev packages: nothing links
    # against Ceph at build time.
    ceph-mon ceph-osd ceph-mgr ceph-common librbd1
    radosgw curl    # the S3 server of the snapshot tests (WITH_RGW=1 below)
    procps          # ps (scripts/micro-ceph.sh waits for its daemons to stop)
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v aws >/dev/null || ! python3 -c 'import boto3, cryptography' 2>/dev/null; then
    echo "== installing the AWS CLI, boto3 and cryptography (pip)"
    python3 -m pip install -q --disable-pip-version-check awscli boto3 cryptography
fi

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== no two files of src/ import from each other (scripts/import_cycles.py)"
python3 scripts/import_cycles.py src

echo "== fuzz smoke run: every fuzz target builds and runs 10 s (scripts/fuzz.sh)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
scripts/fuzz.sh 10

echo "== a throw-away Ceph cluster for the RBD and snapshot tests (scripts/micro-ceph.sh)"
# One cluster per run, each test on its own image. If it cannot start the
# run fails here: the RBD and snapshot tests never skip. MON_PORT/MON_V1_PORT
# /RGW_PORT may be set to run beside another cluster on this machine.
# radosgw is the S3 server of the snapshot tests (ENVOL_TEST_S3_*).
ceph_dir=$(mktemp -d)/ceph
log=$(mktemp)
trap 'scripts/micro-ceph.sh down "$ceph_dir" >/dev/null 2>&1 || true; rm -rf "$(dirname "$ceph_dir")" "$log"' EXIT
if ! WITH_RGW=1 scripts/micro-ceph.sh up "$ceph_dir"; then
    tail -n 20 "$ceph_dir"/log/*.log >&2 || true
    echo "the test Ceph cluster did not start: the RBD tests need it" >&2
    exit 1
fi
export CEPH_CONF="$ceph_dir/ceph.conf"
export ENVOL_TEST_RBD_POOL=rbd
# ENVOL_TEST_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY (radosgw's user), as the script wrote them
eval "$(grep '^export ENVOL_TEST_S3_' "$ceph_dir/env")"

echo "== cargo test"
status=0
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary, and
# the last binaries — benches, examples — have no tests of their own).
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
