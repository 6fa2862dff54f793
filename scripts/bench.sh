#!/usr/bin/env bash
# The standard benchmark suite: runs each suite's script in turn (each builds the release
# binaries it needs, starts its own farm processes on free loopback ports and stops them by PID)
# and prints their figures as one block of BENCHMARKS.md rows at the end:
#   cas       scripts/bench-cas.sh       machine limits (single-core SHA-256, loopback TCP,
#                                        page cache, disk direct I/O), farm-cas
#                                        ByteStream/batch/FindMissing figures
#   exec      scripts/bench-exec.sh      scheduler dispatch with 1,000 simulated workers,
#                                        cache-hit Execute, /bin/true end to end, sandbox cost
#   loadtest  scripts/bench-loadtest.sh  farm-loadtest scenarios against farm-cas / a farm
#   build     scripts/bench-build.sh     cargo farm build against cargo and sccache
# SUITES="cas exec" picks some; each suite's full log is kept in $BENCH_LOG_DIR (default: a
# temporary directory, printed at the end). Runs as root for the sandboxed suites.
set -euo pipefail
cd "$(dirname "$0")/.."

suites=${SUITES:-"cas exec loadtest build"}
logs=${BENCH_LOG_DIR:-$(mktemp -d)}
mkdir -p "$logs"
failed=()

echo "== machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) cores," \
    "$(free -g | awk '/Mem:/{print $2}') GiB; load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "commit $(git rev-parse --short HEAD)"
for suite in $suites; do
    script="scripts/bench-$suite.sh"
    if [ ! -x "$script" ]; then
        echo "unknown suite $suite (no $script)" >&2
        exit 2
    fi
    echo "== $suite ($script), log in $logs/$suite.log"
    start=$(date +%s)
    if ! "./$script" >"$logs/$suite.log" 2>&1 </dev/null; then
        echo "   $suite FAILED; last lines:" >&2
        tail -20 "$logs/$suite.log" >&2
        failed+=("$suite")
    fi
    echo "   took $(($(date +%s) - start)) s"
done

echo
echo "## Results ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
for suite in $suites; do
    log="$logs/$suite.log"
    [ -f "$log" ] || continue
    echo
    echo "### $suite"
    # Scripts print `RESULT name value unit` lines, markdown table rows, or both.
    if grep -q '^RESULT ' "$log"; then
        echo "| figure | value |"
        echo "|---|---|"
        awk '/^RESULT /{name=$2; $1=""; $2=""; sub(/^  */, ""); printf "| %s | %s |\n", name, $0}' "$log"
    fi
    grep '^|' "$log" || true
done
echo
echo "logs: $logs"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed suites: ${failed[*]}" >&2
    exit 1
fi
