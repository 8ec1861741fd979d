#!/usr/bin/env bash
# Live log streams: how fast an environment's log lines reach thousands of
# subscribers (graphql-transport-ws `logs` subscriptions and SSE
# `GET /projects/:id/logs?stream=true`), what the server spends on them,
# and what an idle subscriber costs in memory. See bench/README.md.
#
#   bench/streams.sh       build, start the server, deploy the apps, measure
#
# Cases (run in this order, on one server):
#   c  BENCH_IDLE_C idle subscribers (10000) to an app that prints nothing:
#      the server's VmRSS growth per subscriber, its CPU while they idle
#   a  BENCH_SUBS_A subscribers (1000) to an app printing BENCH_RATE_A
#      lines/s (100)
#   b  BENCH_SUBS_B subscribers (10000) at BENCH_RATE_B lines/s (10)
#
# Knobs (environment): CARGO_TARGET_DIR, BENCH_RESULTS (result directory),
# BENCH_CASES ("c a b"), BENCH_WS_PERCENT (share of websocket subscribers,
# the rest SSE; 50), BENCH_SECS (measured window of a and b; 30),
# BENCH_IDLE_SECS (window of c; 20), BENCH_SUBS_A, BENCH_RATE_A,
# BENCH_SUBS_B, BENCH_RATE_B, BENCH_IDLE_C, BENCH_CONNECT_CONCURRENCY
# (connections opened at once; 64), BENCH_CLIENT_THREADS (the load
# client's runtime threads; 2), BENCH_WS_AUTH (init: the token in
# connection_init, which the server re-checks every 2 s; header: on the
# upgrade request, re-checked the same way), BENCH_READY_SECS (how long the
# subscribers of a case get to be live before it is measured with those
# that are; 300), BENCH_SHARED_SANDBOX (1: run the apps with
# --insecure-shared-sandbox; the default when bubblewrap is missing or
# not root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=${BENCH_RESULTS:-$HERE/results/streams-$(date +%Y%m%d-%H%M%S)}
CASES=${BENCH_CASES:-c a b}
WS_PERCENT=${BENCH_WS_PERCENT:-50}
SECS=${BENCH_SECS:-30}
IDLE_SECS=${BENCH_IDLE_SECS:-20}
SUBS_A=${BENCH_SUBS_A:-1000}
RATE_A=${BENCH_RATE_A:-100}
SUBS_B=${BENCH_SUBS_B:-10000}
RATE_B=${BENCH_RATE_B:-10}
IDLE_C=${BENCH_IDLE_C:-10000}
CONNECT_CONCURRENCY=${BENCH_CONNECT_CONCURRENCY:-64}
CLIENT_THREADS=${BENCH_CLIENT_THREADS:-2}
WS_AUTH=${BENCH_WS_AUTH:-init}
READY_SECS=${BENCH_READY_SECS:-300}
PY=${PYTHON:-python3}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v curl >/dev/null || die "curl is needed"
command -v git >/dev/null || die "git is needed"
command -v "$PY" >/dev/null || die "python3 is needed"

# ---------------------------------------------------------------- build
log "building sylphx and the load client (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q --bin sylphx --example streams-load)
SYLPHX=$TARGET_DIR/release/sylphx
LOAD=$TARGET_DIR/release/examples/streams-load

# Every subscriber is a socket in the server and one in the client.
most=$IDLE_C
((SUBS_A > most)) && most=$SUBS_A
((SUBS_B > most)) && most=$SUBS_B
want=$((most + 4096))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want)); then
  want=$hard
fi
ulimit -n "$want"
(($(ulimit -n) >= most + 256)) || die "ulimit -n is $(ulimit -n) (hard $hard); $most subscribers need more"
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
((port_hi - port_lo > most + 1000)) || log "warning: only $((port_hi - port_lo)) local ports for $most connections"

mkdir -p "$RESULTS/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sylphx-streams.XXXXXX")
chmod 0755 "$WORK" # the sandboxes reach their releases through it
PIDS=()

