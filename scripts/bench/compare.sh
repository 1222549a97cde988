#!/usr/bin/env bash
# compare.sh - run the same fio suite (bench-nbd.sh) and an nbdcopy round trip against
# several NBD servers, interleaved round by round, and print medians per server.
#
# usage: compare.sh [-r ROUNDS] [-t SECONDS] [-s SIZE_MIB] [-o OUTDIR] SERVER...
#
# SERVER is one of the peers below, or "own": the server under test, started by the
# command in $OWN_CMD (run with bash -c). $OWN_CMD must serve, on the Unix socket
# "$SOCK", an export of exactly $SIZE_MIB MiB named "$EXPORT" (or the default export
# when EXPORT is empty), keep running in the foreground, and exit on SIGTERM.
# scripts/bench.sh sets OWN_CMD to a throw-away `envol up`; by hand:
#   OWN_CMD='exec envol serve "$VOL=bench" --socket "$SOCK"' EXPORT=bench VOL=/var/tmp/v.img \
#     scripts/bench/compare.sh own nbdkit-file nbdkit-luks qemu-luks
#
# Peers (all over Unix sockets, page cache on, same data directory):
#   nbdkit-file   nbdkit file plugin (plain)          nbdkit-luks  nbdkit + luks filter
#   qemu-raw      qemu-nbd raw (plain)                qemu-luks    qemu-nbd LUKS aes-256-xts-plain64
#   nbd-server    the reference nbd-server (plain)
# Needs: fio (with the nbd engine), jq, libnbd-bin (nbdinfo, nbdcopy), nbdkit, nbd-server,
# qemu-utils. Missing ones: apt-get install -y fio jq libnbd-bin nbdkit nbd-server qemu-utils
#
# The write workloads overwrite each export. Machines are noisy: compare the ratios
# inside one run, never absolute numbers across runs. The log lines (## round, FIO,
# COPY) are the input of summarize.py and scripts/bench_report.py.
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
ROUNDS=3 RT=15 SIZE_MIB=2048 OUT=
while getopts "r:t:s:o:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) RT=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,24p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 1)) || { sed -n '2,24p' "$0" >&2; exit 2; }
SERVERS=("$@")
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/var/tmp}/envol-bench}
DATA=$BENCH_DIR/data RUN=$BENCH_DIR/run
OUT=${OUT:-$BENCH_DIR/out.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$DATA" "$RUN" "$OUT"
SECRET=bench-only-passphrase
export SIZE_MIB

prepare() {  # the same source file and images for every server, made once per size
  [[ -f $DATA/src-$SIZE_MIB.bin ]] ||
    head -c "$((SIZE_MIB * 1048576))" /dev/urandom > "$DATA/src-$SIZE_MIB.bin"
  [[ -f $DATA/raw-$SIZE_MIB.img ]] || truncate -s "${SIZE_MIB}M" "$DATA/raw-$SIZE_MIB.img"
  [[ -f $DATA/luks-$SIZE_MIB.img ]] ||
    qemu-img create -q -f luks --object "secret,id=sec0,data=$SECRET" \
      -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10 \
      "$DATA/luks-$SIZE_MIB.img" "${SIZE_MIB}M"
}

# Starts server $1 in this shell (nbdkit -f dies if a subshell that started it exits).
# Sets SERVER_PID and SERVER_URI.
start_server() {
  local name=$1 sock=$RUN/$1.sock pid uri raw=$DATA/raw-$SIZE_MIB.img luks=$DATA/luks-$SIZE_MIB.img
  rm -f "$sock"
  uri="nbd+unix:///?socket=$sock"
  case $name in
    qemu-raw) qemu-nbd -f raw -k "$sock" -t --cache=writeback "$raw" >"$RUN/$name.log" 2>&1 & pid=$! ;;
    qemu-luks)
      qemu-nbd --object "secret,id=sec0,data=$SECRET" -k "$sock" -t --cache=writeback \
        --image-opts "driver=luks,key-secret=sec0,file.driver=file,file.filename=$luks" \
        >"$RUN/$name.log" 2>&1 & pid=$! ;;
    nbdkit-file) nbdkit -f -U "$sock" file "$raw" >"$RUN/$name.log" 2>&1 & pid=$! ;;
    nbdkit-luks)
      nbdkit -f -U "$sock" --filter=luks file "$luks" passphrase="$SECRET" \
        >"$RUN/$name.log" 2>&1 & pid=$! ;;
    nbd-server)
      printf '[generic]\n unixsock = %s\n max_threads = 4\n[export]\n exportname = %s\n' \
        "$sock" "$raw" > "$RUN/nbd-server.conf"
      rm -f "$RUN/nbd-server.pid"
      nbd-server -C "$RUN/nbd-server.conf" -p "$RUN/nbd-server.pid" >"$RUN/$name.log" 2>&1
      for _ in $(seq 50); do [[ -s $RUN/nbd-server.pid ]] && break; sleep 0.1; done
      pid=$(cat "$RUN/nbd-server.pid"); uri="nbd+unix:///export?socket=$sock" ;;
    own)
      [[ -n ${OWN_CMD:-} ]] || { echo "compare.sh: set OWN_CMD to start the server under test" >&2; return 1; }
      SOCK=$sock bash -c "$OWN_CMD" >"$RUN/$name.log" 2>&1 & pid=$!
      [[ -n ${EXPORT:-} ]] && uri="nbd+unix:///$EXPORT?socket=$sock" ;;
    *) echo "compare.sh: unknown server $name" >&2; return 1 ;;
  esac
  # ready = a client completes the handshake (a socket file can appear before listen())
  for _ in $(seq 600); do
    if [[ -S $sock ]] && nbdinfo --size "$uri" >/dev/null 2>&1; then
      SERVER_PID=$pid SERVER_URI=$uri; return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "server $name died:" >&2; cat "$RUN/$name.log" >&2; return 1; }
    sleep 0.1
  done
  echo "server $name: not ready after 60 s" >&2; return 1
}

