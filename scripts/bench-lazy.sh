#!/usr/bin/env bash
# bench-lazy.sh - serving while restoring (`volume restore --lazy` + `envol serve`) against
# the plain restore of the same snapshot, from radosgw on a throw-away Ceph cluster, in one run:
#   1. `envol volume restore` (everything fetched before the volume can be used): its time;
#   2. `envol volume restore --lazy`, `envol serve`, a 4 KiB read at a random offset over NBD:
#      the time until that read is answered (what a user waits for before the volume is
#      usable), then the time until background hydration has fetched every chunk (`volume
#      info --json` polled every 0.2 s);
#   3. the envol processes' CPU time (user+sys, from /proc) beside each wall time: what
#      bounds each side (envol's CPU, or radosgw/the OSD and the page cache flushes).
#
# usage: scripts/bench-lazy.sh [-s SIZE_MIB] [-r ROUNDS] [-o OUTDIR]
#   defaults: -s 1024 -r 3 (the two sides alternate; medians of the rounds)
#
# What it does: builds envol (release), brings up a private cluster with radosgw
# (scripts/micro-ceph.sh, MON_PORT=3306 MON_V1_PORT=6786 RGW_PORT=7486 unless set; its own
# directory, torn down at exit), a throw-away KMS, a key, a volume file filled with random
# data by fio over NBD, one snapshot, then the rounds; prints a Markdown table (also
# OUTDIR/bench-lazy.md). Run it as the others: flock /tmp/envol-bench.lock nice -n -20 ...
#
# Needs: apt-get install -y ceph-mon ceph-osd ceph-mgr ceph-common radosgw fio jq
# libnbd-bin qemu-utils; pip install awscli. Run as root (the OSD wants it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=1024 ROUNDS=3 OUT=
while getopts "s:r:o:h" o; do
  case $o in
    s) SIZE_MIB=$OPTARG ;; r) ROUNDS=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,21p' "$0" >&2; exit 2 ;;
  esac
done
for n in "$SIZE_MIB" "$ROUNDS"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-lazy.sh: -s and -r take positive integers" >&2; exit 2; }
done
for tool in fio jq aws ceph radosgw qemu-io; do
  command -v "$tool" >/dev/null || { echo "bench-lazy.sh: $tool missing (see the header)" >&2; exit 1; }
