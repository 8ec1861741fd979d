#!/usr/bin/env bash
# The GraphQL core against PostGraphile 5.1.5, and the REST list of 1,000
# projects against an earlier build, on one private PostgreSQL cluster with
# the same data, in alternating rounds (this machine's speed drifts: only
# figures of one run compare).
#
#   bench/graphql.sh [rounds]
#
# Knobs (environment):
#   HARNESS    the PostGraphile harness: run-postgraphile.sh, bench.sh,
#              seed-sylphx.py, stop.sh (default ../shared/bench/graphql
#              beside the checkout)
#   BIN        the sylphx build to measure (default target/release/sylphx)
#   BASE_BIN   an earlier build for the REST list comparison (optional)
#   DURATION REPEAT WARMUP PRIME   passed to the harness (10s, 3, 3s, 10s)
#   REST_SECS  length of each REST list run (10)
#   AB_BIN     another sylphx build, measured on the GraphQL query in each
#              round right after BIN, on its own database of the cluster
#              (two builds compared in one run)
#   LIMITS     1: also measure a second instance with rate limits on (limits
#              so high that no request is refused), to show what counting
#              costs; the main instance runs with SYLPHX_RATE_LIMITS=off
#   OUT        where results go (default bench/results/graphql-<UTC time>)
#
# Per round: the harness's bench.sh for PostGraphile, then for sylphx (the
# query `projects(first: 20)` with environments and services: c=1 and c=32,
# requests/s, p50/p99, errors, server and PostgreSQL CPU per request, RSS,
# SQL statements per request), then `GET /api/v1/projects` (1,000 projects,
# with environments) at c=1 and c=32 for sylphx and BASE_BIN.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
HARNESS=${HARNESS:-$(cd "$ROOT/../shared/bench/graphql" 2>/dev/null && pwd || true)}
[[ -x "$HARNESS/bench.sh" ]] || { echo "no harness at '$HARNESS' (set HARNESS)" >&2; exit 1; }
ROUNDS=${1:-3}
BIN=${BIN:-$ROOT/target/release/sylphx}
BASE_BIN=${BASE_BIN:-}
REST_SECS=${REST_SECS:-10}
STATE=${BENCH_STATE:-/tmp/gqlbench}
OUT=${OUT:-$HERE/results/graphql-$(date -u +%Y%m%dT%H%M%SZ)}
export PG_PORT=${PG_PORT:-25432} PGL_PORT=${PGL_PORT:-25678}
QUERY='query ProjectsWithChildren { projects(first: 20) { nodes { id slug name environments { name replicas } services { name port } } } }'
HZ=$(getconf CLK_TCK)
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "no build at $BIN (cargo build --release)" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait "${PIDS[@]}" 2>/dev/null || true
  "$HARNESS/stop.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$HARNESS/run-postgraphile.sh" 2>&1 | tee "$OUT/setup.log"
# shellcheck disable=SC1091
source "$STATE/env"
PGL_URL=$GRAPHQL_URL PGL_PID=$SERVER_PID PGL_NAME=$SERVER_NAME

# start NAME BINARY PORT [RATE_LIMITS]: a server on its own database of the
# cluster, seeded through its REST API like the harness seeds PostGraphile's;
# rate limits off unless RATE_LIMITS is "on" (then far above any rate here).
declare -A URL PID TOKEN DB
start() {
  local name=$1 bin=$2 port=$3 limits=${4:-off} db="sylphx_$1"
  psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "create database $db"
  mkdir -p "$STATE/$name"
  local config=()
  if [[ $limits == on ]]; then
    printf '[rate_limits]\nread = 1000000000000\nwrite = 1000000000000\nadmin = 1000000000000\norganization = 1000000000000\n' \
      >"$STATE/$name/sylphx.toml"
    config=(--config "$STATE/$name/sylphx.toml")
  fi
  # Each its own S3 endpoint (builds that have one).
  local s3=()
  "$bin" serve --help 2>/dev/null | grep -q -- --s3-listen && s3=(--s3-listen "127.0.0.1:$((port + 2))")
  SYLPHX_RATE_LIMITS=$limits "$bin" serve "${config[@]}" --listen "127.0.0.1:$port" --apps-listen "127.0.0.1:$((port + 1))" "${s3[@]}" \
    --data-dir "$STATE/$name/data" \
    --database-url "postgres://postgres@127.0.0.1:$PG_PORT/$db" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
  URL[$name]="http://127.0.0.1:$port"
  DB[$name]="postgres://postgres@127.0.0.1:$PG_PORT/$db"
  for _ in $(seq 300); do
    curl -fsS "${URL[$name]}/api/v1/health/status" >/dev/null 2>&1 && break
    sleep 0.2
  done
  TOKEN[$name]=$(cat "$STATE/$name/data/admin-token")
  python3 "$HARNESS/seed-sylphx.py" "${URL[$name]}" "${TOKEN[$name]}" 1000
  # Statistics for the rows just written (autovacuum would take up to a
  # minute; until then the list statement is planned for a handful of rows).
  psql -X -q "${DB[$name]}" -c analyze
}
start sylphx "$BIN" 25080
SERVERS=(sylphx)
if [[ -n "$BASE_BIN" ]]; then
  start base "$BASE_BIN" 25180
  SERVERS+=(base)
