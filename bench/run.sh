#!/usr/bin/env bash
# Cascade's benchmark: one command, one run, every target measured back to back
# on this machine, results written to docs/benchmarks.md.
#
#   bench/run.sh            full run (~5 min once tools are installed)
#   bench/run.sh --smoke    a few seconds per target, no thresholds (CI)
#   bench/run.sh --peers    also LiteLLM proxy and the Portkey gateway (installs them)
#   bench/run.sh --no-pin   do not pin processes to cores (see below)
#
# On a machine with 2+ cores the target under test (nginx-as-proxy, Cascade, a
# peer) runs pinned to one core (taskset) and the load generator and the
# upstream to another, so the target's tail latency is its own and not time
# spent waiting for a core that wrk holds. --no-pin lets the scheduler decide.
#
# Targets: direct to the upstream (nginx returning a fixed completion), through
# Cascade (one tier), through Cascade with a fallback on every request (first
# tier answers 503, max_retries = 0, breaker off), through nginx as a plain
# reverse proxy (the practical floor for any proxy), and with --peers LiteLLM and
# Portkey against the same upstream. Gateways are compared per CPU core of the
# gateway process (CPU time read from /proc), since at high concurrency the load
# generator itself takes a core.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
PEERS=0
PIN=1
for a in "$@"; do
    case "$a" in
        --smoke) MODE=smoke ;;
        --peers) PEERS=1 ;;
        --no-pin) PIN=0 ;;
        *) echo "usage: bench/run.sh [--smoke] [--peers] [--no-pin]" >&2; exit 2 ;;
    esac
done
[ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null || PIN=0
# on_load / on_target: run a command on the load generator's core or the target's
on_load() { if [ "$PIN" = 1 ]; then taskset -c 0 "$@"; else "$@"; fi; }
on_target() { if [ "$PIN" = 1 ]; then taskset -c 1 "$@"; else "$@"; fi; }
if [ "$MODE" = smoke ]; then DUR=2; else DUR=15; fi

OUT=bench/out
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for n in upstream proxy; do [ -f "$TMP/$n.pid" ] && kill "$(cat "$TMP/$n.pid")" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

say() { printf '==> %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------
need_apt() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
    fi
}
need_apt wrk nginx-light
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

say "cargo build --release --locked (the gateway and bench/streams.rs)"
cargo build --release --locked --bin cascade --example streams >&2
BIN=$ROOT/target/release/cascade

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PROXY=$(free_port); GW1=$(free_port); GW2=$(free_port)

# --- the upstream and the reference proxy: two nginx instances ---------------------
# Separate processes, so the proxy's CPU time is the proxy's alone.
COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a short benchmark answer."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23}}'
nginx_conf() { # $1 = name, $2 = server block
    mkdir -p "$TMP/$1"
    cat > "$TMP/$1.conf" <<NGINX
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $TMP/$1;
    proxy_temp_path $TMP/$1;
    keepalive_requests 1000000;
    $2
}
NGINX
}
nginx_conf upstream "server {
        listen 127.0.0.1:$UP backlog=4096;
        location = /v1/chat/completions { default_type application/json; return 200 '$COMPLETION'; }
        location = /fail/v1/chat/completions { default_type application/json; return 503 '{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}'; }
    }"
