#!/usr/bin/env bash
# make bench (BDAT row): 100 KB messages in BDAT chunks, many per session (bdat_source, the
# project's bounded BDAT client: smtp-source speaks only DATA), sent straight to a private
# Postfix (discard transport) and through attitude (release, one worker) to it, interleaved
# REPS times (default 3); then the same messages with DATA through both, for scale. Postfix's
# own SMTP client has no BDAT, so it cannot be the load here. Loopback only; everything
# started here is stopped by PID.
#   scripts/bdat-bench.sh [ATTITUDE_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${BENCH_STATE:-/tmp/smtp-bench}
REPS=${REPS:-3}
MESSAGES=${MESSAGES:-3000}
SESSIONS=${SESSIONS:-10}
PF_PORT=${PF_PORT:-12950}
ATT_PORT=${ATT_PORT:-12951}
mkdir -p "$STATE/results"
cargo build --release --locked -p attitude
cargo build --release --locked -p attitude-test-support --example bdat_source
BIN=${1:-target/release/attitude}
SOURCE=target/release/examples/bdat_source

pf=$(mktemp -d "$STATE/postfix-bdat-XXXX")
chmod 755 "$pf"   # the mail owner walks into data/
mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
chown postfix "$pf/data"
cat >"$pf/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
myhostname = postfix-bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
default_transport = discard
relay_transport = discard
alias_maps =
alias_database =
maillog_file_prefixes = $pf
maillog_file = $pf/maillog
message_size_limit = 0
CF
cat >"$pf/etc/master.cf" <<CF
127.0.0.1:$PF_PORT inet n - n - 200 smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000 0 flush
proxymap unix - - n - - proxymap
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
discard unix - - n - - discard
error unix - - n - - error
retry unix - - n - - error
postlog unix-dgram n - n - 1 postlogd
CF
config=$(mktemp "$STATE/bdat-XXXX.toml")
cat >"$config" <<CF
workers = 1
[connections]
max_sessions = 20000
[backend]
servers = ["127.0.0.1:$PF_PORT"]
CF
att=""
cleanup() {
    [ -n "$att" ] && { kill "$att" 2>/dev/null || true; wait "$att" 2>/dev/null || true; }
    master=$(cat "$pf/queue/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
    [ -n "$master" ] && kill "$master" 2>/dev/null || true
    rm -f "$config"
}
trap cleanup EXIT
/usr/sbin/postfix -c "$pf/etc" start >/dev/null 2>&1
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null && break; sleep 0.1; done
ATTITUDE_ADMIN=off "$BIN" serve --config "$config" --listen "127.0.0.1:$ATT_PORT" \
    >"$STATE/bdat-attitude.out" 2>"$STATE/bdat-attitude.log" &
att=$!
for _ in $(seq 100); do grep -q '^listening' "$STATE/bdat-attitude.out" 2>/dev/null && break; sleep 0.1; done

out="$STATE/results/bdat.txt"
: >"$out"
"$SOURCE" "127.0.0.1:$PF_PORT" --sessions 2 --messages 100 >/dev/null   # warm-up
for rep in $(seq "$REPS"); do
    for mode in bdat data; do
        flag=""; [ $mode = data ] && flag=--data
        for target in postfix=$PF_PORT attitude=$ATT_PORT; do
            IFS== read -r name port <<<"$target"
            line=$("$SOURCE" "127.0.0.1:$port" --sessions "$SESSIONS" --messages "$MESSAGES" \
                --size 102400 --chunk 32768 $flag --max-seconds 300)
            echo "$line target=$name rep=$rep" | tee -a "$out"
        done
    done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(w.split("=", 1) for w in line.split()[1:])
    rows.setdefault((kv["mode"], kv["target"]), []).append(float(kv["msgs_per_s"]))
print("| 100 KB, 10 sessions, many messages each | msgs/s (median) |")
print("|---|---|")
for (mode, target), v in sorted(rows.items()):
    print(f"| {mode.upper()} {'direct to Postfix' if target == 'postfix' else 'through attitude'} | {statistics.median(v):.0f} |")
PY
