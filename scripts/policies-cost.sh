#!/usr/bin/env bash
# make bench-policies: every filtering policy on (deploy/bench/policies-on.toml) against the same
# build with them off (policies-off.toml). DNS (DNSBL, SPF) is answered by the test DNS server
# on 127.0.0.1:12853: the benchmark client 127.0.0.1 is on no list, and example.com (its sender
# domain) has an SPF record that passes it. The greylist starts with 127.0.0.0/24 allowlisted.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${BENCH_STATE:-/tmp/smtp-bench}
mkdir -p "$STATE"
cargo build --release -p attitude-test-support --example dns_server
target/release/examples/dns_server 127.0.0.1:12853 . \
    "example.com.=TXT:v=spf1 ip4:127.0.0.0/8 -all" >"$STATE/dns.out" 2>&1 &
DNS=$!
trap 'kill $DNS 2>/dev/null; wait $DNS 2>/dev/null' EXIT
printf 'C\t127.0.0.0/24\t3\t%d\n' $(( $(date +%s) + 30 * 86400 )) >"$STATE/greylist-bench"
bash scripts/ab-cost.sh deploy/bench/policies-on.toml deploy/bench/policies-off.toml
