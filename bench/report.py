#!/usr/bin/env python3
"""Reads the result files bench/ai.sh writes and prints figures and tables.

  report.py rps FILE              closed-loop requests per second of an oha run
  report.py check FILE RATE       exit 0 when the run sustained RATE (see SUSTAINED)
  report.py line FILE [RATE]      one-line summary of an oha run (for the log)
  report.py table DIR             the Markdown tables of a whole run

An oha run sustains a rate when every request answered 200, nothing failed
at the transport level, oha achieved at least 95 % of the offered rate, and
the p99 latency (corrected for coordinated omission) stayed under 100 ms.
"""

import json
import math
import os
import sqlite3
import sys

SUSTAINED_SHARE = 0.95
SUSTAINED_P99_S = 0.100

TARGETS = [("mock", "mock direct"), ("gateway", "Sylphx gateway"), ("litellm", "LiteLLM proxy")]
# Concurrency 1 and first chunk also measure a plain TCP relay, for reference.
C1_TARGETS = [TARGETS[0], ("relay", "TCP relay (socat), reference"), *TARGETS[1:]]


def load(path):
    with open(path) as f:
        return json.load(f)


def stats(run):
    s = run["summary"]
    pct = run.get("latencyPercentiles", {})
    codes = run.get("statusCodeDistribution", {}) or {}
    errors = run.get("errorDistribution", {}) or {}
    total_ok = sum(v for k, v in codes.items() if k == "200")
    total_answers = sum(codes.values())
    return {
        "rps": s.get("requestsPerSec") or 0.0,
        "p50": pct.get("p50"),
        "p99": pct.get("p99"),
        "ok": total_ok,
        "not_ok": total_answers - total_ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "codes": codes,
    }


def sustained(run, rate):
    st = stats(run)
    reasons = []
    if st["not_ok"]:
        reasons.append(f"{st['not_ok']} non-200 answers {st['codes']}")
    if st["errors"]:
        reasons.append(f"{st['errors']} errors {st['error_kinds']}")
    if st["ok"] == 0:
        reasons.append("no answers")
    if st["rps"] < SUSTAINED_SHARE * rate:
        reasons.append(f"achieved {st['rps']:.0f}/s")
    if st["p99"] is None or st["p99"] > SUSTAINED_P99_S:
        p99 = "none" if st["p99"] is None else f"{st['p99'] * 1000:.0f} ms"
        reasons.append(f"p99 {p99}")
    return reasons