# A process and all its descendants.
tree_pids() {
  local pid=$1
  [[ -d /proc/$pid ]] || return 0
  echo "$pid"
  local child
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    tree_pids "$child"
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local all=() pid
  for pid in "${PIDS[@]}"; do
    all+=($(tree_pids "$pid"))
  done
  if ((${#all[@]})); then
    kill -TERM "${all[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      local alive=0
      for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    kill -KILL "${all[@]}" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- server
PORT=$(free_port)
APPS_PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
SANDBOX=sandboxed
SERVE_ENV=()
if [[ ${BENCH_SHARED_SANDBOX:-} == 1 || $(id -u) != 0 ]] || ! command -v bwrap >/dev/null; then
  SANDBOX="shared (--insecure-shared-sandbox)"
  SERVE_ENV+=(SYLPHX_INSECURE_SHARED_SANDBOX=true)
fi
CAP=$((most * 2 + 1000))
log "starting sylphx serve on $BASE (apps sandbox: $SANDBOX)"
env "${SERVE_ENV[@]}" SYLPHX_DATA_DIR="$WORK/data" SYLPHX_LISTEN="127.0.0.1:$PORT" \
  SYLPHX_APPS_LISTEN="127.0.0.1:$APPS_PORT" SYLPHX_RATE_LIMITS=off \
  SYLPHX_MAX_CONNECTIONS=$CAP SYLPHX_MAX_CONNECTIONS_PER_IP=$CAP \
  "$SYLPHX" serve >"$RESULTS/logs/sylphx.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
deadline=$((SECONDS + 120))
until curl -sf -o /dev/null --max-time 2 "$BASE/api/v1/health/status"; do
  kill -0 "$SERVER_PID" 2>/dev/null || die "sylphx exited; see $RESULTS/logs/sylphx.log"
  ((SECONDS < deadline)) || die "sylphx not ready after 120 s"
  sleep 0.1
done
# The first serve on an empty store created this admin token.
TOKEN_FILE=$WORK/data/admin-token
TOKEN=$(cat "$TOKEN_FILE")

api() { # METHOD PATH [JSON]
  local args=(-sS --fail-with-body -X "$1" -H "Authorization: Bearer $TOKEN" "$BASE/api/v1$2")
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' -d "$3")
  curl "${args[@]}"
}
jget() { "$PY" -c 'import json, sys; print(eval("d" + sys.argv[1], {"d": json.load(sys.stdin)}))' "$1"; }

# ---------------------------------------------------------------- apps
# Prints `seq=<n> t=<unix ns>` RATE times a second (none when RATE is 0),
# on a fixed schedule, flushing each line; serves 200 on $PORT, which the
# local runtime needs of a web process.
REPO=$WORK/repo
mkdir -p "$REPO"
cat >"$REPO/app.py" <<'PY'
import http.server, os, sys, threading, time

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("listening on", os.environ["PORT"], flush=True)
rate = float(os.environ.get("RATE", "0"))
if rate <= 0:
    threading.Event().wait()
step, n, due, out = 1.0 / rate, 0, time.monotonic(), sys.stdout
while True:
    out.write(f"seq={n} t={time.time_ns()}\n")
    out.flush()
    n += 1
    due += step
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    elif pause < -1:
        due = time.monotonic()  # far behind (machine busy): no burst
PY
printf 'web: exec python3 app.py\n' >"$REPO/Procfile"
git -C "$REPO" init -q -b main
git -C "$REPO" add -A
git -C "$REPO" -c user.email=bench@example.com -c user.name=bench commit -qm app

set_rate() { # PROJECT RATE
  api POST "/projects/$1/env-vars" "{\"envType\":\"production\",\"vars\":[{\"key\":\"RATE\",\"value\":\"$2\"}]}" >/dev/null
}
deploy() { # PROJECT: deploys production and waits for success
  local id status deadline=$((SECONDS + 180))
  id=$(api POST "/projects/$1/deploy" '{}' | jget '["deploymentId"]')
  while :; do
    status=$(api GET "/projects/$1/deployments" | "$PY" -c \
      'import json, sys; print(next((d["status"] for d in json.load(sys.stdin) if d["id"] == sys.argv[1]), "?"))' "$id")
    case $status in
      success) break ;;
      failed) die "deploy of $1 failed: $(api GET "/projects/$1/deployments")" ;;
    esac
    ((SECONDS < deadline)) || die "deploy of $1 not done after 180 s (status $status)"
    sleep 0.2
  done
  log "deployed $1 ($id)"
}

for p in producer quiet; do
  api POST /projects "{\"name\":\"$p\",\"slug\":\"$p\",\"gitRepository\":\"$REPO\"}" >/dev/null
done
set_rate quiet 0
set_rate producer "$RATE_A"
deploy quiet
deploy producer
PRODUCER_RATE=$RATE_A

# ---------------------------------------------------------------- cases
# Share of both cores busy over two seconds: others' work, ours being idle
# (the producer app aside).
cpu_busy() {
  local a b
  a=$(head -1 /proc/stat)
  sleep 2
  b=$(head -1 /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk '{ t = 0; for (i = 2; i <= NF; i++) t += $i; tot[NR] = t; idle[NR] = $5 + $6 }
    END { printf "%.0f %%\n", 100 * (1 - (idle[2] - idle[1]) / (tot[2] - tot[1])) }'
}
BUSY_BEFORE=$(cpu_busy)
log "machine busy before the cases: $BUSY_BEFORE"
fds() { ls /proc/"$SERVER_PID"/fd 2>/dev/null | wc -l; }
BASE_FDS=$(fds)

# Waits until the server has closed the previous case's connections.
drained() {
  local deadline=$((SECONDS + 120))
  while (($(fds) > BASE_FDS + 50)) && ((SECONDS < deadline)); do sleep 0.5; done
  sleep 2
}

split() { # N: "ws sse" counts
  local ws=$(($1 * WS_PERCENT / 100))
  echo "$ws $(($1 - ws))"
}

run_case() { # NAME ARGS...
  local name=$1
  shift
  log "case $name: $*"
  "$LOAD" --base "$BASE" --token-file "$TOKEN_FILE" --server-pid "$SERVER_PID" \
    --project producer --idle-project quiet --threads "$CLIENT_THREADS" \
    --connect-concurrency "$CONNECT_CONCURRENCY" --ws-auth "$WS_AUTH" --ready-timeout "$READY_SECS" "$@" \
    >"$RESULTS/case-$name.json" 2>"$RESULTS/logs/client-$name.log" ||
    die "load client failed in case $name; see $RESULTS/logs/client-$name.log"
  kill -0 "$SERVER_PID" 2>/dev/null || die "sylphx exited during case $name"
  printf '%s\n' "$@" >"$RESULTS/case-$name.args"
  drained
}

for c in $CASES; do
  case $c in
    c)
      read -r ws sse < <(split "$IDLE_C")
      run_case c --idle-ws "$ws" --idle-sse "$sse" --duration "$IDLE_SECS"
      ;;
    a | b)
      if [[ $c == a ]]; then n=$SUBS_A rate=$RATE_A; else n=$SUBS_B rate=$RATE_B; fi
      if [[ $rate != "$PRODUCER_RATE" ]]; then
        set_rate producer "$rate"
        deploy producer
        PRODUCER_RATE=$rate
      fi
      read -r ws sse < <(split "$n")
      echo "$rate" >"$RESULTS/case-$c.rate"
      run_case "$c" --ws "$ws" --sse "$sse" --duration "$SECS"
      ;;
    *) die "unknown case '$c' (a, b or c)" ;;
  esac
