#!/usr/bin/env bash
# make bench-flood: ../shared/bench/flood.sh against attitude (release) with deploy/bench/flood.toml,
# attacker in hold and slow modes, 1000 connections (above the per-client cap of 50).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
mkdir -p "$STATE"
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
target/release/attitude serve --config deploy/bench/flood.toml >"$STATE/attitude-flood.out" 2>"$STATE/attitude-flood.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; bash "$BENCH/backends.sh" stop 2 12525 >/dev/null' EXIT
for _ in $(seq 50); do grep -q '^listening' "$STATE/attitude-flood.out" 2>/dev/null && break; sleep 0.1; done
for mode in hold slow; do
    bash "$BENCH/flood.sh" run 127.0.0.1:12800 --attack-conns=1000 --mode=$mode --label=attitude-$mode "$@"
done
