#!/bin/sh
# /init of vm-nbd-check.sh's throw-away guest (busybox ash), built into its
# initramfs: attaches the host's NBD export with the kernel client, makes and
# checks a filesystem on it, and reports on the console.
# Talks to the host ONLY through virtio-serial ports:
#   org.e2e.nbd  - byte pipe to the host's NBD server (bridged to a Unix
#                  socket here with socat so that nbd-client/kernel get a socket)
#   org.e2e.ctl  - optional control port (relay mode): "CONNECT n" -> "OK n"
# Results go to the console (ttyS0): E2E-STEP / E2E-INFO / E2E-FAIL / E2E-OK.
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
mount -t debugfs debugfs /sys/kernel/debug
exec </dev/console >/dev/console 2>&1

up()   { cut -d' ' -f1 /proc/uptime; }
say()  { echo "E2E-STEP [$(up)s] $*"; }
info() { echo "E2E-INFO $*"; }
off() {
  sync
  echo "E2E-POWEROFF [$(up)s]"
  poweroff -f
  sleep 3; echo o > /proc/sysrq-trigger; sleep 30
}
fail() {
  echo "E2E-FAIL [$(up)s] $*"
  for f in /tmp/socat.*.log; do [ -s "$f" ] && sed "s|^|E2E-LOG ${f##*/}: |" "$f"; done
  dmesg | tail -n 30 | sed 's/^/E2E-DMESG /'
  off
}
# run SECS DESCRIPTION CMD... : timed step, fail on error/timeout
run() {
  local t=$1 d=$2 rc; shift 2
  say "$d"
  timeout -s KILL "$t" "$@"
  rc=$?
  [ $rc -eq 0 ] || fail "$d (exit $rc$([ $rc -eq 137 ] && echo ", timed out after ${t}s"))"
}

for a in $(cat /proc/cmdline); do
  case $a in e2e.probe=1) echo "E2E-PROBE-OK [$(up)s]"; off ;; esac
done

[ -r /e2e/e2e.conf ] || fail "no /e2e/e2e.conf (run-time config cpio missing)"
. /e2e/e2e.conf
: "${E2E_STEP_TIMEOUT:=120}" "${E2E_NBD_TIMEOUT:=60}" "${E2E_NBD_OPTS:=}"
ST=$E2E_STEP_TIMEOUT
say "guest up: kernel $(uname -r), export='$E2E_EXPORT'"

# ------------------------------------------------------------ modules
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
say "modules loaded: $(sed 's|.*/||; s|\.ko$||' /lib/modules/load-order | tr '\n' ' ')"

port_by_name() {
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return 0; }
  done
  return 1
}
i=0
until DATA=$(port_by_name org.e2e.nbd); do
  i=$((i + 1)); [ $i -gt 100 ] && fail "virtio-serial port org.e2e.nbd did not appear"
  usleep 100000
done
CTL=$(port_by_name org.e2e.ctl)
if [ -n "$CTL" ]; then info "data port /dev/$DATA, control port /dev/$CTL (relay mode)"
else info "data port /dev/$DATA, no control port (direct mode)"; fi
[ -b /dev/nbd0 ] || fail "/dev/nbd0 missing after insmod nbd"

# fail on any kernel-reported I/O or ext4 error for nbd0 (sync(2) alone
# does not report lost writes; syncfs/fsync do, and dmesg always shows them)
kcheck() { # WHEN
  local e
  e=$(dmesg | grep -E 'I/O error, dev nbd0|Buffer I/O error on dev nbd0|EXT4-fs (error|warning).*nbd0|block nbd0: (Connection timed out|Receive control failed|Send data failed|Dead connection)' | head -n 3)
  [ -z "$e" ] || fail "kernel reported NBD/ext4 errors $1: $(echo "$e" | tr '\n' '|')"
}

