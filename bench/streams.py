"""Streaming benchmark: many concurrent SSE streams through Cascade.

An asyncio upstream streams chunks that carry their send time; clients open the
streams directly and through the gateway and compare arrival times. Reports the
added delay per chunk (p50/p99), the added time to first token, and the gateway's
RSS with every stream open. Standard library only.
"""
import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TS = re.compile(rb"ts:(\d+) ")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def chunk(delta, finish=None):
    return ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n").encode()


async def upstream(reader, writer, chunks, interval):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if m:
            await reader.readexactly(int(m.group(1)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        writer.write(chunk({"role": "assistant", "content": ""}))
        for _ in range(chunks):
            writer.write(chunk({"content": f"ts:{time.time_ns()} "}))
            await writer.drain()
            await asyncio.sleep(interval)
        writer.write(chunk({}, "stop"))
        usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                 "usage": {"prompt_tokens": 10, "completion_tokens": chunks}}
        writer.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def one_stream(port, path, delays, ttfts):
    body = json.dumps({"model": "s", "stream": True, "messages": [{"role": "user", "content": "go"}]}).encode()
    t0 = time.time_ns()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    first = None
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.time_ns()
        buf += data
        last = 0
        for m in TS.finditer(buf):
            if first is None:
                first = now
                ttfts.append((now - t0) / 1e6)
            delays.append((now - int(m.group(1))) / 1e6)
            last = m.end()
        buf = buf[last:] if last else buf[-64:]
    writer.close()


async def run_streams(port, path, n, ramp_s):
    delays, ttfts = [], []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one_stream(port, path, delays, ttfts)))
        if ramp_s:
            await asyncio.sleep(ramp_s / n)
    await asyncio.gather(*tasks, return_exceptions=True)
    return delays, ttfts


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100))], 3)


def rss_mib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway-bin", required=True)
    ap.add_argument("--mode", default="full")
    args = ap.parse_args()
    n, chunks, interval = (1000, 50, 0.1) if args.mode == "full" else (50, 10, 0.05)

    up_port, gw_port = free_port(), free_port()
    server = await asyncio.start_server(lambda r, w: upstream(r, w, chunks, interval), "127.0.0.1", up_port, backlog=4096)
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f"""
[server]
listen = "127.0.0.1:{gw_port}"
[circuit_breaker]
failure_threshold = 0
[ledger]
path = ""
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:{up_port}/v1"
auth = "none"
[models.s]
provider = "up"
model = "s"
[tiers.t]
models = ["s"]
timeout_ms = 30000
first_token_timeout_ms = 30000
""")
    cfg.close()
    gw = subprocess.Popen([args.gateway_bin, "serve", "--config", cfg.name], env={**os.environ, "RUST_LOG": "warn"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", gw_port), timeout=0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        idle = rss_mib(gw.pid, "VmRSS")
        d_direct, t_direct = await run_streams(up_port, "/v1/chat/completions", n, 1.0)
        d_gw, t_gw = await run_streams(gw_port, "/v1/chat/completions", n, 1.0)
        peak = rss_mib(gw.pid, "VmHWM")
    finally:
        gw.terminate()
        gw.wait()
        server.close()
        os.unlink(cfg.name)
    out = {
        "streams": n, "chunks_per_stream": chunks, "chunk_interval_ms": interval * 1000,
        "chunks_received_direct": len(d_direct), "chunks_received_gateway": len(d_gw),
        "chunk_delay_ms_direct": {"p50": pct(d_direct, 50), "p99": pct(d_direct, 99)},
        "chunk_delay_ms_gateway": {"p50": pct(d_gw, 50), "p99": pct(d_gw, 99)},
        "ttft_ms_direct": {"p50": pct(t_direct, 50), "p99": pct(t_direct, 99)},
        "ttft_ms_gateway": {"p50": pct(t_gw, 50), "p99": pct(t_gw, 99)},
        "gateway_rss_idle_mib": idle, "gateway_rss_peak_mib": peak,
    }
    for k in ("p50", "p99"):
        a, b = out["chunk_delay_ms_direct"][k], out["chunk_delay_ms_gateway"][k]
        out.setdefault("added_chunk_delay_ms", {})[k] = None if a is None or b is None else round(b - a, 3)
        a, b = out["ttft_ms_direct"][k], out["ttft_ms_gateway"][k]
        out.setdefault("added_ttft_ms", {})[k] = None if a is None or b is None else round(b - a, 3)
    json.dump(out, sys.stdout, indent=2)


if __name__ == "__main__":
    asyncio.run(main())