stop_server() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

cpu_ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; awk '{print $12+$13+$14+$15}' <<<"$s"; }
copy_timed() {  # LABEL DIRECTION SRC DST
  local a b t0 t1 hz; hz=$(getconf CLK_TCK)
  a=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  nbdcopy "$3" "$4"
  t1=$(date +%s.%N); b=$(cpu_ticks "$SERVER_PID")
  awk -v l="$1" -v d="$2" -v t0="$t0" -v t1="$t1" -v a="$a" -v b="$b" -v hz="$hz" -v mib="$SIZE_MIB" \
    'BEGIN{w=t1-t0; printf "%s %s wall_s=%.2f MiB/s=%.0f srv_cpu_s=%.2f\n", l, d, w, mib/w, (b-a)/hz}'
}

prepare
trap '[[ -n ${SERVER_PID:-} ]] && stop_server "$SERVER_PID"' EXIT
log=$OUT/compare.log
for r in $(seq "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do
    start_server "$s"
    mc=$(nbdinfo --can multi-conn "$SERVER_URI" >/dev/null 2>&1 && echo yes || echo no)
    echo "## round $r server $s pid $SERVER_PID multi-conn=$mc $(date +%T)" | tee -a "$log"
    "$HERE/bench-nbd.sh" -t "$RT" -p "$SERVER_PID" -l "$s" -j "$OUT/json-$s-$r" "$SERVER_URI" |
      grep -v '^#' | sed "s/^/FIO r$r /" | tee -a "$log"
    copy_timed "COPY r$r $s" in "$DATA/src-$SIZE_MIB.bin" "$SERVER_URI" | tee -a "$log"
    copy_timed "COPY r$r $s" out "$SERVER_URI" /dev/null | tee -a "$log"
    stop_server "$SERVER_PID"; SERVER_PID=
  done
done
python3 "$HERE/summarize.py" "$log" | tee "$OUT/summary.txt"
echo "compare.sh: log and fio JSON in $OUT"
