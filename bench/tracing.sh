#!/usr/bin/env bash
# What tracing costs: the one-tier benchmark gateway (nginx upstream, fixed
# answer) with `[telemetry]` off, on to a live OTLP/HTTP receiver at full
# sampling (the upstream nginx also takes POST /v1/traces), and on to a dead
# endpoint (a port nothing listens on). wrk at 32 connections; the gateway
# unpinned; requests/s, the gateway's CPU per request, spans dropped.
#
#   bench/tracing.sh [SECONDS] [BIN]   prints a TSV row per variant on stdout
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
[ -x "$BIN" ] || cargo build --release --locked --bin cascade >&2

UP=$(free_port); DEAD=$(free_port)
start_nginx "$UP"
printf 'variant\trps_c32\tcpu_s\trps_per_core\tspans_dropped\tnon2xx\n'
for variant in "off|" "live receiver, sample_ratio 1.0|http://127.0.0.1:$UP" "dead endpoint|http://127.0.0.1:$DEAD"; do
    IFS='|' read -r name endpoint <<<"$variant"
    port=$(free_port)
    gateway_config "$port" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/tracing.toml"
    if [ -n "$endpoint" ]; then
        printf '[telemetry]\notlp_endpoint = "%s"\nsample_ratio = 1.0\n' "$endpoint" >> "$TMP/tracing.toml"
    fi
    pid=$(start_gateway "$BIN" "$TMP/tracing.toml"); PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/readyz"
    url="http://127.0.0.1:$port/v1/chat/completions"
    run_wrk "$url" 32 1 >/dev/null   # warm up
    t0=$(cpu_ticks "$pid")
    read -r rps _ _ non2xx < <(run_wrk "$url" 32 "$DUR")
    t1=$(cpu_ticks "$pid")
    cpu=$(awk -v a="$t0" -v b="$t1" -v k="$CLK" 'BEGIN{printf "%.2f", (b-a)/k}')
    per_core=$(awk -v r="$rps" -v d="$DUR" -v c="$cpu" 'BEGIN{ if (c>0) printf "%.0f", r*d/c; else print "-" }')
    dropped=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^cascade_spans_dropped_total / {print $2}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$cpu" "$per_core" "${dropped:-0}" "$non2xx"
    kill "$pid"
done
