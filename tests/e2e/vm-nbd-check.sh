#!/usr/bin/env bash
# vm-nbd-check.sh SOCKET_PATH [EXPORT_NAME]
#
# envol's kernel-client end-to-end check: an NBD server on a host Unix socket
# (`envol serve` in tests/kernel_client.rs; any NBD server works) is attached
# by the REAL Linux NBD client - Debian's nbd-client and nbd.ko - inside a
# tiny throw-away QEMU guest. The host kernel here has no nbd module, hence
# the guest. No IP networking anywhere: the guest reaches the server through
# a virtio-serial port whose host side is a Unix-socket chardev; inside the
# guest socat bridges the port to a Unix socket for nbd-client -u.
#
# Guest flow (vm-guest-init.sh, the guest's /init): insmod nbd, nbd-client
# attach, mkfs.ext4, mount, write an E2E_MB MiB payload (generated on the
# host, so the host knows its sha256) + small files, sync, umount,
# nbd-client -d, drop caches, re-attach on a NEW NBD connection, e2fsck -fn,
# mount ro, verify, detach, print "E2E-OK <sha256>" on ttyS0, power off.
# The host checks that sha256.
#
# Guest assets (a Debian cloud kernel, busybox, nbd-client, socat and, when
# the host has none, qemu-system-x86 itself) are fetched with
# `apt-get download` into VM_CACHE and unpacked there: nothing is installed
# on the host. Needs python3, dpkg-deb and fresh apt lists (apt-get update).
#
# Link modes (VM_LINK):
#   relay  (default) qemu's chardevs listen on private sockets in the run dir;
#          a small host relay (vm-nbd-helper.py) opens a fresh connection to
#          SOCKET_PATH only when the guest asks for it over a control port.
#          Connection timing therefore matches a real client (no idle
#          pre-connected socket tripping server handshake timeouts).
#   direct qemu's chardev connects straight to SOCKET_PATH
#          (-chardev socket,path=SOCKET_PATH,reconnect=1).  The connection is
#          opened at VM start and re-opened 1 s after the server closes it.
#          Needs a server without a short handshake timeout (qemu-nbd has a
#          10 s default: use --handshake-limit=0 or expect flakiness on TCG).
#
# Exit: 0 pass, 1 fail, 2 usage/setup error.
#
# Env knobs (defaults):
#   VM_CACHE=${TMPDIR:-/var/tmp}/envol-e2e/vm   asset cache (built once, reused; REBUILD=1)
#   VM_ACCEL=auto                auto|kvm|tcg  (auto: KVM if /dev/kvm works for
#                                this guest kernel - probed once and cached -
#                                else TCG with a warning)
#   VM_TIMEOUT=                  hard limit for the whole VM run
#                                (default 180 s with KVM, 480 s with TCG)
#   VM_MEM=512  VM_SMP=1  VM_LINK=relay
#   E2E_MB=20                    payload size
#   E2E_STEP_TIMEOUT=120         per-step timeout inside the guest
#   NBD_TIMEOUT=60               nbd-client -t (kernel I/O timeout)
#   NBD_CLIENT_OPTS=             extra nbd-client options, e.g. "-b 4096" or
#                                "-g" (no NBD_OPT_GO) or "-L" (ioctl, no netlink)
#   MKFS_OPTS=                   extra mkfs.ext4 options
#   KERNEL_PKG=linux-image-cloud-amd64   Debian kernel (meta)package
#   VERBOSE=1                    stream the guest console (prefixed) to stdout
#   KEEP_RUNDIR=0                keep the run dir (logs) even on success
set -uo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
HELPER=$HERE/vm-nbd-helper.py
GUEST_INIT=$HERE/vm-guest-init.sh

