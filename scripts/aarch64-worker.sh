#!/usr/bin/env bash
# An aarch64 build of farm-worker for the cross-architecture test (worker/tests/cross_arch.rs),
# which runs it under qemu-aarch64-static next to the native x86-64 worker.
#
# Source it and call setup_aarch64_worker: it installs what is missing (gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, qemu-user-static via apt-get; the aarch64-unknown-linux-gnu rustup
# target), registers binfmt_misc's qemu-aarch64 handler with the F flag on a non-aarch64 host
# (so the sandboxes can execute the test's aarch64 program: F opens the interpreter at
# registration, which is what makes it work inside bubblewrap's namespaces), builds the worker
# (linker from .cargo/config.toml) and exports FARM_TEST_AARCH64_WORKER. Idempotent,
# non-interactive; needs root for apt-get and binfmt_misc.

_aarch64_log() { echo "aarch64-worker: $*" >&2; }

_aarch64_apt() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null ||
        { apt-get update -q </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null; }
}

# Makes the kernel run aarch64 ELF files through qemu-aarch64-static, also inside namespaces.
_aarch64_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ $(uname -m) == aarch64 ]] && return 0
    if [[ ! -e $dir/register ]]; then
        mount -t binfmt_misc binfmt_misc "$dir" || { _aarch64_log "cannot mount $dir"; return 1; }
    fi
    if [[ -e $dir/qemu-aarch64 ]] && ! grep -q '^flags:.*F' "$dir/qemu-aarch64"; then
        _aarch64_log "re-registering qemu-aarch64 with the F flag (it lacked it)"
        echo -1 >"$dir/qemu-aarch64"
    fi
    if [[ ! -e $dir/qemu-aarch64 ]]; then
        [[ -r $conf ]] || { _aarch64_log "$conf is missing (qemu-user-static)"; return 1; }
        # The Debian entry: interpreter qemu-aarch64-static, flags OPF.
        cat "$conf" >"$dir/register" || { _aarch64_log "registering $conf failed"; return 1; }
    fi
    [[ $(cat "$dir/qemu-aarch64") == enabled* ]] || echo 1 >"$dir/qemu-aarch64"
}

setup_aarch64_worker() {
    local need=()
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
    [[ -e /usr/aarch64-linux-gnu/lib/libc.a ]] || need+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
    if ((${#need[@]})); then
        _aarch64_log "installing ${need[*]}"
        _aarch64_apt "${need[@]}" || return 1
    fi
    if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
        rustup target add aarch64-unknown-linux-gnu </dev/null || return 1
    fi
    _aarch64_binfmt || return 1
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        cargo build -p worker --bin farm-worker --target aarch64-unknown-linux-gnu --locked || return 1
    local dir
    dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || return 1
    export FARM_TEST_AARCH64_WORKER=$dir/aarch64-unknown-linux-gnu/debug/farm-worker
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    cd "$(dirname "$0")/.."
    setup_aarch64_worker
    echo "FARM_TEST_AARCH64_WORKER=$FARM_TEST_AARCH64_WORKER"
fi
