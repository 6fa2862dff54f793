#!/usr/bin/env bash
# Measures the execution side of the farm (issue 3) and prints `RESULT name value unit` lines
# for BENCHMARKS.md:
#   1. the scheduler alone: scheduler/benches/dispatch.rs (1,000 simulated workers, 100,000
#      queued actions; dispatch rate, peak RSS), its output turned into RESULT lines;
#   2. a release farm-scheduler (--root in a temp dir) + 2 release farm-workers on loopback,
#      driven by worker/benches/e2e_throughput.rs: trivial /bin/true actions end to end, then
#      Execute of an action-cache hit;
#   3. what one bubblewrap sandbox costs on this machine, the floor under (2): /bin/true run
#      directly vs in bwrap with the worker's arguments, as a sandbox user.
# Needs root (the workers' per-slot sandbox uids) and bubblewrap.
#
# Knobs (environment): SLOTS per worker (2: one per core of the 2-core dev VM; the client,
# scheduler and workers share the cores anyway), ACTIONS (2000), CONCURRENCY (48 Execute calls
# in flight), CACHE_HITS (2000), SANDBOX_RUNS (300), SKIP_DISPATCH=1 to skip part 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SLOTS=${SLOTS:-2}
ACTIONS=${ACTIONS:-2000}
CONCURRENCY=${CONCURRENCY:-48}
CACHE_HITS=${CACHE_HITS:-2000}
SANDBOX_RUNS=${SANDBOX_RUNS:-300}
# Sandbox uids of the two workers; away from the tests' (63000-63399) and the default (61000).
UID_BASES=(64000 64100)

work=$(mktemp -d)
chmod 711 "$work"
pids=()
# Stops exactly the processes this script started: workers first (a scheduler shuts down
# gracefully only once its worker sessions have ended), SIGKILL for any still there after 10 s.
stop_farm() {
    local pid i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
    done
    for _ in $(seq 100); do
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && break
            pid=""
        done
        [ -z "${pid:-}" ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    stop_farm
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

echo "== machine"
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "cpu: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r)"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$(id -u)" = 0 ] || { echo "needs root: the workers run actions as per-slot sandbox uids" >&2; exit 1; }
command -v bwrap >/dev/null || { echo "needs bubblewrap (apt-get install bubblewrap)" >&2; exit 1; }

cargo build --release -p scheduler --bin farm-scheduler -p worker --bin farm-worker
cargo bench -p scheduler --bench dispatch --no-run
cargo bench -p worker --bench e2e_throughput --no-run

# --- 1. The scheduler alone: 1,000 simulated workers, 100,000 queued actions.
if [ "${SKIP_DISPATCH:-0}" != 1 ]; then
    echo "== dispatch (scheduler/benches/dispatch.rs)"
    cargo bench -p scheduler --bench dispatch | tee "$work/dispatch.log"
    # core (memory state): queued 100000 actions in 0.5 s (200000 submits/s), ...
    # core (memory state): 1000 workers x 4 slots ...; ... = N actions/s; peak RSS M MiB
    # grpc: queued ... (N Execute/s), ...
    # grpc: 1000 workers on 20 connections; ... = N actions/s; peak RSS M MiB
    # grpc: Execute of an action-cache hit over loopback: p50 A ms, p90 B ms, p99 C ms (...)
    sed -nE \
        -e 's/^core \(memory state\): queued .*\(([0-9.]+) submits\/s\).*/RESULT dispatch_core_submits_per_s \1 actions\/s/p' \
        -e 's/^core \(memory state\): .* = ([0-9.]+) actions\/s; peak RSS ([0-9.]+) MiB.*/RESULT dispatch_core_actions_per_s \1 actions\/s\nRESULT dispatch_core_peak_rss \2 MiB/p' \
        -e 's/^grpc: queued .*\(([0-9.]+) Execute\/s\).*/RESULT dispatch_grpc_queue_execute_per_s \1 calls\/s/p' \
        -e 's/^grpc: .* = ([0-9.]+) actions\/s; peak RSS ([0-9.]+) MiB.*/RESULT dispatch_grpc_actions_per_s \1 actions\/s\nRESULT dispatch_grpc_peak_rss_process \2 MiB/p' \
        -e 's/^grpc: Execute of an action-cache hit over loopback: p50 ([0-9.]+) ms, p90 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/RESULT dispatch_inprocess_cache_hit_p50 \1 ms\nRESULT dispatch_inprocess_cache_hit_p99 \3 ms/p' \
        "$work/dispatch.log"
fi

# --- 2. farm-scheduler + 2 farm-workers on loopback.
echo "== farm: farm-scheduler + 2 farm-worker x $SLOTS slots"
port=$(free_port)
metrics_port=$(free_port)
url="http://127.0.0.1:$port"
RUST_LOG=warn ./target/release/farm-scheduler --listen "127.0.0.1:$port" --root "$work/scheduler" \
    --metrics-listen "127.0.0.1:$metrics_port" >"$work/scheduler.log" 2>&1 &
pids+=($!)
for i in 0 1; do
    RUST_LOG=warn ./target/release/farm-worker --scheduler "$url" --work-dir "$work/worker-$i" \
        --slots "$SLOTS" --worker-id "bench-worker-$i" --sandbox-uid-base "${UID_BASES[$i]}" \
        --cache-size 1GiB >"$work/worker-$i.log" 2>&1 &
    pids+=($!)
done
# Ready when the scheduler counts both workers.
workers=0
for _ in $(seq 300); do
    workers=$(python3 - "$metrics_port" <<'EOF' 2>/dev/null || echo 0
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=1).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("farm_scheduler_workers{"))))
EOF
)
    [ "$workers" = 2 ] && break
    sleep 0.1
