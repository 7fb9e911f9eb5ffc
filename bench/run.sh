#!/usr/bin/env bash
# Cascade's benchmark: one command, one run, every target measured back to back
# on this machine, results written to docs/benchmarks.md.
#
#   bench/run.sh            full run (~12 min once tools are installed)
#   bench/run.sh --smoke    a few seconds per target, no thresholds (CI)
#   bench/run.sh --peers    also LiteLLM proxy and the Portkey gateway (installs them)
#
# Two passes over the same targets. The headline pass runs everything as a user
# runs it: default config, nothing pinned, the scheduler places every process
# (Cascade's `worker_threads = 0` is one worker per core). The second pass pins:
# the target under test (nginx-as-proxy, Cascade, a peer) on CPU 1, so it runs
# one worker, and the load generator and the upstream on CPU 0, so the target's
# tail latency is its own and not time spent waiting for a core that wrk holds;
# for the c=1 runs the load generator and the upstream join the target's core
# (bench/lib.sh says why).
#
# Targets: direct to the upstream (nginx returning a fixed completion), through
# Cascade (one tier), through Cascade with `worker_threads = 1` (headline pass),
# through Cascade with a fallback on every request (first tier answers 503,
# max_retries = 0, breaker off), through nginx as a plain reverse proxy (the
# practical floor for any proxy), and with --peers LiteLLM and Portkey against
# the same upstream; and the same request as a Responses request (POST
# /v1/responses on the one-tier gateway); then streams, the heavy-tail scenario
# (bench/heavy-tail.sh: p50/p99 with and without hedging), tracing and shared
# state. Gateways are compared per CPU core of the gateway process (CPU time
# read from /proc), since at high concurrency the load generator itself takes a core.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
PEERS=0
PIN=0
for a in "$@"; do
    case "$a" in
        --smoke) MODE=smoke ;;
        --peers) PEERS=1 ;;
        *) echo "usage: bench/run.sh [--smoke] [--peers]" >&2; exit 2 ;;
    esac
done
if [ "$MODE" = smoke ]; then DUR=2; else DUR=15; fi
OUT=bench/out
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools


if [ "$MODE" = smoke ]; then
    # the smoke run measures nothing: the gateway and the stream client in
    # the test profile (built already by cargo test; a release build would
    # take minutes on two cores)
    say "cargo build --locked (the gateway and bench/streams.rs, test profile)"
    cargo build --locked --bin cascade --example streams >&2
    STREAMS=$ROOT/target/debug/examples/streams
    BIN=$ROOT/target/debug/cascade
else
    say "cargo build --release --locked (the gateway and bench/streams.rs)"
    cargo build --release --locked --bin cascade --example streams >&2
    STREAMS=$ROOT/target/release/examples/streams
    BIN=$ROOT/target/release/cascade
fi

UP=$(free_port); PROXY=$(free_port); GW1=$(free_port); GW2=$(free_port); GW3=$(free_port)
start_nginx "$UP" "$PROXY"
gateway_config "$GW1" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/one.toml"
gateway_config "$GW2" "http://127.0.0.1:$UP/fail/v1" "$UP" > "$TMP/fallback.toml"
gateway_config "$GW3" "http://127.0.0.1:$UP/v1" "$UP" "worker_threads = 1" > "$TMP/one-worker.toml"

