#!/usr/bin/env bash
# What the inspector costs: one droid server and two clients of it, one
# with the inspector capturing every exchange and one with --no-inspect,
# both in front of the same nginx origin, loaded by wrk in alternating
# rounds of one run. Prints requests/s (or MiB/s) and the client's CPU per
# request for each, and the ratio on/off.
#
# Usage, from the checkout's root, after `bash ../shared/bench/peers.sh`
# has run once (it installs wrk and nginx into BENCH_DIR) and
# `cargo build --release`:
#   bash examples/inspect_cost.sh [ROUNDS] [SECS]
# Everything listens on 127.0.0.1; every wait is bounded; every process
# started here is stopped by its pid.
set -u
ROUNDS=${1:-3}; SECS=${2:-8}
D=${BENCH_DIR:-/tmp/droid-peerbench}
BIN=${DROID_BIN:-target/release/droid}
WORK=$(mktemp -d)
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (peers.sh installs wrk and nginx)"; exit 2; }
done
[ -f "$D/origin/nginx.conf" ] || { echo "no origin in $D: run ../shared/bench/peers.sh once"; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release"; exit 2; }

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

until_ok() { for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done; echo "timed out: $*"; exit 1; }
status_is_200() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$@")" = 200 ]; }

nginx -c "$D/origin/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
until_ok status_is_200 http://127.0.0.1:8000/small
"$BIN" server --domain cost.test --http 127.0.0.1:8093 --control 127.0.0.1:7837 >"$WORK/server.log" 2>&1 & PIDS+=($!)
until_ok curl -s -o /dev/null http://127.0.0.1:8093/
DROID_STATE_DIR=$WORK "$BIN" http 127.0.0.1:8000 --server 127.0.0.1:7837 --name on \
  --inspect 127.0.0.1:0 >"$WORK/on.log" 2>&1 & ON=$!; PIDS+=($ON)
DROID_STATE_DIR=$WORK "$BIN" http 127.0.0.1:8000 --server 127.0.0.1:7837 --name off \
  --no-inspect >"$WORK/off.log" 2>&1 & OFF=$!; PIDS+=($OFF)
until_ok status_is_200 -H 'Host: on.cost.test' http://127.0.0.1:8093/small
until_ok status_is_200 -H 'Host: off.cost.test' http://127.0.0.1:8093/small

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run NAME PID PATH CONNS: prints "rate cpu_us_per_request"
run() {
  local before after out
  before=$(ticks "$2")
  out=$(timeout $((SECS + 20)) wrk -t2 -c"$4" -d"${SECS}s" -H "Host: $1.cost.test" "http://127.0.0.1:8093$3")
  after=$(ticks "$2")
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" -v big="$5" '
    /Requests\/sec/ { rps = $2 }
    /requests in/ { n = $1 }
    END { rate = big ? rps : rps; printf "%.0f %.1f\n", rate, (n > 0 ? t / hz * 1e6 / n : 0) }'
}

printf "%-6s %-5s %12s %12s %14s %14s %8s %8s\n" test round "off req/s" "on req/s" "off client us" "on client us" "on/off" "cpu on/off"
for test in small big; do
  if [ "$test" = small ]; then path=/small; conns=64; else path=/big; conns=16; fi
  for r in $(seq "$ROUNDS"); do
    read -r off_rate off_cpu < <(run off "$OFF" "$path" "$conns" 0)
    read -r on_rate on_cpu < <(run on "$ON" "$path" "$conns" 0)
    awk -v t="$test" -v r="$r" -v a="$off_rate" -v b="$on_rate" -v c="$off_cpu" -v d="$on_cpu" \
      'BEGIN { printf "%-6s %-5s %12s %12s %14s %14s %8.3f %8.3f\n", t, r, a, b, c, d, b / a, d / c }'
  done
done
echo "big = 1 MiB answers, 16 connections (req/s x 1 MiB = MiB/s); small = 100 B, 64 connections"
