#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test.
# Used as-is by CI (.ci/run) and by developers: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
command -v nbdfuse >/dev/null || need_apt+=(libnbd-bin)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v qemu-io >/dev/null || need_apt+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v aws >/dev/null || ! python3 -c 'import boto3, cryptography' 2>/dev/null; then
    echo "== installing the AWS CLI, boto3 and cryptography (pip)"
    python3 -m pip install -q --disable-pip-version-check awscli boto3 cryptography
fi

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --all-targets
