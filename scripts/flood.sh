#!/usr/bin/env bash
# make bench-flood: ../shared/bench/flood.sh against attitude (release) with deploy/bench/flood.toml,
# attacker in hold and slow modes, 1000 connections (above the per-client cap of 50), REPS
# repetitions (default 5) alternating the modes (MODES, default "hold slow"), CONFIG to try
# another configuration (several files: comma-separated), REDIS=1 to keep the limits in a Redis
# of its own (deploy/bench/parts/state-redis.toml); prints each run and the median retained
# goodput.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-5}
MODES=${MODES:-hold slow}
CONFIG=${CONFIG:-deploy/bench/flood.toml}
REDIS=${REDIS:-0}
mkdir -p "$STATE"
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
if [ "$REDIS" = 1 ]; then
    bash scripts/bench-redis.sh start 12379
    CONFIG="$CONFIG,deploy/bench/parts/state-redis.toml"
fi
IFS=, read -ra files <<<"$CONFIG"
args=()
for f in "${files[@]}"; do args+=(--config "$f"); done
target/release/attitude serve "${args[@]}" >"$STATE/attitude-flood.out" 2>"$STATE/attitude-flood.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; bash "$BENCH/backends.sh" stop 2 12525 >/dev/null; [ "$REDIS" = 1 ] && bash scripts/bench-redis.sh stop 12379' EXIT
for _ in $(seq 50); do grep -q '^listening' "$STATE/attitude-flood.out" 2>/dev/null && break; sleep 0.1; done
: >"$STATE/attitude-flood-all.txt"
for rep in $(seq "$REPS"); do
    for mode in $MODES; do
        bash "$BENCH/flood.sh" run 127.0.0.1:12800 --attack-conns=1000 --mode=$mode --label=attitude-$mode "$@" |
            grep -E '^(FLOOD|RESULT label=attack)' | tee -a "$STATE/attitude-flood-all.txt"
    done
done
echo "attitude counters after the runs:"
curl -s http://127.0.0.1:12899/metrics | grep -E '^attitude_(sessions_ended_total\{result="refused"|tarpit_(held|over_budget)_total\{stage="refusal")' || true
for mode in $MODES; do
    grep "^FLOOD attitude-$mode:" "$STATE/attitude-flood-all.txt" | sed 's/.*retained=\([0-9]*\)%/\1/' | sort -n |
        awk -v m=$mode '{v[NR]=$1} END{printf "MEDIAN %s: retained %d%% over %d runs (min %d%%, max %d%%)\n", m, v[int((NR+1)/2)], NR, v[1], v[NR]}'
done