host_connected() { grep -q "^host_connected: $2" "/sys/kernel/debug/virtio-ports/$1"; }
wait_host() { # PORT 0|1 SECS
  local w=0
  until host_connected "$1" "$2"; do
    w=$((w + 1)); [ $w -gt $(($3 * 10)) ] && return 1
    usleep 100000
  done
}

if [ -n "$CTL" ]; then
  wait_host "$CTL" 1 30 || fail "control port never connected by host"
  exec 3<>"/dev/$CTL"
fi

SOCAT_PID=
nbdc() { # nbd-client attach; -u: host argument is a Unix socket path; -N only for a non-empty name
  if [ -n "$E2E_EXPORT" ]; then
    timeout -s KILL "$ST" nbd-client -u /run/nbd.sock /dev/nbd0 -N "$E2E_EXPORT" -t "$E2E_NBD_TIMEOUT" $E2E_NBD_OPTS
  else
    timeout -s KILL "$ST" nbd-client -u /run/nbd.sock /dev/nbd0 -t "$E2E_NBD_TIMEOUT" $E2E_NBD_OPTS
  fi
}
attach() { # N
  local n=$1 k q reply rc try=1 max=1
  # direct mode: qemu pre-connects; a server-side handshake timeout may have
  # closed that connection just as we start, so allow a retry after reconnect
  [ -z "$CTL" ] && max=3
  while :; do
    if [ -n "$CTL" ]; then
      say "attach $n: asking host relay to open a fresh NBD connection"
      echo "CONNECT $n" >&3
      read -t 30 reply <&3 || fail "attach $n: no answer from host relay"
      case $reply in "OK $n") ;; *) fail "attach $n: host relay said: $reply" ;; esac
    fi
    wait_host "$DATA" 1 30 || fail "attach $n: NBD data port not connected on host side"
    rm -f /run/nbd.sock
    socat -d -d -lu UNIX-LISTEN:/run/nbd.sock,unlink-early GOPEN:/dev/$DATA 2>/tmp/socat.$n.log &
    SOCAT_PID=$!
    k=0
    until [ -S /run/nbd.sock ]; do
      k=$((k + 1)); [ $k -gt 50 ] && fail "attach $n: socat bridge did not start"
      usleep 100000
    done
    say "attach $n: nbd-client -u /run/nbd.sock /dev/nbd0${E2E_EXPORT:+ -N '$E2E_EXPORT'} -t $E2E_NBD_TIMEOUT $E2E_NBD_OPTS"
    nbdc; rc=$?
    [ $rc -eq 0 ] && break
    kill "$SOCAT_PID" 2>/dev/null; wait "$SOCAT_PID" 2>/dev/null
    [ $try -ge $max ] && fail "attach $n: nbd-client failed (exit $rc)"
    echo "E2E-WARN attach $n: nbd-client failed (exit $rc) on a pre-opened connection; waiting for qemu to reconnect, retry $((try + 1))/$max"
    wait_host "$DATA" 0 15
    try=$((try + 1))
  done
  k=0
  until [ "$(cat /sys/block/nbd0/size)" -gt 0 ] 2>/dev/null; do
    k=$((k + 1)); [ $k -gt 100 ] && fail "attach $n: /dev/nbd0 has size 0 after nbd-client"
    usleep 100000
  done
  q=/sys/block/nbd0/queue
  info "attach $n: /dev/nbd0 size=$(($(cat /sys/block/nbd0/size) * 512)) lbs=$(cat $q/logical_block_size) pbs=$(cat $q/physical_block_size) ro=$(cat /sys/block/nbd0/ro) discard_max=$(cat $q/discard_max_bytes) write_zeroes_max=$(cat $q/write_zeroes_max_bytes 2>/dev/null) fua=$(cat $q/fua 2>/dev/null) cache=$(cat $q/write_cache 2>/dev/null) max_sectors_kb=$(cat $q/max_sectors_kb)"
}
detach() { # N
  local n=$1 k reply
  run "$ST" "detach $n: nbd-client -d /dev/nbd0" nbd-client -d /dev/nbd0
  k=0
  while kill -0 "$SOCAT_PID" 2>/dev/null; do
    k=$((k + 1)); [ $k -gt 100 ] && { info "detach $n: socat bridge still running, killing"; kill "$SOCAT_PID"; break; }
    usleep 100000
  done
  wait "$SOCAT_PID" 2>/dev/null
  if ! wait_host "$DATA" 0 15; then
    echo "E2E-WARN detach $n: server did not close the connection within 15s after NBD_CMD_DISC"
    [ -n "$CTL" ] && { echo "CLOSE $n" >&3; read -t 10 reply <&3; }
    wait_host "$DATA" 0 15 || fail "detach $n: NBD connection still open on host side"
  fi
  k=0
  while [ "$(cat /sys/block/nbd0/size)" != 0 ]; do
    k=$((k + 1)); [ $k -gt 100 ] && fail "detach $n: /dev/nbd0 still has a size"
    usleep 100000
  done
  say "detach $n: done (connection closed by server)"
}

