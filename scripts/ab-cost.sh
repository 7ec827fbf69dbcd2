#!/usr/bin/env bash
# What a set of protections costs: two attitude instances (same release build) in front of the
# same two smtp-sinks, ON_CONFIG (listening on 127.0.0.1:12801) and OFF_CONFIG (12802);
# ../shared/bench/throughput.sh alternates between them, 10 sessions, 1 KB messages, one message
# per session and many, REPS repetitions (default 3). Each instance gets a warm-up run first.
#   make bench-limits    = scripts/ab-cost.sh deploy/bench/limits-on.toml deploy/bench/limits-off.toml
#   make bench-policies  = scripts/policies-cost.sh (starts a DNS server, then this)
set -euo pipefail
cd "$(dirname "$0")/.."
ON_CONFIG=${1:?ON_CONFIG}
OFF_CONFIG=${2:?OFF_CONFIG}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
mkdir -p "$STATE"
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
target/release/attitude serve --config "$ON_CONFIG" >"$STATE/on.out" 2>"$STATE/on.log" &
ON=$!
target/release/attitude serve --config "$OFF_CONFIG" >"$STATE/off.out" 2>"$STATE/off.log" &
OFF=$!
trap 'kill $ON $OFF 2>/dev/null; wait $ON $OFF 2>/dev/null; bash "$BENCH/backends.sh" stop 2 12525 >/dev/null' EXIT
sleep 1
for target in 127.0.0.1:12801 127.0.0.1:12802; do
    bash "$BENCH/throughput.sh" --mode=new --label=warmup "$target" 2 20 1024 1 >/dev/null
done
for rep in $(seq "$REPS"); do
    for mode in new reuse; do
        for target in on=127.0.0.1:12801 off=127.0.0.1:12802; do
            msgs=20000; [ $mode = reuse ] && msgs=60000
            bash "$BENCH/throughput.sh" --mode=$mode --label="${target%%=*}-$mode-$rep" "${target#*=}" 10 $msgs 1024 1 | grep '^RESULT'
        done
    done
done
echo "refusals on the ON instance (must be 0 for a fair comparison):"
curl -s http://127.0.0.1:12891/metrics | grep -E '^attitude_policy_decisions_total\{.*action="(reject|defer)"\} [1-9]' || echo "none"
