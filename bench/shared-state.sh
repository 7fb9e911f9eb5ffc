#!/usr/bin/env bash
# What sharing state through Redis costs one replica: the one-tier benchmark
# gateway (nginx upstream, fixed answer, a priced model, a daily budget and a
# SQLite ledger, so every request spends) with `[state] backend = "local"`
# and with `"redis"` (a redis-server on a free loopback port). wrk at 32
# connections (requests/s, gateway CPU per request) and at 1 (p50); the
# gateway unpinned.
#
#   bench/shared-state.sh [SECONDS] [BIN]   prints a TSV row per variant on stdout
#
# bench/run.sh calls it and puts the table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
BIN=${2:-target/release/cascade}
PIN=0
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools
command -v redis-server >/dev/null 2>&1 || need_apt redis-server
[ -x "$BIN" ] || cargo build --release --locked --bin cascade >&2

UP=$(free_port)
start_nginx "$UP"
REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$REDIS" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

printf 'variant\trps_c32\tcpu_s\trps_per_core\tp50_c1_ms\tnon2xx\n'
for variant in local redis; do
    port=$(free_port)
    gateway_config "$port" "http://127.0.0.1:$UP/v1" "$UP" \
        | sed "s|^path = \"\"|path = \"$TMP/ledger-$variant.db\"|" > "$TMP/state.toml"
    printf '[budget]\ndaily_usd = 1000000.0\n' >> "$TMP/state.toml"
    if [ "$variant" = redis ]; then
        printf '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s/0"\n' "$REDIS" >> "$TMP/state.toml"
    fi
    pid=$(start_gateway "$BIN" "$TMP/state.toml"); PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/readyz"
    if [ "$variant" = redis ]; then
        for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$port/metrics" | grep -q '^cascade_shared_state_up 1' && break; sleep 0.05; done
    fi
    url="http://127.0.0.1:$port/v1/chat/completions"
    run_wrk "$url" 32 1 >/dev/null   # warm up
    t0=$(cpu_ticks "$pid")
    read -r rps _ _ non2xx < <(run_wrk "$url" 32 "$DUR")
    t1=$(cpu_ticks "$pid")
    cpu=$(awk -v a="$t0" -v b="$t1" -v k="$CLK" 'BEGIN{printf "%.2f", (b-a)/k}')
    per_core=$(awk -v r="$rps" -v d="$DUR" -v c="$cpu" 'BEGIN{ if (c>0) printf "%.0f", r*d/c; else print "-" }')
    read -r _ p50 _ _ < <(run_wrk "$url" 1 "$DUR")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$rps" "$cpu" "$per_core" "$p50" "$non2xx"
    kill "$pid"
done