nginx_conf proxy "upstream llm { server 127.0.0.1:$UP; keepalive 512; }
    server {
        listen 127.0.0.1:$PROXY backlog=4096;
        location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
on_load nginx -c "$TMP/upstream.conf" -p "$TMP"
on_target nginx -c "$TMP/proxy.conf" -p "$TMP"

# --- Cascade configs -----------------------------------------------------------------
gateway_config() { # $1 = listen port, $2 = first tier base URL
cat <<TOML
[server]
listen = "127.0.0.1:$1"
[policy]
max_total_attempts = 3
[circuit_breaker]
failure_threshold = 0
[ledger]
path = ""
[providers.up]
kind = "openai"
base_url = "$2"
auth = "none"
[providers.good]
kind = "openai"
base_url = "http://127.0.0.1:$UP/v1"
auth = "none"
[models.first]
provider = "up"
model = "bench-model"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[models.second]
provider = "good"
model = "bench-model"
[tiers.bench]
models = ["first"]
max_retries = 0
fallback = ["backup"]
[tiers.backup]
models = ["second"]
max_retries = 0
TOML
}
gateway_config "$GW1" "http://127.0.0.1:$UP/v1" > "$TMP/one.toml"
gateway_config "$GW2" "http://127.0.0.1:$UP/fail/v1" > "$TMP/fallback.toml"

start_gateway() { # $1 config -> echoes pid
    RUST_LOG=warn on_target "$BIN" serve --config "$1" >"$TMP/$(basename "$1").log" 2>&1 &
    echo $!
}
wait_http() { # $1 url
    for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "not up: $1" >&2; return 1
}
G1=$(start_gateway "$TMP/one.toml"); PIDS+=("$G1")
G2=$(start_gateway "$TMP/fallback.toml"); PIDS+=("$G2")
wait_http "http://127.0.0.1:$GW1/readyz"; wait_http "http://127.0.0.1:$GW2/readyz"
# prove the fallback target really falls back on every request
hdr=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW2/v1/chat/completions" -H 'content-type: application/json' -d '{"model":"bench","messages":[{"role":"user","content":"x"}]}' | tr -d '\r')
echo "$hdr" | grep -q "x-cascade-chain: bench,backup" || { echo "the fallback target did not fall back: $hdr" >&2; exit 1; }

# --- peers (optional) ---------------------------------------------------------------
PEER_TARGETS=()
if [ "$PEERS" = 1 ]; then
    LL=$(free_port); PK=$(free_port)
    if [ ! -x bench/out/litellm-venv/bin/litellm ]; then
        say "installing litellm[proxy]==1.105.3 into bench/out/litellm-venv"
        python3 -m venv bench/out/litellm-venv
        bench/out/litellm-venv/bin/pip install -q 'litellm[proxy]==1.105.3' >&2
    fi
    cat > "$TMP/litellm.yaml" <<YAML
model_list:
  - model_name: bench
    litellm_params: { model: openai/bench-model, api_base: "http://127.0.0.1:$UP/v1", api_key: "none" }
general_settings: { master_key: sk-bench }
YAML
    LITELLM_MASTER_KEY=sk-bench on_target bench/out/litellm-venv/bin/litellm --config "$TMP/litellm.yaml" --port "$LL" --host 127.0.0.1 >"$TMP/litellm.log" 2>&1 &
    PIDS+=("$!"); LLPID=$!
    if [ ! -f bench/out/portkey/node_modules/@portkey-ai/gateway/build/start-server.js ]; then
        say "installing @portkey-ai/gateway"
        mkdir -p bench/out/portkey && (cd bench/out/portkey && npm install --silent @portkey-ai/gateway >&2)
    fi
    (cd bench/out/portkey/node_modules/@portkey-ai/gateway && exec taskset -c "$( [ "$PIN" = 1 ] && echo 1 || echo 0-$(( $(nproc) - 1 )) )" node build/start-server.js --port="$PK" --headless >"$TMP/portkey.log" 2>&1) &
    PIDS+=("$!"); PKPID=$!
    for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$LL/health/liveliness" && break; sleep 0.1; done
    for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$PK/" && break; sleep 0.1; done
    PEER_TARGETS=("litellm|http://127.0.0.1:$LL/v1/chat/completions|$LLPID|authorization: Bearer sk-bench"
                  "portkey|http://127.0.0.1:$PK/v1/chat/completions|$PKPID|x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$UP/v1|authorization: Bearer none")
fi

# --- measurement helpers ---------------------------------------------------------------
CLK=$(getconf CLK_TCK)
procs() { # a pid and its children (nginx: master + worker)
    echo "$1"; pgrep -P "$1" 2>/dev/null || true
}
cpu_ticks() { # total utime+stime of a process tree
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    local sum=0 p
    for p in $(procs "$1"); do sum=$(( sum + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done
    echo "$sum"
}
mem_kib() { # $1 pid, $2 field: summed over the process tree
    local sum=0 p
    for p in $(procs "$1"); do sum=$(( sum + $(awk -v f="$2" '$1==f":"{print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done
    echo "$sum"
}
rss_kib() { mem_kib "$1" VmRSS; }
hwm_kib() { mem_kib "$1" VmHWM; }
machine_busy() { # % CPU used by everything over 1 s
    local a b; a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) )) total=0
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
    echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
wait_quiet() {
    local busy
    for _ in 1 2 3 4 5; do busy=$(machine_busy); [ "$busy" -le 10 ] && break; done
    echo "$busy"
}
# wrk: prints "rps p50_ms p99_ms"
run_wrk() { # $1 url, $2 connections, $3 seconds, extra header args...
    local url=$1 c=$2 d=$3; shift 3
    local hargs=()
    for h in "$@"; do hargs+=(-H "$h"); done
    local threads=1; [ "$c" -ge 32 ] && threads=2
    on_load wrk -t"$threads" -c"$c" -d"${d}s" --latency -s bench/post.lua "${hargs[@]}" "$url" > "$TMP/wrk.out" 2>&1 || true
    awk '
      function ms(v) { if (v ~ /us$/) { sub(/us$/,"",v); return v/1000 } if (v ~ /ms$/) { sub(/ms$/,"",v); return v+0 } if (v ~ /s$/) { sub(/s$/,"",v); return v*1000 } return v }
      /Requests\/sec/ { rps=$2 }
      /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
      /Non-2xx/ { non2xx=$NF }
      END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, non2xx }' "$TMP/wrk.out"
}

TARGETS=("direct|http://127.0.0.1:$UP/v1/chat/completions||"
         "nginx-proxy|http://127.0.0.1:$PROXY/v1/chat/completions|NGINX_PROXY|"
         "cascade|http://127.0.0.1:$GW1/v1/chat/completions|$G1|"
         "cascade-fallback|http://127.0.0.1:$GW2/v1/chat/completions|$G2|")
TARGETS+=("${PEER_TARGETS[@]}")

RESULTS="$OUT/results.tsv"
printf 'target\tbusy_before_pct\trps_c32\trps_c256\tcpu_s_c32\trps_per_core_c32\tp50_c1_ms\tp99_c1_ms\tp50_c32_ms\tp99_c32_ms\tcpu_s_per_10k\trss_idle_mib\trss_peak_mib\tnon2xx\n' > "$RESULTS"
for t in "${TARGETS[@]}"; do
    IFS='|' read -r name url pid h1 h2 h3 <<<"$t"
    [ "$pid" = NGINX_PROXY ] && pid=$(cat "$TMP/proxy.pid")
    hdrs=(); for h in "$h1" "$h2" "$h3"; do [ -n "$h" ] && hdrs+=("$h"); done
    busy=$(wait_quiet)
    say "$name (machine busy before: ${busy}%)"
    rss_idle=0; [ -n "$pid" ] && rss_idle=$(rss_kib "$pid")
    run_wrk "$url" 4 1 "${hdrs[@]}" >/dev/null            # warm up connections
    read -r _ p50_1 p99_1 e1 < <(run_wrk "$url" 1 "$DUR" "${hdrs[@]}")
    t0=$(cpu_ticks "$pid")
    read -r rps32 p50_32 p99_32 e32 < <(run_wrk "$url" 32 "$DUR" "${hdrs[@]}")
    t1=$(cpu_ticks "$pid")
    read -r rps256 _ _ e256 < <(run_wrk "$url" 256 "$DUR" "${hdrs[@]}")
    cpu32=$(awk -v a="$t0" -v b="$t1" -v k="$CLK" 'BEGIN{printf "%.2f", (b-a)/k}')
    per_core=$(awk -v r="$rps32" -v d="$DUR" -v c="$cpu32" 'BEGIN{ if (c>0) printf "%.0f", r*d/c; else print "-" }')
    per10k=$(awk -v r="$rps32" -v d="$DUR" -v c="$cpu32" 'BEGIN{ if (r>0 && c>0) printf "%.3f", c/(r*d)*10000; else print "-" }')
    rss_peak=0; [ -n "$pid" ] && rss_peak=$(hwm_kib "$pid")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$busy" "$rps32" "$rps256" "$cpu32" "$per_core" \
        "$p50_1" "$p99_1" "$p50_32" "$p99_32" "$per10k" \
        "$(awk -v k="$rss_idle" 'BEGIN{printf "%.1f", k/1024}')" "$(awk -v k="$rss_peak" 'BEGIN{printf "%.1f", k/1024}')" \
        "$((e1 + e32 + e256))" >> "$RESULTS"
done

# --- streaming: many concurrent streams through Cascade ---------------------------------
say "streaming"
"$ROOT/target/release/examples/streams" --gateway-bin "$BIN" --mode "$MODE" > "$OUT/streams.json"

# --- report ------------------------------------------------------------------------------
PY=python3
if [ "$MODE" = full ]; then   # the plot needs matplotlib; the smoke run skips it
    [ -x bench/out/venv/bin/python ] || python3 -m venv bench/out/venv
    bench/out/venv/bin/python -c 'import matplotlib' 2>/dev/null || bench/out/venv/bin/pip install -q --disable-pip-version-check matplotlib >&2 || true
    PY=bench/out/venv/bin/python
fi
$PY bench/report.py --results "$RESULTS" --streams "$OUT/streams.json" --mode "$MODE" \
    --command "bench/run.sh $*" --plot "$OUT/latency.png" --pinned "$PIN" \
    --out "$( [ "$MODE" = smoke ] && echo "$OUT/benchmarks-smoke.md" || echo docs/benchmarks.md )"