usage() { echo "usage: $PROG SOCKET_PATH [EXPORT_NAME]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
SOCK=$1
EXPORT=${2-}

VM_CACHE=${VM_CACHE:-${TMPDIR:-/var/tmp}/envol-e2e/vm}
VM_ACCEL=${VM_ACCEL:-auto}
VM_TIMEOUT=${VM_TIMEOUT:-}
VM_MEM=${VM_MEM:-512}
VM_SMP=${VM_SMP:-1}
VM_LINK=${VM_LINK:-relay}
E2E_MB=${E2E_MB:-20}
E2E_STEP_TIMEOUT=${E2E_STEP_TIMEOUT:-120}
NBD_TIMEOUT=${NBD_TIMEOUT:-60}
NBD_CLIENT_OPTS=${NBD_CLIENT_OPTS:-}
MKFS_OPTS=${MKFS_OPTS:-}
KERNEL_PKG=${KERNEL_PKG:-linux-image-cloud-amd64}
VERBOSE=${VERBOSE:-1}
KEEP_RUNDIR=${KEEP_RUNDIR:-0}
REBUILD=${REBUILD:-0}

# bump when the asset recipe changes
RECIPE=3
GUEST_PKGS=(busybox-static nbd-client socat)
GUEST_MODULES=(virtio_pci virtio_console nbd)

T0=${EPOCHREALTIME/,/.}
elapsed() { awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{printf "%7.2f", b-a}'; }
log() { printf '[vm-check %ss] %s\n' "$(elapsed)" "$*"; }
die() { log "FAIL: $*"; exit 1; }
setup_die() { log "SETUP ERROR: $*"; exit 2; }

RUN= QEMU_PID= RELAY_PID= TAIL_PID= RESULT=FAIL KVM_WHY=
QEMU_ENV=() QEMU_DATA=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  if [[ $RESULT != PASS && $rc == 0 ]]; then rc=1; fi
  local p
  for p in $QEMU_PID $RELAY_PID; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null
  done
  if [[ -n $TAIL_PID ]]; then kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null; fi
  if [[ -n $RUN && -d $RUN ]]; then
    rm -f "$RUN/initrd.img" "$RUN/payload.bin" "$RUN"/*.sock
    if [[ $KEEP_RUNDIR == 1 || $RESULT != PASS ]]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi
  fi
  log "RESULT: $RESULT (total $(elapsed | tr -d ' ')s)"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ======================================================================
# asset build (idempotent, cached, flock-serialised)
# ======================================================================
APT_OPTS=(-o APT::Sandbox::User=root -o Debug::NoLocking=1 -q)

apt_missing_closure() {   # packages apt would have to install for "$@"
  apt-get "${APT_OPTS[@]}" -s install --no-install-recommends "$@" 2>/dev/null |
    awk '/^Inst /{print $2}'
}

apt_fetch() {             # DESTDIR PKG...  (download .debs, reuse existing)
  local dest=$1; shift
  mkdir -p "$dest"
  (cd "$dest" && apt-get "${APT_OPTS[@]}" download "$@" > apt-download.log 2>&1) ||
    setup_die "apt-get download $* failed (run 'apt-get update' first?); see $dest/apt-download.log"
}

extract_debs() {          # DESTDIR DEB...
  local dest=$1 d; shift
  mkdir -p "$dest"
  for d in "$@"; do dpkg-deb -x "$d" "$dest" || setup_die "dpkg-deb -x $d"; done
}

resolve_qemu() {
  if [[ -n ${QEMU:-} ]]; then QEMU_ENV=(); return; fi
  if command -v qemu-system-x86_64 >/dev/null; then
    QEMU=$(command -v qemu-system-x86_64); QEMU_ENV=(); QEMU_DATA=(); return
  fi
  local q=$VM_CACHE/qemu
  if [[ ! -x $q/root/usr/bin/qemu-system-x86_64 || ! -e $q/.done ]]; then
    # qemu-system-x86 is NOT installed on the host (on this image installing
    # bookworm's 7.2 would remove qemu-utils 10.x from backports), so fetch it
    # and its missing libraries and run it from a private prefix.
    log "assets: fetching qemu-system-x86 into $q (no host install)"
    rm -rf "$q"; mkdir -p "$q/debs"
    local pkgs; pkgs=$(apt_missing_closure qemu-system-x86)
    [[ -n $pkgs ]] || pkgs=qemu-system-x86
    # shellcheck disable=SC2086
    apt_fetch "$q/debs" $pkgs
    extract_debs "$q/root" "$q"/debs/*.deb
    (cd "$q/debs" && ls *.deb) > "$q/packages.txt"; rm -rf "$q/debs"
    touch "$q/.done"
  fi
  QEMU=$q/root/usr/bin/qemu-system-x86_64
  QEMU_ENV=(env "LD_LIBRARY_PATH=$q/root/usr/lib/x86_64-linux-gnu:$q/root/lib/x86_64-linux-gnu")
  QEMU_DATA=(-L "$q/root/usr/share/qemu" -L "$q/root/usr/share/seabios")
  local missing
  missing=$("${QEMU_ENV[@]}" ldd "$QEMU" | grep 'not found')
  [[ -z $missing ]] || setup_die "private qemu lacks libraries: $missing"
}

copy_with_libs() {        # STAGE LIBPATH BIN DEST...  copy BIN to STAGE/DEST + its libs
  local stage=$1 libpath=$2 bin=$3 dest=$4 line lib
  install -D -m 0755 "$bin" "$stage$dest"
  while read -r line; do
    case $line in
      *"not found"*) setup_die "ldd $bin: $line" ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;
      *) continue ;;
    esac
    # libs from the extracted packages keep their in-package path
    local dst=$lib
    [[ $lib == "$VM_CACHE/guest/root"/* ]] && dst=${lib#"$VM_CACHE/guest/root"}
    [[ $dst == /usr/lib/x86_64-linux-gnu/* || $dst == /lib/x86_64-linux-gnu/* || $dst == /lib64/* ]] ||
      dst=/lib/x86_64-linux-gnu/${lib##*/}
    [[ -e $stage$dst ]] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$dst"
  done < <(LD_LIBRARY_PATH=$libpath ldd "$bin")
}

