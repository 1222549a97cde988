#!/usr/bin/env bash
# bench-snapshot.sh - envol's snapshots in object storage (issue 14), in one run against
# radosgw on a throw-away micro-ceph cluster:
#   1. a 2 GiB volume file filled with random data (fio, refilled buffers), detached;
#   2. the first (full) snapshot: time, objects, bytes uploaded;
#   3. 1 % of the volume changed: 20 extents of 1 MiB (contiguous, each at a random
#      chunk-aligned offset, no two the same: 20 MiB of 2048), written through `envol serve`
#      with qemu-io;
#   4. the second (incremental) snapshot: time, objects, bytes uploaded - the issue's
#      targets are bytes <= 2 % of the volume and time <= 10 % of the first snapshot's;
#   5. a restore of the first snapshot (2 GiB) into a new volume file, against the AWS
#      CLI's `aws s3 cp --recursive` of the same chunk objects from the same radosgw to
#      local disk (the issue's target: envol's rate / the CLI's >= 1.0), ROUNDS times,
#      alternating which goes first, median reported.
# Prints a Markdown table (also OUTDIR/bench-snapshot.md; raw lines in OUTDIR/bench-snapshot.log).
#
# usage: scripts/bench-snapshot.sh [-r ROUNDS] [-s SIZE_MIB] [-c CONCURRENCY] [-o OUTDIR]
#   defaults: -r 3 -s 2048 -c 16 (envol's default concurrency; the AWS CLI runs its
#   default 10 concurrent requests)
#
# What it does: builds envol (release), brings up its own cluster with radosgw
# (scripts/micro-ceph.sh, MON_PORT=3307 MON_V1_PORT=6787 RGW_PORT=7487 unless set; torn
# down at exit), a throw-away KMS (`envol kms init` + `envol kms serve` on a free
# loopback port), a key, a bucket. Disk: ~4 x SIZE in the work directory and the OSD.
# Needs: apt-get install -y ceph-mon ceph-osd ceph-mgr ceph-common radosgw fio jq
# libnbd-bin qemu-utils, pip install awscli. Run as root (the OSD wants it), on a quiet
# machine: the README says how loaded it was.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3 SIZE_MIB=2048 CONC=16 OUT=
while getopts "r:s:c:o:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; c) CONC=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,28p' "$0" >&2; exit 2 ;;
  esac
done
for n in "$ROUNDS" "$SIZE_MIB" "$CONC"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-snapshot.sh: -r, -s and -c take positive integers" >&2; exit 2; }
done
((SIZE_MIB >= 64)) || { echo "bench-snapshot.sh: -s must be at least 64 (MiB)" >&2; exit 2; }
for tool in fio jq qemu-io aws ceph radosgw; do
  command -v "$tool" >/dev/null || { echo "bench-snapshot.sh: $tool missing (see the header for packages)" >&2; exit 1; }