done

BUSY_AFTER=$(cpu_busy)

# ---------------------------------------------------------------- summary
{
  echo "# Live log streams, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "sylphx $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), SQLite, rate limits off," \
    "apps $SANDBOX; $(nproc) cores; websocket share $WS_PERCENT %, websocket token in $WS_AUTH; client threads $CLIENT_THREADS." \
    "Both cores busy with nothing measured running: $BUSY_BEFORE before the cases, $BUSY_AFTER after."
  echo
  "$PY" - "$RESULTS" <<'PY'
import json, os, sys

d = sys.argv[1]
def case(name):
    p = os.path.join(d, f"case-{name}.json")
    return json.load(open(p)) if os.path.exists(p) else None

def f(x, unit=""):
    return "—" if x is None else f"{x:g}{unit}"

rows = []
for name in ("a", "b"):
    j = case(name)
    if not j:
        continue
    rate = open(os.path.join(d, f"case-{name}.rate")).read().strip()
    s, l = j["subscribers"], j["latency_ms"]
    share = lambda v: "—" if v is None else f"{v * 100:.0f} %"
    got = j["deliveries"] + j["late_subscriber_deliveries"]
    cpu = j["server_cpu_secs"]["window"]
    per = "—" if cpu is None or not got else f"{cpu / got * 1e6:.1f} µs"
    rows.append(
        f"| {name} | {s['ws'] + s['sse']} ({s['ws']} ws / {s['sse']} SSE) | {s['live_at_window_start']} "
        f"({j['connect_secs']['active']:g} s) | {j['connect_failures']} ({j['connect_errors']}) "
        f"| {rate}/s ({f(j['line_rate'])}) | {j['window_secs']:.0f} s "
        f"| {j['deliveries']} of {j['expected_deliveries']} | {j['lost_lines']} | {j['lagged_notices']} "
        f"| {f(l['p50'], ' ms')} | {f(l['p99'], ' ms')} | {f(l['max'], ' ms')} "
        f"| {share(j['server_cpu_share'])} | {per} | {share(j['client_cpu_share'])} "
        f"| {share(j['machine_busy_share'])} |"
    )
