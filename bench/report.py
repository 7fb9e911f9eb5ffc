"""Write docs/benchmarks.md (and a latency plot) from one bench/run.sh run."""
import argparse
import csv
import datetime
import json
import os
import platform
import subprocess

TARGETS_DOC = """## Targets (same run, same machine, default config, unpinned)

| target | goal | this run |
|---|---|---|
{rows}
"""


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def chunk_verdict(added):
    if added is None:
        return "**not measured**"
    return "yes" if added < 1 else "**no**"


def ratio(x, y):
    x, y = num(x), num(y)
    return None if not x or not y else round(x / y, 2)


def table(rows):
    """One pass: the main table, then the latency each target adds over direct."""
    out = ["| target | machine busy before | req/s c=32 | req/s c=256 | req/s per core | p50 c=1 (ms) | p99 c=1 (ms) | p50 c=32 (ms) | p99 c=32 (ms) | CPU s / 10k req | RSS idle (MiB) | RSS peak (MiB) | non-2xx |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| {target} | {busy_before_pct}% | {rps_c32} | {rps_c256} | {rps_per_core_c32} | {p50_c1_ms} | {p99_c1_ms} | {p50_c32_ms} | {p99_c32_ms} | {cpu_s_per_10k} | {rss_idle_mib} | {rss_peak_mib} | {non2xx} |".format(**r))
    direct = next((r for r in rows if r["target"] == "direct"), {})
    def added(r, col):
        x, d = num(r.get(col)), num(direct.get(col))
        return None if x is None or d is None else round(x - d, 3)
    out += ["", "Added latency versus direct (ms):", "",
            "| target | added p50 c=1 | added p99 c=1 | added p50 c=32 | added p99 c=32 |", "|---|---|---|---|---|"]
    for r in rows:
        if r["target"] != "direct":
            out.append(f"| {r['target']} | {added(r, 'p50_c1_ms')} | {added(r, 'p99_c1_ms')} | {added(r, 'p50_c32_ms')} | {added(r, 'p99_c32_ms')} |")
    out.append("")
    return out


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--streams", required=True)
    ap.add_argument("--mode", default="full")
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--plot", required=True)
    ap.add_argument("--pinned-results", default=None, help="the pinned pass (absent on one core)")
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--tail", default=None, help="bench/heavy-tail.sh output")
    ap.add_argument("--tracing", default=None, help="bench/tracing.sh output")
    ap.add_argument("--shared", default=None, help="bench/shared-state.sh output")
    a = ap.parse_args()

    rows = list(csv.DictReader(open(a.results), delimiter="\t"))
    by = {r["target"]: r for r in rows}
    pinned = list(csv.DictReader(open(a.pinned_results), delimiter="\t")) if a.pinned_results and os.path.exists(a.pinned_results) else []
    streams = json.load(open(a.streams))
    shared = list(csv.DictReader(open(a.shared), delimiter="\t")) if a.shared and os.path.exists(a.shared) else []

    lines = []
    lines.append("# Benchmarks\n")
    if a.mode != "full":
        lines.append("> **Smoke run** (a few seconds per target, as CI runs it): the figures are not representative. Run `bench/run.sh` for real numbers.\n")
    lines.append(f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    # the run's own outputs (this page, its plot) do not make the tree dirty
    dirty = sh("git status --porcelain --untracked-files=no -- . ':!docs/benchmarks.md' ':!docs/benchmarks-latency.png'")
    lines.append(f"- commit: `{sh('git rev-parse --short HEAD') or 'unknown'}`{' (dirty tree)' if dirty else ''}")
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    lines.append(f"- machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}")
    lines.append(f"- command: `{a.command}`")
    lines.append("- load: wrk (2 threads at c=32 and c=256, 1 at c=1), POST of a small chat request; upstream: nginx (its own process, 1 worker) returning a fixed completion; nginx-as-proxy: a second nginx, 1 worker, keep-alive pool to the upstream")
    lines.append("- Cascade: the bench config (`bench/lib.sh`: one tier, default `[server]`, so `worker_threads = 0`, one worker per core); `cascade-1-worker` is the same with `worker_threads = 1`")
    lines.append("- requests/s per core = requests served / CPU seconds of the target's process over the c=32 run (read from /proc)\n")

    lines.append("## As a user runs it: default config, nothing pinned\n")
    lines.append("Every process where the scheduler puts it; on this machine Cascade runs two workers.\n")
    lines.extend(table(rows))

    direct = by.get("direct", {})
    def added(t, col):
        x, d = num(by.get(t, {}).get(col)), num(direct.get(col))
        return None if x is None or d is None else round(x - d, 3)
    c, n, f = by.get("cascade", {}), by.get("nginx-proxy", {}), by.get("cascade-fallback", {})
    one = by.get("cascade-1-worker", {})
    per_core_vs_nginx = ratio(c.get("rps_per_core_c32"), n.get("rps_per_core_c32"))
    p99_vs_nginx = ratio(c.get("p99_c32_ms"), n.get("p99_c32_ms"))
    added_p50 = added("cascade", "p50_c1_ms")
    fallback_share = ratio(f.get("rps_c32"), c.get("rps_c32"))
    default_vs_one = ratio(c.get("rps_c32"), one.get("rps_c32"))
    def ok(cond):
        return "yes" if cond else "**no**"
    trows = [
        f"| Cascade req/s per core vs nginx-as-proxy | >= 0.6x | {per_core_vs_nginx}x ({ok(per_core_vs_nginx is not None and per_core_vs_nginx >= 0.6)}) |",
        f"| Cascade p99 at c=32 vs nginx-as-proxy | <= 2x | {p99_vs_nginx}x ({ok(p99_vs_nginx is not None and p99_vs_nginx <= 2)}) |",
        f"| Cascade req/s at c=32, default vs `worker_threads = 1` | >= 1x | {default_vs_one}x ({ok(default_vs_one is not None and default_vs_one >= 1)}) |",
        f"| Cascade added p50 at c=1 | < 0.05 ms | {added_p50} ms ({ok(added_p50 is not None and added_p50 < 0.05)}) |",
        f"| fallback on every request vs no failures (req/s c=32) | >= 0.5x | {fallback_share}x ({ok(fallback_share is not None and fallback_share >= 0.5)}) |",
        f"| RSS idle | < 30 MiB | {c.get('rss_idle_mib')} MiB ({ok((num(c.get('rss_idle_mib')) or 1e9) < 30)}) |",
        f"| RSS with {streams['streams']} open streams | < 100 MiB | {streams['gateway_rss_peak_mib']} MiB ({ok((streams['gateway_rss_peak_mib'] or 1e9) < 100)}) |",
        f"| added per-chunk delay p99 | < 1 ms | {streams['added_chunk_delay_ms']['p99']} ms ({chunk_verdict(streams['added_chunk_delay_ms']['p99'])}) |",
    ]
    resp_share = ratio(by.get("cascade-responses", {}).get("rps_per_core_c32"), c.get("rps_per_core_c32"))
    if "cascade-responses" in by:
        trows.append(f"| /v1/responses req/s per core vs chat's | >= 0.85x | {resp_share}x ({ok(resp_share is not None and resp_share >= 0.85)}) |")
    if len(shared) >= 2:
        s_pc = ratio(shared[1].get("rps_per_core"), shared[0].get("rps_per_core"))
        s_p50 = num(shared[1].get("p50_c1_ms")), num(shared[0].get("p50_c1_ms"))
        s_added = None if None in s_p50 else round(s_p50[0] - s_p50[1], 3)
        trows.append(f"| Redis state vs local: req/s per core | >= 0.9x | {s_pc}x ({ok(s_pc is not None and s_pc >= 0.9)}) |")
        trows.append(f"| Redis state vs local: added p50 at c=1 | <= 0.05 ms | {s_added} ms ({ok(s_added is not None and s_added <= 0.05)}) |")
    for peer in ("litellm", "portkey"):
        if peer in by:
            r = ratio(c.get("rps_per_core_c32"), by[peer].get("rps_per_core_c32"))
            trows.append(f"| Cascade req/s per core vs {peer} | (peer) | {f'{r}x' if r else '**not measured**'} |")
    lines.append(TARGETS_DOC.format(rows="\n".join(trows)))

    if pinned:
        pby = {r["target"]: r for r in pinned}
        lines.append("## Pinned: the target on one core\n")
        lines.append("The same targets, the target under test on CPU 1 (so Cascade runs one worker, nginx one worker), wrk and the upstream on CPU 0 (taskset); for the c=1 runs wrk and the upstream move onto CPU 1 too, so no cross-core wake-up is in the c=1 figures (see \"Where the processes run\").\n")
        lines.extend(table(pinned))
        pc = ratio(pby.get("cascade", {}).get("rps_per_core_c32"), pby.get("nginx-proxy", {}).get("rps_per_core_c32"))
        p99 = ratio(pby.get("cascade", {}).get("p99_c32_ms"), pby.get("nginx-proxy", {}).get("p99_c32_ms"))
        lines.append(f"Pinned, Cascade against nginx-as-proxy: {pc}x its requests/s per core, {p99}x its p99 at c=32.\n")

    lines.append("## Streaming\n")
    lines.append(f"{streams['streams']} concurrent streams of {streams['chunks_per_stream']} chunks ({streams['chunk_interval_ms']:.0f} ms apart), each chunk carrying its send time (wall clock, ns); the same Rust client (`bench/streams.rs`, tokio) runs the same streams directly against its own upstream and then through Cascade, so the client's and the upstream's own delays are in both columns and the difference is what the gateway adds. \"Added\" is the difference of the percentiles, not a percentile of per-chunk differences.\n")
    lines.append("| | direct | through Cascade | added |")
    lines.append("|---|---|---|---|")
    for k in ("p50", "p90", "p99", "p999"):
        if k in streams["chunk_delay_ms_direct"]:
            lines.append(f"| chunk delay {k} (ms) | {streams['chunk_delay_ms_direct'][k]} | {streams['chunk_delay_ms_gateway'][k]} | {streams['added_chunk_delay_ms'][k]} |")
    for k in ("p50", "p99"):
        lines.append(f"| time to first token {k} (ms) | {streams['ttft_ms_direct'][k]} | {streams['ttft_ms_gateway'][k]} | {streams['added_ttft_ms'][k]} |")
    lines.append(f"| chunks received | {streams['chunks_received_direct']} | {streams['chunks_received_gateway']} | |")
    lines.append(f"| streams that failed | {streams.get('streams_failed_direct', 0)} | {streams.get('streams_failed_gateway', 0)} | |")
    lines.append(f"| gateway RSS (MiB) | | idle {streams['gateway_rss_idle_mib']}, peak {streams['gateway_rss_peak_mib']} | |")
    lines.append("")

    if a.tail and os.path.exists(a.tail):
        tail = list(csv.DictReader(open(a.tail), delimiter="\t"))
        lines.append("## Heavy tail: hedging\n")
        lines.append("`bench/heavy-tail.sh`: two `mock` providers of the same model, each answering in 50 ms except 5% of answers after 3 s (independently); tier `bench` falls back to tier `second`. A closed-loop client (`bench/closed_loop.py`, 16 connections, each request's own latency counted once) runs the same load against the chain without hedging and with `hedge_after_ms = 150`; the gateway unpinned.\n")
        lines.append("| variant | req/s | p50 (ms) | p99 (ms) | hedges won | hedges lost |")
        lines.append("|---|---|---|---|---|---|")
        for r in tail:
            lines.append("| {variant} | {rps} | {p50_ms} | {p99_ms} | {hedges_won} | {hedges_lost} |".format(**r))
        lines.append("")

    if a.tracing and os.path.exists(a.tracing):
        rows_t = list(csv.DictReader(open(a.tracing), delimiter="\t"))
        lines.append("## Tracing\n")
        lines.append("`bench/tracing.sh`: the one-tier gateway (nginx upstream) with `[telemetry]` off, on to a live OTLP/HTTP receiver (nginx taking `POST /v1/traces`) at `sample_ratio = 1.0`, and on to a dead endpoint; wrk, 32 connections; the gateway unpinned; per core = requests / the gateway's CPU seconds.\n")
        lines.append("| variant | req/s c=32 | gateway CPU s | req/s per core | vs off | spans dropped | non-2xx |")
        lines.append("|---|---|---|---|---|---|---|")
        base = num(rows_t[0].get("rps_per_core")) if rows_t else None
        for r in rows_t:
            pc = num(r.get("rps_per_core"))
            rel = f"{pc / base:.2f}x" if pc and base else "-"
            lines.append(f"| {r['variant']} | {r['rps_c32']} | {r['cpu_s']} | {r['rps_per_core']} | {rel} | {r['spans_dropped']} | {r['non2xx']} |")
        lines.append("")

    if shared:
        rows_s = shared
        lines.append("## Shared state (Redis)\n")
        lines.append("`bench/shared-state.sh`: one replica, the one-tier gateway (nginx upstream, a priced model, a daily budget, a SQLite ledger: every request spends) with `[state] backend = \"local\"` and `\"redis\"` (a redis-server on loopback); wrk, 32 connections for requests/s, 1 for p50; the gateway unpinned; per core = requests / the gateway's CPU seconds. Targets: per core within 10% of local, p50 at c=1 within 0.05 ms.\n")
        lines.append("| variant | req/s c=32 | gateway CPU s | req/s per core | vs local | p50 c=1 ms | added p50 ms | non-2xx |")
        lines.append("|---|---|---|---|---|---|---|---|")
        base = num(rows_s[0].get("rps_per_core")) if rows_s else None
        base_p50 = num(rows_s[0].get("p50_c1_ms")) if rows_s else None
        for r in rows_s:
            pc = num(r.get("rps_per_core"))
            p50 = num(r.get("p50_c1_ms"))
            rel = f"{pc / base:.2f}x" if pc and base else "-"
            added = f"{p50 - base_p50:+.3f}" if p50 is not None and base_p50 is not None else "-"
            lines.append(f"| {r['variant']} | {r['rps_c32']} | {r['cpu_s']} | {r['rps_per_core']} | {rel} | {r['p50_c1_ms']} | {added} | {r['non2xx']} |")
        lines.append("")

    plotted = False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = [r["target"] for r in rows]
        fig, ax = plt.subplots(figsize=(9, 4))
        cols = [("p50_c1_ms", "p50 c=1"), ("p99_c1_ms", "p99 c=1"), ("p50_c32_ms", "p50 c=32"), ("p99_c32_ms", "p99 c=32")]
        w = 0.2
        for i, (col, label) in enumerate(cols):
            ax.bar([x + i * w for x in range(len(names))], [num(r[col]) or 0 for r in rows], w, label=label)
        ax.set_xticks([x + 1.5 * w for x in range(len(names))])
        ax.set_xticklabels(names)
        # log scale: the peers are 100-1000x slower, linear would flatten the rest
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("Latency percentiles per target (same run)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        plotted = True
    except ImportError:
        pass
    if plotted and a.mode == "full":
        os.makedirs("docs", exist_ok=True)
        dest = "docs/benchmarks-latency.png"
        if os.path.abspath(a.plot) != os.path.abspath(dest):
            import shutil
            shutil.copy(a.plot, dest)
        lines.append("![latency percentiles per target](benchmarks-latency.png)\n")

    extra = "docs/benchmarks-notes.md"
    if os.path.exists(extra):
        lines.append(open(extra).read())
    with open(a.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
