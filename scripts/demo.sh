#!/usr/bin/env bash
# The README's main command: builds examples/workspace with `cargo farm build` on the embedded
# farm (a filesystem CAS and sandboxed workers in-process, under $CARGO_FARM_HOME or
# ~/.cache/cargo-farm) and runs the program it built. Installs bubblewrap, the sandbox every
# action runs in, if it is missing. Run it twice: the second build is all cache hits.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1; then
    echo "== installing bubblewrap (the sandbox of every action)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap </dev/null ||
        { $SUDO apt-get update -q </dev/null &&
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap </dev/null; }
fi

cargo build --release --locked -p frontend-cli --bin cargo-farm
./target/release/cargo-farm farm build --manifest-path examples/workspace/Cargo.toml "$@"
echo "== examples/workspace/target/debug/app"
examples/workspace/target/debug/app
