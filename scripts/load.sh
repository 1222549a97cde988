#!/usr/bin/env bash
# Load campaign (issue 7): 64 NBD connections x QD32 random writes of 512 B
# to 128 KiB with crc32c verification interleaved (fio verify_backlog), for
# NBD_SECONDS; then the KMS under 100 concurrent aws-sdk-kms clients doing
# GenerateDataKey + Decrypt for KMS_SECONDS. Prints errors, the servers' peak
# RSS, and the KMS's requests/s and latency percentiles.
#
#   scripts/load.sh [NBD_SECONDS=600] [KMS_SECONDS=60]
#
# Needs: fio (nbd engine), python3. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
NBD_SECONDS=${1:-600}
KMS_SECONDS=${2:-60}

cargo build --release --quiet --bin envol --example kms_load
E=$PWD/target/release/envol
W=$(mktemp -d /tmp/envol-load.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
export AWS_SHARED_CREDENTIALS_FILE=$W/credentials AWS_CONFIG_FILE=$W/config
unset AWS_PROFILE AWS_ENDPOINT_URL_KMS AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

peak_rss() { awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$1/status"; }

$E kms init --data "$W/kms" > "$W/init.txt"
$E kms serve --data "$W/kms" --listen 127.0.0.1:0 > "$W/kms.out" 2> "$W/kms.err" &
KMS_PID=$!; pids+=("$KMS_PID")
for _ in $(seq 50); do grep -q http "$W/kms.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$W/kms.out" | head -1)
$E kms user add loader --data "$W/kms" --profile loader --endpoint "$URL" > "$W/user.txt"
AKID=$(awk '/aws_access_key_id/ {print $3}' "$W/user.txt")
SECRET=$(awk '/aws_secret_access_key/ {print $3}' "$W/user.txt")
KEY=$($E key create --alias Load --json --profile loader | python3 -c 'import json,sys; print(json.load(sys.stdin)["KeyId"])')

echo "== NBD: 64 connections x QD32, verified random writes, ${NBD_SECONDS}s"
$E volume create "$W/load.vol" --size 4G --key alias/Load --profile loader > /dev/null
$E serve "$W/load.vol=load" --socket "$W/nbd.sock" --profile loader > "$W/serve.out" 2> "$W/serve.err" &
SERVE_PID=$!; pids+=("$SERVE_PID")
for _ in $(seq 100); do [ -S "$W/nbd.sock" ] && break; sleep 0.1; done
URI="nbd+unix:///load?socket=$W/nbd.sock"
# Each job owns a 64 MiB region; 16 jobs write 512-byte blocks (read-modify-
# write inside 4 KiB sectors), 48 write 4-128 KiB blocks.
(cd "$W" && fio --ioengine=nbd --uri="$URI" --rw=randwrite --iodepth=32 \
    --size=64M --offset_increment=64M --time_based --runtime="$NBD_SECONDS" \
    --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --name=small --bs=512 --numjobs=16 --offset=0 \
    --name=large --bsrange=4k-128k --numjobs=48 --offset=1G \
    --output-format=json --output="$W/fio.json") || { echo "fio FAILED"; tail -20 "$W/serve.err"; exit 1; }
python3 - "$W/fio.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
errs = sum(j.get("error", 0) for j in d["jobs"])
w = sum(j["write"]["io_bytes"] for j in d["jobs"]); r = sum(j["read"]["io_bytes"] for j in d["jobs"])
wi = sum(j["write"]["total_ios"] for j in d["jobs"]); ri = sum(j["read"]["total_ios"] for j in d["jobs"])
rt = max(j["job_runtime"] for j in d["jobs"]) / 1000
print(f"fio: jobs={len(d['jobs'])} errors={errs} writes={wi} ({w/2**30:.2f} GiB) verify-reads={ri} ({r/2**30:.2f} GiB) "
      f"runtime={rt:.0f}s write-IOPS={wi/rt:.0f} read-IOPS={ri/rt:.0f}")
sys.exit(1 if errs else 0)
PY
echo "envol serve peak RSS: $(peak_rss "$SERVE_PID")"
kill -0 "$SERVE_PID" || { echo "envol serve died"; exit 1; }

echo "== KMS: 100 concurrent clients, GenerateDataKey + Decrypt, ${KMS_SECONDS}s"
target/release/examples/kms_load "$URL" "$AKID" "$SECRET" "$KEY" 100 "$KMS_SECONDS"
echo "envol kms serve peak RSS: $(peak_rss "$KMS_PID")"
$E kms check --data "$W/kms"
