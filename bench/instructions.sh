#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a repeatable cost
# figure on a machine whose wall-clock numbers swing by 10% between identical
# runs (shared VM, no hardware counters). User-space instructions only.
#
#   bench/instructions.sh BINARY [BINARY...]     (1,000 requests each, 8 connections)
#   KEEP_PROFILE=cg.out bench/instructions.sh BINARY; callgrind_annotate --inclusive=yes cg.out
#   API=responses bench/instructions.sh BINARY    (the same request to /v1/responses)
#
# Each binary serves the benchmark config (one tier, nginx upstream) under
# callgrind; after 200 warm-up requests the counters are zeroed, 1,000 requests
# are sent over 8 keep-alive connections, and the dump is read.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bench/instructions.sh BINARY [BINARY...]" >&2; exit 2; }
PIN=0
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools
need_apt valgrind
N=${REQUESTS:-1000}

UP=$(free_port); GW=$(free_port)
start_nginx "$UP"
gateway_config "$GW" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/one.toml"

load() { # $1 requests
    python3 - "$GW" "$1" "${API:-chat}" <<'PY'
import http.client, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
path, body = {
    "chat": ("/v1/chat/completions", b'{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'),
    "responses": ("/v1/responses", b'{"model":"bench","input":[{"role":"user","content":"Say hello in one short sentence."}]}'),
}[sys.argv[3]]
def worker(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(k):
        c.request("POST", path, body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
ts = [threading.Thread(target=worker, args=(n // 8,)) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
}

printf 'binary\trequests\tinstructions_per_request\n'
for bin in "$@"; do
    (cd "$TMP" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
        "$(realpath "$OLDPWD/$bin" 2>/dev/null || realpath "$bin")" serve --config "$TMP/one.toml" >"$TMP/vg.log" 2>&1) &
    pid=$!; PIDS+=("$pid")
    for _ in $(seq 1 600); do curl -sf -o /dev/null "http://127.0.0.1:$GW/readyz" && break; sleep 0.1; done
    load 200
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$N"
    callgrind_control -d "$pid" >/dev/null 2>&1
    ir=$(cat "$TMP"/cg.out.* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s+0}')
    kill "$pid"; while [ -e "/proc/$pid" ]; do sleep 0.1; done
    if [ -n "${KEEP_PROFILE:-}" ]; then cat "$TMP"/cg.out.* > "$KEEP_PROFILE"; fi   # for callgrind_annotate
    rm -f "$TMP"/cg.out*
    printf '%s\t%s\t%s\n' "$bin" "$N" "$(( ir / N ))"
done