done
if [ "$workers" != 2 ]; then
    echo "the workers never connected ($workers of 2); logs:" >&2
    tail -n 20 "$work"/*.log >&2
    exit 1
fi
echo "load before the farm runs: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -p worker --bench e2e_throughput -- "$url" throughput \
    --actions "$ACTIONS" --concurrency "$CONCURRENCY"
cargo bench -p worker --bench e2e_throughput -- "$url" cache_hit --actions "$CACHE_HITS"
sched_pid=${pids[0]}
echo "RESULT farm_scheduler_rss_after $(($(awk '/VmRSS/{print $2}' "/proc/$sched_pid/status") / 1024)) MiB"
echo "RESULT farm_scheduler_rss_peak $(($(awk '/VmHWM/{print $2}' "/proc/$sched_pid/status") / 1024)) MiB"
stop_farm

# --- 3. One sandbox's cost: /bin/true directly vs in bubblewrap as the worker runs it.
echo "== sandbox cost ($SANDBOX_RUNS runs each)"
sandbox_uid=$((UID_BASES[0] + 99))
mkdir -p "$work/sbx/root" "$work/sbx/tmp"
chown -R "$sandbox_uid:$sandbox_uid" "$work/sbx"
bwrap_args=(--unshare-all --unshare-user --die-with-parent --new-session --cap-drop ALL
    --uid 1000 --gid 1000 --hostname farm-sandbox)
for p in /usr /bin /lib /lib64; do
    if [ -L "$p" ] && [[ "$(readlink "$p")" != /* ]]; then
        bwrap_args+=(--symlink "$(readlink "$p")" "$p")
    elif [ -e "$p" ]; then
        bwrap_args+=(--ro-bind "$p" "$p")
    fi
done
bwrap_args+=(--proc /proc --dev /dev --bind "$work/sbx/root" /exec --bind "$work/sbx/tmp" /tmp
    --remount-ro / --chdir /exec --clearenv --setenv PATH /usr/bin:/bin --
    /usr/bin/env -u PWD -- /bin/true)
per_run_ms() { # command...; prints ms per run of SANDBOX_RUNS runs
    local start end
    start=$(date +%s%N)
    for _ in $(seq "$SANDBOX_RUNS"); do "$@"; done
    end=$(date +%s%N)
    python3 -c "print(f'{($end - $start) / 1e6 / $SANDBOX_RUNS:.2f}')"
}
setpriv=(setpriv --reuid "$sandbox_uid" --regid "$sandbox_uid" --clear-groups)
"${setpriv[@]}" bwrap "${bwrap_args[@]}" # fails loudly if the sandbox cannot be set up
echo "RESULT true_direct $(per_run_ms /bin/true) ms/run"
echo "RESULT true_setpriv $(per_run_ms "${setpriv[@]}" /bin/true) ms/run"
echo "RESULT true_in_bwrap_as_sandbox_user $(per_run_ms "${setpriv[@]}" bwrap "${bwrap_args[@]}") ms/run"
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