def percentile(sorted_values, q):
    """Nearest rank."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def pooled(d, prefix):
    """Every round of one concurrency-1 measurement: request latencies
    (seconds) from oha's per-request database, the first request of each
    round (which opened the connection) left out, and the oha summaries."""
    durations, runs = [], []
    for name in sorted(os.listdir(d)):
        if not (name.startswith(prefix + "-r") and name.endswith(".json")):
            continue
        runs.append(stats(load(os.path.join(d, name))))
        db = os.path.join(d, name[:-5] + ".db")
        con = sqlite3.connect(db)
        rows = con.execute("SELECT duration FROM oha WHERE status = 200 ORDER BY start").fetchall()
        con.close()
        durations.extend(r[0] for r in rows[1:])
    if not runs:
        return None
    durations.sort()
    secs = sum(r["ok"] / r["rps"] for r in runs if r["rps"])
    return {
        "rounds": len(runs),
        "samples": len(durations),
        "rps": sum(r["ok"] for r in runs) / secs if secs else 0.0,
        "p50": percentile(durations, 0.50),
        "p90": percentile(durations, 0.90),
        "p99": percentile(durations, 0.99),
        "p999": percentile(durations, 0.999),
        "bad": sum(r["not_ok"] + r["errors"] for r in runs),
    }


def pooled_ttft(d, key):
    times, errors, rounds = [], 0, 0
    for name in sorted(os.listdir(d)):
        if name.startswith(f"ttft-{key}-r") and name.endswith(".json"):
            t = load(os.path.join(d, name))
            times.extend(t["times_us"])
            errors += t["errors"]
            rounds += 1
    if not rounds:
        return None
    times.sort()
    return {
        "samples": len(times),
        "rounds": rounds,
        "errors": errors,
        "p50_us": percentile(times, 0.50),
        "p90_us": percentile(times, 0.90),
        "p99_us": percentile(times, 0.99),
    }


def us(seconds):
    return None if seconds is None else seconds * 1e6


def fmt_us(v):
    if v is None:
        return "—"
    if abs(v) >= 10000:
        return f"{v / 1000:.1f} ms"
    if abs(v) >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def fmt_added(v):
    if v is None:
        return "—"
    return ("+" if v >= 0 else "−") + fmt_us(abs(v))


def line(path, rate=None):
    run = load(path)
    st = stats(run)
    out = (
        f"{st['rps']:9.0f} req/s  p50 {fmt_us(us(st['p50'])):>9}  p99 {fmt_us(us(st['p99'])):>9}"
        f"  200s {st['ok']}"
    )
    if st["not_ok"] or st["errors"]:
        out += f"  non-200 {st['not_ok']}  errors {st['error_kinds']}"
    if rate is not None:
        why = sustained(run, float(rate))
        out += "  -> sustained" if not why else "  -> NOT sustained: " + "; ".join(why)
    return out


def read_kv(path):
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for raw in f:
            if "=" in raw:
                k, v = raw.strip().split("=", 1)
                out[k] = v
    return out


def table(d):
    meta = read_kv(os.path.join(d, "meta.txt"))
    out = []
    w = out.append
    w(f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, {meta.get('mem', '?')} RAM; "
      f"{meta.get('kernel', '?')}")
    w(f"Tools: {meta.get('oha', '?')}; LiteLLM {meta.get('litellm', '?')} "
      f"({meta.get('litellm_workers', '?')} worker, uvicorn), Python {meta.get('python', '?')}; "
      f"sylphx {meta.get('sylphx', '?')} (release build, SQLite store)")
    w(f"CPU busy with other work while all three idled (2 s sample): {meta.get('busy_before', '?')} before the "
      f"measurements, {meta.get('busy_after', '?')} after; load average (1, 5, 15 min): "
      f"{meta.get('load_before', '?')} before, {meta.get('load_after', '?')} after")
    w("")

    # Concurrency 1.
    c1 = {}
    for kind, title in [("json", "chat, JSON"), ("stream", "chat, streaming (whole stream)"),
                        ("embed", "embeddings")]:
        m = pooled(d, f"c1-mock-{kind}")
        if m is None:
            continue
        w(f"### Concurrency 1, {title} ({m['rounds']} interleaved rounds of {meta.get('c1_secs', '?')} s per target)")
        w("")
        w("| target | requests | req/s | p50 | p90 | p99 | p99.9 | added p50 | added p99 | non-200/errors |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, name in C1_TARGETS:
            st = pooled(d, f"c1-{key}-{kind}")
            if st is None:
                continue
            c1[(key, kind)] = st
            added50 = None if key == "mock" else us(st["p50"]) - us(m["p50"])
            added99 = None if key == "mock" else us(st["p99"]) - us(m["p99"])
            w(f"| {name} | {st['samples']} | {st['rps']:.0f} | {fmt_us(us(st['p50']))} | {fmt_us(us(st['p90']))} | "
              f"{fmt_us(us(st['p99']))} | {fmt_us(us(st['p999']))} | "
              f"{fmt_added(added50)} | {fmt_added(added99)} | {st['bad']} |")
        w("")

    # Fixed rates.
    rates = meta.get("fixed_rates", "").split()
    if rates:
        w(f"### Fixed request rates, chat JSON ({meta.get('rate_conns', '?')} connections, "
          f"{meta.get('rate_secs', '?')} s each, latency corrected for coordinated omission)")
        w("")
        w("| rate | target | achieved req/s | p50 | p99 | added p50 | added p99 | sustained |")
        w("|---:|---|---:|---:|---:|---:|---:|---|")
        for r in rates:
            mp = os.path.join(d, f"rate-mock-{r}.json")
            m = stats(load(mp)) if os.path.exists(mp) else None
            for key, name in TARGETS:
                p = os.path.join(d, f"rate-{key}-{r}.json")
                if not os.path.exists(p):
                    w(f"| {r}/s | {name} | — | — | — | — | — | skipped: failed a lower rate |")
                    continue
                run = load(p)
                st = stats(run)
                why = sustained(run, float(r))
                a50 = a99 = None
                if key != "mock" and m is not None and st["p50"] is not None:
                    a50 = us(st["p50"]) - us(m["p50"])
                    a99 = us(st["p99"]) - us(m["p99"])
                w(f"| {r}/s | {name} | {st['rps']:.0f} | {fmt_us(us(st['p50']))} | "
                  f"{fmt_us(us(st['p99']))} | {fmt_added(a50)} | {fmt_added(a99)} | "
                  f"{'yes' if not why else 'no: ' + '; '.join(why)} |")
        w("")

    # Maximum sustained rate.
    w(f"### Maximum sustained rate, chat JSON ({meta.get('search_secs', '?')} s per step, "
      f"{meta.get('rate_conns', '?')} connections, a failed step tried twice)")
    w("")
    w("| target | closed-loop req/s (probe) | max sustained req/s | p50 there | p99 there | first rate not sustained |")
    w("|---|---:|---:|---:|---:|---|")
    maxes = {}
    for key, name in TARGETS:
        kv = read_kv(os.path.join(d, f"max-{key}.txt"))
        if not kv:
            continue
        best = kv.get("best")
        p50 = p99 = "—"
        if best and best != "0":
            st = stats(load(os.path.join(d, f"search-{key}-{best}.json")))
            p50, p99 = fmt_us(us(st["p50"])), fmt_us(us(st["p99"]))
            maxes[key] = float(best)
        fail = kv.get("fail", "")
        why = ""
        if fail:
            why = f"{fail}/s: " + "; ".join(sustained(load(os.path.join(d, f"search-{key}-{fail}.json")), float(fail)))
        w(f"| {name} | {float(kv.get('probe', 0)):.0f} | {best or '—'} | {p50} | {p99} | {why or '—'} |")
    w("")

    # Time to first chunk.
    w(f"### Time to first streamed chunk ({meta.get('ttft_samples', '?')} sequential requests per target "
      f"in {meta.get('c1_rounds', '?')} interleaved rounds, one kept-alive connection)")
    w("")
    w("| target | samples | p50 | p90 | p99 | added p50 | added p99 | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    m = pooled_ttft(d, "mock")
    for key, name in C1_TARGETS:
        t = pooled_ttft(d, key)
        if t is None:
            continue
        a50 = a99 = None
        if key != "mock" and m:
            a50 = t["p50_us"] - m["p50_us"]
            a99 = t["p99_us"] - m["p99_us"]
        w(f"| {name} | {t['samples']} | {fmt_us(t['p50_us'])} | {fmt_us(t['p90_us'])} | {fmt_us(t['p99_us'])} | "
          f"{fmt_added(a50)} | {fmt_added(a99)} | {t['errors']} |")
    w("")

    # Memory.
    w("### Resident memory (kB from /proc/<pid>/status, whole process tree)")
    w("")
    w("| target | VmRSS idle (after start) | VmRSS after the load | VmHWM (peak) |")
    w("|---|---:|---:|---:|")
    mems = {}
    for key, name in TARGETS:
        kv = read_kv(os.path.join(d, f"mem-{key}.txt"))
        if not kv:
            continue
        mems[key] = kv
        mb = lambda k: f"{int(kv[k]) / 1024:.1f} MB" if k in kv else "—"  # noqa: E731
        w(f"| {name} | {mb('idle_rss_kb')} | {mb('rss_kb')} | {mb('hwm_kb')} |")
    w("")

    # Goals.
    w("### Goals")
    w("")
    w("| goal | measured | met |")
    w("|---|---|---|")
    for kind, title in [("json", "chat JSON"), ("stream", "chat streaming, whole stream")]:
        g, m = c1.get(("gateway", kind)), c1.get(("mock", kind))
        if g and m:
            a99 = us(g["p99"]) - us(m["p99"])
            w(f"| added p99 at concurrency 1 ({title}) < 200 µs | {fmt_added(a99)} | {'yes' if a99 < 200 else 'no'} |")
    g, m = pooled_ttft(d, "gateway"), pooled_ttft(d, "mock")
    if g and m:
        a99 = g["p99_us"] - m["p99_us"]
        w(f"| (same bound for time to first chunk, not a stated goal) | {fmt_added(a99)} | {'yes' if a99 < 200 else 'no'} |")
    if "gateway" in maxes and "litellm" in maxes:
        ratio = maxes["gateway"] / maxes["litellm"]
        w(f"| sustained rate ≥ 20× LiteLLM's | {maxes['gateway']:.0f}/s vs {maxes['litellm']:.0f}/s = {ratio:.1f}× | "
          f"{'yes' if ratio >= 20 else 'no'} |")
    if "gateway" in mems:
        hwm = int(mems["gateway"].get("hwm_kb", 0)) / 1024
        w(f"| resident memory < 100 MB | peak {hwm:.1f} MB | {'yes' if hwm < 100 else 'no'} |")
    return "\n".join(out)


def main():
    cmd = sys.argv[1]
    if cmd == "rps":
        print(f"{stats(load(sys.argv[2]))['rps']:.0f}")
    elif cmd == "check":
        sys.exit(1 if sustained(load(sys.argv[2]), float(sys.argv[3])) else 0)
    elif cmd == "line":
        print(line(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    elif cmd == "table":
        print(table(sys.argv[2]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
