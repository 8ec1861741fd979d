"""Summarises a bench/graphql.sh run: the harness's rows per round and
server, the ratios the goals are stated in, and the REST list runs.

    python3 bench/graphql_report.py bench/results/graphql-<time>
"""
import csv
import pathlib
import re
import statistics
import sys

out = pathlib.Path(sys.argv[1])
COLS = ["server", "conc", "threads", "rps", "range", "p50", "p99", "p90", "max",
        "errors", "srv_us", "pg_us", "busy", "wrk", "rss"]


def rows(folder):
    """(conc → row) and the SQL count from one bench.sh results folder."""
    text = (folder / "summary.txt").read_text()
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLS) and cells[1].isdigit():
            found[int(cells[1])] = dict(zip(COLS, cells))
    return found, statements(folder)


# Statements the idle sylphx instances run in the background on the same
# cluster (their job workers claiming work, the reconciler's scan of
# resources by status): they land in the log beside the request's own.
BACKGROUND = re.compile(
    r"UPDATE jobs SET status = 'running'|FROM \"resources\" WHERE \"resources\".\"status\" = ")


def statements(folder):
    """The statements one request ran (bench.sh logs every statement of the
    cluster for one request), background ones left out."""
    log = folder / "sql-one-request.log"
    if not log.exists():
        return "?"
    lines = [line for line in log.read_text().splitlines()
             if re.search(r"LOG:  (statement|execute)", line)]
    return str(sum(1 for line in lines if not BACKGROUND.search(line)))


rounds = sorted({int(p.name.split("-")[0][1:]) for p in out.glob("r*-postgraphile")})
print(f"# GraphQL list query: sylphx vs PostGraphile ({out.name})\n")
print("| round | server | conc | req/s | p50 ms | p99 ms | errors | server CPU µs/req | postgres CPU µs/req | RSS MiB (peak) | SQL/request |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
ratios = {"rps32": [], "p99_32": [], "p50_1": []}
for r in rounds:
    pg, pg_sql = rows(out / f"r{r}-postgraphile")
    sx, sx_sql = rows(out / f"r{r}-sylphx")
    for name, data, sql in (("PostGraphile", pg, pg_sql), ("sylphx", sx, sx_sql)):
        for c in sorted(data):
            d = data[c]
            print(f"| {r} | {name} | {c} | {d['rps']} | {d['p50']} | {d['p99']} | {d['errors']} | "
                  f"{d['srv_us']} | {d['pg_us']} | {d['rss']} | {sql} |")
    if 32 in pg and 32 in sx:
        ratios["rps32"].append(float(sx[32]["rps"]) / float(pg[32]["rps"]))
        ratios["p99_32"].append(float(sx[32]["p99"]) / float(pg[32]["p99"]))
    if 1 in pg and 1 in sx:
        ratios["p50_1"].append(float(sx[1]["p50"]) / float(pg[1]["p50"]))


def show(values):
    return ", ".join(f"{v:.2f}" for v in values) + (
        f" (median {statistics.median(values):.2f})" if values else "")


print("\nRatios sylphx / PostGraphile, round by round:")
print(f"- c=32 requests/s: {show(ratios['rps32'])}  (goal ≥ 3)")
print(f"- c=32 p99: {show(ratios['p99_32'])}  (goal ≤ 0.33)")
print(f"- c=1 p50: {show(ratios['p50_1'])}  (goal ≤ 0.5)")


def side_by_side(title, column, pairs):
    """A table of the sylphx instance and another one (folder suffix), round by round."""
    if not any(out.glob(f"r*-{pairs[1][1]}")):
        return
    print(f"\n# {title}\n")
    print(f"| round | {column} | conc | req/s | p50 ms | p99 ms | errors | server CPU µs/req | postgres CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        for label, suffix in pairs:
            if not (out / f"r{r}-{suffix}").exists():
                continue
            data, _ = rows(out / f"r{r}-{suffix}")
            for c in sorted(data):
                d = data[c]
                print(f"| {r} | {label} | {c} | {d['rps']} | {d['p50']} | {d['p99']} | "
                      f"{d['errors']} | {d['srv_us']} | {d['pg_us']} |")


side_by_side("Two builds (BIN and AB_BIN), same data, same round", "build",
             (("BIN", "sylphx"), ("AB_BIN", "ab")))
side_by_side("Rate limits on and off (same binary, same data, same round)", "rate limits",
             (("off", "sylphx"), ("on", "limits")))

rest = out / "rest.tsv"
if rest.exists():
    runs = list(csv.DictReader(rest.open(), delimiter="\t"))
    print("\n# REST `GET /api/v1/projects` (1,000 projects with environments)\n")
    print("| round | server | conc | req/s | p50 ms | p99 ms | errors | server CPU µs/req | postgres CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print("| " + " | ".join(run.values()) + " |")
    by = {}
    for run in runs:
        by.setdefault((run["round"], run["conc"]), {})[run["server"]] = float(run["req/s"])
    gains = {c: [v["sylphx"] / v["base"] for (r, cc), v in sorted(by.items())
                 if cc == c and "base" in v and v["base"] > 0] for c in ("1", "32")}
    for c, g in gains.items():
        if g:
            print(f"\nREST list req/s, this build / base, c={c}: {show(g)}")
