#!/usr/bin/env bash
# profile.sh - where envol's server spends its CPU under each benchmark workload:
# serves a throw-away volume (as bench.sh does), runs each fio workload of
# scripts/bench/bench-nbd.sh and the nbdcopy round trip under `perf record`,
# and prints the top symbols and the share of each server thread.
#
# usage: scripts/profile.sh [-t SECONDS] [-s SIZE_MIB] [-n TOP] [-T | -N] [-j JOBS]
#   defaults: -t 6 -s 2048 -n 12 -j 1
#   -T: over TLS on TCP loopback (nbds://; a throw-away CA and certificate made
#       with openssl, trusted by the clients through libnbd's default CA directory
#       under a private HOME) instead of the Unix socket
#   -N: over plain TCP loopback (nbd://) instead of the Unix socket
#   -j: fio jobs, each its own NBD connection (as bench.sh's 4-connection rows)
# Needs: perf (linux-perf), fio, jq, libnbd-bin; a kernel that lets root sample
# (perf_event_paranoid <= 1 or root). Software clock sampling works in VMs
# without hardware counters.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/scripts/bench/bench-nbd.sh}
RT=6 SIZE_MIB=2048 TOP=12 TLS= TCP= JOBS=1
while getopts "t:s:n:TNj:h" o; do
  case $o in
    t) RT=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; n) TOP=$OPTARG ;; T) TLS=1 ;; N) TCP=1 ;;
    j) JOBS=$OPTARG ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "profile.sh: -j takes a number of fio jobs, not '$JOBS'" >&2; exit 2; }
for tool in perf fio nbdcopy; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool missing" >&2; exit 1; }
done
[[ -x $BENCH ]] || { echo "profile.sh: $BENCH not found (set BENCH=path/to/bench-nbd.sh)" >&2; exit 1; }

[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-profile.XXXXXX")
SERVER=
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cp "$ROOT/target/release/envol" "$WORK/envol"
SOCK=$WORK/s.sock URI="nbd+unix:///default?socket=$WORK/s.sock" LISTEN=127.0.0.1:0 TLS_ARGS=()
if [[ -n $TLS ]]; then
  command -v openssl >/dev/null || { echo "profile.sh: openssl missing" >&2; exit 1; }
  P=$WORK/pki; mkdir -p "$P" "$WORK/home/.pki/libnbd"
  q=(-nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  openssl req -x509 "${q[@]}" -days 2 -subj "/CN=envol profile CA" -addext basicConstraints=critical,CA:TRUE \
    -keyout "$P/ca-key.pem" -out "$P/ca-cert.pem" 2>/dev/null
  openssl req "${q[@]}" -subj /CN=localhost -keyout "$P/server-key.pem" -out "$P/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$P/server.ext"
  openssl x509 -req -in "$P/server.csr" -CA "$P/ca-cert.pem" -CAkey "$P/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$P/server.ext" -out "$P/server-cert.pem" 2>/dev/null
  cp "$P/ca-cert.pem" "$WORK/home/.pki/libnbd/"
  export HOME=$WORK/home  # the clients' CA; envol up needs no HOME with --data
  TLS_ARGS=(--tls-cert "$P/server-cert.pem" --tls-key "$P/server-key.pem")
fi
if [[ -n $TLS || -n $TCP ]]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LISTEN=127.0.0.1:$PORT URI="nbd://127.0.0.1:$PORT/default"
  [[ -z $TLS ]] || URI="nbds://127.0.0.1:$PORT/default"
fi
"$WORK/envol" up --data "$WORK/data" --size "${SIZE_MIB}M" --socket "$SOCK" --listen "$LISTEN" --kms-listen none \
  "${TLS_ARGS[@]}" >"$WORK/up.log" 2>&1 &
SERVER=$!
for _ in $(seq 600); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.1; done
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$WORK/src.bin"
nbdcopy "$WORK/src.bin" "$URI"  # every block allocated and cached, as in a benchmark's later rounds

report() {  # LABEL PERF_DATA
  echo "=== $1: top symbols (share of server CPU samples)"
  perf report -i "$2" --no-children --sort symbol 2>/dev/null |
    grep -E '^ +[0-9.]+%' | awk -v n="$TOP" 'NR <= n' | sed -E 's/ +- +- *$//; s/ {2,}/  /g'
  echo "--- by thread"
  perf report -i "$2" --no-children --sort comm 2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/ {2,}/  /g'
}

for w in seqwrite seqread randread randwrite; do
  perf record -F 1999 -g -p "$SERVER" -o "$WORK/$w.data" -- sleep "$RT" >/dev/null 2>&1 &
  rec=$!
  "$BENCH" -t "$RT" -w "$w" -p "$SERVER" -l envol -x "--numjobs=$JOBS" "$URI" | grep -v '^#'
  wait "$rec" || true
  report "$w" "$WORK/$w.data"
done
for d in in out; do
  perf record -F 1999 -g -p "$SERVER" -o "$WORK/copy-$d.data" >/dev/null 2>&1 &
  rec=$!
  sleep 0.5  # attached before nbdcopy connects: the connections' threads start from then
  t0=$(date +%s.%N)
  if [[ $d == in ]]; then nbdcopy "$WORK/src.bin" "$URI"; else nbdcopy "$URI" null:; fi  # null:, not /dev/null (a pipe to nbdcopy: synchronous)
  echo "nbdcopy $d: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f s", b-a}')"
  kill -INT "$rec"; wait "$rec" || true
  report "nbdcopy $d" "$WORK/copy-$d.data"
done
