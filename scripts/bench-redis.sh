#!/usr/bin/env bash
# A throwaway redis-server for the benchmarks (no persistence, loopback only):
#   scripts/bench-redis.sh start [PORT]   (default 12379; waits until it answers PING)
#   scripts/bench-redis.sh stop [PORT]    (stops the one this script started, by its PID)
set -euo pipefail
PORT=${2:-12379}
STATE=${BENCH_STATE:-/tmp/smtp-bench}
PIDFILE="$STATE/redis-$PORT.pid"
mkdir -p "$STATE"
case "${1:?start|stop}" in
start)
    /usr/bin/redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$STATE" >"$STATE/redis-$PORT.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 50); do
        /usr/bin/redis-cli -p "$PORT" PING 2>/dev/null | grep -q PONG && exit 0
        sleep 0.1
    done
    echo "redis-server on $PORT did not start; see $STATE/redis-$PORT.log" >&2
    exit 1
    ;;
stop)
    [ -f "$PIDFILE" ] || exit 0
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$PIDFILE"
    ;;
esac
