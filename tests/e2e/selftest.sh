#!/usr/bin/env bash
# selftest.sh - check both harnesses against servers other than envol, as root.
#   positive: qemu-nbd (persistent, named export) -> fuse-mount-check.sh + vm-nbd-check.sh
#   NEGATIVE=1 also: faulty-nbd-server.py --no-go (must PASS: nbd-client and
#   libnbd fall back to NBD_OPT_EXPORT_NAME) and --corrupt-from-conn 2 (both
#   harnesses must FAIL).
# A developer's tool for when a harness changes (a few minutes: it boots the
# kernel-client guest up to four times). `cargo test --test e2e_harness`
# keeps the cheap part of it - the FUSE harness passes against a correct
# server and fails against a corrupting one - in every test run.
set -uo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
NEGATIVE=${NEGATIVE:-0}
mkdir -p "${TMPDIR:-/tmp}/envol-e2e/run"
W=$(mktemp -d "${TMPDIR:-/tmp}/envol-e2e/run/selftest.XXXXXX")
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT
fails=0
check() { # EXPECT(0|1) NAME CMD...
  local want=$1 name=$2 rc; shift 2
  echo "=== $name"
  "$@"; rc=$?
  if { [[ $want == 0 ]] && (( rc == 0 )); } || { [[ $want == 1 ]] && (( rc == 1 )); }; then
    echo "=== $name: OK (exit $rc, expected $([[ $want == 0 ]] && echo pass || echo fail))"
  else
    echo "=== $name: UNEXPECTED exit $rc"; fails=$((fails + 1))
  fi
}
start() { # SOCK CMD...   start a server, wait for its socket
  local sock=$1; shift
  "$@" > "$W/$(basename "$sock").log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -S $sock ]] && return 0; sleep 0.05; done
  echo "server for $sock did not start"; exit 2
}

truncate -s 512M "$W/q.img"
start "$W/q.sock" qemu-nbd -t -f raw -x e2e -k "$W/q.sock" "$W/q.img"
check 0 "fuse harness vs qemu-nbd" "$HERE/fuse-mount-check.sh" "$W/q.sock" e2e
check 0 "vm harness vs qemu-nbd" "$HERE/vm-nbd-check.sh" "$W/q.sock" e2e
if [[ $NEGATIVE == 1 ]]; then
  start "$W/nogo.sock" python3 "$HERE/faulty-nbd-server.py" "$W/nogo.sock" "$W/nogo.img" 512 --export e2e --no-go
  check 0 "fuse harness vs server without NBD_OPT_GO" "$HERE/fuse-mount-check.sh" "$W/nogo.sock" e2e
  check 0 "vm harness vs server without NBD_OPT_GO" "$HERE/vm-nbd-check.sh" "$W/nogo.sock" e2e
  grep -c 'NBD_OPT_EXPORT_NAME' "$W/nogo.sock.log" | sed 's/^/    EXPORT_NAME fallbacks seen by server: /'
  start "$W/bad1.sock" python3 "$HERE/faulty-nbd-server.py" "$W/bad1.sock" "$W/bad1.img" 512 --export e2e --corrupt-from-conn 2
  check 1 "fuse harness vs corrupting server" "$HERE/fuse-mount-check.sh" "$W/bad1.sock" e2e
  start "$W/bad2.sock" python3 "$HERE/faulty-nbd-server.py" "$W/bad2.sock" "$W/bad2.img" 512 --export e2e --corrupt-from-conn 2
  VERBOSE=0 check 1 "vm harness vs corrupting server" "$HERE/vm-nbd-check.sh" "$W/bad2.sock" e2e
fi
echo "selftest: $fails unexpected result(s)"
(( fails == 0 ))
