#!/usr/bin/env bash
# bench-nbd.sh - envol's fio suite: run fixed workloads against one NBD export (fio's
# libnbd "nbd" ioengine; any NBD server) and print one line per workload: name, MiB/s,
# IOPS, p99 completion latency, CPU use. compare.sh runs it against envol and the peers;
# scripts/profile.sh runs it under perf.
#
# Workloads (single NBD connection, numjobs=1, time based):
#   seqwrite   rw=write     bs=1M  iodepth=16
#   seqread    rw=read      bs=1M  iodepth=16
#   randread   rw=randread  bs=4k  iodepth=32
#   randwrite  rw=randwrite bs=4k  iodepth=32
#
# Requires: fio built with the nbd ioengine (check: fio --enghelp | grep -w nbd), jq.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: bench-nbd.sh [options] NBD_URI

  NBD_URI             e.g. nbd+unix:///?socket=/tmp/x.sock   (default export)
                           nbd+unix:///NAME?socket=/tmp/x.sock (named export)
                           nbd://127.0.0.1:10809/NAME
options:
  -t SECONDS   runtime per workload (default 15)
  -w LIST      comma separated subset/order of workloads
               (default seqwrite,seqread,randread,randwrite)
  -p PID       server PID: also report server CPU use (% of one core) per workload
               (all threads + reaped children, from /proc/PID/stat)
  -l LABEL     label printed in the first column (default: the URI)
  -j DIR       keep fio JSON output in DIR (default: a temp dir, deleted)
  -x 'ARGS'    extra fio arguments appended to every job (e.g. '--numjobs=2')
  -n N         repeat the whole suite N times (round-robin over workloads) and print,
               per workload, the median of each column; per-run lines go to stderr
               (default 1)
  -h           this help

WARNING: the write workloads overwrite data on the export.

Output (one line per workload, whitespace separated; a header line first):
  label workload MiB/s IOPS p99_clat_us client_cpu% sys_busy% [srv_cpu% srv_cpu_ms_per_GiB]
    client_cpu%        fio's own usr+sys CPU (% of one core)
    sys_busy%          whole-machine non-idle CPU during the run (% of all cores; >> expected
                       means other load was competing: rerun)
    srv_cpu%           server CPU (% of one core), only with -p
    srv_cpu_ms_per_GiB server CPU milliseconds per GiB moved (efficiency), only with -p
EOF
  exit "${1:-2}"
}

runtime=15
workloads="seqwrite,seqread,randread,randwrite"
pid=""
label=""
jsondir=""
extra=""
reps=1
while getopts ":t:w:p:l:j:x:n:h" opt; do
  case "$opt" in
    t) runtime="$OPTARG" ;;
    w) workloads="$OPTARG" ;;
    p) pid="$OPTARG" ;;
    l) label="$OPTARG" ;;
    j) jsondir="$OPTARG" ;;
    x) extra="$OPTARG" ;;
    n) reps="$OPTARG" ;;
    h) usage 0 ;;
    :) echo "error: -$OPTARG needs an argument" >&2; usage ;;
    \?) echo "error: unknown option -$OPTARG" >&2; usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || { echo "error: exactly one NBD_URI expected" >&2; usage; }
uri="$1"
[[ "$uri" == nbd*://* ]] || { echo "error: '$uri' does not look like an NBD URI" >&2; usage; }
[[ "$runtime" =~ ^[0-9]+$ && "$runtime" -gt 0 ]] || { echo "error: -t must be a positive integer" >&2; exit 2; }
[[ "$reps" =~ ^[0-9]+$ && "$reps" -gt 0 ]] || { echo "error: -n must be a positive integer" >&2; exit 2; }
[[ -z "$label" ]] && label="$uri"
label="${label// /_}"

command -v fio >/dev/null || { echo "error: fio not found" >&2; exit 1; }
command -v jq  >/dev/null || { echo "error: jq not found" >&2; exit 1; }
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "error: this fio has no nbd ioengine" >&2; exit 1; }
if [[ -n "$pid" ]]; then
  [[ -r /proc/$pid/stat ]] || { echo "error: no process $pid" >&2; exit 1; }
fi

if [[ -z "$jsondir" ]]; then
  jsondir="$(mktemp -d "${TMPDIR:-/tmp}/bench-nbd.XXXXXX")"
  trap 'rm -rf "$jsondir"' EXIT
else
  mkdir -p "$jsondir"
fi

hz=$(getconf CLK_TCK)
sys_ticks() {  # "busy total" jiffies over all CPUs from /proc/stat
  awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; idle=$5+$6; print t-idle, t; exit}' /proc/stat  # guest time is already in user
}
cpu_ticks() {  # utime+stime(+ reaped children, for forking servers) of a process, in clock ticks
  # field 2 (comm) may contain spaces: strip through the last ')'
  local s
  s="$(cat "/proc/$1/stat")"
  s="${s##*) }"
  # now $1 is field 3 (state): utime=14 -> $12, stime=15 -> $13, cutime=16 -> $14, cstime=17 -> $15
  awk '{print $12 + $13 + $14 + $15}' <<<"$s"
}