build_assets() {
  local g=$VM_CACHE/guest stage kpkg kver
  local pkey="recipe=$RECIPE kernel=$KERNEL_PKG pkgs=${GUEST_PKGS[*]}"
  if [[ $REBUILD == 1 || ! -f $g/debs.key || $(cat "$g/debs.key") != "$pkey" ]]; then
    rm -rf "$g"; mkdir -p "$g/debs" "$g/kdebs"
    # --- kernel: resolve the metapackage to the concrete image package
    kpkg=$KERNEL_PKG
    if [[ $kpkg != linux-image-[0-9]* ]]; then
      kpkg=$(apt-cache depends "$KERNEL_PKG" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
      [[ -n $kpkg ]] || setup_die "cannot resolve $KERNEL_PKG to a linux-image-<ver> package"
    fi
    log "assets: downloading $kpkg ${GUEST_PKGS[*]} (+ missing libs)"
    apt_fetch "$g/kdebs" "$kpkg"
    # guest userland packages + libraries the host does not have
    local extra; extra=$(apt_missing_closure "${GUEST_PKGS[@]}")
    # shellcheck disable=SC2086
    apt_fetch "$g/debs" "${GUEST_PKGS[@]}" $extra
    echo "$kpkg" > "$g/kpkg"
    echo "$pkey" > "$g/debs.key"
  else
    log "assets: reusing downloaded packages in $g"
  fi
  kpkg=$(cat "$g/kpkg")
  rm -rf "$g/kroot" "$g/root" "$g/stage"
  extract_debs "$g/kroot" "$g"/kdebs/*.deb
  kver=$(ls "$g/kroot/lib/modules" | head -n1)
  [[ -n $kver && -f $g/kroot/boot/vmlinuz-$kver ]] || setup_die "no vmlinuz in $kpkg"
  extract_debs "$g/root" "$g"/debs/*.deb

  # --- stage the initramfs
  stage=$g/stage
  mkdir -p "$stage"/{bin,sbin,usr/bin,etc,lib/modules,lib64,proc,sys,dev,tmp,run,mnt,e2e}
  install -m 0755 "$g/root/bin/busybox" "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  local libpath=$g/root/lib/x86_64-linux-gnu:$g/root/usr/lib/x86_64-linux-gnu
  local nbdc=
  for nbdc in "$g/root/sbin/nbd-client" "$g/root/usr/sbin/nbd-client" ""; do [[ -x $nbdc ]] && break; done
  [[ -n $nbdc ]] || setup_die "nbd-client binary not found in package"
  copy_with_libs "$stage" "$libpath" "$nbdc" /sbin/nbd-client
  copy_with_libs "$stage" "$libpath" "$g/root/usr/bin/socat" /usr/bin/socat
  # e2fsprogs is essential on Debian: take the host's binaries
  copy_with_libs "$stage" "$libpath" "$(command -v mke2fs)" /sbin/mke2fs
  ln -s mke2fs "$stage/sbin/mkfs.ext4"
  copy_with_libs "$stage" "$libpath" "$(command -v e2fsck)" /sbin/e2fsck
  [[ -f /etc/mke2fs.conf ]] && install -m 0644 /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
  echo "root:x:0:0:root:/:/bin/sh" > "$stage/etc/passwd"

  local m order
  order=$(python3 "$HELPER" moddeps "$g/kroot/lib/modules/$kver" "${GUEST_MODULES[@]}") ||
    setup_die "module dependency resolution failed"
  : > "$stage/lib/modules/load-order"
  while read -r m; do
    install -D -m 0644 "$g/kroot/lib/modules/$kver/$m" "$stage/lib/modules/${m##*/}"
    echo "${m##*/}" >> "$stage/lib/modules/load-order"
  done <<< "$order"
  install -m 0755 "$GUEST_INIT" "$stage/init"

  python3 "$HELPER" mkcpio "$VM_CACHE/initramfs.cpio.gz" "$stage" --gzip || setup_die "mkcpio failed"
  cp "$g/kroot/boot/vmlinuz-$kver" "$VM_CACHE/vmlinuz"
  {
    echo "recipe=$RECIPE"
    echo "kernel=$kver ($kpkg)"
    echo "modules=$(tr '\n' ' ' < "$stage/lib/modules/load-order")"
    echo "guest_pkgs=$(cd "$g/debs" && ls *.deb | tr '\n' ' ')"
  } > "$VM_CACHE/assets.info"
  rm -rf "$g/kroot" "$g/root"      # keep the cache small (debs + stage stay)
  log "assets: initramfs $(du -h "$VM_CACHE/initramfs.cpio.gz" | cut -f1), kernel $kver"
}

