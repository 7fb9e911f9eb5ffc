# Shared by bench/run.sh and bench/ab.sh (sourced, from the repository root):
# pinning, the nginx upstream and reference proxy, Cascade's bench config, wrk
# and the /proc readings. Set PIN (1 or 0) before sourcing (set_pin changes it
# later); it sets TMP and an EXIT trap that stops whatever was started.

# Every process is started through taskset (which execs it, so $! is the real
# pid): the load generator and the upstream on LOAD_CPUS, the target on TARGET_CPUS.
set_pin() { # $1 = 1 (target on CPU 1, the rest on CPU 0) or 0 (every CPU for everyone)
    PIN=$1
    [ "$(nproc)" -ge 2 ] || PIN=0
    if [ "$PIN" = 1 ]; then LOAD_CPUS=0; TARGET_CPUS=1; else LOAD_CPUS=0-$(( $(nproc) - 1 )); TARGET_CPUS=$LOAD_CPUS; fi
}
set_pin "$PIN"
# moves a running process tree, every thread, onto a CPU list
repin() { # $1 pid, $2 cpu list
    local p
    for p in $(procs "$1"); do taskset -a -p -c "$2" "$p" >/dev/null; done
}

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
bench_tools() {
    need_apt wrk nginx-light
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
}
# a free loopback port, never one this run handed out already (the gateway binds
# with SO_REUSEPORT, so two of its processes on one port would both start)
free_port() {
    local p
    while :; do
        p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        grep -qx "$p" "$TMP/ports" 2>/dev/null || break
    done
    echo "$p" >> "$TMP/ports"
    echo "$p"
}

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
start_nginx() { # $1 = upstream port, $2 = proxy port (optional)
    nginx_conf upstream "server {
        listen 127.0.0.1:$1 backlog=4096;
        location = /v1/chat/completions { default_type application/json; return 200 '$COMPLETION'; }
        location = /fail/v1/chat/completions { default_type application/json; return 503 '{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}'; }
        # an OTLP/HTTP sink for bench/tracing.sh: takes the spans, answers 200
        location = /v1/traces { client_max_body_size 64m; default_type application/x-protobuf; return 200 ''; }
    }"
    taskset -c "$LOAD_CPUS" nginx -c "$TMP/upstream.conf" -p "$TMP"
    [ -n "${2:-}" ] || return 0
    nginx_conf proxy "upstream llm { server 127.0.0.1:$1; keepalive 512; }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
    taskset -c "$TARGET_CPUS" nginx -c "$TMP/proxy.conf" -p "$TMP"
}

# --- Cascade -----------------------------------------------------------------
gateway_config() { # $1 = listen port, $2 = first tier base URL, $3 = the good upstream port, $4 = more [server] lines
cat <<TOML
[server]
listen = "127.0.0.1:$1"
${4:-}
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
base_url = "http://127.0.0.1:$3/v1"
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
start_gateway() { # $1 binary, $2 config -> echoes pid
    RUST_LOG=warn taskset -c "$TARGET_CPUS" "$1" serve --config "$2" >"$TMP/$(basename "$2").log" 2>&1 &
    echo $!
}
wait_http() { # $1 url; on failure, the logs of what was started
    for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "not up after 30 s: $1" >&2
    local log
    for log in "$TMP"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -20 "$log" >&2; }; done
    return 1
}

# --- measurement helpers ---------------------------------------------------------------
CLK=$(getconf CLK_TCK)
procs() { # a pid and its children (nginx: master + worker)
    echo "$1"; pgrep -P "$1" 2>/dev/null || true
}
stat_sums() { # $1 pid, then /proc/PID/stat field numbers: each field summed over the process tree
    local pid=$1; shift
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { printf '0 %.0s' "$@"; echo; return; }
    local p
    for p in $(procs "$pid"); do cat "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v fields="$*" 'BEGIN { n = split(fields, f, " ") }
            { for (i = 1; i <= n; i++) s[i] += $(f[i]) }
            END { for (i = 1; i <= n; i++) printf "%d%s", s[i], (i < n ? " " : "\n") }'
}
cpu_ticks() { # total utime+stime of a process tree
    local u s
    read -r u s < <(stat_sums "${1:-}" 14 15)
    echo $(( u + s ))
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
    taskset -c "${WRK_CPUS:-$LOAD_CPUS}" wrk -t"$threads" -c"$c" -d"${d}s" --timeout 10s --latency -s "${WRK_SCRIPT:-bench/post.lua}" "${hargs[@]}" "$url" > "$TMP/wrk.out" 2>&1 || true
    awk '
      function ms(v) { if (v ~ /us$/) { sub(/us$/,"",v); return v/1000 } if (v ~ /ms$/) { sub(/ms$/,"",v); return v+0 } if (v ~ /s$/) { sub(/s$/,"",v); return v*1000 } return v }
      /Requests\/sec/ { rps=$2 }
      /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
      /Non-2xx/ { non2xx=$NF }
      END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, non2xx }' "$TMP/wrk.out"
}


# --- c=1 on one core -------------------------------------------------------------------
# At c=1 nothing competes for a CPU, while on this VM a wake-up across cores
# costs ~40 us (direct p50: 0.008 ms with wrk and nginx on one core, 0.084 ms
# unpinned): with wrk and the upstream on another core than the target, the c=1
# figures would measure four such wake-ups, the same for every proxy. So the c=1
# runs move the load generator and the upstream onto the target's core, and
# "added latency" is the target's own work on the request path.
upstream_to() { # $1 cpu list
    repin "$(cat "$TMP/upstream.pid")" "$1"
}
run_wrk_c1() { # $1 url, $2 seconds, extra header args... (prints what run_wrk prints)
    local url=$1 d=$2; shift 2
    upstream_to "$TARGET_CPUS"
    WRK_CPUS=$TARGET_CPUS run_wrk "$url" 1 "$d" "$@"
    upstream_to "$LOAD_CPUS"
}