job_args() {  # name -> fio args
  case "$1" in
    seqwrite)  echo "--rw=write --bs=1M --iodepth=16" ;;
    seqread)   echo "--rw=read --bs=1M --iodepth=16" ;;
    randread)  echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    *) echo "error: unknown workload '$1'" >&2; return 1 ;;
  esac
}

IFS=',' read -r -a wl <<<"$workloads"
for w in "${wl[@]}"; do job_args "$w" >/dev/null || exit 2; done
# fail fast (and clearly) if the export is not reachable
if command -v nbdinfo >/dev/null; then
  nbdinfo --size "$uri" >/dev/null 2>"$jsondir/preflight.err" || {
    echo "error: cannot connect to $uri:" >&2; cat "$jsondir/preflight.err" >&2; exit 1; }
fi
if [[ -n "$pid" ]]; then
  echo "# label workload MiB/s IOPS p99_clat_us client_cpu% sys_busy% srv_cpu% srv_cpu_ms_per_GiB"
else
  echo "# label workload MiB/s IOPS p99_clat_us client_cpu% sys_busy%"
fi
run_one() {  # workload rep -> prints one result line
  local w=$1 rep=$2 args out b0 a0 b1 a1 t0 t1 s0 s1 busy srvsec srvpct dir
  args="$(job_args "$w")"
  out="$jsondir/$w.$rep.json"
  read -r b0 a0 < <(sys_ticks)
  [[ -n "$pid" ]] && t0=$(cpu_ticks "$pid") && s0=$(date +%s.%N)
  # shellcheck disable=SC2086
  if ! fio --name="$w" --ioengine=nbd --uri="$uri" $args \
        --direct=1 --time_based --runtime="$runtime" --numjobs=1 \
        --randrepeat=0 --norandommap --group_reporting \
        --output-format=json --output="$out" $extra >/dev/null 2>"$jsondir/$w.$rep.err"; then
    echo "error: fio failed for $w:" >&2
    cat "$jsondir/$w.$rep.err" >&2
    exit 1
  fi
  read -r b1 a1 < <(sys_ticks)
  busy=$(awk -v b0="$b0" -v b1="$b1" -v a0="$a0" -v a1="$a1" 'BEGIN{printf "%.0f", 100*(b1-b0)/((a1-a0)>0?(a1-a0):1)}')
  srvsec=""
  srvpct=""
  if [[ -n "$pid" ]]; then
    s1=$(date +%s.%N)
    sleep 0.5   # let a forking server (nbd-server) reap its per-connection child
    t1=$(cpu_ticks "$pid")
    srvsec=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN{printf "%.3f", (b-a)/hz}')
    srvpct=$(awk -v c="$srvsec" -v s0="$s0" -v s1="$s1" 'BEGIN{printf "%.0f", 100*c/(s1-s0)}')
  fi
  dir=read; [[ "$w" == *write* ]] && dir=write
  jq -r --arg l "$label" --arg w "$w" --arg d "$dir" --arg busy "$busy" \
        --arg srvsec "$srvsec" --arg srvpct "$srvpct" '
    .jobs[0] as $j | $j[$d] as $x
    | [ $l, $w,
        (($x.bw_bytes / 1048576) * 10 | round / 10 | tostring),
        ($x.iops | round | tostring),
        ((($x.clat_ns.percentile["99.000000"] // 0) / 1000) | round | tostring),
        (($j.usr_cpu + $j.sys_cpu) | round | tostring),
        $busy
      ]
      + (if $srvsec != "" then
           [ $srvpct,
             (if $x.io_bytes > 0
                then (($srvsec | tonumber) * 1000 / ($x.io_bytes / 1073741824) | round | tostring)
                else "NA" end) ]
         else [] end)
    | join(" ")' "$out"
}

if [[ "$reps" -eq 1 ]]; then
  for w in "${wl[@]}"; do run_one "$w" 1; done
else
  all="$jsondir/all.txt"
  : >"$all"
  for rep in $(seq 1 "$reps"); do
    for w in "${wl[@]}"; do
      line="$(run_one "$w" "$rep")"
      echo "run $rep: $line" >&2
      echo "$line" >>"$all"
    done
  done
  # median of every numeric column, per workload, in the requested workload order
  for w in "${wl[@]}"; do
    awk -v w="$w" '$2 == w' "$all" | awk '
      { n++; for (i = 3; i <= NF; i++) v[i, n] = $i; nf = NF; l = $1; wl = $2 }
      END {
        out = l " " wl
        for (i = 3; i <= nf; i++) {
          m = 0; delete a
          for (k = 1; k <= n; k++) { if (v[i, k] == "NA") continue; a[++m] = v[i, k] + 0 }
          # insertion sort
          for (x = 2; x <= m; x++) { t = a[x]; y = x - 1; while (y >= 1 && a[y] > t) { a[y + 1] = a[y]; y-- } a[y + 1] = t }
          med = (m == 0) ? "NA" : (m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2)
          out = out " " med
        }
        print out
      }'
  done
fi