assets_key() {
  { echo "recipe=$RECIPE kernel_pkg=$KERNEL_PKG pkgs=${GUEST_PKGS[*]} mods=${GUEST_MODULES[*]}"
    sha256sum "$GUEST_INIT" "$HELPER" | cut -d' ' -f1; } | sha256sum | cut -c1-16
}

ensure_assets() {
  mkdir -p "$VM_CACHE" || setup_die "cannot create $VM_CACHE"
  exec 9> "$VM_CACHE/.lock"
  flock -w 900 9 || setup_die "timed out waiting for asset lock $VM_CACHE/.lock"
  local key; key=$(assets_key)
  if [[ $REBUILD == 1 || ! -f $VM_CACHE/assets.key || $(cat "$VM_CACHE/assets.key") != "$key" ||
        ! -f $VM_CACHE/vmlinuz || ! -f $VM_CACHE/initramfs.cpio.gz ]]; then
    local s=${EPOCHREALTIME/,/.}
    log "assets: building into $VM_CACHE (key $key)"
    rm -f "$VM_CACHE/assets.key"
    build_assets
    echo "$key" > "$VM_CACHE/assets.key"
    log "assets: built in $(awk -v a="$s" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{printf "%.1f", b-a}')s"
  else
    log "assets: cached ($(grep '^kernel=' "$VM_CACHE/assets.info" | cut -d= -f2-))"
  fi
  resolve_qemu
  flock -u 9
}

# ======================================================================
# accelerator selection
# ======================================================================
qemu_base_args() {   # ACCEL
  local -a a=(-name e2e-nbd -machine pc -m "$VM_MEM" -smp "$VM_SMP"
              -nodefaults -no-user-config -nographic -no-reboot -nic none
              -kernel "$VM_CACHE/vmlinuz" "${QEMU_DATA[@]}")
  if [[ $1 == kvm ]]; then a+=(-accel kvm -cpu host); else a+=(-accel tcg -cpu max); fi
  printf '%s\0' "${a[@]}"
}

probe_kvm() {        # 0 if this guest kernel boots under KVM here (cached)
  [[ -r /dev/kvm && -w /dev/kvm ]] || { KVM_WHY="/dev/kvm missing or not accessible"; return 1; }
  local tag; tag=$(uname -r)-$(md5sum < "$VM_CACHE/vmlinuz" | cut -c1-8)-$(md5sum < "$QEMU" | cut -c1-8)
  local f=$VM_CACHE/accel.$tag
  if [[ -f $f ]]; then KVM_WHY="cached probe: $(cat "$f")"; [[ $(cat "$f") == ok ]]; return; fi
  log "probing KVM with the guest kernel (once, result cached in $f)"
  local out; out=$(mktemp "$VM_CACHE/probe.XXXXXX")
  local -a args; mapfile -d '' args < <(qemu_base_args kvm)
  timeout -k 2 "${KVM_PROBE_TIMEOUT:-25}" "${QEMU_ENV[@]}" "$QEMU" "${args[@]}" \
    -initrd "$VM_CACHE/initramfs.cpio.gz" -serial "file:$out" -monitor none \
    -append "console=ttyS0 panic=-1 quiet e2e.probe=1" </dev/null >/dev/null 2>&1
  if grep -q E2E-PROBE-OK "$out"; then echo ok > "$f"; rm -f "$out"; return 0; fi
  KVM_WHY="guest kernel did not boot within ${KVM_PROBE_TIMEOUT:-25}s under KVM (last console line: $(tr -d '\r' < "$out" | grep -av '^\s*$' | tail -n1 | cut -c1-60))"
  echo "no: $KVM_WHY" > "$f"
  rm -f "$out"
  return 1
}

