#!/usr/bin/env bash
# AI gateway benchmark: an instant OpenAI-compatible mock upstream, the
# Sylphx gateway in front of it and LiteLLM's proxy in front of the same
# mock, measured side by side with one load tool (oha). See bench/README.md.
#
#   bench/ai.sh            build, start everything, measure, print the tables
#
# Knobs (environment): CARGO_TARGET_DIR, OHA (path to oha), BENCH_VENV (the
# Python venv holding LiteLLM, default bench/.venv), LITELLM_SPEC (pip
# requirement installed into a new venv), BENCH_RESULTS (result directory),
# BENCH_C1_SECS, BENCH_C1_ROUNDS, BENCH_RATE_SECS, BENCH_SEARCH_SECS, BENCH_PROBE_SECS,
# BENCH_RATES (fixed rates), BENCH_RATE_CONNS, BENCH_TTFT_SAMPLES.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${BENCH_VENV:-$HERE/.venv}
LITELLM_SPEC=${LITELLM_SPEC:-litellm[proxy]==1.108.7}
RESULTS=${BENCH_RESULTS:-$HERE/results/$(date +%Y%m%d-%H%M%S)}
C1_SECS=${BENCH_C1_SECS:-4}
C1_ROUNDS=${BENCH_C1_ROUNDS:-3}
RATE_SECS=${BENCH_RATE_SECS:-8}
SEARCH_SECS=${BENCH_SEARCH_SECS:-5}
PROBE_SECS=${BENCH_PROBE_SECS:-4}
FIXED_RATES=${BENCH_RATES:-20 500 5000}
RATE_CONNS=${BENCH_RATE_CONNS:-64}
TTFT_SAMPLES=${BENCH_TTFT_SAMPLES:-1500}
PY=${PYTHON:-python3}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools
log "building sylphx and the mock upstream (release, target dir $TARGET_DIR)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q --bin sylphx --example mock-upstream)
SYLPHX=$TARGET_DIR/release/sylphx
MOCK=$TARGET_DIR/release/examples/mock-upstream

OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
if [[ ! -x $OHA ]]; then
  log "installing oha"
  cargo install oha --locked --version 1.16.0
  OHA=$HOME/.cargo/bin/oha
fi
if [[ ! -x $VENV/bin/litellm ]]; then
  log "installing $LITELLM_SPEC into $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$LITELLM_SPEC"
fi

mkdir -p "$RESULTS/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sylphx-bench.XXXXXX")
PIDS=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local all=()
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

# shellcheck source=bench/gateway.sh
source "$HERE/gateway.sh"

# Polls URL until it answers 200 (or the process died / the time ran out).
wait_ready() {
  local name=$1 pid=$2 url=$3 secs=$4
  shift 4
  local deadline=$((SECONDS + secs))
  until curl -sf -o /dev/null --max-time 2 "$@" "$url"; do
    kill -0 "$pid" 2>/dev/null || die "$name exited; see $RESULTS/logs/$name.log"
    ((SECONDS < deadline)) || die "$name not ready after ${secs}s; see $RESULTS/logs/$name.log"
    sleep 0.05
  done
  log "$name ready ($url)"
}

# VmRSS and VmHWM (kB) summed over a process tree.
mem_kb() {
  local field=$1 pid=$2 total=0 p v
  for p in $(tree_pids "$pid"); do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' /proc/"$p"/status 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# Share of both cores busy over two seconds (others' work, when ours is idle).
