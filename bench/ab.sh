#!/usr/bin/env bash
# A/B: two Cascade binaries, the same load, alternating rounds, so a change to
# the hot path is kept only if the numbers justify it (docs/benchmarks-notes.md).
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [rounds=3] [seconds=10]
#
# Each round starts each binary pinned to its own core (as bench/run.sh does),
# warms it up, then measures c=1 (p50) and c=32 (req/s, p99, CPU seconds read
# from /proc). Prints one line per round and binary, then the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY [rounds] [seconds]" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${3:-3}; DUR=${4:-10}
PIN=${PIN:-1}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_tools

UP=$(free_port); GW=$(free_port)
start_nginx "$UP"
gateway_config "$GW" "http://127.0.0.1:$UP/v1" "$UP" > "$TMP/one.toml"
URL="http://127.0.0.1:$GW/v1/chat/completions"

printf 'binary\tround\trps_c32\trps_per_core\tp50_c1_ms\tp99_c1_ms\tp99_c32_ms\n' | tee "$TMP/ab.tsv"
for r in $(seq 1 "$ROUNDS"); do
    for label in A B; do
        bin=$A; [ "$label" = B ] && bin=$B
        pid=$(start_gateway "$bin" "$TMP/one.toml"); PIDS+=("$pid")
        wait_http "http://127.0.0.1:$GW/readyz"
        wait_quiet >/dev/null
        run_wrk "$URL" 4 2 >/dev/null
        read -r _ p50_1 p99_1 _ < <(run_wrk_c1 "$URL" "$DUR")
        t0=$(cpu_ticks "$pid")
        read -r rps p50_32 p99_32 _ < <(run_wrk "$URL" 32 "$DUR")
        t1=$(cpu_ticks "$pid")
        per_core=$(awk -v r="$rps" -v d="$DUR" -v a="$t0" -v b="$t1" -v k="$CLK" 'BEGIN{ c=(b-a)/k; if (c>0) printf "%.0f", r*d/c; else print "-" }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$r" "$rps" "$per_core" "$p50_1" "$p99_1" "$p99_32" | tee -a "$TMP/ab.tsv"
        [ -e "/proc/$pid" ] || { echo "the gateway exited early:" >&2; cat "$TMP/one.toml.log" >&2; exit 1; }
        kill "$pid"
        while [ -e "/proc/$pid" ]; do sleep 0.05; done
    done
done
echo "medians (A = $1, B = $2):"
python3 - "$TMP/ab.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["rps_c32", "rps_per_core", "p50_c1_ms", "p99_c1_ms", "p99_c32_ms"]
med = {b: {c: statistics.median(float(r[c]) for r in rows if r["binary"] == b) for c in cols} for b in "AB"}
print("\t".join(["binary"] + cols))
for b in "AB":
    print("\t".join([b] + [f"{med[b][c]:g}" for c in cols]))
print("\t".join(["B/A"] + [f"{med['B'][c] / med['A'][c]:.3f}" for c in cols]))
PY
