#!/usr/bin/env bash
# The heavy-tail scenario: what hedging does to end-to-end latency when the
# first model is usually quick and sometimes very slow. Two `mock` providers
# stand in for two providers of the same model (p50 50 ms, 5% of answers after
# 3 s, independently); tier `bench` falls back to tier `second`. The same
# closed-loop load (bench/closed_loop.py, 16 connections, every request's own
# latency counted once) runs against the chain without hedging and with
# `hedge_after_ms = 150`; the gateway runs unpinned, as a user runs it.
#
#   bench/heavy-tail.sh [SECONDS] [BIN]   prints a TSV row per variant on stdout
#
# bench/run.sh calls it and puts the table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
BIN=${2:-target/release/cascade}
PIN=0
# shellcheck source=bench/lib.sh
. bench/lib.sh
[ -x "$BIN" ] || cargo build --release --locked --bin cascade >&2

tail_config() { # $1 port, $2 extra lines for tier bench
    cat <<TOML
[server]
listen = "127.0.0.1:$1"
[ledger]
path = ""
[policy]
max_total_attempts = 3
[providers.a]
kind = "mock"
latency_ms = 50
slow_rate = 0.05
slow_ms = 3000
[providers.b]
kind = "mock"
latency_ms = 50
slow_rate = 0.05
slow_ms = 3000
[models.m-a]
provider = "a"
model = "m"
[models.m-b]
provider = "b"
model = "m"
[tiers.bench]
models = ["m-a"]
max_retries = 0
fallback = ["second"]
$2
[tiers.second]
models = ["m-b"]
max_retries = 0
TOML
}

printf 'variant\trps\tp50_ms\tp99_ms\thedges_won\thedges_lost\n'
for variant in "no hedging|" "hedge_after_ms = 150|hedge_after_ms = 150"; do
    IFS='|' read -r name extra <<<"$variant"
    port=$(free_port)
    tail_config "$port" "$extra" > "$TMP/tail.toml"
    pid=$(start_gateway "$BIN" "$TMP/tail.toml"); PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/readyz"
    url="http://127.0.0.1:$port/v1/chat/completions"
    python3 bench/closed_loop.py "$url" 16 1 >/dev/null   # warm up
    read -r rps p50 p99 non2xx < <(python3 bench/closed_loop.py "$url" 16 "$DUR")
    [ "$non2xx" = 0 ] || { echo "heavy tail, $name: $non2xx answers were not 2xx" >&2; exit 1; }
    m=$(curl -s "http://127.0.0.1:$port/metrics")
    won=$(echo "$m" | awk '/^cascade_hedges_total\{result="won"/ {print $2}')
    lost=$(echo "$m" | awk '/^cascade_hedges_total\{result="lost"/ {print $2}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "${won:-0}" "${lost:-0}"
    kill "$pid"
done
