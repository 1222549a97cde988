#!/usr/bin/env bash
# bench-reencrypt.sh - offline data-key re-encryption (`envol volume reencrypt`) of a volume
# file whose data is in the page cache, against a plain copy of the same file (read + write,
# no crypto: `cp`, and `dd bs=8M`) measured in the same run: the I/O bound.
#
# usage: scripts/bench-reencrypt.sh [-s SIZE_MIB] [-r ROUNDS] [-d DIR] [-o OUTDIR]
#   defaults: -s 2048 -r 3 -d /dev/shm (tmpfs: the page cache itself; fsync costs nothing
#   there, as for a page-cached file whose writeback is not waited for). With -d on a disk,
#   the re-encryption's flushes (one per step, for crash safety) wait for the disk and
#   `cp` does not: both figures are printed, the comparison is then not like for like.
#
# What it does: builds envol (release, the binary only), starts a throw-away KMS
# (`envol kms init` + `kms serve` on a free loopback port), a key, a volume file of SIZE_MIB
# whose data area is filled with random bytes (every sector is real ciphertext to rewrite:
# no holes to skip), reads it once into the page cache, then alternates per round a `cp`,
# a `dd`, and a re-encryption, and prints the medians as a Markdown table (also
# OUTDIR/bench-reencrypt.md). Needs ~2x SIZE free in DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=2048 ROUNDS=3 DIR=/dev/shm OUT=
while getopts "s:r:d:o:h" o; do
  case $o in
    s) SIZE_MIB=$OPTARG ;; r) ROUNDS=$OPTARG ;; d) DIR=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
for n in "$SIZE_MIB" "$ROUNDS"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-reencrypt.sh: -s and -r take positive integers" >&2; exit 2; }
done
[[ -d $DIR ]] || { echo "bench-reencrypt.sh: $DIR is not a directory" >&2; exit 2; }

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "$DIR/envol-bench-reencrypt.XXXXXX")
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK/bin" "$WORK/aws"
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK/bin" "$WORK/aws" "$WORK/kms" "$WORK"/*.vol "$WORK"/copy
  [[ $OUT == "$WORK/out" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== KMS, key, volume"
# A throw-away KMS, user and key (scripts/bench/kms.sh).
. "$ROOT/scripts/bench/kms.sh"
start_bench_kms bench-reencrypt.sh
VOL=$WORK/bench.vol
"$ENVOL" volume create "$VOL" --size "${SIZE_MIB}M" --key alias/bench --profile bench >/dev/null
# Random bytes over the whole data area (from 1 MiB): what a written volume holds.
dd if=/dev/urandom of="$VOL" bs=1M seek=1 count="$SIZE_MIB" conv=notrunc status=none
cat "$VOL" >/dev/null

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
declare -a T_CP T_DD T_RE
for r in $(seq "$ROUNDS"); do
  t0=$(now); cp "$VOL" "$WORK/copy"; t1=$(now); rm -f "$WORK/copy"
  T_CP+=("$(secs "$t0" "$t1")")
  t0=$(now); dd if="$VOL" of="$WORK/copy" bs=8M status=none; t1=$(now); rm -f "$WORK/copy"
  T_DD+=("$(secs "$t0" "$t1")")
  t0=$(now); "$ENVOL" volume reencrypt "$VOL" --quiet --profile bench >/dev/null; t1=$(now)
  T_RE+=("$(secs "$t0" "$t1")")
  echo "round $r: cp ${T_CP[-1]} s, dd ${T_DD[-1]} s, reencrypt ${T_RE[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
BYTES=$(( SIZE_MIB * 1024 * 1024 ))
rate() { echo "scale=2; $BYTES / $1 / 1000000000" | bc -l; }
M_CP=$(median "${T_CP[@]}") M_DD=$(median "${T_DD[@]}") M_RE=$(median "${T_RE[@]}")
FS=$(df -T "$DIR" | awk 'NR==2 {print $2}')
{
  echo "| ${SIZE_MIB} MiB volume in $DIR ($FS), median of $ROUNDS | seconds | GB/s |"
  echo "|---|---|---|"
  echo "| cp (read + write, no crypto) | $M_CP | $(rate "$M_CP") |"
  echo "| dd bs=8M (read + write, no crypto) | $M_DD | $(rate "$M_DD") |"
  echo "| envol volume reencrypt (KMS calls included) | $M_RE | $(rate "$M_RE") |"
  echo
  echo "re-encryption / cp: $(echo "scale=2; $M_CP / $M_RE" | bc -l); re-encryption / dd: $(echo "scale=2; $M_DD / $M_RE" | bc -l) ($(nproc) cores)"
} | tee "$OUT/bench-reencrypt.md"
