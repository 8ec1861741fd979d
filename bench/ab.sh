#!/usr/bin/env bash
# Two builds of sylphx side by side at concurrency 1: the mock upstream
# direct, a TCP relay (socat, when installed), gateway A and gateway B,
# measured in interleaved rounds with oha. For checking what one change
# does to the gateway's latency and CPU; bench/ai.sh is the full benchmark.
#
#   bench/ab.sh A_BINARY B_BINARY [rounds] [seconds]
#
# Knobs (environment): CARGO_TARGET_DIR (where the mock is built), OHA,
# KIND (json, the default, or stream).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
A=${1:?usage: bench/ab.sh A_BINARY B_BINARY [rounds] [seconds]}
B=${2:?usage: bench/ab.sh A_BINARY B_BINARY [rounds] [seconds]}
ROUNDS=${3:-3}
SECS=${4:-4}
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
[[ -x $OHA ]] || { echo "oha not found: cargo install oha --locked --version 1.16.0" >&2; exit 1; }

(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q --example mock-upstream)
MOCK=$TARGET_DIR/release/examples/mock-upstream

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sylphx-ab.XXXXXX")
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/gateway.sh
source "$HERE/gateway.sh"
until_up() { # url [curl args]
  local url=$1
  shift
  for _ in $(seq 600); do
    curl -sf -o /dev/null --max-time 2 "$@" "$url" && return 0
    sleep 0.1
  done
  echo "$url never answered" >&2
  exit 1
}

MOCK_PORT=$(free_port)
"$MOCK" "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
until_up "http://127.0.0.1:$MOCK_PORT/v1/models"
declare -A URL=([mock]="http://127.0.0.1:$MOCK_PORT/v1/chat/completions")
declare -A TOKEN=([mock]=sk-mock)
NAMES=(mock)
if command -v socat >/dev/null; then
  RELAY_PORT=$(free_port)
  socat "TCP-LISTEN:$RELAY_PORT,bind=127.0.0.1,reuseaddr,fork,nodelay" "TCP:127.0.0.1:$MOCK_PORT,nodelay" &
  PIDS+=($!)
  until_up "http://127.0.0.1:$RELAY_PORT/v1/models"
  URL[relay]="http://127.0.0.1:$RELAY_PORT/v1/chat/completions"
  TOKEN[relay]=sk-mock
  NAMES+=(relay)
fi
declare -A PID
for side in A B; do
  bin=${!side}
  port=$(free_port)
  mkdir -p "$WORK/$side"
  gateway_config "$port" "$(free_port)" "$WORK/$side/data" "$MOCK_PORT" >"$WORK/$side/sylphx.toml"
  BENCH_MOCK_KEY=sk-mock "$bin" serve --config "$WORK/$side/sylphx.toml" >"$WORK/$side/serve.log" 2>&1 &
  PID[$side]=$!
  PIDS+=($!)
  until_up "http://127.0.0.1:$port/api/v1/health/status"
  URL[$side]="http://127.0.0.1:$port/api/v1/chat/completions"
  TOKEN[$side]=$(cat "$WORK/$side/data/admin-token")
  NAMES+=("$side")
done

BODY='{"model":"mock-chat","messages":[{"role":"user","content":"Say hello."}]}'
[[ ${KIND:-json} == stream ]] && BODY='{"model":"mock-chat","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
run() { # name seconds
  "$OHA" --no-tui -c 1 -z "${2}s" --output-format json -m POST -H "Authorization: Bearer ${TOKEN[$1]}" \
    -T application/json -d "$BODY" "${URL[$1]}"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

for name in "${NAMES[@]}"; do run "$name" 2 >/dev/null; done
echo "A = $A"
echo "B = $B"
echo "chat ${KIND:-json}, concurrency 1, ${SECS}s per target and round; added = target - mock (same round)"
for round in $(seq "$ROUNDS"); do
  declare -A P50=() P99=()
  for name in "${NAMES[@]}"; do
    before=0
    [[ -n ${PID[$name]:-} ]] && before=$(cpu_ticks "${PID[$name]}")
    run "$name" "$SECS" >"$WORK/oha.json"
    after=0
    [[ -n ${PID[$name]:-} ]] && after=$(cpu_ticks "${PID[$name]}")
    python3 - "$WORK/oha.json" "$round" "$name" "$before" "$after" "$(getconf CLK_TCK)" "${P50[mock]:-0}" "${P99[mock]:-0}" <<'PY' >"$WORK/line"
import json, sys
path, rnd, name, before, after, hz, m50, m99 = sys.argv[1:]
d = json.load(open(path))
n = sum(d["statusCodeDistribution"].values())
ok = d["statusCodeDistribution"].get("200", 0)
p = d["latencyPercentiles"]
p50, p99 = round(p["p50"] * 1e6), round(p["p99"] * 1e6)
line = f"round {rnd} {name:5} n={n} (200: {ok}) p50 {p50} µs p99 {p99} µs"
if name not in ("mock",):
    line += f"  added p50 +{p50 - int(m50)} µs p99 +{p99 - int(m99)} µs"
if int(after) > int(before):
    line += f"  CPU {(int(after) - int(before)) / int(hz) / n * 1e6:.0f} µs/request"
print(line)
print(p50, p99)
PY
    head -1 "$WORK/line"
    read -r P50[$name] P99[$name] < <(tail -1 "$WORK/line")
  done
done
