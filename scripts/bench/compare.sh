#!/usr/bin/env bash
# compare.sh - run the same fio suite (bench-nbd.sh) and an nbdcopy round trip against
# several NBD servers, interleaved round by round, and print medians per server.
#
# usage: compare.sh [-r ROUNDS] [-t SECONDS] [-s SIZE_MIB] [-o OUTDIR] [-w WORKLOADS]
#                   [-c COPIES] SERVER...
#   -w  the fio workloads, comma separated (bench-nbd.sh's names; default all four), or
#       "none": no fio at all
#   -c  the nbdcopy copies, comma separated, of in, out, in-1c, out-1c (default all four),
#       or "none". A copy out reads what the last copy in wrote (each server's own image).
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
# The network path: "own" and "nbdkit-file" with a suffix are served on a free TCP
# loopback port instead (OWN_CMD gets it as $PORT):
#   -tcp   plain TCP                   nbd://127.0.0.1:PORT/
#   -tls   TCP with TLS required       nbds://127.0.0.1:PORT/; a CA and a server certificate
#          (ECDSA P-256, SAN IP:127.0.0.1) made with `openssl` once per run, in DIR (OWN_CMD
#          gets it as $TLS_DIR: server-cert.pem, server-key.pem); nbdkit uses the same with
#          --tls=require. Clients verify the server: they run with HOME=OUTDIR/client-home,
#          whose .pki/libnbd/ca-cert.pem is libnbd's default CA (fio's nbd engine refuses a
#          tls-certificates= path in the URI). The cipher suite the client (libnbd, GnuTLS)
#          negotiated with each is logged (## tls lines).
# own-async, own-async-tcp, own-async-tls: the same, with OWN_CMD given $TRANSMISSION=async
# (bench.sh: `envol up --transmission async`, the older loop), for an A/B in one run.
# ownb, ownb-tcp, ownb-tls: the same as own*, with OWN_CMD given ENVOL=$ENVOL_B (another
# build of the server, e.g. main's: bench.sh -b), for an A/B of two builds in one run;
# summarize.py then prints own ÷ ownb per round.
# Network servers also run the fio suite with 4 jobs, one connection each (workloads
# named WORKLOAD-4c); every server gets nbdcopy in and out with --connections=1
# (in-1c, out-1c) and with nbdcopy's default (in, out: 4 connections when the server
# advertises multi-conn). A copy out goes to nbdcopy's `null:`, not /dev/null: nbdcopy
# treats a character device like a pipe and copies synchronously, one request at a
# time over one connection, whatever --connections says.
# Needs: fio (with the nbd engine), jq, libnbd-bin (nbdinfo, nbdcopy), nbdkit, nbd-server,
# qemu-utils. Missing ones: apt-get install -y fio jq libnbd-bin nbdkit nbd-server qemu-utils
#
# The write workloads overwrite each export. Machines are noisy: compare the ratios
# inside one run, never absolute numbers across runs. The log lines (## round, FIO,
# COPY, ## tls) are the input of summarize.py and scripts/bench_report.py.
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
ROUNDS=3 RT=15 SIZE_MIB=2048 OUT= WORKLOADS=seqwrite,seqread,randread,randwrite COPIES=in,out,in-1c,out-1c
while getopts "r:t:s:o:w:c:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) RT=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; o) OUT=$OPTARG ;;
    w) WORKLOADS=$OPTARG ;; c) COPIES=$OPTARG ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 1)) || { sed -n '2,30p' "$0" >&2; exit 2; }
IFS=, read -r -a COPY_LIST <<<"$COPIES"
[[ $COPIES == none ]] && COPY_LIST=()
for c in "${COPY_LIST[@]}"; do
  case $c in in|out|in-1c|out-1c) ;; *) echo "compare.sh: -c: unknown copy '$c' (in, out, in-1c, out-1c or none)" >&2; exit 2 ;; esac
done
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
  return 0
}

