#!/usr/bin/env bash
# bench-rbd.sh - envol serving an rbd: volume against librbd itself, on one throw-away
# Ceph cluster, in one run: fio's "rbd" ioengine (librbd directly: no NBD, no
# encryption) on a plain image — with Ceph's default client settings (librbd's
# cache on) and again with the cache off, the durability envol runs with — and
# fio's "nbd" ioengine against `envol serve rbd:POOL/IMAGE` (AES-256-XTS, librbd
# aio underneath) on an image of the same size.
#
# usage: scripts/bench-rbd.sh [-r ROUNDS] [-t SECONDS] [-s SIZE_MIB] [-o OUTDIR]
#   defaults: -r 3 -t 10 -s 1024
#
# Workloads (as scripts/bench/bench-nbd.sh; one job, one connection, time based):
#   seqwrite 1 MiB QD16, seqread 1 MiB QD16, randwrite 4 KiB QD32, randread 4 KiB QD32
# Rounds interleave the three sides workload by workload (alternating which goes first),
# so both see the same cluster state; the table has the median of the rounds, the ratio
# envol / fio-rbd per workload, envol's server CPU per GiB moved (from /proc/PID/stat
# utime+stime deltas) and, beside it, the CPU per GiB of the fio process that runs librbd
# itself (all its threads, from bash's `time`). A second table adds up the CPU the whole
# path costs per GiB on each side (the OSD process, the fio process, envol's server): on
# these 2 shared cores that total is what bounds a workload once they are busy.
#
# What it does: builds envol (release), brings up a private cluster with
# scripts/micro-ceph.sh (MON_PORT=3303 MON_V1_PORT=6783 unless set; its own directory,
# torn down at exit), a pool, a plain image and an envol volume (a throw-away KMS from
# `envol kms init` + `envol kms serve` on a free loopback port, a key, `envol volume
# create rbd:...`), fills both images once (reads of never-written RBD objects are
# answered without touching a disk and would flatter either side), runs the rounds
# and prints a Markdown table (also OUTDIR/bench-rbd.md; raw lines in OUTDIR/bench-rbd.log).
#
# Needs: apt-get install -y ceph-mon ceph-osd ceph-mgr ceph-common librbd1 fio jq libnbd-bin
# (fio with both the rbd and nbd engines). Run as root (the OSD wants it), on a quiet machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3 RT=10 SIZE_MIB=1024 OUT=
while getopts "r:t:s:o:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;; t) RT=$OPTARG ;; s) SIZE_MIB=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,26p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
for n in "$ROUNDS" "$RT" "$SIZE_MIB"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "bench-rbd.sh: -r, -t and -s take positive integers" >&2; exit 2; }
done
PKGS="ceph-mon ceph-osd ceph-mgr ceph-common librbd1 fio jq libnbd-bin"
for tool in fio jq nbdinfo ceph rbd ceph-mon ceph-osd; do
  command -v "$tool" >/dev/null || { echo "bench-rbd.sh: $tool missing: apt-get install -y $PKGS" >&2; exit 1; }
done
for engine in rbd nbd; do
  fio --enghelp 2>/dev/null | grep -qw "$engine" || { echo "bench-rbd.sh: this fio has no $engine ioengine" >&2; exit 1; }
done
MICRO_CEPH=$ROOT/scripts/micro-ceph.sh
[[ -x $MICRO_CEPH ]] || { echo "bench-rbd.sh: $MICRO_CEPH not found" >&2; exit 1; }