if rows:
    print("| case | subscribers | live at start (connect time) | connect failures (failed attempts) "
          "| lines/s (achieved) | window | deliveries | lost | lagged notices | p50 | p99 | max "
          "| server CPU | server CPU per delivery | client CPU | both cores busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print("Latency: from the line's `t` (the app's clock, just before it writes the line) to the client "
          "reading it. Lost: lines of the window a subscriber live at its start did not get. "
          "CPU: share of one core over the window (server: utime+stime of `serve` from /proc; "
          "per delivery: that CPU time over the lines delivered in the window).")
    print()

j = case("c")
if j:
    s, r = j["subscribers"], j["server_rss_kib"]
    n = s["idle_ws"] + s["idle_sse"]
    per = r["per_idle_subscriber"]
    print("| case | idle subscribers | live | VmRSS before | VmRSS subscribed | growth | per subscriber "
          "| server CPU while idle | connect failures |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    share = j["server_cpu_share"]
    print(f"| c | {n} ({s['idle_ws']} ws / {s['idle_sse']} SSE) | {s['live']} | {r['before'] / 1024:.1f} MiB "
          f"| {r['subscribed'] / 1024:.1f} MiB | {r['growth'] / 1024:.1f} MiB | {f(per, ' KiB')} "
          f"| {'—' if share is None else f'{share * 100:.1f} %'} over {j['window_secs']:.0f} s "
          f"| {j['connect_failures']} ({j['connect_errors']} errors) |")
    print()

for name in ("a", "b", "c"):
    j = case(name)
    if j and j["errors"]:
        print(f"Errors in case {name} (distinct messages, at most 20):")
        for e in j["errors"]:
            print(f"- {e['count']}× `{e['message']}`")
        print()
PY
} >"$RESULTS/summary.md"
cat "$RESULTS/summary.md"
log "results in $RESULTS"
