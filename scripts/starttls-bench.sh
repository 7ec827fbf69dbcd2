#!/usr/bin/env bash
# The STARTTLS row of make bench: 1 KB messages, 10 sessions, many messages per session, each
# session after STARTTLS (scripts/tls_load.py: smtp-source has no TLS), through attitude (TLS at
# attitude, the two smtp-sinks behind it in the clear) and through Postfix's before-queue proxy
# with TLS (../shared/bench/proxies.sh's instance, port 12651, one sink, with smtpd_tls_*
# added), alternating, REPS times (default 3). A throwaway certificate; loopback only; everything
# started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
MESSAGES=${MESSAGES:-5000}
PORT=12801 PFPORT=12651
mkdir -p "$STATE/results" "$STATE/starttls"
cargo build --release -p attitude
dir="$STATE/starttls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
chmod 644 "$dir/tls.key"
printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$dir/tls.crt" "$dir/tls.key" >"$dir/tls.toml"
bash "$BENCH/backends.sh" start 2 12525 >/dev/null
bash "$BENCH/proxies.sh" start postfix $PFPORT 12525 1 >/dev/null
pf="$STATE/postfix-$PFPORT/etc"
postconf -c "$pf" -e "smtpd_tls_cert_file = $dir/tls.crt" "smtpd_tls_key_file = $dir/tls.key" \
    "smtpd_tls_security_level = may" "smtpd_tls_session_cache_database ="
# TLS in Postfix needs its tlsmgr service (entropy, session cache), absent from that master.cf.
postconf -c "$pf" -M "tlsmgr/unix=tlsmgr unix - - n 1000? 1 tlsmgr"
postfix -c "$pf" reload >/dev/null 2>&1
target/release/attitude serve --config deploy/bench/bench.toml --config "$dir/tls.toml" \
    --listen "127.0.0.1:$PORT" --admin 127.0.0.1:12891 >"$dir/attitude.out" 2>"$dir/attitude.log" &
ATT=$!
cleanup() {
    kill $ATT 2>/dev/null && wait $ATT 2>/dev/null
    bash "$BENCH/proxies.sh" stop postfix $PFPORT >/dev/null 2>&1 || true
    bash "$BENCH/backends.sh" stop 2 12525 >/dev/null
}
trap cleanup EXIT
for _ in $(seq 50); do grep -q '^listening' "$dir/attitude.out" 2>/dev/null && break; sleep 0.1; done
sleep 2
out="$STATE/results/starttls.txt"
: >"$out"
for target in attitude=$PORT postfix=$PFPORT; do
    /usr/bin/python3 scripts/tls_load.py 127.0.0.1 "${target#*=}" 10 200 1024 --label warmup >/dev/null
done
for rep in $(seq "$REPS"); do
    for target in attitude=$PORT postfix=$PFPORT; do
        /usr/bin/python3 scripts/tls_load.py 127.0.0.1 "${target#*=}" 10 "$MESSAGES" 1024 \
            --timeout 120 --label "${target%%=*}-$rep" | tee -a "$out"
    done
done
awk "$(<scripts/results.awk)"'
     /^RESULT/ { result(); split(v["label"], l, "-"); add(x, l[1], v["msgs_per_s"]); bad += v["errors"] }
     END { printf "STARTTLS 1 KB, 10 sessions, many per session: attitude %.0f msgs/s, Postfix proxy %.0f, ratio %.2f (errors %d)\n",
             median(x, "attitude"), median(x, "postfix"), median(x, "attitude") / median(x, "postfix"), bad }' "$out" | tee -a "$out"