done
MICRO_CEPH=$ROOT/scripts/micro-ceph.sh

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-bench-lazy.XXXXXX")
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
  rm -rf "$WORK/bin" "$WORK/aws" "$WORK/kms" "$WORK"/*.vol "$WORK"/*.sock
  [[ $OUT == "$WORK/out" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== micro-ceph up with radosgw ($CEPH_DIR)"
MON_PORT=${MON_PORT:-3306} MON_V1_PORT=${MON_V1_PORT:-6786} RGW_PORT=${RGW_PORT:-7486} WITH_RGW=1 \
  BLOCK_SIZE_GB=$(( SIZE_MIB * 2 / 1024 + 8 )) "$MICRO_CEPH" up "$CEPH_DIR" >"$WORK/micro-ceph.log" 2>&1 ||
  { cat "$WORK/micro-ceph.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$CEPH_DIR/env"

echo "== KMS, key, volume, bucket"
# A throw-away KMS, user and key (scripts/bench/kms.sh).
. "$ROOT/scripts/bench/kms.sh"
start_bench_kms bench-lazy.sh
unset AWS_ENDPOINT_URL_S3 ENVOL_HYDRATE_WORKERS
printf '\n[rgw]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
  "$ENVOL_TEST_S3_ACCESS_KEY" "$ENVOL_TEST_S3_SECRET_KEY" >>"$AWS_SHARED_CREDENTIALS_FILE"
S3=(--endpoint-url "$ENVOL_TEST_S3_ENDPOINT" --s3-profile rgw)
AWS_PROFILE=rgw AWS_DEFAULT_REGION=us-east-1 aws --endpoint-url "$ENVOL_TEST_S3_ENDPOINT" \
  s3api create-bucket --bucket bench >/dev/null
VOL=$WORK/a.vol
"$ENVOL" volume create "$VOL" --size "${SIZE_MIB}M" --key alias/bench --profile bench >/dev/null

start_serve() {  # start_serve VOLUME NAME -> pid in $SERVE_PID, socket $WORK/NAME.sock
  local sock=$WORK/$2.sock
  rm -f "$sock"
  "$ENVOL" serve "$1=$2" --socket "$sock" --profile bench >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE_PID=$!
  for _ in $(seq 3000); do [[ -S $sock ]] && return; sleep 0.01; done
  echo "bench-lazy.sh: envol serve did not start:" >&2; cat "$WORK/serve.err" >&2; exit 1
}
cpu_secs() {  # user+sys seconds of pid $1 (and its reaped children)
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat"
}
secs() { python3 -c 'import time; print(f"{time.monotonic():.3f}")'; }

echo "== filling the volume (${SIZE_MIB} MiB of random data) and one snapshot"
start_serve "$VOL" a
fio --name=w --ioengine=nbd --uri="nbd+unix:///a?socket=$WORK/a.sock" --refill_buffers \
  --rw=write --bs=4M --iodepth=16 --size="${SIZE_MIB}M" >/dev/null
kill -TERM "$SERVE_PID"; wait "$SERVE_PID"
URL=$("$ENVOL" snapshot create "$VOL" --to s3://bench/a --json --quiet --profile bench "${S3[@]}" | jq -r .url)

: >"$OUT/lazy.log"
for r in $(seq "$ROUNDS"); do
  # Plain restore: usable once every chunk is in.
  rm -f "$WORK/r.vol"; sync
  t0=$(secs)
  /usr/bin/time -f "%U %S" -o "$WORK/time.txt" \
    "$ENVOL" volume restore "$URL" --to "$WORK/r.vol" --quiet --profile bench "${S3[@]}" >/dev/null
  sync
  t1=$(secs)
  read -r u s <"$WORK/time.txt"
  echo "plain $(python3 -c "print(round($t1 - $t0, 2), round($u + $s, 2))")" | tee -a "$OUT/lazy.log" | sed "s/^/round $r: /"

  # Lazy: restore, serve, the first read answered; then every chunk in.
  rm -f "$WORK/l.vol"; sync
  offset=$(( (RANDOM % SIZE_MIB) * 1048576 ))
  t0=$(secs)
  "$ENVOL" volume restore "$URL" --to "$WORK/l.vol" --lazy --quiet --profile bench "${S3[@]}" >/dev/null
  start_serve "$WORK/l.vol" l
  qemu-io -f raw -c "read $offset 4096" "nbd+unix:///l?socket=$WORK/l.sock" >"$WORK/qemu-io.out"
  grep -q "read 4096/4096" "$WORK/qemu-io.out" || { cat "$WORK/qemu-io.out" >&2; exit 1; }
  t1=$(secs)
  while "$ENVOL" volume info "$WORK/l.vol" --json | jq -e '.lazy_restore != null' >/dev/null; do sleep 0.2; done
  sync
  t2=$(secs)
  cpu=$(cpu_secs "$SERVE_PID")
  kill -TERM "$SERVE_PID"; wait "$SERVE_PID"
  echo "lazy $(python3 -c "print(round($t1 - $t0, 2), round($t2 - $t0, 2), round($cpu, 2))")" | tee -a "$OUT/lazy.log" | sed "s/^/round $r: /"
done

python3 - "$OUT" "$SIZE_MIB" "$ROUNDS" "$(date -u +%Y-%m-%d)" "$(nproc)" >"$OUT/bench-lazy.md" <<'EOF'
import sys, statistics as st
out, size, rounds, day, cores = sys.argv[1:]
size = int(size)
plain, plain_cpu, first, full, lazy_cpu = [], [], [], [], []
for line in open(f"{out}/lazy.log"):
    f = line.split()
    if f[0] == "plain":
        plain.append(float(f[1])); plain_cpu.append(float(f[2]))
    else:
        first.append(float(f[1])); full.append(float(f[2])); lazy_cpu.append(float(f[3]))
m = st.median
print(f"{day}, one cluster with radosgw (mon + mgr + 1 bluestore OSD on a sparse file), a snapshot of "
      f"{size} MiB of random data ({size} chunk objects), {cores} cores shared by radosgw, the OSD and envol, "
      f"median of {rounds} rounds, the two sides alternating:")
print()
print("| | volume usable after | every chunk in after | envol CPU (user+sys) |")
print("|---|---|---|---|")
print(f"| `volume restore` | {m(plain):.1f} s | {m(plain):.1f} s ({size/m(plain):.0f} MiB/s) | {m(plain_cpu):.1f} s |")
print(f"| `volume restore --lazy` + `serve` (first 4 KiB read answered; background hydration) | {m(first):.2f} s | {m(full):.1f} s ({size/m(full):.0f} MiB/s) | {m(lazy_cpu):.1f} s (the server) |")
print(f"| lazy / plain | {m(plain)/m(first):.0f}× sooner | {m(full)/m(plain):.2f}× the time | |")
EOF
echo
cat "$OUT/bench-lazy.md"
