#!/usr/bin/env bash
# Issue 4's build benchmark: `cargo farm build` on the embedded farm against plain `cargo build`
# and sccache, on examples/bench-service (its own workspace, ~100 packages), and prints the
# figures as BENCHMARKS.md rows. Per profile and run, each on a fresh copy of the project (no
# target/) in a temp dir, CARGO_TARGET_DIR unset so target/ is the copy's own:
#   a. plain `cargo build` cold (sources fetched beforehand, so no network time is counted);
#   b. `cargo farm build` cold: empty CARGO_FARM_HOME, empty target/;
#   c. `cargo farm build` warm: `rm -rf target`, build again with the same CARGO_FARM_HOME;
#   d. `cargo farm build` from another checkout path: a second copy of the project at a
#      different directory, same CARGO_FARM_HOME;
#   e. sccache (local disk cache in an empty SCCACHE_DIR, its own server on a free port):
#      `RUSTC_WRAPPER=sccache cargo build` cold, then `rm -rf target` and warm, then from a copy
#      at another path; hit statistics of each.
# Every build's program is run (`bench-service selftest`) and its output compared with plain
# cargo's, so a fast but wrong build cannot pass unnoticed. Each row also shows the CPU time the
# whole machine spent and how many compiler processes of others (not descended from this script
# nor carrying its BENCH_BUILD_TAG) ran on average, since a shared machine's builds skew wall times.
#
# sccache runs get CARGO_INCREMENTAL=0, as sccache's documentation asks (it cannot cache
# incremental compilations, and cargo's dev profile makes the workspace members incremental);
# plain cargo and cargo farm run with the profile as it is (cargo farm ignores `incremental`).
#
# Knobs (environment): RUNS (1; with N > 1 each figure is the median of N, every run starting
# from empty caches), PROFILES ("dev"; "dev release" adds the release profile). Installs
# sccache with `cargo install --locked sccache` if it is not on PATH (9 minutes on 2 cores).
# Needs bubblewrap (the embedded farm sandboxes every action) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

RUNS=${RUNS:-1}
PROFILES=${PROFILES:-dev}
project_src="$repo/examples/bench-service"
unset CARGO_TARGET_DIR RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER CARGO_FARM_HOME

work=$(mktemp -d)
# The embedded farm runs actions as per-slot sandbox users (when root), who must reach the farm
# home inside this directory.
chmod 711 "$work"
sccache_port=""
sccache_running=0
sampler_pid=""
cleanup() {
    if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
    if [ "$sccache_running" = 1 ]; then
        SCCACHE_SERVER_PORT=$sccache_port sccache --stop-server >/dev/null 2>&1 || true
    fi
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
# CPU seconds the whole machine spent in user and system mode since boot ("USER SYS").
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.1f %.1f\n", ($2+$3)/hz, $4/hz}' /proc/stat
}
# Copies the project (without target/) to the directory $1.
copy_project() {
    mkdir -p "$1"
    (cd "$project_src" && tar cf - --exclude=./target .) | (cd "$1" && tar xf -)
}

echo "== machine"
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "cpu: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(uname -r)"
echo "$(rustc --version); $(cargo --version)"
echo "cargo-farm at commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cas scheduler worker resolver frontend-cli || echo ' plus uncommitted changes in cas/scheduler/worker/resolver/frontend-cli')"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# This VM's CPU speed drifts by 10-20% over a day; one core's SHA-256 speed dates the run.
sha256_speed() {
    openssl speed -evp sha256 -seconds 2 2>/dev/null |
        awk '/^sha256/{v=$NF; sub("k","",v); printf "%.0f MB/s\n", v*1000/1e6}'
}
if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
    echo "note: the machine is not idle (1-minute load above 0.5); wall times will show it"
