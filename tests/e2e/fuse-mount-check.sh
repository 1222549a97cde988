#!/usr/bin/env bash
# fuse-mount-check.sh SOCKET_PATH [EXPORT_NAME]
#
# envol's filesystem-level end-to-end check: an NBD server on a Unix socket
# (`envol serve` in tests/volume_serve.rs; any NBD server works) is driven
# through a real kernel block device and filesystem, without the kernel's
# nbd module (the machines envol is tested on do not ship it):
#
#   NBD server <--unix--> nbdfuse (libnbd) --FUSE file--> loop device --> ext4
#
# Phase 1: nbdfuse attach, losetup, mkfs.ext4, mount, write files (incl. a
#          random BIG_MB MiB file), sync, umount, detach everything.
# Phase 2: fresh NBD connection (read-only), losetup -r, e2fsck -fn,
#          mount -o ro, verify sha256 of every file against the source copies.
#
# A check that cannot fail proves nothing: tests/e2e_harness.rs runs this
# script against faulty-nbd-server.py and requires it to FAIL when the
# server corrupts reads.
#
# Exit: 0 = pass, 1 = failure (step error, timeout, checksum mismatch),
#       2 = usage / preflight problem.  Cleans up on every exit path.
#
# Env knobs:
#   STEP_TIMEOUT=120   seconds allowed per step (watchdog aborts a wedged FUSE
#                      connection STEP_TIMEOUT+10 s into a stuck step)
#   BIG_MB=50          size of the random file
#   NBDFUSE_CONNECTIONS=   e.g. 1 to force a single NBD connection
#                      (default: nbdfuse uses multi-conn if server offers it)
#   MKFS_OPTS=         extra mkfs.ext4 options (e.g. "-E nodiscard")
#   WORK_BASE=${TMPDIR:-/tmp}/envol-e2e/run   where the per-run temp dir is created
#   KEEP_WORKDIR=0     1 = keep logs/work dir after the run
# Needs: root, nbdfuse (libnbd-bin), fusermount3 (fuse3), losetup, mkfs.ext4,
#        e2fsck, sha256sum, timeout (scripts/test.sh installs them).
set -uo pipefail