# ======================================================================
# main
# ======================================================================
log "NBD socket: $SOCK   export: '${EXPORT}'   link: $VM_LINK   payload: ${E2E_MB} MiB"
(( EUID == 0 )) || log "note: not root (fine for TCG; KVM needs /dev/kvm access)"
for t in apt-get apt-cache dpkg-deb python3 ldd flock timeout sha256sum awk; do
  command -v "$t" >/dev/null || setup_die "missing host tool: $t"
done
[[ -f $HELPER && -f $GUEST_INIT ]] || setup_die "vm-nbd-helper.py / vm-guest-init.sh must sit next to $PROG"
[[ -S $SOCK ]] || setup_die "not a Unix socket: $SOCK"
[[ $VM_LINK == relay || $VM_LINK == direct ]] || setup_die "VM_LINK must be relay or direct"
SOCK_ABS=$(realpath -- "$SOCK")

ensure_assets

ACCEL=$VM_ACCEL
case $VM_ACCEL in
  auto) if probe_kvm; then ACCEL=kvm; else
          ACCEL=tcg
          log "WARNING: KVM unusable: $KVM_WHY; falling back to TCG (slow)"
        fi ;;
  kvm|tcg) ;;
  *) setup_die "VM_ACCEL must be auto, kvm or tcg" ;;
esac
[[ -n $VM_TIMEOUT ]] || { [[ $ACCEL == kvm ]] && VM_TIMEOUT=180 || VM_TIMEOUT=480; }
log "accelerator: $ACCEL   hard timeout: ${VM_TIMEOUT}s"

mkdir -p ${TMPDIR:-/tmp}/envol-e2e/run
RUN=$(mktemp -d ${TMPDIR:-/tmp}/envol-e2e/run/vm-check.XXXXXX) || setup_die "mktemp"
log "run dir: $RUN"

# --- per-run initrd = cached initramfs + small uncompressed cpio (config + payload)
head -c $((E2E_MB * 1048576)) /dev/urandom > "$RUN/payload.bin"
EXPECT_SHA=$(sha256sum "$RUN/payload.bin" | cut -d' ' -f1)
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
  echo "E2E_EXPORT=$(shq "$EXPORT")"
  echo "E2E_EXPECT_SHA=$EXPECT_SHA"
  echo "E2E_STEP_TIMEOUT=$E2E_STEP_TIMEOUT"
  echo "E2E_NBD_TIMEOUT=$NBD_TIMEOUT"
  echo "E2E_NBD_OPTS=$(shq "$NBD_CLIENT_OPTS")"
  echo "E2E_MKFS_OPTS=$(shq "$MKFS_OPTS")"
} > "$RUN/e2e.conf"
python3 "$HELPER" mkcpio-files "$RUN/run.cpio" e2e/e2e.conf="$RUN/e2e.conf" e2e/payload.bin="$RUN/payload.bin" ||
  setup_die "cannot build run cpio"
cat "$VM_CACHE/initramfs.cpio.gz" "$RUN/run.cpio" > "$RUN/initrd.img"
rm -f "$RUN/run.cpio"
log "payload: ${E2E_MB} MiB random, sha256 $EXPECT_SHA"

# --- link between guest and NBD server
DEV=(-device virtio-serial-pci,id=vser0)
if [[ $VM_LINK == direct ]]; then
  DEV+=(-chardev "socket,id=nbddata,path=$SOCK_ABS,reconnect=1"
        -device virtserialport,bus=vser0.0,chardev=nbddata,name=org.e2e.nbd)