fi
command -v bwrap >/dev/null || { echo "needs bubblewrap (apt-get install bubblewrap)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
echo "single-core SHA-256 (openssl speed -evp sha256, 16 KiB blocks) at start: $(sha256_speed)"
script_start=$(now)

# Others' builds on the machine skew wall times, so they are counted: every 0.5 s, the number of
# compiler processes (rustc, cargo, cc1, ld, ...) that are not ours. Ours descend from this
# script (the embedded farm's sandboxed rustc included) or carry BENCH_BUILD_TAG in their
# environment (what sccache's daemonised server runs).
export BENCH_BUILD_TAG=$work
python3 - "$$" "$BENCH_BUILD_TAG" > "$work/foreign.log" <<'SAMPLER' &
import os, sys, time
me, tag = sys.argv[1], ("BENCH_BUILD_TAG=" + sys.argv[2]).encode()
names = {"rustc", "cargo", "cc1", "cc1plus", "ld", "ld.lld", "rust-lld", "clippy-driver", "cc", "gcc"}
while True:
    parent, comm = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent[pid] = stat[stat.rindex(")") + 2 :].split()[1]
    others = 0
    for pid, name in comm.items():
        if name not in names:
            continue
        p, ours = pid, False
        while p in parent and p not in ("0", "1"):
            if p == me:
                ours = True
                break
            p = parent[p]
        if not ours:
            try:
                ours = tag in open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                pass
        others += not ours
    print(f"{time.time():.3f} {others}", flush=True)
    time.sleep(0.5)
SAMPLER
sampler_pid=$!

echo "== building cargo-farm (release)"
cargo build --release -p frontend-cli --bin cargo-farm
farm="$repo/target/release/cargo-farm"
if ! command -v sccache >/dev/null; then
    echo "== installing sccache (cargo install --locked sccache)"
    cargo install --locked sccache
fi
sccache --version

echo "== project: $project_src"
cargo fetch --locked --manifest-path "$project_src/Cargo.toml"
packages=$(cargo metadata --locked --offline --format-version 1 --manifest-path "$project_src/Cargo.toml" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["packages"]))')
echo "packages in cargo metadata: $packages"

# Results: one line per measurement, "PROFILE STEP RUN SECONDS CPU_USER CPU_SYS EXTRA".
results="$work/results.txt"
: > "$results"

