#!/usr/bin/env bash
# make bench: attitude (release) in the same interleaved run as direct smtp-sink, HAProxy and
# nginx (the harness in ../shared/bench), then idle memory on a fresh process (5000 plain
# sessions, 2000 after STARTTLS; each checked against a bound: IDLE_PLAIN_MAX, IDLE_TLS_MAX KiB),
# then the BDAT row (scripts/bdat-bench.sh: direct to a Postfix and through attitude to it), the
# STARTTLS row (scripts/starttls-bench.sh: attitude and Postfix's proxy with TLS), and charts.
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

# 2. Idle memory on a fresh process (the harness's own note: a warm process reports less):
# 5000 plain sessions after EHLO, then 2000 after STARTTLS and a second EHLO (a throwaway
# certificate), each checked against its bound so that a regression fails the run.
IDLE_PLAIN_MAX=${IDLE_PLAIN_MAX:-3.0}
IDLE_TLS_MAX=${IDLE_TLS_MAX:-11.0}
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
start_attitude
bash "$BENCH/idle_conns.sh" 127.0.0.1 "$PORT" 5000 "$ATT_PID" | tee "$STATE/results/idle-attitude-fresh.txt"
stop_attitude
tls_dir="$STATE/idle-tls"
mkdir -p "$tls_dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$tls_dir/tls.key" -out "$tls_dir/tls.crt" 2>/dev/null
printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$tls_dir/tls.crt" "$tls_dir/tls.key" >"$tls_dir/tls.toml"
target/release/attitude serve --config deploy/bench/bench.toml --config "$tls_dir/tls.toml" \
    --listen "127.0.0.1:$PORT" >"$STATE/attitude.out" 2>"$STATE/attitude.log" &
ATT_PID=$!
for _ in $(seq 50); do grep -q '^listening' "$STATE/attitude.out" 2>/dev/null && break; sleep 0.1; done
(ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
 timeout 150 /usr/bin/python3 "$BENCH/smtp_idle.py" 127.0.0.1 "$PORT" 2000 "$ATT_PID" --hold 3 \
     --starttls --label idle-attitude-starttls) | tee "$STATE/results/idle-attitude-starttls.txt"
stop_attitude
bash "$BENCH/backends.sh" stop 2 12525 >/dev/null
check_idle() { # FILE BOUND NAME
    awk -v max="$2" -v name="$3" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END { ok = v["kib_per_conn"] <= max; printf "IDLE CHECK %s: %.2f KiB per session (bound %s): %s\n", name, v["kib_per_conn"], max, ok ? "ok" : "REGRESSION"; exit !ok }' "$1"
}
check_idle "$STATE/results/idle-attitude-fresh.txt" "$IDLE_PLAIN_MAX" plain
check_idle "$STATE/results/idle-attitude-starttls.txt" "$IDLE_TLS_MAX" starttls

# 3. BDAT: 100 KB in chunks, direct to a private Postfix and through attitude to it.
bash scripts/bdat-bench.sh
# 3b. STARTTLS: 1 KB, 10 sessions, many per session, through attitude and Postfix's proxy with TLS.
bash scripts/starttls-bench.sh

# 4. Charts of this run (SVG, Debian's python3-matplotlib): throughput, CPU per message, idle.
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
fi
raw=$(ls -t "$STATE"/results/baselines-*.raw.txt | head -1)
/usr/bin/python3 scripts/plots.py --out "$STATE/results/plots" --baselines "$raw" \
    --idle "$STATE/results/idle-attitude-fresh.txt" --idle "$STATE/results/idle-attitude-starttls.txt"
echo "bench: results in $STATE/results/ (copy plots/ to docs/bench/plots/ to update the README's)"
