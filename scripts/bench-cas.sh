#!/usr/bin/env bash
# Measures farm-cas (filesystem store) on loopback and prints BENCHMARKS.md rows, side by side
# with this machine's single-core SHA-256 speed and loopback TCP limit.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
server_pid=""
sampler_pid=""
cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== machine"
nproc_n=$(nproc)
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
echo "cpu: $cpu, $nproc_n cores, $(free -g | awk '/Mem:/{print $2}') GiB"
sha=$(openssl speed -evp sha256 -seconds 2 2>/dev/null | awk '/^sha256/{print $NF}' | tr -d k)
sha_mbs=$(python3 -c "print(round(float('$sha')*1000/1e6, 1))")
echo "RESULT openssl_sha256_16k_single_core $sha_mbs MB/s"

# The page cache's write speed for a new file bounds a filesystem-store upload. On this VM it
# depends on whether the memory was touched recently (fresh pages fault in at ~0.4 GB/s, reused
# ones at ~5 GB/s), so it is measured next to the figures it bounds.
page_cache_write() {
    local out
    out=$(dd if=/dev/zero of="$work/dd-$1" bs=1M count=256 2>&1 | tail -1)
    rm -f "$work/dd-$1"
    echo "$out" | awk '{v=$(NF-1); u=$NF; if (u=="GB/s") v*=1000; print v}'
}

# Large blobs (>= 4 MiB) are written and, when not cached, read with O_DIRECT, which bounds
# them by the disk instead: the median of three direct reads of a 256 MiB file, 1 MiB at a time
# (what the store's read path does), and one direct write.
disk_direct() {
    local f="$work/dd-direct" rates=()
    dd if=/dev/urandom of="$f" bs=1M count=256 2>/dev/null
    sync
    echo "RESULT disk_direct_write_256mib $(dd if=/dev/zero of="$f.w" bs=2M count=128 oflag=direct 2>&1 | tail -1 |
        awk '{v=$(NF-1); u=$NF; if (u=="GB/s") v*=1000; print v}') MB/s"
    for _ in 1 2 3; do
        rates+=("$(dd if="$f" of=/dev/null bs=1M iflag=direct 2>&1 | tail -1 |
            awk '{v=$(NF-1); u=$NF; if (u=="GB/s") v*=1000; print v}')")
    done
    echo "RESULT disk_direct_read_256mib_median $(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p) MB/s"
    rm -f "$f" "$f.w"
}
disk_direct

cargo build --release -p cas --bin farm-cas
cargo bench -p cas --bench grpc_throughput --no-run

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/farm-cas --listen "127.0.0.1:$port" --root "$work/store" --max-size "8 GiB" &
server_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.1
done

# Server RSS sampled every 100 ms while the benchmark runs.
( while kill -0 "$server_pid" 2>/dev/null; do
      echo "$(date +%s.%N) $(awk '/VmRSS/{print $2}' /proc/$server_pid/status)"
      sleep 0.1
  done ) > "$work/rss.log" &
sampler_pid=$!

echo "RESULT page_cache_write_new_256mib_file_before $(page_cache_write a) MB/s"
# The loopback probe runs in a process of its own, so nothing it leaves behind (threads,
# socket memory) is in the uploads measured after it (BENCHMARKS.md, 2026-12-06).
cargo bench -p cas --bench grpc_throughput -- "http://127.0.0.1:$port" loopback
# The server's CPU time and its threads' time runnable but waiting for a core (schedstat),
# over the 256 MiB writes and reads: whether it lacked cores or work.
server_sched() {
    cat /proc/"$server_pid"/task/*/schedstat 2>/dev/null | awk '{c+=$1; w+=$2} END {printf "%d %d\n", c, w}'
}
sched_before=$(server_sched)
cargo bench -p cas --bench grpc_throughput -- "http://127.0.0.1:$port" bytestream
sched_after=$(server_sched)
echo "$sched_before $sched_after" | awk '{
    printf "RESULT server_cpu_bytestream %.2f s\n", ($3 - $1) / 1e9
    printf "RESULT server_runqueue_wait_bytestream %.2f s\n", ($4 - $2) / 1e9 }'
cargo bench -p cas --bench grpc_throughput -- "http://127.0.0.1:$port" find_missing batch_update
echo "RESULT page_cache_write_new_256mib_file_after $(page_cache_write b) MB/s"
rss_before=$(tail -1 "$work/rss.log" | awk '{print $2}')
start=$(date +%s.%N)
cargo bench -p cas --bench grpc_throughput -- "http://127.0.0.1:$port" stream_2gib
end=$(date +%s.%N)
peak=$(awk -v s="$start" -v e="$end" '$1>=s && $1<=e && $2>m {m=$2} END {print m}' "$work/rss.log")
echo "RESULT server_rss_before_2gib $((rss_before / 1024)) MiB"
echo "RESULT server_rss_peak_during_2gib $((peak / 1024)) MiB"
