#!/usr/bin/env bash
# bench.sh - serve a throw-away encrypted envol volume and race it against the NBD
# peers that are installed, with scripts/bench/compare.sh (fio nbd engine + nbdcopy).
#
# usage: scripts/bench.sh [-r ROUNDS] [-t SECONDS] [-s SIZE_MIB] [-o OUTDIR] [-w WORKLOADS]
#                         [-c COPIES] [-b ENVOL_BINARY] [PEER...]
#   defaults: -r 3 -t 15 -s 2048; PEERS default to every installed one of
#   nbdkit-file nbdkit-luks qemu-luks nbd-server qemu-raw, and the network path:
#   own-tcp nbdkit-file-tcp own-tls nbdkit-file-tls (TCP loopback, plain and TLS;
#   see compare.sh). Naming peers picks them (envol's Unix-socket run is always in).
#   -w, -c: only these fio workloads / nbdcopy copies (compare.sh's -w and -c; "none"
#   skips them), e.g. `-w none -c out,out-1c` for the copies out alone.
#   -b: another build of envol (e.g. main's target/release/envol, copied first) served
#   as the peers ownb, ownb-tcp, ownb-tls (name them), for an A/B of two builds in one
#   run: summarize.py prints own ÷ ownb round by round.
#
# What it does: builds envol (release), lets `envol up --data BENCH_DIR/envol-SIZE`
# create a throw-away embedded KMS, a master key and a SIZE_MIB volume on first start
# (kept for later runs, as compare.sh keeps the peers' images; compare.sh restarts
# the server every round and later starts re-attach through the same KMS), runs
# compare.sh, and writes the results table (images/bench-results.md) and a chart
# (images/bench-chart.svg) from the run's log with scripts/bench_report.py.
#
# Needs: apt-get install -y fio jq libnbd-bin nbdkit nbd-server qemu-utils openssl
# Run it as `flock /tmp/envol-bench.lock nice -n -20 scripts/bench.sh` on a shared machine.
# Machines are noisy: read the ratios inside one run, not absolute numbers across runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COMPARE=${COMPARE:-$ROOT/scripts/bench/compare.sh}
ROUNDS=3 RT=15 SIZE_MIB=2048 OUT= SELECT=() OTHER=
while getopts "r:t:s:o:w:c:b:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) RT=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; o) OUT=$OPTARG ;;
    w|c) SELECT+=("-$o" "$OPTARG") ;; b) OTHER=$OPTARG ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ -x $COMPARE ]] || { echo "bench.sh: $COMPARE not found (set COMPARE=path/to/compare.sh)" >&2; exit 1; }
for tool in fio jq nbdinfo nbdcopy; do
  command -v "$tool" >/dev/null ||
    { echo "bench.sh: $tool missing: apt-get install -y fio jq libnbd-bin nbdkit nbd-server qemu-utils" >&2; exit 1; }
done

PEERS=()
for p in "$@"; do [[ $p == own ]] || PEERS+=("$p"); done  # envol itself always runs
if (($# == 0)); then
  if command -v nbdkit >/dev/null; then
    PEERS+=(nbdkit-file)
    nbdkit --dump-config >/dev/null 2>&1 && [[ -n $(find "$(nbdkit --dump-config | sed -n 's/^filterdir=//p')" -name 'nbdkit-luks-filter.so' 2>/dev/null) ]] &&
      PEERS+=(nbdkit-luks)
  fi
  command -v qemu-nbd >/dev/null && command -v qemu-img >/dev/null && PEERS+=(qemu-luks)
  command -v nbd-server >/dev/null && PEERS+=(nbd-server)
  command -v nbdkit >/dev/null && PEERS+=(own-tcp nbdkit-file-tcp own-tls nbdkit-file-tls)
fi

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# A private copy: a rebuild in the checkout during the run must not change
# the server under test between rounds.
mkdir "$WORK/bin"
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
if [[ -n $OTHER ]]; then
  [[ -x $OTHER ]] || { echo "bench.sh: -b $OTHER: not an executable" >&2; exit 1; }
  cp "$OTHER" "$WORK/bin/envol-b"
  export ENVOL_B=$WORK/bin/envol-b
fi
OUT=${OUT:-$WORK/out}
# The throw-away KMS and volume live beside the peers' images in BENCH_DIR and,
# like them, are made once per size and reused by later runs: every server
# then starts from a file whose blocks are already allocated (a fresh sparse
# file makes the first round's writes pay for block allocation).
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/var/tmp}/envol-bench}
export ENVOL ENVOL_BENCH_DATA=$BENCH_DIR/envol-$SIZE_MIB
# `envol up` serves export "default" on --socket, and on TCP loopback: the free
# port compare.sh picked for the -tcp/-tls runs ($PORT), else an ephemeral one
# so it never collides with anything; for -tls with compare.sh's certificate;
# for own-async* on the older transmission loop.
export OWN_CMD='exec "$ENVOL" up --data "$ENVOL_BENCH_DATA" --size "${SIZE_MIB}M" --socket "$SOCK" --listen "127.0.0.1:${PORT:-0}" --kms-listen none ${TLS_DIR:+--tls-cert "$TLS_DIR/server-cert.pem" --tls-key "$TLS_DIR/server-key.pem"} ${TRANSMISSION:+--transmission "$TRANSMISSION"}'
export EXPORT=default

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== compare.sh -r $ROUNDS -t $RT -s $SIZE_MIB ${SELECT[*]} own ${PEERS[*]}  ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
BENCH_DIR=$BENCH_DIR \
  "$COMPARE" -r "$ROUNDS" -t "$RT" -s "$SIZE_MIB" -o "$OUT" "${SELECT[@]}" own "${PEERS[@]}"

mkdir -p "$ROOT/images"
python3 "$ROOT/scripts/bench_report.py" "$OUT/compare.log" \
  --markdown "$ROOT/images/bench-results.md" --svg "$ROOT/images/bench-chart.svg" \
  --net-markdown "$ROOT/images/bench-net-results.md" --net-svg "$ROOT/images/bench-net-chart.svg" \
  --note "$ROUNDS rounds × ${RT} s, ${SIZE_MIB} MiB, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before $LOAD0, after $(cut -d' ' -f1-3 /proc/loadavg)"
cp "$OUT/compare.log" "$ROOT/images/bench-compare.log"
echo "== written: images/bench-results.md images/bench-chart.svg images/bench-net-results.md images/bench-net-chart.svg images/bench-compare.log"
