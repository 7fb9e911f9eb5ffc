#!/usr/bin/env bash
# Profile Cascade's hot path: a release build with line tables, under wrk load
# (c=32) against an nginx upstream, sampled by perf (cpu-clock: this machine has
# no hardware counters) with DWARF call stacks, folded into a flamegraph.
#
#   bench/profile.sh        -> docs/flamegraph.svg, bench/out/profile-top.txt
set -euo pipefail
cd "$(dirname "$0")/.."
for pkg in wrk nginx-light linux-perf; do
    dpkg -s "$pkg" >/dev/null 2>&1 || apt-get install -y -q "$pkg" >/dev/null
done
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
TARGET=${PROFILE_TARGET_DIR:-target/profiling}
CARGO_TARGET_DIR=$TARGET CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked
BIN=$TARGET/release/cascade

TMP=$(mktemp -d); mkdir -p bench/out "$TMP/n"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GW=$(free_port)
cat > "$TMP/nginx.conf" <<NGINX
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/n/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $TMP/n; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP;
    location = /v1/chat/completions { default_type application/json;
      return 200 '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":9,"total_tokens":23}}'; } } }
NGINX
cat > "$TMP/cascade.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
[circuit_breaker]
failure_threshold = 5
[ledger]
path = ""
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:$UP/v1"
auth = "none"
[models.m]
provider = "up"
model = "m"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[tiers.bench]
models = ["m"]
TOML
nginx -c "$TMP/nginx.conf" -p "$TMP"
RUST_LOG=warn "$BIN" serve --config "$TMP/cascade.toml" >/dev/null 2>&1 &
GPID=$!
trap 'kill $GPID 2>/dev/null; kill $(cat $TMP/nginx.pid) 2>/dev/null; rm -rf $TMP' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$GW/readyz" && break; sleep 0.05; done
wrk -t2 -c32 -d12s -s bench/post.lua "http://127.0.0.1:$GW/v1/chat/completions" > bench/out/profile-wrk.txt &
WRK=$!
sleep 2
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GPID" -o "$TMP/perf.data" -- sleep 6 2>/dev/null
wait $WRK
perf script -i "$TMP/perf.data" 2>/dev/null | inferno-collapse-perf > bench/out/profile.folded
inferno-flamegraph --minwidth 0.3 --title "Cascade under wrk c=32 (cpu-clock samples)" < bench/out/profile.folded > docs/flamegraph.svg
# self time by function (the leaf of each stack), top 25
awk '{n=$NF; $NF=""; split($0, f, ";"); leaf=f[length(f)]; sub(/ +$/, "", leaf); self[leaf]+=n; total+=n}
     END {for (k in self) printf "%6.2f%%  %s\n", 100*self[k]/total, k}' bench/out/profile.folded | sort -rn | head -25 > bench/out/profile-top.txt
# inclusive time of a few frames we care about
for f in "cascade::server::chat::completions" "cascade::chain::execute" "reqwest::" "hyper::" "cascade::api::body::ChatBody::parse" "cascade::providers::parse_completion" "prometheus::" "tracing" "serde_json::" "malloc\|free\|realloc" "epoll\|sys_" ; do
    pct=$(awk -v pat="$f" '{n=$NF; total+=n; if ($0 ~ pat) hit+=n} END {printf "%.1f", 100*hit/total}' bench/out/profile.folded)
    printf '%6s%%  stacks containing %s\n' "$pct" "$f"
done > bench/out/profile-inclusive.txt
grep Requests/sec bench/out/profile-wrk.txt
echo "wrote docs/flamegraph.svg, bench/out/profile-top.txt, bench/out/profile-inclusive.txt"
