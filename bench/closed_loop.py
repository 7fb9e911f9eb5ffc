#!/usr/bin/env python3
"""A closed-loop load client for latency-bound scenarios: N connections, each
sending the next request when the last one answered, for S seconds; prints
`rps p50_ms p99_ms non2xx`. Every request's own latency counts once (wrk
corrects for coordinated omission, which is right for throughput runs but
turns one 3 s answer into many phantom slow samples here). Standard library
only.

    bench/closed_loop.py URL [CONNECTIONS] [SECONDS] [BODY_FILE]
"""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

BODY = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    }
).encode()


def worker(url, until, out, errors, body):
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            conn.request("POST", u.path, body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = 200 <= resp.status < 300
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            ok = False
        out.append(time.monotonic() - t0)
        if not ok:
            errors.append(1)


def pct(sorted_values, p):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(-(-p * len(sorted_values) // 1)) - 1))
    return sorted_values[i]


def main():
    url = sys.argv[1]
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else 15
    body = open(sys.argv[4], "rb").read() if len(sys.argv) > 4 else BODY
    until = time.monotonic() + secs
    out, errors = [], []
    threads = [
        threading.Thread(target=worker, args=(url, until, out, errors, body))
        for _ in range(conns)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    lat = sorted(out)
    print(
        f"{len(lat) / took:.0f} {pct(lat, 0.50) * 1000:.1f} {pct(lat, 0.99) * 1000:.1f} {len(errors)}"
    )


if __name__ == "__main__":
    main()