PROG=${0##*/}
usage() { echo "usage: $PROG SOCKET_PATH [EXPORT_NAME]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
SOCK=$1
EXPORT=${2-}

STEP_TIMEOUT=${STEP_TIMEOUT:-120}
BIG_MB=${BIG_MB:-50}
NBDFUSE_CONNECTIONS=${NBDFUSE_CONNECTIONS:-}
MKFS_OPTS=${MKFS_OPTS:-}
WORK_BASE=${WORK_BASE:-${TMPDIR:-/tmp}/envol-e2e/run}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

T0=${EPOCHREALTIME/,/.}
elapsed() { local n=${EPOCHREALTIME/,/.}; awk -v a="$T0" -v b="$n" 'BEGIN{printf "%7.2f", b-a}'; }
log()  { printf '[fuse-check %ss] %s\n' "$(elapsed)" "$*"; }
die()  { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- state
WORK= FUSEDIR= MNT= LOOPDEV= NBDFUSE_PID= FUSE_CONN= FUSECTL_MOUNTED=0 RESULT=FAIL

is_mounted() { awk -v p="$1" '$5==p{f=1} END{exit !f}' /proc/self/mountinfo; }

fuse_conn_id() {   # fusectl dir name for the FUSE mount at $1 (kernel dev_t)
  local mm
  mm=$(awk -v p="$1" '$5==p{print $3}' /proc/self/mountinfo | tail -n1)
  [[ -n $mm ]] || return 1
  echo $(( (${mm%%:*} << 20) | ${mm##*:} ))
}

abort_fuse() {     # last resort: fail all pending FUSE requests
  [[ -n $FUSE_CONN ]] || return 0
  local f=/sys/fs/fuse/connections/$FUSE_CONN/abort
  if [[ -e $f ]]; then
    log "watchdog: aborting FUSE connection $FUSE_CONN"
    echo 1 > "$f" 2>/dev/null || true
  fi
}

# guarded TIMEOUT CMD...: run CMD with a timeout; if it is still alive well
# after the timeout (stuck in uninterruptible I/O behind FUSE), abort FUSE.
guarded() {
  local t=$1; shift
  if [[ -n ${STEP_OUT:-} ]]; then timeout -k 5 "$t" "$@" > "$STEP_OUT" &
  else timeout -k 5 "$t" "$@" &
  fi
  local pid=$! aborted=0 hard=$((SECONDS + t + 10)) nap=0.005
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS > hard && aborted == 0 )); then abort_fuse; aborted=1; fi
    if (( SECONDS > hard + 60 )); then
      log "process $pid unkillable after FUSE abort; giving up on it"; return 124
    fi
    sleep "$nap"
    case $nap in 0.005) nap=0.02 ;; 0.02) nap=0.05 ;; *) nap=0.1 ;; esac
  done
  wait "$pid"
}

# step NAME CMD...: logged, timed, guarded step; dies on failure
step() {
  local name=$1; shift
  local s=${EPOCHREALTIME/,/.} rc
  log "STEP  $name"
  guarded "$STEP_TIMEOUT" "$@"; rc=$?
  local d; d=$(awk -v a="$s" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{printf "%.2f", b-a}')
  if (( rc == 124 || rc == 137 )); then die "$name: timed out after ${STEP_TIMEOUT}s"; fi
  (( rc == 0 )) || die "$name: exit status $rc"
  log "OK    $name (${d}s)"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  if [[ $RESULT != PASS && $rc == 0 ]]; then rc=1; fi
  if [[ -n $MNT ]] && is_mounted "$MNT"; then
    log "cleanup: umount $MNT"
    guarded 30 umount "$MNT" || { abort_fuse; umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
  fi
  if [[ -n $LOOPDEV ]] && [[ -e /sys/block/${LOOPDEV#/dev/}/loop/backing_file ]]; then
    log "cleanup: losetup -d $LOOPDEV"
    guarded 30 losetup -d "$LOOPDEV" || { abort_fuse; losetup -d "$LOOPDEV"; }
  fi
  if [[ -n $FUSEDIR ]] && is_mounted "$FUSEDIR"; then
    log "cleanup: unmount FUSE $FUSEDIR"
    guarded 30 fusermount3 -u "$FUSEDIR" || { abort_fuse; umount -l "$FUSEDIR"; }
  fi
  if [[ -n $NBDFUSE_PID ]] && kill -0 "$NBDFUSE_PID" 2>/dev/null; then
    local i
    for i in $(seq 50); do kill -0 "$NBDFUSE_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$NBDFUSE_PID" 2>/dev/null; then
      log "cleanup: killing nbdfuse pid $NBDFUSE_PID"
      kill -TERM "$NBDFUSE_PID"; sleep 1; kill -KILL "$NBDFUSE_PID" 2>/dev/null
    fi
    wait "$NBDFUSE_PID" 2>/dev/null
  fi
  if (( FUSECTL_MOUNTED )); then umount /sys/fs/fuse/connections 2>/dev/null; fi
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_WORKDIR == 1 || $RESULT != PASS ]]; then
      # keep logs on failure, but drop the bulky source data
      rm -rf "$WORK/src" 2>/dev/null
      log "work dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  log "RESULT: $RESULT (total $(elapsed | tr -d ' ')s)"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- helpers
urlencode() {      # RFC 3986 percent-encoding of everything but unreserved
  local LC_ALL=C s=$1 out= c i
  for (( i = 0; i < ${#s}; i++ )); do
    c=${s:i:1}
    case $c in [a-zA-Z0-9._~-]) out+=$c ;; *) out+=$(printf '%%%02X' "'$c") ;; esac
  done
  printf '%s' "$out"
}

start_nbdfuse() {  # $1 = tag, rest = extra nbdfuse args
  local tag=$1; shift
  local pidf=$WORK/nbdfuse-$tag.pid flog=$WORK/nbdfuse-$tag.log
  local -a args=(-P "$pidf" "$@")
  [[ -n $NBDFUSE_CONNECTIONS ]] && args+=(-C "$NBDFUSE_CONNECTIONS")
  log "STEP  nbdfuse attach [$tag]: nbdfuse ${args[*]} $FUSEDIR $URI"
  local s=${EPOCHREALTIME/,/.}
  rm -f "$pidf"
  nbdfuse "${args[@]}" "$FUSEDIR" "$URI" > "$flog" 2>&1 &
  NBDFUSE_PID=$!
  local deadline=$((SECONDS + STEP_TIMEOUT))
  until [[ -s $pidf ]] && is_mounted "$FUSEDIR" && [[ -e $FUSEDIR/nbd ]]; do
    if ! kill -0 "$NBDFUSE_PID" 2>/dev/null; then
      wait "$NBDFUSE_PID"; local rc=$?; NBDFUSE_PID=
      sed 's/^/    nbdfuse: /' "$flog"
      die "nbdfuse [$tag] exited (status $rc) before becoming ready"
    fi
    (( SECONDS < deadline )) || { sed 's/^/    nbdfuse: /' "$flog"; die "nbdfuse [$tag] not ready after ${STEP_TIMEOUT}s"; }
    sleep 0.05
  done
  FUSE_CONN=$(fuse_conn_id "$FUSEDIR")
  local size; size=$(stat -c %s "$FUSEDIR/nbd")
  log "OK    nbdfuse attach [$tag] ($(awk -v a="$s" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{printf "%.2f", b-a}')s) pid=$NBDFUSE_PID fuse-conn=$FUSE_CONN size=$size bytes"
}

stop_nbdfuse() {   # $1 = tag
  local tag=$1
  step "fusermount3 -u [$tag]" fusermount3 -u "$FUSEDIR"
  local deadline=$((SECONDS + STEP_TIMEOUT))
  while kill -0 "$NBDFUSE_PID" 2>/dev/null; do
    (( SECONDS < deadline )) || die "nbdfuse [$tag] did not exit after unmount"
    sleep 0.05
  done
  wait "$NBDFUSE_PID"; local rc=$?
  NBDFUSE_PID= FUSE_CONN=
  (( rc == 0 )) || { sed 's/^/    nbdfuse: /' "$WORK/nbdfuse-$tag.log"; die "nbdfuse [$tag] exit status $rc"; }
  log "OK    nbdfuse [$tag] exited cleanly (NBD connection closed)"
}

attach_loop() {    # $1 = tag, rest = extra losetup args
  local tag=$1; shift
  STEP_OUT=$WORK/losetup-$tag.out step "losetup [$tag]" losetup --find --show "$@" "$FUSEDIR/nbd"
  LOOPDEV=$(tail -n1 "$WORK/losetup-$tag.out")
  [[ $LOOPDEV == /dev/loop* ]] || die "losetup did not report a device"
  log "      loop device: $LOOPDEV ($(blockdev --getsize64 "$LOOPDEV") bytes, lbs $(blockdev --getss "$LOOPDEV"))"
}

detach_loop() {    # $1 = tag
  local tag=$1
  step "losetup -d $LOOPDEV [$tag]" losetup -d "$LOOPDEV"
  local deadline=$((SECONDS + STEP_TIMEOUT))
  while [[ -e /sys/block/${LOOPDEV#/dev/}/loop/backing_file ]]; do
    (( SECONDS < deadline )) || die "$LOOPDEV still attached"
    sleep 0.05
  done
  LOOPDEV=
}

# fail on kernel-reported I/O / ext4 errors for our loop device since start
DMESG_BASE=$(dmesg 2>/dev/null | wc -l)
kcheck() {   # WHEN
  local d=${LOOPDEV#/dev/} e
  [[ -n $d ]] || return 0
  e=$(dmesg 2>/dev/null | tail -n +$((DMESG_BASE + 1)) |
      grep -E "(I/O error, dev $d,|Buffer I/O error on dev $d,|EXT4-fs (error|warning) \(device $d\))" | head -n 3)
  [[ -z $e ]] || die "kernel reported I/O errors $1: $(tr '\n' '|' <<< "$e")"
}

# ---------------------------------------------------------------- preflight
log "NBD socket: $SOCK   export: '${EXPORT}'   big file: ${BIG_MB} MiB   step timeout: ${STEP_TIMEOUT}s"
(( EUID == 0 )) || { echo "$PROG: must run as root (FUSE mount, losetup, mount)" >&2; exit 2; }
for t in nbdfuse fusermount3 losetup mkfs.ext4 e2fsck sha256sum timeout blockdev mountpoint; do
  command -v "$t" >/dev/null || { echo "$PROG: missing tool: $t (apt-get install libnbd-bin fuse3 e2fsprogs util-linux coreutils)" >&2; exit 2; }
done
[[ -S $SOCK ]] || { echo "$PROG: not a Unix socket: $SOCK" >&2; exit 2; }
[[ -c /dev/fuse ]] || { echo "$PROG: /dev/fuse missing" >&2; exit 2; }
if [[ -d /sys/fs/fuse/connections ]] && ! is_mounted /sys/fs/fuse/connections; then
  mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null && FUSECTL_MOUNTED=1
fi

SOCK_ABS=$(realpath -- "$SOCK")
URI="nbd+unix:///$(urlencode "$EXPORT")?socket=$(urlencode "$SOCK_ABS")"
mkdir -p "$WORK_BASE" || exit 2
WORK=$(mktemp -d "$WORK_BASE/fuse-check.XXXXXX") || exit 2
FUSEDIR=$WORK/fuse MNT=$WORK/mnt
mkdir -p "$FUSEDIR" "$MNT" "$WORK/src"
log "work dir: $WORK"
log "URI: $URI"

# ---------------------------------------------------------------- source data
step "generate source files" bash -c '
  set -e; cd "$1"
  printf "hello from fuse-mount-check %s\n" "$(date -u +%FT%TZ)" > hello.txt
  head -c 1234567 /dev/urandom > odd-size.bin          # unaligned size
  mkdir -p tree; for i in $(seq -w 1 32); do head -c 4096 /dev/urandom > tree/f$i; done
  head -c $(( $2 * 1048576 )) /dev/urandom > big.bin
  find . -type f -print0 | sort -z | xargs -0 sha256sum > ../manifest.sha256
' _ "$WORK/src" "$BIG_MB"
log "      big.bin sha256: $(awk '$2=="./big.bin"{print $1}' "$WORK/manifest.sha256")"

# ---------------------------------------------------------------- phase 1
log "=== phase 1: attach, mkfs, mount, write ==="
start_nbdfuse p1
attach_loop p1
# shellcheck disable=SC2086
step "mkfs.ext4 $LOOPDEV" mkfs.ext4 -F -q -L nbde2e $MKFS_OPTS "$LOOPDEV"
step "mount $LOOPDEV" mount -t ext4 "$LOOPDEV" "$MNT"
step "copy files (incl. ${BIG_MB} MiB random)" cp -a "$WORK/src/." "$MNT/"
step "sync (fs + loop + FUSE file)" bash -c 'sync -f "$1" && sync && blockdev --flushbufs "$2" && sync -d "$3"' _ "$MNT/big.bin" "$LOOPDEV" "$FUSEDIR/nbd"
log "      df: $(df -h --output=size,used,avail "$MNT" | tail -n1)"
kcheck "after sync"
step "umount $MNT" umount "$MNT"
kcheck "after umount"
detach_loop p1
stop_nbdfuse p1

# ---------------------------------------------------------------- phase 2
log "=== phase 2: re-attach (read-only), fsck, mount, verify ==="
start_nbdfuse p2 -r
attach_loop p2 -r
step "e2fsck -fn $LOOPDEV" e2fsck -f -n "$LOOPDEV"
step "mount -o ro $LOOPDEV" mount -t ext4 -o ro "$LOOPDEV" "$MNT"
step "verify sha256 of $(wc -l < "$WORK/manifest.sha256") files" bash -c 'cd "$1" && sha256sum --quiet --strict -c "$2"' _ "$MNT" "$WORK/manifest.sha256"
step "umount $MNT" umount "$MNT"
kcheck "during verification"
detach_loop p2
stop_nbdfuse p2

RESULT=PASS
log "PASS: data written through $SOCK (export '${EXPORT}') survived detach/re-attach"
exit 0
