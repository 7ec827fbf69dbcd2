#!/usr/bin/env bash
# The Redis row of make bench-limits: the limit stack with the fleet's state in Redis against
# the same limits in the process, same build, same run (scripts/ab-cost.sh), and the Redis
# round trips per message. Starts and stops its own Redis on 127.0.0.1:12379.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bench-redis.sh start 12379
trap 'bash scripts/bench-redis.sh stop 12379' EXIT
bash scripts/ab-cost.sh deploy/bench/limits-on.toml,deploy/bench/parts/state-redis.toml \
    deploy/bench/limits-on.toml,deploy/bench/parts/off-ports.toml