# A throw-away PKI for the -tls servers, in $TLS_DIR: the layout nbdkit's
# --tls-certificates and libnbd's tls-certificates= both read.
make_certs() {
  local d=$1 q=(-nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  mkdir -p "$d"
  openssl req -x509 "${q[@]}" -days 2 -subj "/CN=envol bench CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/ca-key.pem" -out "$d/ca-cert.pem" 2>/dev/null
  openssl req "${q[@]}" -subj /CN=localhost -keyout "$d/server-key.pem" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca-cert.pem" -CAkey "$d/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$d/server.ext" -out "$d/server-cert.pem" 2>/dev/null
  chmod 600 "$d"/*-key.pem
}

free_port() {  # a TCP port on loopback nobody listens on right now
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts server $1 in this shell (nbdkit -f dies if a subshell that started it exits).
# Sets SERVER_PID and SERVER_URI.
start_server() {
  local name=$1 sock=$RUN/$1.sock pid uri raw=$DATA/raw-$SIZE_MIB.img luks=$DATA/luks-$SIZE_MIB.img
  local port= tls= net=()
  rm -f "$sock"
  uri="nbd+unix:///?socket=$sock"
  case $name in
    *-tcp|*-tls)
      [[ $name == *-tls ]] && tls=$TLS_DIR
      port=$(free_port)
      net=(-i 127.0.0.1 -p "$port")
      [[ -n $tls ]] && net+=(--tls=require "--tls-certificates=$tls")
      uri="nbd${tls:+s}://127.0.0.1:$port/" ;;
  esac
  case $name in
    nbdkit-file-tcp|nbdkit-file-tls) nbdkit -f "${net[@]}" file "$raw" >"$RUN/$name.log" 2>&1 & pid=$! ;;
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
    own|own-tcp|own-tls|own-async|own-async-tcp|own-async-tls|ownb|ownb-tcp|ownb-tls)
      [[ -n ${OWN_CMD:-} ]] || { echo "compare.sh: set OWN_CMD to start the server under test" >&2; return 1; }
      local loop= bin=${ENVOL:-}; [[ $name == own-async* ]] && loop=async
      if [[ $name == ownb* ]]; then
        [[ -x ${ENVOL_B:-} ]] || { echo "compare.sh: $name needs ENVOL_B, the other build's binary" >&2; return 1; }
        bin=$ENVOL_B
      fi
      ENVOL=$bin SOCK=$sock PORT=${port:-0} TLS_DIR=$tls TRANSMISSION=$loop bash -c "$OWN_CMD" >"$RUN/$name.log" 2>&1 & pid=$!
      if [[ -n $port ]]; then
        uri="nbd${tls:+s}://127.0.0.1:$port/${EXPORT:-}"
      elif [[ -n ${EXPORT:-} ]]; then
        uri="nbd+unix:///$EXPORT?socket=$sock"
      fi ;;
    *) echo "compare.sh: unknown server $name" >&2; return 1 ;;
  esac
  # ready = a client completes the handshake (a socket file can appear before listen())
  for _ in $(seq 600); do
    if [[ -n $port || -S $sock ]] && HOME=$CLIENT_HOME nbdinfo --size "$uri" >/dev/null 2>&1; then
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
copy_timed() {  # LABEL DIRECTION SRC DST [NBDCOPY_ARG...]
  local a b t0 t1 hz; hz=$(getconf CLK_TCK)
  a=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N)
  HOME=$CLIENT_HOME nbdcopy "${@:5}" "$3" "$4"
  t1=$(date +%s.%N); b=$(cpu_ticks "$SERVER_PID")
  awk -v l="$1" -v d="$2" -v t0="$t0" -v t1="$t1" -v a="$a" -v b="$b" -v hz="$hz" -v mib="$SIZE_MIB" \
    'BEGIN{w=t1-t0; printf "%s %s wall_s=%.2f MiB/s=%.0f srv_cpu_s=%.2f\n", l, d, w, mib/w, (b-a)/hz}'
}

prepare
CLIENT_HOME=${HOME:-/}
for s in "${SERVERS[@]}"; do
  if [[ $s == *-tls ]]; then
    command -v openssl >/dev/null || { echo "compare.sh: openssl missing: apt-get install -y openssl" >&2; exit 1; }
    TLS_DIR=$OUT/pki; make_certs "$TLS_DIR"
    mkdir -p "$OUT/client-home/.pki/libnbd"
    cp "$TLS_DIR/ca-cert.pem" "$OUT/client-home/.pki/libnbd/"
    CLIENT_HOME=$OUT/client-home
    break
  fi
done
trap '[[ -n ${SERVER_PID:-} ]] && stop_server "$SERVER_PID"' EXIT
log=$OUT/compare.log
for r in $(seq "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do
    start_server "$s"
    mc=$(HOME=$CLIENT_HOME nbdinfo --can multi-conn "$SERVER_URI" >/dev/null 2>&1 && echo yes || echo no)
    echo "## round $r server $s pid $SERVER_PID multi-conn=$mc $(date +%T)" | tee -a "$log"
    if [[ $s == *-tls ]]; then
      # What the client (libnbd over GnuTLS) and this server agreed on.
      suite=$(HOME=$CLIENT_HOME LIBNBD_DEBUG=1 nbdinfo --size "$SERVER_URI" 2>&1 || true)
      suite=$(sed -n 's/.*connection is using TLS: //p' <<<"$suite" | head -1)
      echo "## tls $s ${suite:-unknown}" | tee -a "$log"
    fi
    if [[ $WORKLOADS != none ]]; then
      HOME=$CLIENT_HOME "$HERE/bench-nbd.sh" -t "$RT" -w "$WORKLOADS" -p "$SERVER_PID" -l "$s" -j "$OUT/json-$s-$r" "$SERVER_URI" |
        grep -v '^#' | sed "s/^/FIO r$r /" | tee -a "$log"
    fi
    if [[ $WORKLOADS != none ]] && [[ $s == *-tcp || $s == *-tls ]]; then
      # Several connections: 4 fio jobs, each its own NBD connection, reported together.
      HOME=$CLIENT_HOME "$HERE/bench-nbd.sh" -t "$RT" -w "$WORKLOADS" -p "$SERVER_PID" -l "$s" -j "$OUT/json4-$s-$r" -x --numjobs=4 "$SERVER_URI" |
        grep -v '^#' | awk -v r="$r" '{ $2 = $2 "-4c"; print "FIO r" r, $0 }' | tee -a "$log"
    fi
    for c in "${COPY_LIST[@]}"; do
      case $c in
        in) copy_timed "COPY r$r $s" in "$DATA/src-$SIZE_MIB.bin" "$SERVER_URI" ;;
        out) copy_timed "COPY r$r $s" out "$SERVER_URI" null: ;;
        in-1c) copy_timed "COPY r$r $s" in-1c "$DATA/src-$SIZE_MIB.bin" "$SERVER_URI" --connections=1 ;;
        out-1c) copy_timed "COPY r$r $s" out-1c "$SERVER_URI" null: --connections=1 ;;
      esac | tee -a "$log"
    done
    stop_server "$SERVER_PID"; SERVER_PID=
  done
done
python3 "$HERE/summarize.py" "$log" | tee "$OUT/summary.txt"
echo "compare.sh: log and fio JSON in $OUT"
