#!/usr/bin/env bash
# Soak (not in CI): 10 minutes at a fixed rate, random upstream faults on the
# first two tiers (errors, 429s, hangs, garbage, resets, bodies past
# max_response_bytes, endless SSE events, error events, cuts before content),
# a healthy last tier, 30% streams. Checks that every request is answered with
# content and that the gateway's RSS and open files at the end are within 10%
# of where they were after a 3-minute warm-up; then a spike of 500 requests at
# once, a minute more at the usual rate, and the memory left. Prints the JSON and keeps it in
# bench/out/soak.json.
#
#   bench/soak.sh                       # 40 req/s, 180 s warm-up, 600 s run
#   bench/soak.sh --rate 100 --duration-s 120
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked --bin cascade --example soak >&2
mkdir -p bench/out
status=0
target/release/examples/soak --gateway-bin target/release/cascade "$@" | tee bench/out/soak.json || status=$?
exit "$status"