# Cascade's gateways, started afresh for each pass: the worker count follows the
# CPUs the process may use when it starts
G1=; G2=; G3=
start_gateways() {
    local p
    for p in $G1 $G2 $G3; do kill "$p"; while [ -e "/proc/$p" ]; do sleep 0.05; done; done
    G1=$(start_gateway "$BIN" "$TMP/one.toml"); PIDS+=("$G1")
    G2=$(start_gateway "$BIN" "$TMP/fallback.toml"); PIDS+=("$G2")
    G3=$(start_gateway "$BIN" "$TMP/one-worker.toml"); PIDS+=("$G3")
    wait_http "http://127.0.0.1:$GW1/readyz"; wait_http "http://127.0.0.1:$GW2/readyz"; wait_http "http://127.0.0.1:$GW3/readyz"
    # prove the fallback target really falls back on every request
    local hdr
    hdr=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW2/v1/chat/completions" -H 'content-type: application/json' -d '{"model":"bench","messages":[{"role":"user","content":"x"}]}' | tr -d '\r')
    echo "$hdr" | grep -q "x-cascade-chain: bench,backup" || { echo "the fallback target did not fall back: $hdr" >&2; exit 1; }
}
start_gateways

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
    # the local copy of its price list: no network fetch (and retries) at start
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MASTER_KEY=sk-bench taskset -c "$TARGET_CPUS" bench/out/litellm-venv/bin/litellm --config "$TMP/litellm.yaml" --port "$LL" --host 127.0.0.1 >"$TMP/litellm.log" 2>&1 &
    PIDS+=("$!"); LLPID=$!
    if [ ! -f bench/out/portkey/node_modules/@portkey-ai/gateway/build/start-server.js ]; then
        say "installing @portkey-ai/gateway"
        mkdir -p bench/out/portkey && (cd bench/out/portkey && npm install --silent @portkey-ai/gateway >&2)
    fi
    (cd bench/out/portkey/node_modules/@portkey-ai/gateway && exec taskset -c "$TARGET_CPUS" node build/start-server.js --port="$PK" --headless >"$TMP/portkey.log" 2>&1) &
    PIDS+=("$!"); PKPID=$!
    # each peer must answer a real completion before it is measured
    peer_up() { # $1 name, $2 log, $3 url, headers...
        local name=$1 log=$2 url=$3; shift 3
        local hargs=() h
        for h in "$@"; do hargs+=(-H "$h"); done
        for _ in $(seq 1 900); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "${hargs[@]}" -H 'content-type: application/json' \
                 -d '{"model":"bench","messages":[{"role":"user","content":"x"}]}' "$url")" = 200 ] && return 0
            sleep 0.2
        done
        echo "$name did not answer a completion within 180 s; its log:" >&2; tail -30 "$log" >&2; exit 1
    }
    peer_up litellm "$TMP/litellm.log" "http://127.0.0.1:$LL/v1/chat/completions" "authorization: Bearer sk-bench"
    peer_up portkey "$TMP/portkey.log" "http://127.0.0.1:$PK/v1/chat/completions" "x-portkey-provider: openai" \
        "x-portkey-custom-host: http://127.0.0.1:$UP/v1" "authorization: Bearer none"
    PEER_TARGETS=("litellm|http://127.0.0.1:$LL/v1/chat/completions|$LLPID|authorization: Bearer sk-bench"
                  "portkey|http://127.0.0.1:$PK/v1/chat/completions|$PKPID|x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:$UP/v1|authorization: Bearer none")
fi

# every target of one pass -> $1 (a results file)
measure() {
    local results=$1 t name url pid h1 h2 h3 h
    local targets=("direct|http://127.0.0.1:$UP/v1/chat/completions||"
                   "nginx-proxy|http://127.0.0.1:$PROXY/v1/chat/completions|$(cat "$TMP/proxy.pid")|"
                   "cascade|http://127.0.0.1:$GW1/v1/chat/completions|$G1|")
    # worker_threads = 1 beside the default only where the default runs more than one
    [ "$PIN" = 0 ] && targets+=("cascade-1-worker|http://127.0.0.1:$GW3/v1/chat/completions|$G3|")
    targets+=("cascade-fallback|http://127.0.0.1:$GW2/v1/chat/completions|$G2|"
              "cascade-responses|http://127.0.0.1:$GW1/v1/responses|$G1|")
    targets+=("${PEER_TARGETS[@]}")
    printf 'target\tbusy_before_pct\trps_c32\trps_c256\tcpu_s_c32\trps_per_core_c32\tp50_c1_ms\tp99_c1_ms\tp50_c32_ms\tp99_c32_ms\tcpu_s_per_10k\trss_idle_mib\trss_peak_mib\tnon2xx\n' > "$results"
    for t in "${targets[@]}"; do
        IFS='|' read -r name url pid h1 h2 h3 <<<"$t"
        hdrs=(); for h in "$h1" "$h2" "$h3"; do [ -n "$h" ] && hdrs+=("$h"); done
        # the Responses target: the same request as a Responses body
        if [ "$name" = cascade-responses ]; then export WRK_SCRIPT=bench/post-responses.lua; else unset WRK_SCRIPT; fi
        busy=$(wait_quiet)
        say "$name ($( [ "$PIN" = 1 ] && echo pinned || echo unpinned ); machine busy before: ${busy}%)"
        rss_idle=0; [ -n "$pid" ] && rss_idle=$(rss_kib "$pid")
        run_wrk "$url" 4 1 "${hdrs[@]}" >/dev/null            # warm up connections
        read -r _ p50_1 p99_1 e1 < <(run_wrk_c1 "$url" "$DUR" "${hdrs[@]}")
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
            "$((e1 + e32 + e256))" >> "$results"
    done
}