echo "== building envol (release)"
[[ -n ${ENVOL_SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --quiet --bin envol)
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/envol-bench-rbd.XXXXXX")
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK/bin" "$WORK/aws"
# A private copy: a rebuild in the checkout during the run must not change the server.
cp "$ROOT/target/release/envol" "$WORK/bin/envol"
ENVOL=$WORK/bin/envol
CEPH_DIR=$WORK/ceph
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -d $CEPH_DIR ]] && "$MICRO_CEPH" down "$CEPH_DIR" >/dev/null 2>&1 || true
  rm -rf "$WORK/bin" "$WORK/aws" "$WORK/kms" "$WORK"/*.sock
  [[ $OUT == "$WORK/out" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== micro-ceph up ($CEPH_DIR)"
MON_PORT=${MON_PORT:-3303} MON_V1_PORT=${MON_V1_PORT:-6783} "$MICRO_CEPH" up "$CEPH_DIR" >"$WORK/micro-ceph.log" 2>&1 ||
  { cat "$WORK/micro-ceph.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$CEPH_DIR/env"
POOL=bench
ceph osd pool create "$POOL" 8 >/dev/null 2>&1
rbd pool init "$POOL"
rbd create --size "${SIZE_MIB}M" "$POOL/plain"

echo "== KMS, key, volume rbd:$POOL/envol"
# A throw-away KMS, user and key (scripts/bench/kms.sh).
. "$ROOT/scripts/bench/kms.sh"
start_bench_kms bench-rbd.sh
"$ENVOL" volume create "rbd:$POOL/envol" --size "${SIZE_MIB}M" --key alias/bench --profile bench --ceph-conf "$CEPH_CONF" >/dev/null
SOCK=$WORK/envol.sock
"$ENVOL" serve "rbd:$POOL/envol=envol" --socket "$SOCK" --profile bench --ceph-conf "$CEPH_CONF" \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
for _ in $(seq 300); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || { echo "bench-rbd.sh: envol serve did not start:" >&2; cat "$WORK/serve.err" >&2; exit 1; }
URI="nbd+unix:///envol?socket=$SOCK"

RBD_ARGS=(--ioengine=rbd --clientname=admin --pool="$POOL" --rbdname=plain)
# The same engine with librbd's cache off, as envol runs it (an acknowledged
# write must be in the cluster: see the README's Failover section): a peer
# with the same durability. fio's rbd engine reads $CEPH_CONF.
NOCACHE_CONF=$WORK/ceph-nocache.conf
{ cat "$CEPH_CONF"; printf '\n[client]\nrbd cache = false\n'; } >"$NOCACHE_CONF"
NBD_ARGS=(--ioengine=nbd --uri="$URI")
echo "== filling both images once (${SIZE_MIB} MiB each)"
fio --name=fill "${RBD_ARGS[@]}" --rw=write --bs=4M --iodepth=16 --size="${SIZE_MIB}M" >/dev/null
fio --name=fill "${NBD_ARGS[@]}" --rw=write --bs=4M --iodepth=16 --size="${SIZE_MIB}M" >/dev/null

hz=$(getconf CLK_TCK)
cpu_ticks() {  # utime+stime of a process in clock ticks (comm may contain spaces)
  local s; s=$(cat "/proc/$1/stat"); s=${s##*) }
  awk '{print $12 + $13}' <<<"$s"
}
job_args() {
  case $1 in
    seqwrite) echo "--rw=write --bs=1M --iodepth=16" ;;
    seqread) echo "--rw=read --bs=1M --iodepth=16" ;;
    randwrite) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    randread) echo "--rw=randread --bs=4k --iodepth=32" ;;
  esac
}
OSD_PID=$(cat "$CEPH_DIR/run/osd.0.pid")
# run SIDE WORKLOAD ROUND -> appends "SIDE WORKLOAD MiB/s IOPS cpu_ms_per_GiB client_ms osd_ms"
# to the log. CPU: envol's server process for "envol"; fio's own usr+sys (librbd runs
# inside it) for "rbd". client_ms: the fio process's own CPU per GiB on every side (for
# "envol" that is the NBD client; for "rbd" it equals the first figure); osd_ms: the OSD
# process's. The three together are the CPU the whole path costs per GiB, which is what
# bounds a workload when the cores are busy (the OSD, fio and envol share them).
run() {
  local side=$1 w=$2 r=$3 json=$OUT/$1.$2.$3.json t0 t1 dir engine
  local conf=$CEPH_CONF
  case $side in
    rbd) engine=("${RBD_ARGS[@]}") ;;
    rbd-nocache) engine=("${RBD_ARGS[@]}"); conf=$NOCACHE_CONF ;;
    *) engine=("${NBD_ARGS[@]}") ;;
  esac
  t0=$(cpu_ticks "$SERVE_PID") o0=$(cpu_ticks "$OSD_PID")
  # fio's own CPU, all its threads (librbd's included): bash's `time` of the child.
  local TIMEFORMAT='%3U %3S' rc=0
  # shellcheck disable=SC2046
  { time CEPH_CONF=$conf fio --name="$w" "${engine[@]}" $(job_args "$w") --size="${SIZE_MIB}M" \
    --direct=1 --time_based --runtime="$RT" --numjobs=1 --randrepeat=0 --norandommap \
    --group_reporting --output-format=json --output="$json" >/dev/null 2>"$json.err"; } 2>"$json.time" || rc=$?
  ((rc == 0)) || { echo "bench-rbd.sh: fio failed ($side $w):" >&2; cat "$json.err" >&2; exit 1; }
  t1=$(cpu_ticks "$SERVE_PID") o1=$(cpu_ticks "$OSD_PID")
  dir=read; [[ $w == *write* ]] && dir=write
  jq -r --arg side "$side" --arg w "$w" --arg d "$dir" --arg t0 "$t0" --arg t1 "$t1" --arg hz "$hz" \
      --arg o0 "$o0" --arg o1 "$o1" --arg fio_cpu "$(awk '{print ($1 + $2) * 1000}' "$json.time")" '
    .jobs[0] as $j | $j[$d] as $x
    | (if $side == "envol" then (($t1 | tonumber) - ($t0 | tonumber)) / ($hz | tonumber) * 1000
       else ($fio_cpu | tonumber) end) as $cpu_ms
    | ((($o1 | tonumber) - ($o0 | tonumber)) / ($hz | tonumber) * 1000) as $osd_ms
    | ($x.io_bytes / 1073741824) as $gib
    | [$side, $w, (($x.bw_bytes / 1048576) * 10 | round / 10), ($x.iops | round),
       (if $gib > 0 then ($cpu_ms / $gib | round) else "NA" end),
       (if $gib > 0 then (($fio_cpu | tonumber) / $gib | round) else "NA" end),
       (if $gib > 0 then ($osd_ms / $gib | round) else "NA" end)]
    | map(tostring) | join(" ")' "$json" | tee -a "$OUT/bench-rbd.log" | sed "s/^/round $r: /"
}

WORKLOADS=(seqwrite seqread randwrite randread)
: >"$OUT/bench-rbd.log"
echo "== $ROUNDS rounds x ${RT} s per workload and side ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
for r in $(seq "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    if ((r % 2)); then
      run rbd "$w" "$r"; run rbd-nocache "$w" "$r"; run envol "$w" "$r"
    else
      run envol "$w" "$r"; run rbd-nocache "$w" "$r"; run rbd "$w" "$r"
    fi
  done
done
kill -0 "$SERVE_PID" 2>/dev/null || { echo "bench-rbd.sh: envol serve exited during the run:" >&2; cat "$WORK/serve.err" >&2; exit 1; }

# Medians per side and workload, then the table.
python3 - "$OUT/bench-rbd.log" "$ROUNDS" "$RT" "$SIZE_MIB" "$(date -u +%Y-%m-%d)" "$(nproc)" >"$OUT/bench-rbd.md" <<'EOF'
import sys, statistics as st, collections
log, rounds, rt, size, day, cores = sys.argv[1:]
v = collections.defaultdict(list)
for line in open(log):
    side, w, mib, iops, ms, client, osd = line.split()
    num = lambda x: None if x == "NA" else float(x)
    v[(side, w)].append((float(mib), float(iops), num(ms), num(client), num(osd)))
def med(side, w, i):
    xs = [x[i] for x in v[(side, w)] if x[i] is not None]
    return st.median(xs) if xs else float("nan")
names = {"seqwrite": ("seq write 1 MiB QD16", 0), "seqread": ("seq read 1 MiB QD16", 0),
         "randwrite": ("rand write 4 KiB QD32", 1), "randread": ("rand read 4 KiB QD32", 1)}
print(f"{day}, one cluster (mon + mgr + 1 bluestore OSD on a sparse file, size-1 pool), "
      f"{size} MiB images, median of {rounds} rounds x {rt} s, {cores} cores shared by the OSD, fio and envol:")
print()
print("| workload | fio rbd engine (librbd, plain; cache on, Ceph's default) | fio rbd engine, cache off (envol's durability) | envol serve rbd: over NBD (AES-256-XTS, cache off) | envol / fio-rbd | envol / fio-rbd cache off | envol server CPU ms/GiB | fio rbd engine process (librbd inside) CPU ms/GiB |")
print("|---|---|---|---|---|---|---|---|")
for w in ["seqwrite", "seqread", "randwrite", "randread"]:
    label, i = names[w]
    unit = "MiB/s" if i == 0 else "IOPS"
    a, n, b = med("rbd", w, i), med("rbd-nocache", w, i), med("envol", w, i)
    fmt = (lambda x: f"{x:.0f} {unit}") if i == 0 else (lambda x: f"{x/1000:.1f}k {unit}")
    print(f"| {label} | {fmt(a)} | {fmt(n)} | {fmt(b)} | {b/a:.2f}× | {b/n:.2f}× | {med('envol', w, 2):.0f} | {med('rbd', w, 2):.0f} |")
print()
print("CPU the whole path costs per GiB moved (medians, ms/GiB): the OSD, the fio process "
      "(librbd inside it for fio-rbd; the NBD client for envol) and envol's server. When the "
      "cores are the bound, throughput goes as the inverse of the total, so the last column is "
      "the ratio envol can reach against the cache-off peer on these cores:")
print()
print("| workload | fio-rbd cache off: OSD + fio | envol: OSD + fio (NBD client) + envol | total, fio-rbd cache off | total, envol | CPU-bound ceiling of envol / fio-rbd cache off |")
print("|---|---|---|---|---|---|")
for w in ["seqwrite", "seqread", "randwrite", "randread"]:
    label, _ = names[w]
    no, nf = med("rbd-nocache", w, 4), med("rbd-nocache", w, 3)
    eo, ef, es = med("envol", w, 4), med("envol", w, 3), med("envol", w, 2)
    tn, te = no + nf, eo + ef + es
    print(f"| {label} | {no:.0f} + {nf:.0f} | {eo:.0f} + {ef:.0f} + {es:.0f} | {tn:.0f} | {te:.0f} | {tn/te:.2f}× |")
EOF
echo
cat "$OUT/bench-rbd.md"
echo
echo "== written: $OUT/bench-rbd.md ($OUT/bench-rbd.log: one line per side, workload and round)"
