#!/usr/bin/env bash
# A/B of two farm-cas binaries on 256 MiB ByteStream writes and reads: alternates them ROUNDS
# times (default 3), each round on a fresh --root in a temp dir and a free loopback port, and
# prints one line per run with cas/benches/grpc_throughput.rs's `bytestream` figures (median
# of 3 blobs each). Build the two binaries first, e.g. from two worktrees:
#   scripts/bench-cas-ab.sh /tmp/farm-cas-old target/release/farm-cas
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: $0 OLD_FARM_CAS NEW_FARM_CAS [ROUNDS]" >&2
    exit 2
fi
old=$1 new=$2 rounds=${3:-3}
cargo bench -p cas --bench grpc_throughput --no-run
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for round in $(seq "$rounds"); do
    for side in old new; do
        bin=$old
        [ "$side" = new ] && bin=$new
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        "$bin" --listen "127.0.0.1:$port" --root "$work/$side-$round" --max-size "8 GiB" >"$work/$side.log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do
            python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
            sleep 0.1
        done
        echo "round $round $side: $(cargo bench -q -p cas --bench grpc_throughput -- "http://127.0.0.1:$port" bytestream | grep '^RESULT' | tr '\n' ' ')"
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
        rm -rf "$work/$side-$round"
    done
done
