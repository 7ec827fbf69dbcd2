#!/usr/bin/env bash
# make bench-scan: what the content scanners cost. Starts the test clamd and rspamd (offline, as
# the tests run them: `attitude-test-support`'s example `engines`), two smtp-sinks, and four
# attitude instances over deploy/bench/policies-off.toml: no scanner, ClamAV, rspamd (headers on,
# so the message is held until the verdict), both. smtp-source sends 1 KB and 100 KB messages
# over 1 session (the added latency per message) and 10 sessions (throughput), REPS times
# (default 3), the four instances alternating. Then the engines alone, over the same messages:
# `clamdscan --stream` and `rspamc` loops (one at a time, and 10 in parallel), so the figures
# show what attitude adds on top of the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}/scan
REPS=${REPS:-3}
mkdir -p "$STATE"
# The engines come with make deps; clamdscan (the engine-alone row) is a package of its own.
if ! command -v clamdscan >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clamdscan >/dev/null
fi
cargo build --release -p attitude
cargo build --release -p attitude-test-support --example engines
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null

PIDS=()
rm -f "$STATE/engines.in"
mkfifo "$STATE/engines.in"
target/release/examples/engines <"$STATE/engines.in" >"$STATE/engines.out" 2>"$STATE/engines.log" &
ENGINES=$!
exec 3>"$STATE/engines.in"
cleanup() {
    [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null && wait "${PIDS[@]}" 2>/dev/null
    exec 3>&-
    wait $ENGINES 2>/dev/null
    bash "$BENCH/backends.sh" stop 2 12525 >/dev/null
}
trap cleanup EXIT
for _ in $(seq 240); do grep -q '^listening' "$STATE/engines.out" && break; sleep 0.5; done
line=$(grep '^listening' "$STATE/engines.out") || { cat "$STATE/engines.log"; exit 1; }
CLAMD=$(sed -n 's/.*clamd=\([^ ]*\).*/\1/p' <<<"$line")
RSPAMD=$(sed -n 's/.*rspamd=\([^ ]*\).*/\1/p' <<<"$line")
echo "engines: clamd $CLAMD, rspamd $RSPAMD"

printf '[clamav]\nenabled = true\naddress = ["%s"]\n' "$CLAMD" >"$STATE/clamav.toml"
printf '[rspamd]\nenabled = true\nurl = "http://%s"\n' "$RSPAMD" >"$STATE/rspamd.toml"
start() { # NAME PORT PARTS...
    local name=$1 port=$2 args=(--config deploy/bench/policies-off.toml --config "$STATE/$1-ports.toml")
    shift 2
    printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n' "$port" $((port + 80)) >"$STATE/$name-ports.toml"
    for part in "$@"; do args+=(--config "$STATE/$part.toml"); done
    target/release/attitude serve "${args[@]}" >"$STATE/$name.out" 2>"$STATE/$name.log" &
    PIDS+=($!)
}
start off 12811
start clamav 12812 clamav
start rspamd 12813 rspamd
start both 12814 clamav rspamd
sleep 1
TARGETS="off=127.0.0.1:12811 clamav=127.0.0.1:12812 rspamd=127.0.0.1:12813 both=127.0.0.1:12814"
for t in $TARGETS; do
    bash "$BENCH/throughput.sh" --mode=reuse --label=warmup "${t#*=}" 2 50 1024 1 >/dev/null
done

: >"$STATE/scan-cost.txt"
for rep in $(seq "$REPS"); do
    for size in 1024 102400; do
        for sessions in 1 10; do
            msgs=$((sessions == 1 ? 300 : 2000)); [ $size -gt 1024 ] && msgs=$((msgs / 2))
            for t in $TARGETS; do
                bash "$BENCH/throughput.sh" --mode=reuse --timeout=120 \
                    --label="${t%%=*}-$size-s$sessions-$rep" "${t#*=}" "$sessions" $msgs $size 1 |
                    grep '^RESULT' | tee -a "$STATE/scan-cost.txt"
            done
        done
    done
done

# The engines alone, over messages of the same sizes (headers and X lines, as smtp-source's).
printf 'TCPSocket %s\nTCPAddr %s\n' "${CLAMD##*:}" "${CLAMD%:*}" >"$STATE/clamdscan.conf"
for size in 1024 102400; do
    dir="$STATE/messages-$size"
    rm -rf "$dir" && mkdir -p "$dir"
    python3 - "$dir" "$size" <<'EOF'
import sys
dir, size = sys.argv[1], int(sys.argv[2])
body = ("X" * 78 + "\r\n") * (size // 80) + "X" * (size % 80) + "\r\n"
for i in range(200):
    with open(f"{dir}/{i}.eml", "w", newline="") as f:
        f.write(f"From: <foo@example.com>\r\nTo: <bar@example.com>\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
                f"Message-Id: <{i}.bench@example.com>\r\nSubject: bench {i}\r\n\r\n{body}")
EOF
    for kind in clamdscan rspamc-1 rspamc-10; do
        t0=$(date +%s.%N)
        case $kind in
            clamdscan) clamdscan --stream --no-summary --config-file="$STATE/clamdscan.conf" "$dir"/*.eml >/dev/null ;;
            rspamc-1) rspamc -h "$RSPAMD" -n 1 "$dir"/*.eml >/dev/null ;;
            rspamc-10) rspamc -h "$RSPAMD" -n 10 "$dir"/*.eml >/dev/null ;;
        esac
        t1=$(date +%s.%N)
        awk -v k=$kind -v s=$size -v a="$t0" -v b="$t1" 'BEGIN { printf "ENGINE %s size=%d msgs_per_s=%.0f ms_per_msg=%.2f\n", k, s, 200 / (b - a), (b - a) * 1000 / 200 }' |
            tee -a "$STATE/scan-cost.txt"
    done
done

# Medians per row; for 1 session, the time per message and what each scanner adds to it.
awk "$(<scripts/results.awk)"'
     /^RESULT/ { result(); split(v["label"], l, "-"); row = l[2] "-" l[3]; rows[row] = 1
                 add(x, l[1] SUBSEP row, v["msgs_per_s"]) }
     function m(side) { return median(x, side SUBSEP row) }
     END { for (row in rows) {
             off = m("off")
             printf "MEDIAN %s msgs/s: off=%.0f clamav=%.0f rspamd=%.0f both=%.0f", row, off, m("clamav"), m("rspamd"), m("both")
             if (row ~ /-s1$/) printf "  added ms/msg: clamav=%.2f rspamd=%.2f both=%.2f", 1000 / m("clamav") - 1000 / off, 1000 / m("rspamd") - 1000 / off, 1000 / m("both") - 1000 / off
             printf "\n" } }' "$STATE/scan-cost.txt" | sort
echo "refused or unscanned on the scanning instances (must be 0 for a fair comparison):"
for port in 12892 12893 12894; do
    curl -s "http://127.0.0.1:$port/metrics" | awk -v p=$port '
        /^attitude_scans_total/ && $0 !~ /result="(clean|no_action)"/ { bad += $NF }
        /^attitude_messages_total\{outcome="accepted"\}/ { ok = $NF }
        END { printf "  admin %s: %d accepted, %d not clean or not scanned\n", p, ok, bad }'
done
