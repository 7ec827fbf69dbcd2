#!/usr/bin/env bash
# make bench-limits: what the whole limit stack costs. Two attitude instances (same release
# build) in front of the same two smtp-sinks, one with every protection on
# (deploy/bench/limits-on.toml, thresholds never reached), one with them off
# (deploy/bench/limits-off.toml); ../shared/bench/throughput.sh alternates between them.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
mkdir -p "$STATE"
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
target/release/attitude serve --config deploy/bench/limits-on.toml >"$STATE/on.out" 2>/dev/null &
ON=$!
target/release/attitude serve --config deploy/bench/limits-off.toml >"$STATE/off.out" 2>/dev/null &
OFF=$!
trap 'kill $ON $OFF 2>/dev/null; wait $ON $OFF 2>/dev/null; bash "$BENCH/backends.sh" stop 2 12525 >/dev/null' EXIT
sleep 1
for rep in $(seq "$REPS"); do
    for mode in new reuse; do
        for target in on=127.0.0.1:12801 off=127.0.0.1:12802; do
            msgs=20000; [ $mode = reuse ] && msgs=60000
            bash "$BENCH/throughput.sh" --mode=$mode --label="${target%%=*}-$mode-$rep" "${target#*=}" 10 $msgs 1024 1 | grep '^RESULT'
        done
    done
done