fi
if [[ -n "${AB_BIN:-}" ]]; then
  start ab "$AB_BIN" 25380
fi
if [[ "${LIMITS:-0}" == 1 ]]; then
  start limits "$BIN" 25280 on
fi

ticks() { # utime+stime of the pids and their children, in clock ticks
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13 + $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
pg_pids() { echo "$PG_PID"; pgrep -P "$PG_PID" || true; }

# rest NAME C: one REST list run; appends a TSV row to rest.tsv
rest() {
  local name=$1 c=$2 t out s0 p0 s1 p1 res
  t=$((c < $(nproc) ? c : $(nproc)))
  SYLPHX_AUTH="Bearer ${TOKEN[$name]}" wrk -t"$t" -c"$c" -d3s -s "$HERE/rest-list.lua" \
    "${URL[$name]}/api/v1/projects" >/dev/null 2>&1
  out="$OUT/r$round-rest-$name-c$c.txt"
  s0=$(ticks "${PID[$name]}"); p0=$(ticks $(pg_pids))
  SYLPHX_AUTH="Bearer ${TOKEN[$name]}" wrk -t"$t" -c"$c" -d"${REST_SECS}s" --latency --timeout 30s \
    -s "$HERE/rest-list.lua" "${URL[$name]}/api/v1/projects" >"$out" 2>&1
  s1=$(ticks "${PID[$name]}"); p1=$(ticks $(pg_pids))
  res=$(grep '^RESULT' "$out")
  get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $res"; }
  local n; n=$(get requests)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$c" "$(get rps)" "$(get p50_ms)" \
    "$(get p99_ms)" "$(get errors)" \
    "$(awk -v d=$((s1 - s0)) -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.0f", n ? d/hz*1e6/n : 0}')" \
    "$(awk -v d=$((p1 - p0)) -v n="$n" -v hz="$HZ" 'BEGIN{printf "%.0f", n ? d/hz*1e6/n : 0}')" \
    | tee -a "$OUT/rest.tsv"
}

# One response of each, kept for the record.
curl -fsS -H "Authorization: Bearer ${TOKEN[sylphx]}" "${URL[sylphx]}/api/v1/projects" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); n=sum(len(p["environments"]) for p in d); print(f"REST list: {len(d)} projects, {n} environments")' \
  | tee "$OUT/rest-check.txt"

printf 'round\tserver\tconc\treq/s\tp50 ms\tp99 ms\terrors\tserver CPU µs/req\tpostgres CPU µs/req\n' >"$OUT/rest.tsv"
for round in $(seq 1 "$ROUNDS"); do
  echo "=== round $round of $ROUNDS"
  RESULTS_DIR="$OUT/r$round-postgraphile" GRAPHQL_URL=$PGL_URL SERVER_PID=$PGL_PID \
    SERVER_NAME="$PGL_NAME" PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/bench" "$HARNESS/bench.sh"
  RESULTS_DIR="$OUT/r$round-sylphx" GRAPHQL_URL="${URL[sylphx]}/graphql" SERVER_PID="${PID[sylphx]}" \
    SERVER_NAME="sylphx $(git -C "$ROOT" rev-parse --short HEAD)" PG_URL="${DB[sylphx]}" \
    GQL_AUTH="Bearer ${TOKEN[sylphx]}" GQL_QUERY="$QUERY" "$HARNESS/bench.sh"
  if [[ -n "${PID[ab]:-}" ]]; then
    RESULTS_DIR="$OUT/r$round-ab" GRAPHQL_URL="${URL[ab]}/graphql" SERVER_PID="${PID[ab]}" \
      SERVER_NAME="sylphx $AB_BIN" PG_URL="${DB[ab]}" \
      GQL_AUTH="Bearer ${TOKEN[ab]}" GQL_QUERY="$QUERY" "$HARNESS/bench.sh"
  fi
  if [[ -n "${PID[limits]:-}" ]]; then
    RESULTS_DIR="$OUT/r$round-limits" GRAPHQL_URL="${URL[limits]}/graphql" SERVER_PID="${PID[limits]}" \
      SERVER_NAME="sylphx, rate limits on" PG_URL="${DB[limits]}" \
      GQL_AUTH="Bearer ${TOKEN[limits]}" GQL_QUERY="$QUERY" "$HARNESS/bench.sh"
  fi
  for c in 1 32; do
    for name in "${SERVERS[@]}"; do rest "$name" "$c"; done
  done
done

python3 "$HERE/graphql_report.py" "$OUT" | tee "$OUT/report.md"
