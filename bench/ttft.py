#!/usr/bin/env python3
"""Time to first streamed chunk.

Sends `POST <url>` with a streaming chat body over one kept-alive HTTP/1.1
connection, one request at a time, and times each from just before the
request is written to the moment the first `data:` line has been read; the
rest of the stream is then read to its end so the connection can be reused.

Usage: ttft.py URL TOKEN MODEL [SAMPLES] [WARMUP]
Prints one JSON object: {"samples": n, "errors": n, "p50_us": …, "p90_us": …,
"p99_us": …, "mean_us": …, "times_us": [every sample]}.
"""

import http.client
import json
import math
import sys
import time
import urllib.parse


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    # Nearest rank.
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def main():
    url, token, model = sys.argv[1], sys.argv[2], sys.argv[3]
    samples = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    warmup = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    u = urllib.parse.urlsplit(url)
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
    }
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    times = []
    errors = 0
    for n in range(warmup + samples):
        try:
            t0 = time.perf_counter_ns()
            conn.request("POST", u.path, body=body, headers=headers)
            resp = conn.getresponse()
            first = None
            while True:
                line = resp.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    first = time.perf_counter_ns()
                    break
            rest = resp.read()
            if resp.status != 200 or first is None or b"[DONE]" not in rest:
                raise RuntimeError(f"status {resp.status}")
            if n >= warmup:
                times.append((first - t0) / 1000.0)
        except Exception:  # noqa: BLE001 - any failure counts as an error
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    times.sort()
    out = {
        "samples": len(times),
        "errors": errors,
        "p50_us": percentile(times, 0.50),
        "p90_us": percentile(times, 0.90),
        "p99_us": percentile(times, 0.99),
        "mean_us": sum(times) / len(times) if times else None,
        "times_us": [round(t, 1) for t in times],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
