#!/usr/bin/env bash
# bench-snapshot.sh - snapshots to S3 and restores from it, against radosgw on a throw-away
# Ceph cluster, in one run:
#   1. a full snapshot of a volume filled with random data (every chunk uploaded);
#   2. after changing 1 % of the volume (SIZE/100 MiB as random, distinct 1 MiB-aligned
#      MiB), the next snapshot (change tracking: only the changed chunks are read and sent);
#   3. `envol volume restore` of the second snapshot into a new volume file, against
#      `aws s3 cp --recursive` of the same chunk objects from the same radosgw to local disk
#      (the AWS CLI's defaults: 10 requests at once).
#
# usage: scripts/bench-snapshot.sh [-s SIZE_MIB] [-c CONCURRENCY] [-r ROUNDS] [-o OUTDIR]
#   defaults: -s 2048 -c 16 -r 3 (restore and `aws s3 cp` alternate, median of the rounds)
#
# What it does: builds envol (release), brings up a private cluster with radosgw
# (scripts/micro-ceph.sh, MON_PORT=3305 MON_V1_PORT=6785 RGW_PORT=7485 unless set; its own
# directory, torn down at exit), a throw-away KMS (`envol kms init` + `kms serve` on a free
# loopback port), a key, a volume file, fills it with fio over NBD (incompressible
# buffers), and prints a Markdown table (also OUTDIR/bench-snapshot.md).
#
# Needs: apt-get install -y ceph-mon ceph-osd ceph-mgr ceph-common radosgw curl fio jq
# libnbd-bin; pip install awscli. Run as root (the OSD wants it), on a quiet machine, with
# ~3x SIZE free under TMPDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=2048 CONC=16 ROUNDS=3 OUT=
while getopts "s:c:r:o:h" o; do
  case $o in
    s) SIZE_MIB=$OPTARG ;; c) CONC=$OPTARG ;; r) ROUNDS=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
for n in "$SIZE_MIB" "$CONC" "$ROUNDS"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-snapshot.sh: -s, -c and -r take positive integers" >&2; exit 2; }
done
for tool in fio jq aws curl ceph radosgw; do
  command -v "$tool" >/dev/null || { echo "bench-snapshot.sh: $tool missing (see the header)" >&2; exit 1; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "bench-snapshot.sh: this fio has no nbd ioengine" >&2; exit 1; }