# headline: nothing pinned, as a user runs it
measure "$OUT/results.tsv"
# second table: the target on CPU 1, the load on CPU 0 (the gateways restart so
# they count one CPU; nginx and the peers are moved, thread by thread)
set_pin 1
if [ "$PIN" = 1 ]; then
    repin "$(cat "$TMP/upstream.pid")" "$LOAD_CPUS"
    repin "$(cat "$TMP/proxy.pid")" "$TARGET_CPUS"
    [ "$PEERS" = 1 ] && { repin "$LLPID" "$TARGET_CPUS"; repin "$PKPID" "$TARGET_CPUS"; }
    start_gateways
    measure "$OUT/results-pinned.tsv"
else
    rm -f "$OUT/results-pinned.tsv"   # one core: nothing to pin
fi
# what follows runs unpinned, as the headline does
set_pin 0
repin "$(cat "$TMP/upstream.pid")" "$LOAD_CPUS"

# --- streaming: many concurrent streams through Cascade ---------------------------------
say "streaming"
"$STREAMS" --gateway-bin "$BIN" --mode "$MODE" > "$OUT/streams.json"

# --- heavy tail: end-to-end latency with and without hedging -------------------------------
say "heavy tail"
bench/heavy-tail.sh "$( [ "$MODE" = smoke ] && echo 3 || echo 15 )" "$BIN" > "$OUT/heavy-tail.tsv"

# --- tracing: requests/s with [telemetry] off, on to a live receiver, on to a dead one -----
say "tracing"
bench/tracing.sh "$( [ "$MODE" = smoke ] && echo 2 || echo 15 )" "$BIN" > "$OUT/tracing.tsv"

# --- shared state: one replica with [state] on Redis against local state -----------------
say "shared state"
bench/shared-state.sh "$( [ "$MODE" = smoke ] && echo 2 || echo 15 )" "$BIN" > "$OUT/shared-state.tsv"

# --- report ------------------------------------------------------------------------------
PY=python3
if [ "$MODE" = full ]; then   # the plot needs matplotlib; the smoke run skips it
    [ -x bench/out/venv/bin/python ] || python3 -m venv bench/out/venv
    bench/out/venv/bin/python -c 'import matplotlib' 2>/dev/null || bench/out/venv/bin/pip install -q --disable-pip-version-check matplotlib >&2 || true
    PY=bench/out/venv/bin/python
fi
$PY bench/report.py --results "$OUT/results.tsv" --pinned-results "$OUT/results-pinned.tsv" --streams "$OUT/streams.json" --mode "$MODE" \
    --command "bench/run.sh $*" --plot "$OUT/latency.png" --tail "$OUT/heavy-tail.tsv" --tracing "$OUT/tracing.tsv" --shared "$OUT/shared-state.tsv" \
    --out "$( [ "$MODE" = smoke ] && echo "$OUT/benchmarks-smoke.md" || echo docs/benchmarks.md )"
