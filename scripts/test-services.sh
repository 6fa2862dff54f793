#!/usr/bin/env bash
# Throwaway Redis and S3 (s3s-fs) servers on loopback for the cas integration tests.
#
# Source it and use the functions:
#
#   source scripts/test-services.sh
#   trap stop_services EXIT
#   start_redis && start_s3
#   cargo test -p cas --test redis_store --test s3_store
#   stop_services
#
# or run a command between start and stop in one go:
#
#   scripts/test-services.sh cargo test -p cas --test redis_store --test s3_store -- --nocapture
#
# start_redis exports FARM_TEST_REDIS_URL=redis://127.0.0.1:PORT.
# start_s3 exports FARM_TEST_S3_ENDPOINT=http://127.0.0.1:PORT, FARM_TEST_S3_ACCESS_KEY,
# FARM_TEST_S3_SECRET_KEY, FARM_TEST_S3_BUCKET (the bucket already exists) and
# FARM_TEST_S3_ROOT (s3s-fs's data directory, to look for leftover multipart uploads).
# Each server gets a free port and a fresh temp dir; stop_services kills exactly the processes
# these functions started and removes their temp dirs (safe to call twice, e.g. from a trap).
# Missing servers are installed (apt-get for redis-server, cargo install for s3s-fs). Works
# non-interactively (CI=true, no stdin) as root on Debian; does not change shell options.

# PIDs and temp dirs to clean up, shared by every function (and across repeated calls).
FARM_TEST_SERVICE_PIDS=${FARM_TEST_SERVICE_PIDS:-}
FARM_TEST_SERVICE_DIRS=${FARM_TEST_SERVICE_DIRS:-}

# The s3s-fs release known to build with this toolchain (0.15+ needs a newer rustc).
FARM_TEST_S3S_VERSION=${FARM_TEST_S3S_VERSION:-0.14.1}
# How long to wait for a server to accept connections, in seconds.
FARM_TEST_READY_TIMEOUT=${FARM_TEST_READY_TIMEOUT:-30}

_farm_log() { echo "test-services: $*" >&2; }

# Prints a TCP port on 127.0.0.1 that is free right now.
_farm_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Succeeds once something accepts TCP connections on 127.0.0.1:$1.
_farm_port_open() {
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(1)
s.connect(("127.0.0.1", int(sys.argv[1])))
EOF
}

# _farm_wait NAME PID CHECK...: polls CHECK until it succeeds, PID dies, or the timeout passes.
_farm_wait() {
    local name=$1 pid=$2 deadline=$((SECONDS + FARM_TEST_READY_TIMEOUT))
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            _farm_log "$name (pid $pid) exited before it was ready"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            _farm_log "$name (pid $pid) not ready after ${FARM_TEST_READY_TIMEOUT}s"
            return 1
        fi
        sleep 0.2
    done
}

_farm_apt_install() {
    local pkg=$1
    _farm_log "installing $pkg with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$pkg" </dev/null >&2 ||
        { apt-get update -q </dev/null >&2 && apt-get install -y -q "$pkg" </dev/null >&2; }
}

# Starts redis-server on a free port, in-memory only, and exports FARM_TEST_REDIS_URL.
start_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        _farm_apt_install redis-server || { _farm_log "could not install redis-server"; return 1; }
    fi
    local dir port pid
    dir=$(mktemp -d -t farm-redis.XXXXXX) || return 1
    FARM_TEST_SERVICE_DIRS="$FARM_TEST_SERVICE_DIRS $dir"
    port=$(_farm_free_port) || return 1
    # Foreground mode under `&` so $! is the server itself; no persistence, loopback only.
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" --daemonize no --protected-mode yes \
        </dev/null >"$dir/redis.log" 2>&1 &
    pid=$!
    FARM_TEST_SERVICE_PIDS="$FARM_TEST_SERVICE_PIDS $pid"
    if command -v redis-cli >/dev/null 2>&1; then
        _farm_wait redis "$pid" redis-cli -h 127.0.0.1 -p "$port" ping || {
            cat "$dir/redis.log" >&2
            return 1
        }
    else
        _farm_wait redis "$pid" _farm_port_open "$port" || return 1
    fi
    export FARM_TEST_REDIS_URL="redis://127.0.0.1:$port"
    _farm_log "redis-server pid $pid at $FARM_TEST_REDIS_URL"
}

# Starts s3s-fs on a free port with a fresh root and one bucket, and exports FARM_TEST_S3_*.
start_s3() {
    if ! command -v s3s-fs >/dev/null 2>&1; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v s3s-fs >/dev/null 2>&1; then
        _farm_log "installing s3s-fs $FARM_TEST_S3S_VERSION with cargo (takes a few minutes)"
        cargo install --locked "s3s-fs@$FARM_TEST_S3S_VERSION" --features binary </dev/null >&2 ||
            { _farm_log "could not install s3s-fs"; return 1; }
    fi
    local dir port pid bucket=farm-test access secret
    dir=$(mktemp -d -t farm-s3.XXXXXX) || return 1
    FARM_TEST_SERVICE_DIRS="$FARM_TEST_SERVICE_DIRS $dir"
    # s3s-fs keeps each bucket as a directory under its root.
    mkdir -p "$dir/root/$bucket" || return 1
    port=$(_farm_free_port) || return 1
    access="farmtest$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
    s3s-fs --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" \
        "$dir/root" </dev/null >"$dir/s3s-fs.log" 2>&1 &
    pid=$!
    FARM_TEST_SERVICE_PIDS="$FARM_TEST_SERVICE_PIDS $pid"
    _farm_wait s3s-fs "$pid" _farm_port_open "$port" || {
        cat "$dir/s3s-fs.log" >&2
        return 1
    }
    export FARM_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
    export FARM_TEST_S3_ACCESS_KEY="$access"
    export FARM_TEST_S3_SECRET_KEY="$secret"
    export FARM_TEST_S3_BUCKET="$bucket"
    # s3s-fs cannot list multipart uploads; tests look for leftover upload files here instead.
    export FARM_TEST_S3_ROOT="$dir/root"
    _farm_log "s3s-fs pid $pid at $FARM_TEST_S3_ENDPOINT, bucket $bucket, data in $dir/root"
}

# Stops exactly the servers started above and removes their temp dirs. Idempotent.
stop_services() {
    local pid dir i
    for pid in $FARM_TEST_SERVICE_PIDS; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null || true
        _farm_log "stopped pid $pid"
    done
    for dir in $FARM_TEST_SERVICE_DIRS; do
        case "$dir" in
        */farm-redis.* | */farm-s3.*) rm -rf -- "$dir" ;;
        esac
    done
    FARM_TEST_SERVICE_PIDS=
    FARM_TEST_SERVICE_DIRS=
    unset FARM_TEST_REDIS_URL FARM_TEST_S3_ENDPOINT FARM_TEST_S3_ACCESS_KEY \
        FARM_TEST_S3_SECRET_KEY FARM_TEST_S3_BUCKET FARM_TEST_S3_ROOT
    return 0
}

# Executed (not sourced) with a command: start both, run it, stop both, exit with its status.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    if (($# == 0)); then
        echo "usage: source $0 (then start_redis, start_s3, stop_services)" >&2
        echo "   or: $0 COMMAND [ARGS...]   (runs COMMAND with both services up)" >&2
        exit 2
    fi
    trap stop_services EXIT
    trap 'exit 130' INT TERM
    start_redis || exit 1
    start_s3 || exit 1
    "$@"
    exit $?
fi