# Runs "$@" in directory $1 (after shift), logs to $work/logs/NAME.{out,err}, records the wall
# time and machine CPU under PROFILE STEP RUN. Fails the script (showing the log) on failure.
measure() {
    local profile=$1 step=$2 run=$3 dir=$4
    shift 4
    local name="$profile-$step-$run" t0 t1 c0 c1
    mkdir -p "$work/logs"
    c0=$(cpu_seconds)
    t0=$(now)
    if ! (cd "$dir" && "$@") >"$work/logs/$name.out" 2>"$work/logs/$name.err"; then
        echo "FAILED: $name: $*" >&2
        tail -40 "$work/logs/$name.err" >&2
        tail -5 "$work/logs/$name.out" >&2
        exit 1
    fi
    t1=$(now)
    c1=$(cpu_seconds)
    local secs cpu_user cpu_sys
    secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    read -r cpu_user cpu_sys < <(python3 -c "
u0, s0 = '$c0'.split(); u1, s1 = '$c1'.split()
print(f'{float(u1) - float(u0):.0f} {float(s1) - float(s0):.0f}')")
    # Mean number of others' compiler processes during the measurement.
    local foreign
    foreign=$(awk -v s="$t0" -v e="$t1" '$1>=s && $1<=e {n++; t+=$2} END {printf "%.2f", n ? t/n : 0}' "$work/foreign.log")
    echo "$profile $step $run $secs $cpu_user $cpu_sys foreign=$foreign" >> "$results"
    echo "  $name: ${secs} s wall, machine CPU ${cpu_user} s user + ${cpu_sys} s sys, others' compiler processes: $foreign on average"
}

# Appends KEY=VALUE to the last result line.
note() { sed -i '$ s/$/ '"$1"'/' "$results"; }

# Checks the farm-summary of a farm build log and notes actions/hits/executed.
farm_summary() {
    local log=$1
    local line
    line=$(grep '"reason":"farm-summary"' "$log" | tail -1)
    [ -n "$line" ] || { echo "no farm-summary in $log" >&2; exit 1; }
    local a h e f u
    read -r a h e f u < <(python3 -c "
import json, sys
s = json.loads(sys.argv[1])
print(s['actions'], s['cache_hits'], s['executed'], s['failed'], s.get('uploaded_bytes', '?'))" "$line")
    echo "    farm-summary: actions=$a cache_hits=$h executed=$e failed=$f uploaded_bytes=$u"
    note "actions=$a" && note "hits=$h" && note "executed=$e"
}

# Sccache's counters of the last build (after --zero-stats), noted as KEY=VALUE.
sccache_stats() {
    local stats="$work/logs/$1.stats"
    SCCACHE_SERVER_PORT=$sccache_port sccache --show-stats > "$stats"
    # The counters, then sccache's reasons for what it did not cache.
    grep -E '^(Compile requests  |Cache hits  |Cache misses  |Non-cacheable calls|Non-cacheable compilations)' "$stats" |
        sed 's/^/    /' || true
    sed -n '/^Non-cacheable reasons:/,/^$/p' "$stats" | sed 's/^/    /'
    local req hits misses noncache
    req=$(awk '/^Compile requests  /{print $NF}' "$stats")
    hits=$(awk '/^Cache hits  /{print $NF}' "$stats")
    misses=$(awk '/^Cache misses  /{print $NF}' "$stats")
    noncache=$(awk '/^Non-cacheable calls/{print $NF}' "$stats")
    note "requests=${req:-?}" && note "hits=${hits:-?}" && note "misses=${misses:-?}" && note "noncacheable=${noncache:-?}"
}

# The self-test output of a build's program, compared with the reference of plain cargo.
check_program() {
    local dir=$1 profile_dir=$2 name=$3
    local out="$work/logs/$name.selftest"
    "$dir/target/$profile_dir/bench-service" selftest > "$out"
    if [ ! -f "$work/selftest.ref" ]; then
        cp "$out" "$work/selftest.ref"
    elif ! cmp -s "$out" "$work/selftest.ref"; then
        echo "the program built by $name prints something else than plain cargo's:" >&2
        diff "$work/selftest.ref" "$out" >&2 || true
        exit 1
    fi
}

for profile in $PROFILES; do
    case $profile in
        dev) flag=(); profile_dir=debug ;;
        release) flag=(--release); profile_dir=release ;;
        *) echo "PROFILES: dev or release, not $profile" >&2; exit 1 ;;
    esac
    for run in $(seq "$RUNS"); do
        base="$work/$profile-$run"
        echo "== profile $profile, run $run of $RUNS"

        # a. plain cargo, cold.
        copy_project "$base/cargo/bench-service"
        measure "$profile" cargo_cold "$run" "$base/cargo/bench-service" \
            cargo build --locked "${flag[@]}"
        check_program "$base/cargo/bench-service" "$profile_dir" "$profile-cargo_cold-$run"

        # b-d. cargo farm on a fresh embedded farm.
        home="$base/farm-home"
        mkdir -p "$home"
        a_dir="$base/checkout-a/bench-service"
        copy_project "$a_dir"
        farm_build=(env "CARGO_FARM_HOME=$home" "$farm" farm build --locked "${flag[@]}" --message-format json)
        measure "$profile" farm_cold "$run" "$a_dir" "${farm_build[@]}"
        farm_summary "$work/logs/$profile-farm_cold-$run.out"
        check_program "$a_dir" "$profile_dir" "$profile-farm_cold-$run"
        rm -rf "$a_dir/target"
        measure "$profile" farm_warm "$run" "$a_dir" "${farm_build[@]}"
        farm_summary "$work/logs/$profile-farm_warm-$run.out"
        check_program "$a_dir" "$profile_dir" "$profile-farm_warm-$run"
        b_dir="$base/elsewhere/another-checkout/bench-service"
        copy_project "$b_dir"
        measure "$profile" farm_other_path "$run" "$b_dir" "${farm_build[@]}"
        farm_summary "$work/logs/$profile-farm_other_path-$run.out"
        check_program "$b_dir" "$profile_dir" "$profile-farm_other_path-$run"
        du -sh "$home" | awk '{print "    farm home after the run: " $1}'
        # cargo farm moves worker directories to /var/tmp when sandbox users cannot reach the
        # home; $work is 0711 so that they stay here and are cleaned up with it.
        [ -d "$home/worker-0" ] || echo "    note: the embedded worker's directory is not under the farm home" >&2
        chmod -R u+w "$base/farm-home" && rm -rf "$base/farm-home" "$base/checkout-a" "$base/elsewhere"

        # e. sccache: its own server on a free port, an empty local disk cache.
        sccache_port=$(free_port)
        export SCCACHE_DIR="$base/sccache" SCCACHE_SERVER_PORT=$sccache_port SCCACHE_IDLE_TIMEOUT=0
        mkdir -p "$SCCACHE_DIR"
        sccache --start-server >/dev/null
        sccache_running=1
        s_dir="$base/sccache-a/bench-service"
        copy_project "$s_dir"
        sccache_build=(env RUSTC_WRAPPER=sccache CARGO_INCREMENTAL=0 cargo build --locked "${flag[@]}")
        sccache --zero-stats >/dev/null 2>&1
        measure "$profile" sccache_cold "$run" "$s_dir" "${sccache_build[@]}"
        sccache_stats "$profile-sccache_cold-$run"
        check_program "$s_dir" "$profile_dir" "$profile-sccache_cold-$run"
        rm -rf "$s_dir/target"
        sccache --zero-stats >/dev/null 2>&1
        measure "$profile" sccache_warm "$run" "$s_dir" "${sccache_build[@]}"
        sccache_stats "$profile-sccache_warm-$run"
        check_program "$s_dir" "$profile_dir" "$profile-sccache_warm-$run"
        s_other="$base/elsewhere-sccache/another-checkout/bench-service"
        copy_project "$s_other"
        sccache --zero-stats >/dev/null 2>&1
        measure "$profile" sccache_other_path "$run" "$s_other" "${sccache_build[@]}"
        sccache_stats "$profile-sccache_other_path-$run"
        check_program "$s_other" "$profile_dir" "$profile-sccache_other_path-$run"
        du -sh "$SCCACHE_DIR" | awk '{print "    sccache dir after the run: " $1}'
        sccache --stop-server >/dev/null
        sccache_running=0
        unset SCCACHE_DIR SCCACHE_SERVER_PORT SCCACHE_IDLE_TIMEOUT
        rm -rf "$base"
    done
    rm -f "$work/selftest.ref"