done
MICRO_CEPH=$ROOT/scripts/micro-ceph.sh

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-bench-snapshot.XXXXXX")
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK/bin" "$WORK/aws"
# A private copy: a rebuild in the checkout during the run must not change what runs.
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
CEPH_DIR=$WORK/ceph
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -d $CEPH_DIR ]] && "$MICRO_CEPH" down "$CEPH_DIR" >/dev/null 2>&1 || true
  rm -rf "$WORK/bin" "$WORK/aws" "$WORK/kms" "$WORK"/*.sock "$WORK"/vol* "$WORK/cli-copy"
  [[ $OUT == "$WORK/out" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== micro-ceph with radosgw up ($CEPH_DIR)"
MON_PORT=${MON_PORT:-3307} MON_V1_PORT=${MON_V1_PORT:-6787} RGW_PORT=${RGW_PORT:-7487} WITH_RGW=1 \
  "$MICRO_CEPH" up "$CEPH_DIR" >"$WORK/micro-ceph.log" 2>&1 || { cat "$WORK/micro-ceph.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$CEPH_DIR/env"

echo "== KMS, key, S3 profile, bucket"
export AWS_SHARED_CREDENTIALS_FILE=$WORK/aws/credentials AWS_CONFIG_FILE=$WORK/aws/config
export AWS_EC2_METADATA_DISABLED=true ENVOL_LOG=warn
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KMS AWS_ENDPOINT_URL_S3
"$ENVOL" kms init --data "$WORK/kms" >/dev/null
"$ENVOL" kms serve --data "$WORK/kms" --listen 127.0.0.1:0 >"$WORK/kms.out" 2>"$WORK/kms.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'http://' "$WORK/kms.out" 2>/dev/null && break; sleep 0.1; done
KMS=$(grep -o 'http://[^ ]*' "$WORK/kms.out" | head -1)
[[ -n $KMS ]] || { echo "bench-snapshot.sh: envol kms serve did not start:" >&2; cat "$WORK/kms.err" >&2; exit 1; }
"$ENVOL" kms user add bench --data "$WORK/kms" --profile bench --endpoint "$KMS" >/dev/null
"$ENVOL" key create --alias bench --profile bench >/dev/null
# The object store's user is radosgw's (its own profile, as --s3-profile is meant for).
cat >>"$AWS_SHARED_CREDENTIALS_FILE" <<EOF
[rgw]
aws_access_key_id = $ENVOL_TEST_S3_ACCESS_KEY
aws_secret_access_key = $ENVOL_TEST_S3_SECRET_KEY
EOF
S3=(--endpoint-url "$ENVOL_TEST_S3_ENDPOINT" --s3-profile rgw)
awss3() { aws --profile rgw --region us-east-1 --endpoint-url "$ENVOL_TEST_S3_ENDPOINT" s3 "$@"; }
BUCKET=bench-snapshots
awss3 mb "s3://$BUCKET" >/dev/null
PLACE=s3://$BUCKET/bench

VOL=$WORK/vol.envol
SOCK=$WORK/envol.sock
"$ENVOL" volume create "$VOL" --size "${SIZE_MIB}M" --key alias/bench --profile bench >/dev/null
serve() {  # serve the volume until stop_serve
  "$ENVOL" serve "$VOL=vol" --socket "$SOCK" --profile bench >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE_PID=$!
  for _ in $(seq 300); do [[ -S $SOCK ]] && break; sleep 0.1; done
  [[ -S $SOCK ]] || { echo "bench-snapshot.sh: envol serve did not start:" >&2; cat "$WORK/serve.err" >&2; exit 1; }
}
stop_serve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; rm -f "$SOCK"; }
URI="nbd+unix:///vol?socket=$SOCK"

echo "== filling the ${SIZE_MIB} MiB volume with random data"
serve
fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=16 --size="${SIZE_MIB}M" \
  --refill_buffers --randrepeat=0 >/dev/null
stop_serve
sync

now() { date +%s.%N; }
# snapshot NAME -> "NAME seconds objects bytes url" in the log
snapshot() {
  local t0 t1 json
  t0=$(now)
  json=$("$ENVOL" snapshot create "$VOL" --to "$PLACE" --profile bench "${S3[@]}" --json)
  t1=$(now)
  jq -r --arg n "$1" --arg t "$(echo "$t1 - $t0" | bc)" \
    '[$n, $t, .objects_added, .bytes_added, .url] | map(tostring) | join(" ")' <<<"$json" |
    tee -a "$OUT/bench-snapshot.log"
}
: >"$OUT/bench-snapshot.log"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== first snapshot (full)"
snapshot first
SNAP1=$(awk '$1 == "first" {print $5}' "$OUT/bench-snapshot.log")
awss3 ls "s3://$BUCKET/bench/chunks/" | awk '{print $4}' | sort >"$WORK/chunks.first"
CHUNKS=$(wc -l <"$WORK/chunks.first")

echo "== changing 1 %: 20 extents of 1 MiB at random chunk-aligned offsets"
serve
# shellcheck disable=SC2046
for mib in $(shuf -i 0-$((SIZE_MIB - 1)) -n 20); do
  qemu-io -f raw "$URI" -c "write -P $((mib % 251 + 1)) $((mib * 1048576)) 1M" >/dev/null
done
stop_serve
echo "== second snapshot (incremental)"
snapshot second

# restore ROUND / cli ROUND -> "restore|cli ROUND seconds bytes"
restore() {
  local t0 t1 target=$WORK/vol-restored.envol
  rm -f "$target"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now)
  "$ENVOL" volume restore "$SNAP1" --to "$target" --profile bench "${S3[@]}" --concurrency "$CONC" >/dev/null 2>"$WORK/restore.err" ||
    { cat "$WORK/restore.err" >&2; exit 1; }
  sync -f "$target"
  t1=$(now)
  echo "restore $1 $(echo "$t1 - $t0" | bc) $(du -b --apparent-size "$target" | cut -f1)" | tee -a "$OUT/bench-snapshot.log"
  rm -f "$target"
}
cli() {
  local t0 t1 dir=$WORK/cli-copy
  rm -rf "$dir"; sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now)
  # Only the first snapshot's objects (the 20 the second added are excluded), as restored.
  # shellcheck disable=SC2046
  awss3 cp --recursive --quiet "s3://$BUCKET/bench/chunks/" "$dir/" $(cat "$WORK/excludes")
  sync -f "$dir"
  t1=$(now)
  echo "cli $1 $(echo "$t1 - $t0" | bc) $(du -sb "$dir" | cut -f1)" | tee -a "$OUT/bench-snapshot.log"
  rm -rf "$dir"
}
# The chunks the second snapshot added, excluded from the CLI's copy.
awss3 ls "s3://$BUCKET/bench/chunks/" | awk '{print $4}' | sort >"$WORK/chunks.second"
comm -13 "$WORK/chunks.first" "$WORK/chunks.second" | sed 's/^/--exclude\n/' >"$WORK/excludes"
[[ $(grep -vc -- --exclude "$WORK/excludes") -le 20 ]] || { echo "bench-snapshot.sh: the second snapshot added more than 20 chunks" >&2; exit 1; }
echo "== restore of the first snapshot vs aws s3 cp --recursive, $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then restore "$r"; cli "$r"; else cli "$r"; restore "$r"; fi
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT/bench-snapshot.log" "$SIZE_MIB" "$CHUNKS" "$(date -u +%Y-%m-%d)" "$(nproc)" "$LOAD0" "$LOAD1" "$CONC" >"$OUT/bench-snapshot.md" <<'EOF'
import sys, statistics as st
log, size, chunks, day, cores, load0, load1, conc = sys.argv[1:]
size = int(size) * 1048576
snaps, runs = {}, {"restore": [], "cli": []}
for line in open(log):
    f = line.split()
    if f[0] in ("first", "second"):
        snaps[f[0]] = (float(f[1]), int(f[2]), int(f[3]))
    else:
        runs[f[0]].append((float(f[2]), int(f[3])))
mib = lambda b: b / 1048576
(t1, o1, b1), (t2, o2, b2) = snaps["first"], snaps["second"]
print(f"{day}, micro-ceph (1 bluestore OSD on a sparse file, radosgw beast), {cores} cores shared by "
      f"the OSD, radosgw, envol and the AWS CLI; load average {load0} before, {load1} after; "
      f"a {mib(size):.0f} MiB volume of random data, {chunks} chunk objects of 1 MiB:")
print()
print("| step | time | objects | bytes uploaded | target |")
print("|---|---|---|---|---|")
print(f"| first snapshot (full) | {t1:.1f} s | {o1} | {mib(b1):.0f} MiB ({mib(b1)/t1:.0f} MiB/s) | |")
print(f"| second snapshot, after 20 × 1 MiB changed (1 %) | {t2:.1f} s ({100*t2/t1:.1f} % of the first) | {o2} | "
      f"{mib(b2):.0f} MiB ({100*b2/size:.2f} % of the volume) | ≤ 2 % of the bytes, ≤ 10 % of the time: "
      f"{'met' if b2 <= 0.02*size and t2 <= 0.1*t1 else 'NOT met'} |")
r = st.median(t for t, _ in runs["restore"]); c = st.median(t for t, _ in runs["cli"])
rb = runs["restore"][0][1]; cb = runs["cli"][0][1]
print(f"| `envol volume restore` of the first snapshot (concurrency {conc}), median of {len(runs['restore'])} | {r:.1f} s | {o1} | "
      f"{mib(b1)/r:.0f} MiB/s down | |")
print(f"| `aws s3 cp --recursive` of the same objects, median of {len(runs['cli'])} | {c:.1f} s | {o1} | "
      f"{mib(cb)/c:.0f} MiB/s down | |")
print(f"| restore / AWS CLI (rate) | {c/r:.2f}× | | | ≥ 1.0×: {'met' if c/r >= 1.0 else 'NOT met'} |")
EOF
echo
cat "$OUT/bench-snapshot.md"