cpu_busy() {
  local a b
  a=$(head -1 /proc/stat)
  sleep 2
  b=$(head -1 /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk '{ t = 0; for (i = 2; i <= NF; i++) t += $i; tot[NR] = t; idle[NR] = $5 + $6 }
    END { printf "%.0f%%\n", 100 * (1 - (idle[2] - idle[1]) / (tot[2] - tot[1])) }'
}

# Rounds to two significant digits.
round2() { awk -v x="$1" 'BEGIN { if (x < 10) { print int(x + 0.5); exit } e = int(log(x) / log(10)) - 1; p = 10 ^ e; printf "%d\n", int(x / p + 0.5) * p }'; }

# ---------------------------------------------------------------- start
MOCK_PORT=$(free_port)
GW_PORT=$(free_port)
APPS_PORT=$(free_port)
LL_PORT=$(free_port)

"$MOCK" "127.0.0.1:$MOCK_PORT" >"$RESULTS/logs/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_ready mock "$MOCK_PID" "http://127.0.0.1:$MOCK_PORT/v1/models" 30

# A plain TCP relay in front of the mock, for reference: what any proxy
# pays on this machine for the extra hop (two more sockets, two more
# wake-ups), with no HTTP and no work of its own. Skipped without socat.
RELAY=()
if command -v socat >/dev/null; then
  RELAY_PORT=$(free_port)
  socat "TCP-LISTEN:$RELAY_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:127.0.0.1:$MOCK_PORT,nodelay" \
    >"$RESULTS/logs/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
  wait_ready relay "$RELAY_PID" "http://127.0.0.1:$RELAY_PORT/v1/models" 30
  RELAY=(relay)
fi

gateway_config "$GW_PORT" "$APPS_PORT" "$WORK/data" "$MOCK_PORT" >"$WORK/sylphx.toml"
BENCH_MOCK_KEY=sk-mock "$SYLPHX" serve --config "$WORK/sylphx.toml" >"$RESULTS/logs/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_ready gateway "$GW_PID" "http://127.0.0.1:$GW_PORT/api/v1/health/status" 120
# The first serve on an empty store created this admin token (server::bootstrap).
GW_TOKEN=$(cat "$WORK/data/admin-token")
wait_ready gateway "$GW_PID" "http://127.0.0.1:$GW_PORT/api/v1/models" 10 -H "Authorization: Bearer $GW_TOKEN"

LL_KEY=sk-bench-litellm
cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: mock-chat
    litellm_params:
      model: openai/mock-chat
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: sk-mock
  - model_name: mock-embed
    litellm_params:
      model: openai/mock-embed
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: sk-mock
litellm_settings:
  telemetry: false
general_settings:
  master_key: $LL_KEY
EOF
# No DATABASE_URL: no key database, no spend logs. The bundled cost map
# instead of a download at start-up; no telemetry; errors-only logging.
env -u DATABASE_URL LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR \
  "$VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$LL_PORT" \
  >"$RESULTS/logs/litellm.log" 2>&1 &
LL_PID=$!
PIDS+=("$LL_PID")
wait_ready litellm "$LL_PID" "http://127.0.0.1:$LL_PORT/health/liveliness" 180

declare -A BASE=(
  [mock]="http://127.0.0.1:$MOCK_PORT/v1"
  [gateway]="http://127.0.0.1:$GW_PORT/api/v1"
  [litellm]="http://127.0.0.1:$LL_PORT/v1"
)
declare -A AUTH=([mock]=sk-mock [gateway]=$GW_TOKEN [litellm]=$LL_KEY [relay]=sk-mock)
declare -A PID=([mock]=$MOCK_PID [gateway]=$GW_PID [litellm]=$LL_PID)
if ((${#RELAY[@]})); then
  BASE[relay]="http://127.0.0.1:$RELAY_PORT/v1"
fi
declare -A BODY=(
  [json]='{"model":"mock-chat","messages":[{"role":"user","content":"Say hello."}]}'
  [stream]='{"model":"mock-chat","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
  [embed]='{"model":"mock-embed","input":"Say hello."}'
)
declare -A PATHS=([json]=/chat/completions [stream]=/chat/completions [embed]=/embeddings)
TARGETS=(mock gateway litellm)
# Concurrency 1 and time to first chunk also go through the relay.
C1_TARGETS=(mock "${RELAY[@]}" gateway litellm)

# A real request through each target before anything is measured.
for t in "${C1_TARGETS[@]}"; do
  for kind in json stream embed; do
    out=$(curl -sS --max-time 30 -H "Content-Type: application/json" -H "Authorization: Bearer ${AUTH[$t]}" \
      -d "${BODY[$kind]}" -w '\n%{http_code}' "${BASE[$t]}${PATHS[$kind]}") || die "$t $kind: request failed"
    [[ ${out##*$'\n'} == 200 ]] || die "$t $kind answered: $out"
  done
done
for t in "${TARGETS[@]}"; do
  echo "idle_rss_kb=$(mem_kb VmRSS "${PID[$t]}")" >"$RESULTS/mem-$t.txt"
done
log "all targets answer chat (JSON, streaming) and embeddings"

{
  echo "cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "cores=$(nproc)"
  echo "mem=$(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel=$(uname -sr)"
  echo "oha=$("$OHA" --version)"
  echo "litellm=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
  echo "litellm_workers=1"
  echo "python=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
  echo "sylphx=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo +changes)"
  echo "c1_secs=$C1_SECS"
  echo "c1_rounds=$C1_ROUNDS"
  echo "busy_before=$(cpu_busy)"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rate_secs=$RATE_SECS"
  echo "search_secs=$SEARCH_SECS"
  echo "rate_conns=$RATE_CONNS"
  echo "fixed_rates=$FIXED_RATES"
  echo "ttft_samples=$TTFT_SAMPLES"
} >"$RESULTS/meta.txt"

# oha OUT TARGET KIND [oha options…]: one run, JSON result in OUT.
oha_run() {
  local out=$1 t=$2 kind=$3
  shift 3
  "$OHA" --no-tui --output-format json -o "$out" -w -m POST \
    -H "Content-Type: application/json" -H "Authorization: Bearer ${AUTH[$t]}" \
    -d "${BODY[$kind]}" "$@" "${BASE[$t]}${PATHS[$kind]}"
}

# Waits until TARGET answers three chat requests in a row, each within 1 s
# (after an overload, until its backlog is gone).
settle() {
  local t=$1 ok=0 deadline=$((SECONDS + 120)) r
  while ((ok < 3)); do
    r=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 5 \
      -H "Content-Type: application/json" -H "Authorization: Bearer ${AUTH[$t]}" \
      -d "${BODY[json]}" "${BASE[$t]}/chat/completions" || true)
    if [[ ${r%% *} == 200 ]] && awk -v s="${r#* }" 'BEGIN { exit !(s < 1) }'; then
      ok=$((ok + 1))
    else
      ok=0
      ((SECONDS < deadline)) || die "$t did not recover"
      sleep 0.1
    fi
  done
}

# ---------------------------------------------------------------- measure
log "warm-up"
for t in "${C1_TARGETS[@]}"; do
  for kind in json stream; do
    oha_run "$WORK/warm.json" "$t" "$kind" -c 4 -z 2s
  done
done

# Concurrency 1: interleaved rounds (mock, relay, gateway, LiteLLM, then
# again) so that all of them see the same machine; oha keeps every request's latency
# in a SQLite file per round and report.py pools them.
for round in $(seq "$C1_ROUNDS"); do
  for kind in json stream embed; do
    for t in "${C1_TARGETS[@]}"; do
      f=$RESULTS/c1-$t-$kind-r$round
      oha_run "$f.json" "$t" "$kind" -c 1 -z "${C1_SECS}s" --db-url "$f.db" >/dev/null 2>>"$RESULTS/logs/oha.log"
      log "c=1 round $round $(printf %-6s "$kind") $(printf %-8s "$t") $("$PY" "$HERE/report.py" line "$f.json")"
    done
  done
done

for round in $(seq "$C1_ROUNDS"); do
  for t in "${C1_TARGETS[@]}"; do
    f=$RESULTS/ttft-$t-r$round.json
    "$PY" "$HERE/ttft.py" "${BASE[$t]}/chat/completions" "${AUTH[$t]}" mock-chat $((TTFT_SAMPLES / C1_ROUNDS)) 50 >"$f"
    log "first chunk round $round $(printf %-8s "$t") $("$PY" -c 'import json, sys; t = json.load(open(sys.argv[1])); print("p50 %.0f µs  p99 %.0f µs  errors %d" % (t["p50_us"], t["p99_us"], t["errors"]))' "$f")"
  done
done

declare -A FAILED=()
for r in $FIXED_RATES; do
  for t in "${TARGETS[@]}"; do
    [[ -n ${FAILED[$t]:-} ]] && continue
    oha_run "$RESULTS/rate-$t-$r.json" "$t" json -c "$RATE_CONNS" -q "$r" -z "${RATE_SECS}s" --latency-correction
    log "rate $r/s $(printf %-8s "$t") $("$PY" "$HERE/report.py" line "$RESULTS/rate-$t-$r.json" "$r")"
    "$PY" "$HERE/report.py" check "$RESULTS/rate-$t-$r.json" "$r" || FAILED[$t]=1
    settle "$t"
  done
done

# Highest rate sustained: a closed-loop probe, then steps of ×1.25 up from
# half the probe (or ×0.6 down) to the first failure, then two bisections;
# a step that fails is tried once more (one stall must not decide it).
search() {
  local t=$1 probe rate pass=0 fail=0 n f
  f=$RESULTS/search-$t-probe.json
  oha_run "$f" "$t" json -c "$RATE_CONNS" -z "${PROBE_SECS}s"
  probe=$("$PY" "$HERE/report.py" rps "$f")
  log "search $(printf %-8s "$t") closed-loop probe: $probe req/s"
  settle "$t"
  # One step: a rate counts as sustained when one of two attempts is.
  try() {
    local rate=$1 f=$RESULTS/search-$t-$1.json attempt
    for attempt in 1 2; do
      oha_run "$f" "$t" json -c "$RATE_CONNS" -q "$rate" -z "${SEARCH_SECS}s" --latency-correction
      log "search $(printf %-8s "$t") $rate/s $("$PY" "$HERE/report.py" line "$f" "$rate")"
      settle "$t"
      "$PY" "$HERE/report.py" check "$f" "$rate" && return 0
      ((attempt == 2)) || mv "$f" "${f%.json}-attempt1.json"
    done
    return 1
  }
  rate=$(round2 $((probe / 2 > 1 ? probe / 2 : 1)))
  if try "$rate"; then
    pass=$rate
    for n in $(seq 12); do
      rate=$(round2 $((rate * 5 / 4 + 1)))
      if try "$rate"; then pass=$rate; else fail=$rate; break; fi
    done
  else
    fail=$rate
    for n in $(seq 12); do
      rate=$(round2 $((rate * 3 / 5)))
      ((rate >= 1)) || break
      if try "$rate"; then pass=$rate; break; else fail=$rate; fi
    done
  fi
  for n in 1 2; do
    ((pass > 0 && fail > 0)) || break
    rate=$(round2 $(((pass + fail) / 2)))
    ((rate > pass && rate < fail)) || break
    if try "$rate"; then pass=$rate; else fail=$rate; fi
  done
  printf 'probe=%s\nbest=%s\nfail=%s\n' "$probe" "$pass" "$([[ $fail == 0 ]] || echo "$fail")" >"$RESULTS/max-$t.txt"
  log "search $(printf %-8s "$t") max sustained: $pass req/s"
}
for t in "${TARGETS[@]}"; do
  search "$t"
done

for t in "${TARGETS[@]}"; do
  {
    echo "rss_kb=$(mem_kb VmRSS "${PID[$t]}")"
    echo "hwm_kb=$(mem_kb VmHWM "${PID[$t]}")"
  } >>"$RESULTS/mem-$t.txt"
done

{
  echo "busy_after=$(cpu_busy)"
  echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$RESULTS/meta.txt"
"$PY" "$HERE/report.py" table "$RESULTS" | tee "$RESULTS/summary.md"
log "results in $RESULTS"