# ------------------------------------------------------------ phase 1
run 60 "payload sha256 (as shipped in initramfs)" sh -c 'sha256sum /e2e/payload.bin > /tmp/payload.sha'
SHA0=$(cut -d' ' -f1 /tmp/payload.sha)
[ "$SHA0" = "$E2E_EXPECT_SHA" ] || fail "payload corrupted in initramfs ($SHA0 != $E2E_EXPECT_SHA)"
info "payload $(($(stat -c %s /e2e/payload.bin) / 1048576)) MiB sha256=$SHA0"

attach 1
run "$ST" "mkfs.ext4 /dev/nbd0" mkfs.ext4 -F -q -L nbde2e $E2E_MKFS_OPTS /dev/nbd0
run "$ST" "mount /dev/nbd0 /mnt" mount -t ext4 /dev/nbd0 /mnt
run "$ST" "write payload + small files" sh -c '
  cp /e2e/payload.bin /mnt/payload.bin &&
  mkdir -p /mnt/tree && for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of=/mnt/tree/f$i bs=4096 count=$i 2>/dev/null || exit 1; done &&
  echo "hello from the e2e guest" > /mnt/hello.txt &&
  (cd /mnt && sha256sum hello.txt tree/* > /tmp/small.sha)'
run "$ST" "sha256sum /mnt/payload.bin (page cache)" sh -c 'sha256sum /mnt/payload.bin > /tmp/p1.sha'
info "phase1 sha256=$(cut -d' ' -f1 /tmp/p1.sha)"
run "$ST" "fsync payload + syncfs /mnt (report writeback errors)" sh -c 'sync -d /mnt/payload.bin && sync -f /mnt'
run "$ST" "sync" sync
kcheck "after sync"
run "$ST" "umount /mnt" umount /mnt
run "$ST" "blockdev --flushbufs /dev/nbd0" blockdev --flushbufs /dev/nbd0
kcheck "after umount/flush"
detach 1
echo 3 > /proc/sys/vm/drop_caches

# ------------------------------------------------------------ phase 2
attach 2
run "$ST" "e2fsck -fn /dev/nbd0" e2fsck -f -n /dev/nbd0
run "$ST" "mount -o ro /dev/nbd0 /mnt" mount -t ext4 -o ro /dev/nbd0 /mnt
run "$ST" "sha256sum /mnt/payload.bin (fresh connection)" sh -c 'sha256sum /mnt/payload.bin > /tmp/p2.sha'
SHA2=$(cut -d' ' -f1 /tmp/p2.sha)
run "$ST" "verify small files" sh -c 'cd /mnt && sha256sum -c -s /tmp/small.sha'
run "$ST" "umount /mnt" umount /mnt
kcheck "during verification"
detach 2
[ "$SHA2" = "$SHA0" ] || fail "checksum mismatch after re-attach: $SHA2 != $SHA0"
[ -n "$CTL" ] && exec 3>&-
echo "E2E-OK $SHA2"
off
