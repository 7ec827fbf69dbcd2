#!/usr/bin/env bash
# What a set of protections costs: two attitude instances (same release build) in front of the
# same two smtp-sinks, ON_CONFIG (listening on 127.0.0.1:12801) and OFF_CONFIG (12802);
# ../shared/bench/throughput.sh alternates between them: 1 KB messages, SESSIONS parallel
# sessions (default "10"; "1 10 100" gives the 1 KB rows of baselines.sh), one message per session
# and many, REPS repetitions (default 3). Each instance gets a warm-up run first.
#   make bench-limits    = scripts/ab-cost.sh deploy/bench/limits-on.toml deploy/bench/limits-off.toml
#   make bench-policies  = scripts/policies-cost.sh (starts a DNS server, then this)
#   the Redis row         = scripts/fleet-cost.sh (starts a Redis, then this)
# A configuration may be several files, comma-separated (merged in order, as `--config` does).
set -euo pipefail
cd "$(dirname "$0")/.."
ON_CONFIG=${1:?ON_CONFIG}
OFF_CONFIG=${2:?OFF_CONFIG}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
SESSIONS=${SESSIONS:-10}
mkdir -p "$STATE"
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
configs() { local f; IFS=, read -ra files <<<"$1"; for f in "${files[@]}"; do printf -- '--config\n%s\n' "$f"; done; }
mapfile -t on_args < <(configs "$ON_CONFIG")
mapfile -t off_args < <(configs "$OFF_CONFIG")
target/release/attitude serve "${on_args[@]}" >"$STATE/on.out" 2>"$STATE/on.log" &
ON=$!
target/release/attitude serve "${off_args[@]}" >"$STATE/off.out" 2>"$STATE/off.log" &
OFF=$!
trap 'kill $ON $OFF 2>/dev/null; wait $ON $OFF 2>/dev/null; bash "$BENCH/backends.sh" stop 2 12525 >/dev/null' EXIT
sleep 1
for target in 127.0.0.1:12801 127.0.0.1:12802; do
    bash "$BENCH/throughput.sh" --mode=new --label=warmup "$target" 2 20 1024 1 >/dev/null
done
: >"$STATE/ab-cost.txt"
for rep in $(seq "$REPS"); do
    for sessions in $SESSIONS; do
        for mode in new reuse; do
            for target in on=127.0.0.1:12801 off=127.0.0.1:12802; do
                msgs=$((sessions == 1 ? 5000 : 20000)); [ $mode = reuse ] && msgs=$((msgs * 3))
                bash "$BENCH/throughput.sh" --mode=$mode --label="${target%%=*}-s$sessions-$mode-$rep" \
                    "${target#*=}" "$sessions" $msgs 1024 1 | grep '^RESULT' | tee -a "$STATE/ab-cost.txt"
            done
        done
    done
done
# Medians per row: on, off, on/off.
awk "$(<scripts/results.awk)"'
     /^RESULT/ { result(); split(v["label"], l, "-"); row = l[2] "-" l[3]; rows[row] = 1
                 add(x, l[1] SUBSEP row, v["msgs_per_s"]) }
     function m(side) { return median(x, side SUBSEP row) }
     END { for (row in rows) printf "MEDIAN %s on=%.0f off=%.0f ratio=%.2f\n", row, m("on"), m("off"), m("on") / m("off") }' \
    "$STATE/ab-cost.txt"
# With the fleet's state on: Redis round trips per message (every operation, warm-up included).
curl -s http://127.0.0.1:12891/metrics | awk '
    /^attitude_state_operations_total/ { ops += $NF; if ($0 ~ /result="ok"/) ok += $NF }
    /^attitude_messages_total\{outcome="accepted"\}/ { msgs += $NF }
    END { if (ops > 0) printf "REDIS round trips per message: %.2f (%d operations, %d ok, %d messages)\n", ops / msgs, ops, ok, msgs }'
echo "refusals on the ON instance (must be 0 for a fair comparison):"
curl -s http://127.0.0.1:12891/metrics | grep -E '^attitude_policy_decisions_total\{.*action="(reject|defer)"\} [1-9]' || echo "none"
