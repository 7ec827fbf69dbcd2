#!/usr/bin/env bash
# make bench-milter: what a milter costs, in attitude and in Postfix. Debian's opendkim, signing
# every message for example.com (smtp-source's sender), is asked by attitude ([[milters]], over
# deploy/bench/policies-off.toml, in front of two smtp-sinks) and, as operators run it today, by
# Postfix itself (smtpd_milters; that Postfix queues each message and discards it). Four targets:
# attitude without and with the milter, Postfix without and with it; 1 KB and 100 KB messages
# over 1 session (the latency the milter adds per message) and 10 sessions (throughput), many
# messages per session, REPS times (default 3), the targets alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
STATE=${BENCH_STATE:-/tmp/smtp-bench}/milter
REPS=${REPS:-3}
MILTER=127.0.0.1:12895
stop_postfix() { # DIR: its master, by its pid file
    local pid
    pid=$(cat "$1/spool/pid/master.pid" 2>/dev/null | tr -d ' ') || return 0
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
}
# A run that was cut short may have left its Postfix instances behind.
for dir in "$STATE"/postfix-*; do [ -d "$dir" ] && stop_postfix "$dir"; done
rm -rf "$STATE" && mkdir -p "$STATE"
for tool in /usr/sbin/opendkim /usr/sbin/opendkim-genkey /usr/sbin/postfix; do
    [ -x $tool ] || { echo "$tool is missing: run make deps" >&2; exit 1; }
done
cargo build --release -p attitude
bash "$BENCH/setup.sh" >/dev/null
bash "$BENCH/backends.sh" start 2 12525 >/dev/null

PIDS=()
POSTFIXES=()
cleanup() {
    [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null && wait "${PIDS[@]}" 2>/dev/null
    for dir in "${POSTFIXES[@]}"; do stop_postfix "$dir"; done
    bash "$BENCH/backends.sh" stop 2 12525 >/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

opendkim-genkey -D "$STATE" -d example.com -s bench
cat >"$STATE/opendkim.conf" <<CONF
Mode s
Domain example.com
Selector bench
KeyFile $STATE/bench.private
Socket inet:${MILTER#*:}@${MILTER%:*}
Background no
UserID root
RequireSafeKeys no
InternalHosts 0.0.0.0/0
Canonicalization relaxed/relaxed
Syslog no
PidFile $STATE/opendkim.pid
CONF
/usr/sbin/opendkim -f -x "$STATE/opendkim.conf" >"$STATE/opendkim.log" 2>&1 &
PIDS+=($!)

start() { # NAME PORT [MILTER]
    printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n' "$2" $(($2 + 80)) >"$STATE/$1.toml"
    [ -n "${3:-}" ] && printf '[[milters]]\nname = "opendkim"\naddress = "inet:%s"\n' "$3" >>"$STATE/$1.toml"
    target/release/attitude serve --config deploy/bench/policies-off.toml --config "$STATE/$1.toml" \
        >"$STATE/$1.out" 2>"$STATE/$1.log" &
    PIDS+=($!)
}
postfix_start() { # NAME PORT [MILTER]
    local dir=$STATE/postfix-$1
    mkdir -p "$dir/etc" "$dir/spool" "$dir/data"
    chmod 755 "$dir" "$dir/etc" "$dir/spool"; chown postfix "$dir/data"
    cat >"$dir/etc/main.cf" <<PFX
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
maillog_file_prefixes = $dir
maillog_file = $dir/postfix.log
myhostname = bench-postfix.example.com
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
default_transport = discard
relay_transport = discard
message_size_limit = 104857600
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_milters = ${3:-}
milter_default_action = tempfail
# One probe message is held (not discarded), to show that this Postfix signs.
smtpd_end_of_data_restrictions = check_sender_access inline:{probe@example.com=HOLD}
PFX
    cat >"$dir/etc/master.cf" <<PFX
127.0.0.1:$2 inet n - n - 200 smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
PFX
    postfix -c "$dir/etc" start >/dev/null 2>&1 </dev/null
    POSTFIXES+=("$dir")
}
start off 12821
start dkim 12822 "$MILTER"
postfix_start off 12823
postfix_start dkim 12824 "inet:$MILTER"
sleep 2
TARGETS="attitude=127.0.0.1:12821 attitude+dkim=127.0.0.1:12822 postfix=127.0.0.1:12823 postfix+dkim=127.0.0.1:12824"
for t in $TARGETS; do
    bash "$BENCH/throughput.sh" --mode=reuse --label=warmup "${t#*=}" 2 50 1024 1 >/dev/null
done

: >"$STATE/milter-cost.txt"
for rep in $(seq "$REPS"); do
    for size in 1024 102400; do
        for sessions in 1 10; do
            msgs=$((sessions == 1 ? 300 : 2000)); [ $size -gt 1024 ] && msgs=$((msgs / 2))
            for t in $TARGETS; do
                bash "$BENCH/throughput.sh" --mode=reuse --timeout=120 \
                    --label="${t%%=*}-$size-s$sessions-$rep" "${t#*=}" "$sessions" $msgs $size 1 |
                    grep '^RESULT' | tee -a "$STATE/milter-cost.txt"
            done
        done
    done
done

# Medians per row; for 1 session, the time per message and what the milter adds to it.
awk "$(<scripts/results.awk)"'
     /^RESULT/ { result(); split(v["label"], l, "-"); row = l[2] "-" l[3]; rows[row] = 1
                 add(x, l[1] SUBSEP row, v["msgs_per_s"]) }
     function m(side) { return median(x, side SUBSEP row) }
     END { for (row in rows) {
             printf "MEDIAN %s msgs/s: attitude=%.0f attitude+dkim=%.0f postfix=%.0f postfix+dkim=%.0f", row,
               m("attitude"), m("attitude+dkim"), m("postfix"), m("postfix+dkim")
             if (row ~ /-s1$/) printf "  milter adds ms/msg: attitude=%.2f postfix=%.2f",
               1000 / m("attitude+dkim") - 1000 / m("attitude"), 1000 / m("postfix+dkim") - 1000 / m("postfix")
             printf "\n" } }' "$STATE/milter-cost.txt" | sort
echo "signed by attitude (opendkim's DKIM-Signature inserted), must equal the messages it accepted:"
curl -s "http://127.0.0.1:12902/metrics" | awk '
    /^attitude_milter_modifications_total.*insert_header/ { signed = $NF }
    /^attitude_messages_total\{outcome="accepted"\}/ { ok = $NF }
    END { printf "  %d accepted, %d signed\n", ok, signed }'
echo "Postfix with the milter signs too: a probe message, held in its queue, has the signature:"
python3 - <<'PY'
import smtplib
with smtplib.SMTP("127.0.0.1", 12824) as s:
    s.sendmail("probe@example.com", ["rcpt@example.com"],
               "From: <probe@example.com>\r\nTo: <rcpt@example.com>\r\nSubject: probe\r\n\r\nprobe\r\n")
PY
sleep 1
for file in "$STATE"/postfix-dkim/spool/hold/*; do
    postcat -c "$STATE/postfix-dkim/etc" -h "$file" | grep -c '^DKIM-Signature:' | sed 's/^/  DKIM-Signature headers: /'
done
