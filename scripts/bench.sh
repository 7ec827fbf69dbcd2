#!/usr/bin/env bash
# make bench: attitude (release) in the same interleaved run as direct smtp-sink, HAProxy and
# nginx (the harness in ../shared/bench), then idle memory at 5000 sessions on a fresh process,
# then the BDAT row (scripts/bdat-bench.sh: direct to a Postfix and through attitude to it).
# Loopback only; everything started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
PORT=${ATTITUDE_BENCH_PORT:-12800}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
mkdir -p "$STATE"
[ -x "$BENCH/baselines.sh" ] || [ -f "$BENCH/baselines.sh" ] || { echo "bench: no harness at $BENCH (set BENCH_DIR)"; exit 1; }

cargo build --release -p attitude
bash "$BENCH/setup.sh"

start_attitude() {
    target/release/attitude serve --config deploy/bench/bench.toml --listen "127.0.0.1:$PORT" \
        >"$STATE/attitude.out" 2>"$STATE/attitude.log" &
    ATT_PID=$!
    for _ in $(seq 50); do grep -q '^listening' "$STATE/attitude.out" 2>/dev/null && return; sleep 0.1; done
    echo "bench: attitude did not start"; cat "$STATE/attitude.log"; exit 1
}
stop_attitude() { kill "$ATT_PID" 2>/dev/null || true; wait "$ATT_PID" 2>/dev/null || true; }
trap stop_attitude EXIT

# 1. Throughput (and idle on a warm process), interleaved with direct/haproxy/nginx.
start_attitude
bash "$BENCH/baselines.sh" --target="attitude=127.0.0.1:$PORT=$ATT_PID" "$@"
stop_attitude

# 2. Idle memory on a fresh process (the harness's own note: a warm process reports less).
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
start_attitude
bash "$BENCH/idle_conns.sh" 127.0.0.1 "$PORT" 5000 "$ATT_PID" | tee "$STATE/results/idle-attitude-fresh.txt"
stop_attitude
bash "$BENCH/backends.sh" stop 2 12525 >/dev/null

# 3. BDAT: 100 KB in chunks, direct to a private Postfix and through attitude to it.
bash scripts/bdat-bench.sh
echo "bench: results in $STATE/results/"