done

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "single-core SHA-256 at end: $(sha256_speed)"
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
total=$(python3 -c "print(f'{$(now) - $script_start:.0f}')")
echo "whole script: ${total} s"

echo "== results (BENCHMARKS.md rows; median of $RUNS run(s); machine CPU is all processes, user + sys)"
python3 - "$results" "$RUNS" <<'EOF'
import statistics, sys
from collections import defaultdict

path, runs = sys.argv[1], int(sys.argv[2])
rows = defaultdict(list)
for line in open(path):
    f = line.split()
    profile, step, secs, cu, cs = f[0], f[1], float(f[3]), f[4], f[5]
    extra = dict(kv.split("=", 1) for kv in f[6:])
    rows[(profile, step)].append((secs, cu, cs, extra))

steps = [
    ("cargo_cold", "plain `cargo build`, cold (empty target/)", None),
    ("farm_cold", "`cargo farm build`, cold (empty farm, empty target/)", 1.3),
    ("farm_warm", "`cargo farm build`, warm (`rm -rf target`)", 0.1),
    ("farm_other_path", "`cargo farm build`, another checkout path, same farm", 0.1),
    ("sccache_cold", "sccache, cold (empty SCCACHE_DIR)", None),
    ("sccache_warm", "sccache, warm (`rm -rf target`)", None),
    ("sccache_other_path", "sccache, another checkout path, same cache", None),
]
for profile in dict.fromkeys(p for p, _ in rows):
    base = statistics.median(r[0] for r in rows[(profile, "cargo_cold")])
    print(f"\nprofile {profile}:\n")
    print("| build | wall time | / cargo cold | target | machine CPU user + sys | others' compilers | cache |")
    print("|---|---|---|---|---|---|---|")
    for step, label, target in steps:
        rs = rows.get((profile, step))
        if not rs:
            continue
        secs = statistics.median(r[0] for r in rs)
        ratio = secs / base
        if target is None:
            goal = "—"
        else:
            goal = f"≤ {target}× ({'met' if ratio <= target else '**missed**'})"
        mid = sorted(rs, key=lambda r: r[0])[len(rs) // 2]
        e = mid[3]
        if "actions" in e:
            cache = f"{e['hits']}/{e['actions']} action-cache hits, {e['executed']} executed"
        elif "requests" in e:
            cache = (f"{e['hits']} hits, {e['misses']} misses, {e['noncacheable']} not cacheable"
                     f" (of {e['requests']} compile requests)")
        else:
            cache = "—"
        spread = ""
        if len(rs) > 1:
            spread = f" ({min(r[0] for r in rs):.1f}–{max(r[0] for r in rs):.1f})"
        print(f"| {label} | **{secs:.1f} s**{spread} | **{ratio:.3f}×** | {goal} | "
              f"{mid[1]} + {mid[2]} s | {e.get('foreign', '?')} | {cache} |")
EOF