else
  DEV+=(-chardev "socket,id=nbddata,path=$RUN/data.sock,server=on,wait=off"
        -device virtserialport,bus=vser0.0,chardev=nbddata,name=org.e2e.nbd
        -chardev "socket,id=nbdctl,path=$RUN/ctl.sock,server=on,wait=off"
        -device virtserialport,bus=vser0.0,chardev=nbdctl,name=org.e2e.ctl)
fi

mapfile -d '' BASE < <(qemu_base_args "$ACCEL")
CMDLINE="console=ttyS0 panic=-1 loglevel=4 nokaslr"
: > "$RUN/console.log"
log "booting: $QEMU ${BASE[*]} ${DEV[*]} ..."
BOOT_T=${EPOCHREALTIME/,/.}
"${QEMU_ENV[@]}" "$QEMU" "${BASE[@]}" -initrd "$RUN/initrd.img" -append "$CMDLINE" \
  -serial "file:$RUN/console.log" -monitor none "${DEV[@]}" \
  </dev/null >"$RUN/qemu.log" 2>&1 &
QEMU_PID=$!
if [[ $VM_LINK == relay ]]; then
  python3 "$HELPER" relay "$RUN/ctl.sock" "$RUN/data.sock" "$SOCK_ABS" "$RUN/relay.log" \
    >>"$RUN/relay.log" 2>&1 &
  RELAY_PID=$!
fi
if [[ $VERBOSE == 1 ]]; then
  tail -n +1 -F --pid="$QEMU_PID" "$RUN/console.log" 2>/dev/null |
    sed -u -e 's/\r//g' -e '/^[[:space:]]*$/d' -e 's/^/    [guest] /' &
  TAIL_PID=$!
fi

# --- wait for the guest to power off (or the hard timeout)
DEADLINE=$((SECONDS + VM_TIMEOUT))
TIMED_OUT=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
  if (( SECONDS >= DEADLINE )); then TIMED_OUT=1; log "hard timeout (${VM_TIMEOUT}s): killing VM"; break; fi
  if grep -q 'E2E-POWEROFF' "$RUN/console.log" 2>/dev/null; then
    # give qemu a moment to exit on its own after the guest powered off
    for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    break
  fi
  sleep 0.2
done
if kill -0 "$QEMU_PID" 2>/dev/null; then kill -TERM "$QEMU_PID"; sleep 0.5; kill -KILL "$QEMU_PID" 2>/dev/null; fi
wait "$QEMU_PID" 2>/dev/null; QEMU_PID=
VM_SECS=$(awk -v a="$BOOT_T" -v b="${EPOCHREALTIME/,/.}" 'BEGIN{printf "%.1f", b-a}')
sleep 0.3
[[ -n $TAIL_PID ]] && { kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null; TAIL_PID=; }

CONSOLE=$(tr -d '\r' < "$RUN/console.log")
if [[ -s $RUN/qemu.log ]]; then sed 's/^/    [qemu] /' "$RUN/qemu.log"; fi
if [[ $VM_LINK == relay && -s $RUN/relay.log ]]; then sed 's/^/    [relay] /' "$RUN/relay.log"; fi
GOT=$(grep -o 'E2E-OK [0-9a-f]\{64\}' <<< "$CONSOLE" | tail -n1 | cut -d' ' -f2)
GUEST_T=$(grep -o 'E2E-POWEROFF \[[0-9.]*s\]' <<< "$CONSOLE" | grep -o '[0-9.]*' | tail -n1)
if [[ -n $GOT && $GOT == "$EXPECT_SHA" ]]; then
  RESULT=PASS
  log "PASS: E2E-OK $GOT matches host payload (VM wall ${VM_SECS}s, guest uptime at poweroff ${GUEST_T:-?}s, accel $ACCEL)"
  exit 0
fi
if [[ -n $GOT ]]; then die "guest reported E2E-OK $GOT but host payload is $EXPECT_SHA"; fi
FAILLINE=$(grep -o 'E2E-FAIL.*' <<< "$CONSOLE" | head -n1)
if [[ $VERBOSE != 1 ]]; then tail -n 40 <<< "$CONSOLE" | sed 's/^/    [guest] /'; fi
(( TIMED_OUT )) && die "VM did not finish within ${VM_TIMEOUT}s${FAILLINE:+ ($FAILLINE)}"
die "${FAILLINE:-guest ended without E2E-OK (see $RUN/console.log)}"
