#!/usr/bin/env bash
# Runs every check and test of the workspace against real services.
#
# Installs what is missing (redis-server via apt-get, s3s-fs via cargo install), starts Redis and
# an S3 server on free 127.0.0.1 ports, runs fmt, clippy and the test suite, and stops exactly the
# processes it started. Works non-interactively (CI=true, no stdin).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh
trap stop_services EXIT

echo "== tools"
# The worker sandboxes every action with bubblewrap.
if ! command -v bwrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap </dev/null ||
        { apt-get update -q </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap </dev/null; }
fi

echo "== services"
start_redis
start_s3

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo check -p cas --no-default-features (optional backends really optional)"
cargo check -p cas --no-default-features --locked

echo "== aarch64 farm-worker (for worker/tests/cross_arch.rs, run under qemu-user)"
# shellcheck source=scripts/aarch64-worker.sh
source scripts/aarch64-worker.sh
setup_aarch64_worker

echo "== cargo test"
cargo test --workspace --locked -- --test-threads "${FARM_TEST_THREADS:-2}"
