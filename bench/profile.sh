#!/usr/bin/env bash
# Profile Cascade's hot path: a release build with line tables, under wrk load
# (c=32) against the nginx upstream, sampled by perf (cpu-clock: this machine has
# no hardware counters) with DWARF call stacks, folded into a flamegraph.
# For a repeatable cost figure (instructions per request), see bench/instructions.sh.
#
#   bench/profile.sh        -> docs/flamegraph.svg, bench/out/profile-top.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=1
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools
need_apt linux-perf
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
TARGET=${PROFILE_TARGET_DIR:-target/profiling}
CARGO_TARGET_DIR=$TARGET CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked
mkdir -p bench/out

UP=$(free_port); GW=$(free_port)
start_nginx "$UP"
gateway_config "$GW" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/one.toml"
GPID=$(start_gateway "$TARGET/release/cascade" "$TMP/one.toml"); PIDS+=("$GPID")
wait_http "http://127.0.0.1:$GW/readyz"
taskset -c "$LOAD_CPUS" wrk -t2 -c32 -d12s -s bench/post.lua "http://127.0.0.1:$GW/v1/chat/completions" > bench/out/profile-wrk.txt &
WRK=$!
sleep 2
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GPID" -o "$TMP/perf.data" -- sleep 6 2>/dev/null
wait $WRK
perf script -i "$TMP/perf.data" 2>/dev/null | inferno-collapse-perf > bench/out/profile.folded
inferno-flamegraph --minwidth 0.3 --title "Cascade under wrk c=32 (cpu-clock samples)" < bench/out/profile.folded > docs/flamegraph.svg
# self time by function (the leaf of each stack), top 25
awk '{n=$NF; $NF=""; split($0, f, ";"); leaf=f[length(f)]; sub(/ +$/, "", leaf); self[leaf]+=n; total+=n}
     END {for (k in self) printf "%6.2f%%  %s\n", 100*self[k]/total, k}' bench/out/profile.folded | sort -rn > "$TMP/top.txt"
head -25 "$TMP/top.txt" > bench/out/profile-top.txt   # not in the pipe: head closing it early fails pipefail
# inclusive time of a few frames we care about
for f in "entry_SYSCALL" "cascade::server::chat::completions" "cascade::chain::execute" "hyper_util::client" "hyper::" "cascade::api::body::ChatBody::parse" "cascade::providers::parse_completion" "prometheus::" "tracing" "serde_json::" "mi_|malloc|free" "epoll_wait" ; do
    pct=$(awk -v pat="$f" '{n=$NF; total+=n; if ($0 ~ pat) hit+=n} END {printf "%.1f", 100*hit/total}' bench/out/profile.folded)
    printf '%6s%%  stacks containing %s\n' "$pct" "$f"
done > bench/out/profile-inclusive.txt
grep Requests/sec bench/out/profile-wrk.txt
echo "wrote docs/flamegraph.svg, bench/out/profile-top.txt, bench/out/profile-inclusive.txt"
