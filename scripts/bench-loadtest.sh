#!/usr/bin/env bash
# farm-loadtest (issue 5) against a release farm-cas (filesystem store, --root in a temp dir) on
# a free loopback port, and against a release farm-scheduler for execute-cached; prints one
# BENCHMARKS.md row per figure with the exact command, the generator's own CPU and how busy
# the whole machine was. The load generator shares the machine with the server.
#
# Knobs: DURATION (seconds per figure, 10), CONCURRENCY (4), BATCH (blobs per batch, 500),
# LARGE (cas-large blob size, 256MiB), LARGE_REQUESTS (3), SKIP_SCHEDULER=1, SKIP_BUILD=1 (use
# the binaries already in BIN_DIR, default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-4}
BATCH=${BATCH:-500}
LARGE=${LARGE:-256MiB}
LARGE_REQUESTS=${LARGE_REQUESTS:-3}
BIN_DIR=${BIN_DIR:-target/release}

work=$(mktemp -d)
pids=()
server_pid=""
stop_servers() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    stop_servers
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    tail -n 20 "$work"/*.log >&2
    return 1
}

echo "== machine"
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "cpu: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r)"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"

packages=(-p cas --bin farm-cas -p loadtest --bin farm-loadtest)
[ "${SKIP_SCHEDULER:-0}" = 1 ] || packages+=(-p scheduler --bin farm-scheduler)
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release "${packages[@]}"

# One row from the JSON line of a run: figure, command, the kind to show (or "total"), the
# JSON file; the server's CPU and the load average come from load() beside it.
row() {
    python3 - "$@" <<'EOF'
import json, sys
figure, command, kind, path = sys.argv[1:5]
with open(path + ".server") as f:
    server_cores, loadavg = f.read().split(maxsplit=1)
with open(path) as f:
    v = json.loads(f.read().strip().splitlines()[-1])
k = v if kind == "total" else v["kinds"][kind]
lat = k["latency_ms"]
cpu = v["generator_cpu"]
errors = ", ".join(f"{c} {n}" for c, n in v["errors"].items()) or "0"
busy = cpu.get("machine_busy")
busy = f"{busy * 100:.0f}%" if busy is not None else "?"
print(f"| {figure} | `{command}` | {k['ops_per_s']:,.1f} | {k['blobs_per_s']:,.0f} | "
      f"{k['bytes_per_s'] / 1e6:,.1f} | {lat['p50']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f} | "
      f"{errors} | {cpu['cores']:.2f} of {cpu['cores_allowed']} ({cpu['fraction'] * 100:.0f}%) | "
      f"{float(server_cores):.2f} | {busy} | {loadavg.strip()} |")
EOF
}

# CPU ticks (user + system) of process $1 so far.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# Runs farm-loadtest against $url (served by $server_pid), keeping its output in
# $work/NAME.out and the server's CPU (cores, over the whole invocation, setup included) and
# the 1-minute load average at the end in $work/NAME.out.server.
load() {
    local name=$1
    shift
    local status=0 t0 t1 s0 s1
    t0=$(cpu_ticks "$server_pid")
    s0=$(date +%s.%N)
    "$BIN_DIR/farm-loadtest" --target "$url" "$@" --json >"$work/$name.out" 2>"$work/$name.err" || status=$?
    t1=$(cpu_ticks "$server_pid")
    s1=$(date +%s.%N)
    python3 -c "print(($t1 - $t0) / $(getconf CLK_TCK) / ($s1 - $s0))" >"$work/$name.out.server"
    cut -d' ' -f1 /proc/loadavg >>"$work/$name.out.server"
    if [ "$status" != 0 ] && [ "$status" != 3 ]; then
        echo "farm-loadtest $* failed ($status):" >&2
        cat "$work/$name.err" >&2
        exit 1
    fi
    echo "farm-loadtest $* (exit $status)" >&2
}

header() {
    echo "| figure | command (\`--target http://127.0.0.1:PORT\`) | requests/s | blobs/s | MB/s | latency p50 / p99 / max ms | errors | generator CPU (cores) | server CPU (cores) | machine busy | load (1 min) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
}

rows=()
add() {
    rows+=("$(row "$@")")
}

echo "== farm-cas --root (filesystem store)"
port=$(free_port)
url="http://127.0.0.1:$port"
RUST_LOG=warn "$BIN_DIR/farm-cas" --listen "127.0.0.1:$port" --root "$work/store" \
    --max-size "16 GiB" >"$work/farm-cas.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_port "$port"

small=(--concurrency "$CONCURRENCY" --batch "$BATCH" --duration "$DURATION")
a=(cas-small --ops update --blob-size 4KiB "${small[@]}")
load upload "${a[@]}"
add "BatchUpdateBlobs, 4 KiB blobs (target ≥ 20,000 blobs/s)" "${a[*]}" batch_update "$work/upload.out"

a=(cas-small --ops read --blob-size 4KiB --preload 20000 "${small[@]}")
load read "${a[@]}"
add "BatchReadBlobs, 4 KiB blobs (target ≥ 50,000 blobs/s)" "${a[*]}" batch_read "$work/read.out"

a=(cas-small --ops find --hit-ratio 0.5 --preload 20000 --concurrency "$CONCURRENCY" --batch 1000 --duration "$DURATION")
load find "${a[@]}"
add "FindMissingBlobs, 1,000 digests, half present (blobs/s = digests/s)" "${a[*]}" find_missing "$work/find.out"

a=(cas-small --hit-ratio 0.5 "${small[@]}")
load flow "${a[@]}"
for kind in find_missing batch_update batch_read; do
    add "client flow (find, upload the missing, read), 4 KiB, hit ratio 0.5: $kind" "${a[*]}" "$kind" "$work/flow.out"
done

mix="1KiB:50,4KiB:40,64KiB:10"
a=(cas-small --sizes "$mix" --batch 200 --concurrency "$CONCURRENCY" --duration "$DURATION")
load mix "${a[@]}"
add "client flow, size mix 1 KiB:50 / 4 KiB:40 / 64 KiB:10, batches of 200: all kinds" "${a[*]}" total "$work/mix.out"

a=(cas-large --ops write --blob-size "$LARGE" --concurrency 1 --requests "$LARGE_REQUESTS")
load large-write "${a[@]}"
add "ByteStream Write, $LARGE blobs, one at a time" "${a[*]}" bytestream_write "$work/large-write.out"

a=(cas-large --ops read --blob-size "$LARGE" --preload 1 --concurrency 1 --requests "$LARGE_REQUESTS")
load large-read "${a[@]}"
add "ByteStream Read, $LARGE blob, one at a time" "${a[*]}" bytestream_read "$work/large-read.out"

a=(ac --hit-ratio 0.5 --concurrency 16 --duration "$DURATION")
load ac "${a[@]}"
add "GetActionResult (half hits) + UpdateActionResult: get" "${a[*]}" get_action_result "$work/ac.out"
add "GetActionResult (half hits) + UpdateActionResult: update" "${a[*]}" update_action_result "$work/ac.out"
stop_servers

if [ "${SKIP_SCHEDULER:-0}" != 1 ]; then
    echo "== farm-scheduler --root (no workers: every Execute is an action-cache hit)"
    port=$(free_port)
    url="http://127.0.0.1:$port"
    RUST_LOG=warn "$BIN_DIR/farm-scheduler" --listen "127.0.0.1:$port" --root "$work/scheduler" \
        >"$work/farm-scheduler.log" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    wait_port "$port"
    a=(execute-cached --actions 1000 --concurrency 16 --duration "$DURATION")
    load cached "${a[@]}"
    add "Execute of cached actions (farm-scheduler, 16 in flight)" "${a[*]}" execute "$work/cached.out"
    a=(execute-cached --actions 1000 --concurrency 1 --duration "$DURATION")
    load cached1 "${a[@]}"
    add "Execute of cached actions (farm-scheduler, one at a time)" "${a[*]}" execute "$work/cached1.out"
    stop_servers
fi

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
header
printf '%s\n' "${rows[@]}"