MICRO_CEPH=$ROOT/scripts/micro-ceph.sh

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-bench-snapshot.XXXXXX")
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK/bin" "$WORK/aws"
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
CEPH_DIR=$WORK/ceph
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -d $CEPH_DIR ]] && "$MICRO_CEPH" down "$CEPH_DIR" >/dev/null 2>&1 || true
  rm -rf "$WORK/bin" "$WORK/aws" "$WORK/kms" "$WORK"/*.vol "$WORK"/*.sock "$WORK/cp"
  [[ $OUT == "$WORK/out" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== micro-ceph up with radosgw ($CEPH_DIR)"
MON_PORT=${MON_PORT:-3305} MON_V1_PORT=${MON_V1_PORT:-6785} RGW_PORT=${RGW_PORT:-7485} WITH_RGW=1 \
  BLOCK_SIZE_GB=$(( SIZE_MIB * 3 / 1024 + 8 )) "$MICRO_CEPH" up "$CEPH_DIR" >"$WORK/micro-ceph.log" 2>&1 ||
  { cat "$WORK/micro-ceph.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$CEPH_DIR/env"

echo "== KMS, key, volume, bucket"
# A throw-away KMS, user and key (scripts/bench/kms.sh).
. "$ROOT/scripts/bench/kms.sh"
start_bench_kms bench-snapshot.sh
unset AWS_ENDPOINT_URL_S3
printf '\n[rgw]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
  "$ENVOL_TEST_S3_ACCESS_KEY" "$ENVOL_TEST_S3_SECRET_KEY" >>"$AWS_SHARED_CREDENTIALS_FILE"
S3=(--endpoint-url "$ENVOL_TEST_S3_ENDPOINT" --s3-profile rgw --concurrency "$CONC")
awscli() {  # the AWS CLI as the radosgw user; checksums only where required (radosgw 16)
  AWS_PROFILE=rgw AWS_DEFAULT_REGION=us-east-1 AWS_REQUEST_CHECKSUM_CALCULATION=when_required \
    AWS_RESPONSE_CHECKSUM_VALIDATION=when_required aws --endpoint-url "$ENVOL_TEST_S3_ENDPOINT" "$@"
}
BUCKET=bench
awscli s3api create-bucket --bucket "$BUCKET" >/dev/null
PLACE=s3://$BUCKET/vols/a
VOL=$WORK/a.vol
"$ENVOL" volume create "$VOL" --size "${SIZE_MIB}M" --key alias/bench --profile bench >/dev/null

# fio over NBD against a running `envol serve` of the volume, then a clean stop.
with_serve() {
  local sock=$WORK/serve.sock pid
  "$ENVOL" serve "$VOL=a" --socket "$sock" --profile bench >"$WORK/serve.out" 2>"$WORK/serve.err" &
  pid=$!
  for _ in $(seq 300); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || { echo "bench-snapshot.sh: envol serve did not start:" >&2; cat "$WORK/serve.err" >&2; exit 1; }
  fio --name=w --ioengine=nbd --uri="nbd+unix:///a?socket=$sock" --refill_buffers "$@" >/dev/null
  kill -TERM "$pid"; wait "$pid"
}
echo "== filling the volume (${SIZE_MIB} MiB of random data)"
with_serve --rw=write --bs=4M --iodepth=16 --size="${SIZE_MIB}M"

secs() { python3 -c 'import time; print(f"{time.monotonic():.3f}")'; }
snapshot() {  # snapshot -> JSON in $1, seconds in $1.time
  local t0 t1
  t0=$(secs)
  "$ENVOL" snapshot create "$VOL" --to "$PLACE" --json --profile bench "${S3[@]}" >"$1"
  t1=$(secs)
  python3 -c "print(round($t1 - $t0, 2))" >"$1.time"
}
echo "== full snapshot"
snapshot "$OUT/s1.json"
CHANGED_MIB=$(( SIZE_MIB / 100 ))
echo "== changing 1 % ($CHANGED_MIB MiB in distinct random 1 MiB blocks)"
with_serve --rw=randwrite --bs=1M --iodepth=8 --size="${SIZE_MIB}M" --io_size="${CHANGED_MIB}M"
echo "== incremental snapshot"
snapshot "$OUT/s2.json"
URL=$(jq -r .url "$OUT/s2.json")

: >"$OUT/restore.log"
for r in $(seq "$ROUNDS"); do
  for side in envol awscli; do
    rm -rf "$WORK/r.vol" "$WORK/cp"; sync
    t0=$(secs)
    if [[ $side == envol ]]; then
      "$ENVOL" volume restore "$URL" --to "$WORK/r.vol" --quiet --profile bench "${S3[@]}" >/dev/null
    else
      awscli s3 cp --recursive --quiet "$PLACE/chunks/" "$WORK/cp/"
    fi
    sync
    t1=$(secs)
    echo "$side $(python3 -c "print(round($t1 - $t0, 2))")" | tee -a "$OUT/restore.log" | sed "s/^/round $r: /"
  done
done

python3 - "$OUT" "$SIZE_MIB" "$CONC" "$ROUNDS" "$(date -u +%Y-%m-%d)" "$(nproc)" "$CHANGED_MIB" >"$OUT/bench-snapshot.md" <<'EOF'
import json, sys, statistics as st
out, size, conc, rounds, day, cores, changed = sys.argv[1:]
size, changed = int(size), int(changed)
s1, s2 = (json.load(open(f"{out}/s{i}.json")) for i in (1, 2))
t1, t2 = (float(open(f"{out}/s{i}.json.time").read()) for i in (1, 2))
times = {"envol": [], "awscli": []}
for line in open(f"{out}/restore.log"):
    side, t = line.split()
    times[side].append(float(t))
envol, cli = st.median(times["envol"]), st.median(times["awscli"])
mib = lambda b: b / 1048576
vol_bytes = size * 1048576
print(f"{day}, one cluster with radosgw (mon + mgr + 1 bluestore OSD on a sparse file), "
      f"{size} MiB volume file of random data, {cores} cores shared by radosgw, the OSD and envol, "
      f"envol --concurrency {conc}:")
print()
print("| step | objects uploaded | bytes uploaded | of the volume | time | MiB/s |")
print("|---|---|---|---|---|---|")
print(f"| full snapshot | {s1['objects_added']} | {mib(s1['bytes_added']):.0f} MiB | {100*s1['bytes_added']/vol_bytes:.1f} % | {t1:.1f} s | {mib(s1['bytes_added'])/t1:.0f} |")
print(f"| after changing {changed} MiB (1 %): incremental snapshot ({s2['method']}, {s2['chunks_read']} chunks read) | {s2['objects_added']} | {mib(s2['bytes_added']):.0f} MiB | {100*s2['bytes_added']/vol_bytes:.2f} % | {t2:.1f} s ({100*t2/t1:.1f} % of the full) | |")
print()
stored = mib(s2["stored_bytes"])
print(f"Restore of the second snapshot ({stored:.0f} MiB in {s2['chunks']} chunk objects), median of {rounds} rounds, each side alternating:")
print()
print("| | time | MiB/s |")
print("|---|---|---|")
print(f"| `envol volume restore` (verifies every chunk's SHA-256, writes a new volume file) | {envol:.1f} s | {stored/envol:.0f} |")
print(f"| `aws s3 cp --recursive` of the same objects to local disk | {cli:.1f} s | {stored/cli:.0f} |")
print(f"| envol / AWS CLI (speed) | {cli/envol:.2f}× | |")
EOF
echo
cat "$OUT/bench-snapshot.md"
