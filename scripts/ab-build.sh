#!/usr/bin/env bash
# Two builds of attitude side by side: BASE_BIN (an older release binary, e.g. built from another
# commit with `git worktree add` and its own CARGO_TARGET_DIR) and this tree's release build,
# both with deploy/bench/bench.toml and one worker, in front of the same two smtp-sinks
# (../shared/bench/backends.sh). ../shared/bench/throughput.sh alternates between them, REPS
# times (default 3): 10 sessions, 1 KB (20,000 messages; 60,000 when reused) and 100 KB (2,000;
# 6,000), one message per session (new) and many (reuse). Then the idle memory of each, freshly
# started (../shared/bench/idle_conns.sh, 5000 sessions after EHLO).
#   scripts/ab-build.sh /tmp/base-target/release/attitude
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_BIN=${1:?BASE_BIN (the release binary to compare with)}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
mkdir -p "$STATE"
cargo build --release --locked -p attitude
NEW_BIN=target/release/attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
pids=()
stop() { # PID: SIGTERM, then wait until it is gone (its drain answers 421 meanwhile)
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$1" 2>/dev/null || true
}
cleanup() {
    for pid in "${pids[@]}"; do stop "$pid"; done
    pids=()
    bash "$BENCH/backends.sh" stop 2 12525 >/dev/null
}
trap cleanup EXIT
config=$(mktemp "$STATE/ab-XXXX.toml")
sed 's/^listen = .*/workers = 1/; /^admin = /d' deploy/bench/bench.toml >"$config"
start() { # BIN CONFIG PORT: starts it in this shell; its PID is then in $started
    ATTITUDE_ADMIN=off "$1" serve --config "$2" --listen "127.0.0.1:$3" \
        >"$STATE/ab-$3.out" 2>"$STATE/ab-$3.log" &
    started=$!
    pids+=("$started")
}
start "$BASE_BIN" "$config" 12811; BASE=$started
start "$NEW_BIN" "$config" 12812; NEW=$started
sleep 1
for target in 127.0.0.1:12811 127.0.0.1:12812; do
    bash "$BENCH/throughput.sh" --mode=new --label=warmup "$target" 2 200 1024 1 >/dev/null
done
: >"$STATE/ab-build.txt"
for rep in $(seq "$REPS"); do
    for size in 1024 102400; do
        for mode in new reuse; do
            for target in base=127.0.0.1:12811=$BASE new=127.0.0.1:12812=$NEW; do
                IFS== read -r name addr pid <<<"$target"
                msgs=$((size == 1024 ? 20000 : 2000)); [ $mode = reuse ] && msgs=$((msgs * 3))
                bash "$BENCH/throughput.sh" --mode=$mode --pids="p=$pid" \
                    --label="$name-$((size / 1024))k-$mode-$rep" "$addr" 10 $msgs $size 1 |
                    grep '^RESULT' | tee -a "$STATE/ab-build.txt"
            done
        done
    done
done
# Medians per row: base, new, new/base (msgs/s), and the CPU of each.
awk "$(<scripts/results.awk)"'
     /^RESULT/ { result(); split(v["label"], l, "-"); row = l[2] "-" l[3]; rows[row] = 1
                 add(x, l[1] SUBSEP row, v["msgs_per_s"]); add(c, l[1] SUBSEP row, v["cpu_p_pct"]) }
     function m(a, side) { return median(a, side SUBSEP row) }
     END { for (row in rows) printf "MEDIAN %s base=%.0f new=%.0f ratio=%.2f cpu_base=%s%% cpu_new=%s%%\n", row,
       m(x, "base"), m(x, "new"), m(x, "new") / m(x, "base"), m(c, "base"), m(c, "new") }' "$STATE/ab-build.txt" | sort
# Idle memory: each build freshly started, alone, as `make bench` runs it (bench.toml, one
# worker per CPU).
cleanup
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
for side in base new base new; do
    bin=$BASE_BIN; [ $side = new ] && bin=$NEW_BIN
    start "$bin" deploy/bench/bench.toml 12813
    sleep 1
    bash "$BENCH/idle_conns.sh" 127.0.0.1 12813 5000 "$started" --label="$side" | grep -E "^RESULT"
    stop "$started"
done
