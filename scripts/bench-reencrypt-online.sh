#!/usr/bin/env bash
# bench-reencrypt-online.sh - clients' fio throughput over NBD while `envol serve` re-encrypts
# the volume online (issue 15: "at the default --max-rate, clients' I/O keeps at least half
# its throughput"), against the same fio jobs without a re-encryption, in the same run.
#
# usage: scripts/bench-reencrypt-online.sh [-s SIZE_MIB] [-t SECONDS] [-d DIR] [-m RATE]
#   defaults: -s 2048 -t 10 -d /dev/shm -m "" (the server's default rate; e.g. -m 10G for
#   an unthrottled comparison). The volume must be large enough that the re-encryption
#   outlasts both fio jobs (2 x SECONDS at the rate): the script checks it still runs.
#
# What it does: builds envol (release), starts a throw-away KMS, a key, a volume file in
# DIR (data area filled with random bytes: real ciphertext everywhere), `envol serve` on a
# Unix socket; then two fio jobs (nbd engine, 4k random read/write 70/30 at iodepth 16 —
# request-bound — and 1 MiB sequential writes at iodepth 4 — bandwidth-bound), each for
# SECONDS, first alone, then again while `envol volume reencrypt` runs in the server. For
# each run it prints fio's MiB/s and IOPS, and the server's CPU seconds per wall second
# (from /proc/PID/stat), which shows what bounds it on this machine. Run it under
# `flock /tmp/envol-bench.lock nice -n -20 ...` on a shared machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=2048 SECS=10 DIR=/dev/shm RATE=
while getopts "s:t:d:m:h" o; do
  case $o in
    s) SIZE_MIB=$OPTARG ;; t) SECS=$OPTARG ;; d) DIR=$OPTARG ;; m) RATE=$OPTARG ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done
for n in "$SIZE_MIB" "$SECS"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-reencrypt-online.sh: -s and -t take positive integers" >&2; exit 2; }
done
for tool in fio jq bc; do
  command -v "$tool" >/dev/null || { echo "bench-reencrypt-online.sh: $tool missing: apt-get install -y fio jq bc" >&2; exit 1; }
done

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "$DIR/envol-bench-online.XXXXXX")
mkdir -p "$WORK/bin" "$WORK/aws"
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== KMS, key, volume (${SIZE_MIB} MiB in $DIR), serve"
# A throw-away KMS, user and key (scripts/bench/kms.sh).
. "$ROOT/scripts/bench/kms.sh"
start_bench_kms bench-reencrypt-online.sh
VOL=$WORK/bench.vol
"$ENVOL" volume create "$VOL" --size "${SIZE_MIB}M" --key alias/bench --profile bench >/dev/null
dd if=/dev/urandom of="$VOL" bs=1M seek=1 count="$SIZE_MIB" conv=notrunc status=none
SOCK=$WORK/nbd.sock
"$ENVOL" serve "$VOL=bench" --socket "$SOCK" --profile bench >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE=$!
PIDS+=($SERVE)
for _ in $(seq 100); do grep -q 'nbd+unix' "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q 'nbd+unix' "$WORK/serve.out" || { echo "bench-reencrypt-online.sh: serve did not start:" >&2; cat "$WORK/serve.err" >&2; exit 1; }
URI="nbd+unix:///bench?socket=$SOCK"
CONTROL=$SOCK.control

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVE/stat"; }
HZ=$(getconf CLK_TCK)
# fio JOB_NAME ARGS... -> "MiB/s IOPS server-CPU-s-per-s"
run_fio() {
  local name=$1; shift
  local c0 c1 t0 t1 json
  c0=$(cpu_ticks); t0=$(date +%s.%N)
  # fio's JSON to a file: the nbd engine may print notes on stdout too.
  fio --output-format=json --output="$WORK/$name.json" --ioengine=nbd --uri="$URI" --name="$name" \
    --time_based --runtime="$SECS" --offset=0 --size="$((SIZE_MIB / 2))M" "$@" >/dev/null
  json=$(cat "$WORK/$name.json")
  t1=$(date +%s.%N); c1=$(cpu_ticks)
  local bw iops cpu
  bw=$(jq '[.jobs[0].read.bw_bytes, .jobs[0].write.bw_bytes] | add / 1048576' <<<"$json")
  iops=$(jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add' <<<"$json")
  cpu=$(echo "scale=2; ($c1 - $c0) / $HZ / ($t1 - $t0)" | bc -l)
  printf '%.1f %.0f %s\n' "$bw" "$iops" "$cpu"
}
RAND=(--rw=randrw --rwmixread=70 --bs=4k --iodepth=16)
SEQ=(--rw=write --bs=1M --iodepth=4)

echo "== without a re-encryption (${SECS} s each)"
read -r B_RAND_BW B_RAND_IOPS B_RAND_CPU < <(run_fio rand "${RAND[@]}")
read -r B_SEQ_BW B_SEQ_IOPS B_SEQ_CPU < <(run_fio seq "${SEQ[@]}")

echo "== during an online re-encryption (rate: ${RATE:-the server default})"
ARGS=(volume reencrypt "$VOL" --quiet --control "$CONTROL" --profile bench)
[[ -z $RATE ]] || ARGS+=(--max-rate "$RATE")
"$ENVOL" "${ARGS[@]}" >"$WORK/reencrypt.out" 2>"$WORK/reencrypt.err" &
RE=$!
PIDS+=($RE)
for _ in $(seq 100); do
  [[ $("$ENVOL" status --json --control "$CONTROL" | jq -r '.exports[0].reencryption.state // empty') == running ]] && break
  sleep 0.1
done
read -r R_RAND_BW R_RAND_IOPS R_RAND_CPU < <(run_fio rand "${RAND[@]}")
read -r R_SEQ_BW R_SEQ_IOPS R_SEQ_CPU < <(run_fio seq "${SEQ[@]}")
STATE=$("$ENVOL" status --json --control "$CONTROL" | jq -c '.exports[0].reencryption')
[[ $(jq -r .state <<<"$STATE") == running ]] \
  || { echo "bench-reencrypt-online.sh: the re-encryption ended before the fio jobs did ($STATE): use a larger -s" >&2; exit 1; }
REBW=$(jq '.rate_bytes_per_sec / 1048576' <<<"$STATE")

ratio() { echo "scale=2; $2 / $1" | bc -l; }
cat <<EOF

| fio over NBD, ${SECS} s, ${SIZE_MIB} MiB volume in $DIR | alone MiB/s (IOPS) | during re-encryption MiB/s (IOPS) | kept | server CPU s/s alone → during |
|---|---|---|---|---|
| 4k randrw 70/30, iodepth 16 | $B_RAND_BW ($B_RAND_IOPS) | $R_RAND_BW ($R_RAND_IOPS) | $(ratio "$B_RAND_BW" "$R_RAND_BW") | $B_RAND_CPU → $R_RAND_CPU |
| 1M sequential write, iodepth 4 | $B_SEQ_BW ($B_SEQ_IOPS) | $R_SEQ_BW ($R_SEQ_IOPS) | $(ratio "$B_SEQ_BW" "$R_SEQ_BW") | $B_SEQ_CPU → $R_SEQ_CPU |

re-encryption rate meanwhile: $(printf '%.1f' "$REBW") MiB/s (setting: ${RATE:-default}); $(nproc) cores
EOF
