#!/usr/bin/env bash
# CPU per request, split into user and kernel time, for Cascade and for nginx
# as a plain reverse proxy: where a gap to nginx is (our code, or the kernel's
# share of moving the bytes). Pinned as bench/run.sh pins; c=32 for 8 s each.
#
#   bench/cpu.sh [BINARY]      (default target/release/cascade)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/cascade}")
PIN=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools
UP=$(free_port); GW=$(free_port); PROXY=$(free_port)
start_nginx "$UP" "$PROXY"
gateway_config "$GW" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/one.toml"
G=$(start_gateway "$BIN" "$TMP/one.toml"); PIDS+=("$G")
wait_http "http://127.0.0.1:$GW/readyz"
printf 'target\treq_s\tuser_us_per_req\tkernel_us_per_req\tminor_faults_per_1k_req\n'
for t in "cascade|$G|http://127.0.0.1:$GW/v1/chat/completions" \
         "nginx-proxy|$(cat "$TMP/proxy.pid")|http://127.0.0.1:$PROXY/v1/chat/completions"; do
    IFS='|' read -r name pid url <<<"$t"
    wait_quiet >/dev/null
    run_wrk "$url" 4 1 >/dev/null
    read -r u0 s0 f0 < <(stat_sums "$pid" 14 15 10)   # utime, stime, minor faults
    read -r rps _ _ _ < <(run_wrk "$url" 32 8)
    read -r u1 s1 f1 < <(stat_sums "$pid" 14 15 10)
    awk -v n="$name" -v r="$rps" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v f="$((f1 - f0))" -v k="$CLK" \
        'BEGIN { q = r * 8; printf "%s\t%d\t%.2f\t%.2f\t%.2f\n", n, r, u / k / q * 1e6, s / k / q * 1e6, f / q * 1000 }'
done
