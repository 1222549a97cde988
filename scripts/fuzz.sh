#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of envol's parsers and
# protocol state machines. Builds every target in fuzz/ and runs each for
# SECONDS (default 10: the smoke run that keeps the targets from rotting),
# one after another, one fuzzing process at a time.
#
#   scripts/fuzz.sh            # smoke run, ~10 s per target
#   scripts/fuzz.sh 600        # 10 minutes per target (the long run)
#   TARGETS="kms_blob" scripts/fuzz.sh 60
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler
# (libFuzzer is built from source by libfuzzer-sys). The sanitizer flags are
# nightly-only, so the fuzz build alone sets RUSTC_BOOTSTRAP=1 on the stable
# toolchain; the main build is untouched (fuzz/ is its own workspace with
# its own target directory).
#
# New corpus entries go to fuzz/work/<target> (not committed); the seeds in
# fuzz/corpus/<target> are read too. A crash stops the script with a
# non-zero status; the input is in fuzz/artifacts/<target>/.
set -euo pipefail

secs=${1:-10}
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
targets=${TARGETS:-"nbd_handshake nbd_requests superblock kms_blob kms_request kms_policy"}
# -O: release; -a: debug assertions (overflow checks) on.
flags=(-O -a)

cargo fuzz build "${flags[@]}"
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    echo "== fuzz $t for ${secs}s"
    log="work/$t.log"
    set +e
    cargo fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=3072 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    if [ "$status" -ne 0 ]; then
        grep -v '^\s*\[' "$log" | tail -n 40 >&2
        echo "fuzz.sh: $t failed (exit $status); log $PWD/$log, input in fuzz/artifacts/$t/" >&2
        exit "$status"
    fi
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
done
echo "fuzz.sh: all targets ran ${secs}s without a crash"
