#!/usr/bin/env bash
# HTTP/2 and gRPC through Droid beside the same servers reached directly,
# in alternating rounds of one run (issue 33's figures):
#   - h2load: 100-byte answers over one HTTP/2 connection with 100 streams,
#     from nginx serving h2c (prior knowledge), directly and through
#     `droid http --app-protocol h2c`;
#   - gRPC unary calls of 100 bytes to Python's grpcio server, from
#     grpcio's client (one channel, THREADS threads) and from h2load (one
#     connection, 100 streams), directly and through Droid.
# Prints each figure's median, the ratio droid/direct, and Droid's CPU
# (server + client) per request.
#
# Usage, from the checkout's root, after `cargo build --release`:
#   bash examples/h2_bench.sh [ROUNDS] [SECS]
# (DROID_CLIENT_ARGS=--no-inspect measures the clients without the
# inspector; THREADS sets grpcio's threads, 8 by default.)
# Needs nginx, h2load (Debian: nginx-light or nginx, nghttp2-client) and
# grpcio (pip). Everything listens on 127.0.0.1; every wait is bounded;
# every process started here is stopped by its pid.
set -u
ROUNDS=${1:-3}; SECS=${2:-8}; THREADS=${THREADS:-8}
BIN=${DROID_BIN:-target/release/droid}
WORK=$(mktemp -d)
for tool in nginx h2load curl python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "needs $tool"; exit 2; }
done
python3 -c 'import grpc' 2>/dev/null || { echo "needs grpcio (pip install grpcio)"; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release"; exit 2; }
export PATH="$PATH:/usr/sbin"

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
until_ok() { for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done; echo "timed out: $*"; exit 1; }
h2_ok() { [ "$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' "$@")" = 200 ]; }

# nginx: h2c with prior knowledge on 8101, 100 bytes at /small.
SMALL=$(printf 'x%.0s' $(seq 100))
printf '\0\0\0\0\x64%s' "$SMALL" >"$WORK/unary.bin"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  server {
    listen 127.0.0.1:8101 http2;
    location /small { return 200 "$SMALL"; }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)
until_ok h2_ok http://127.0.0.1:8101/small

python3 tests/grpc_peer.py serve --until-killed >"$WORK/grpc.out" 2>&1 &
PIDS+=($!)
until_ok grep -q '^port' "$WORK/grpc.out"
GRPC_PORT=$(awk '/^port/{print $2}' "$WORK/grpc.out")

"$BIN" server --domain bench.test --http 127.0.0.1:8094 --control 127.0.0.1:7838 >"$WORK/server.log" 2>&1 &
SERVER=$!; PIDS+=($SERVER)
until_ok curl -s -o /dev/null http://127.0.0.1:8094/
DROID_STATE_DIR=$WORK "$BIN" http 127.0.0.1:8101 --server 127.0.0.1:7838 --name web \
  --app-protocol h2c ${DROID_CLIENT_ARGS:-} >"$WORK/web.log" 2>&1 & WEB=$!; PIDS+=($WEB)
DROID_STATE_DIR=$WORK "$BIN" http "$GRPC_PORT" --server 127.0.0.1:7838 --name grpc \
  --app-protocol h2c ${DROID_CLIENT_ARGS:-} >"$WORK/grpc.log" 2>&1 & GRPC=$!; PIDS+=($GRPC)
until_ok h2_ok -H 'Host: web.bench.test' http://127.0.0.1:8094/small
grpc_ok() {
  curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    -H 'Host: grpc.bench.test' --data-binary @"$WORK/unary.bin" -D - -o /dev/null \
    http://127.0.0.1:8094/droid.test.Echo/Unary | grep -q '^HTTP/2 200'
}
until_ok grpc_ok

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# h2load for SECS on one connection with 100 streams: requests/s (0 when
# any request failed).
h2() {
  local out; out=$(timeout $((SECS + 30)) h2load -c 1 -m 100 -D "$SECS" --warm-up-time 1 "$@" 2>&1)
  echo "$out" | grep -q ' 0 failed, 0 errored, 0 timeout' || { echo 0; return; }
  echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}'
}
small_direct() { h2 http://127.0.0.1:8101/small; }
small_droid() { h2 -H ':authority: web.bench.test' http://127.0.0.1:8094/small; }
grpc_args=(-d "$WORK/unary.bin" -H 'content-type: application/grpc' -H 'te: trailers')
grpc_h2_direct() { h2 "${grpc_args[@]}" "http://127.0.0.1:$GRPC_PORT/droid.test.Echo/Unary"; }
grpc_h2_droid() { h2 "${grpc_args[@]}" -H ':authority: grpc.bench.test' http://127.0.0.1:8094/droid.test.Echo/Unary; }
grpcio() {
  timeout $((SECS + 30)) python3 tests/grpc_peer.py bench "$1" "$2" "$SECS" "$THREADS" | awk '{print $4}'
}
grpc_py_direct() { grpcio "127.0.0.1:$GRPC_PORT" "127.0.0.1:$GRPC_PORT"; }
grpc_py_droid() { grpcio 127.0.0.1:8094 grpc.bench.test; }

declare -A results cpu_us
for round in $(seq "$ROUNDS"); do
  for test in small grpc_h2 grpc_py; do
    for via in direct droid; do
      client=$WEB; [ "$test" = small ] || client=$GRPC
      before=$(( $(cpu $SERVER) + $(cpu $client) ))
      rate=$("${test}_${via}")
      after=$(( $(cpu $SERVER) + $(cpu $client) ))
      results[$test.$via]+="$rate "
      if [ "$via" = droid ] && [ "${rate%.*}" -gt 0 ] 2>/dev/null; then
        us=$(awk -v t=$((after - before)) -v hz="$TICK" -v r="$rate" -v s="$SECS" \
          'BEGIN {printf "%.1f", t / hz * 1e6 / (r * s)}')
        cpu_us[$test]+="$us "
      fi
      echo "round $round $test $via: $rate/s" >&2
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
printf '%-34s %12s %12s %8s %14s\n' test direct/s droid/s ratio "droid CPU µs"
for test in small grpc_h2 grpc_py; do
  d=$(echo "${results[$test.direct]}" | median); t=$(echo "${results[$test.droid]}" | median)
  c=$(echo "${cpu_us[$test]:-}" | median)
  label=$test
  case $test in
    small) label="h2load 100 B, 1 conn x 100 streams" ;;
    grpc_h2) label="gRPC unary, h2load 1 x 100" ;;
    grpc_py) label="gRPC unary, grpcio $THREADS threads" ;;
  esac
  printf '%-34s %12.0f %12.0f %8.2f %14s\n' "$label" "$d" "$t" "$(awk -v a="$t" -v b="$d" 'BEGIN {print b ? a / b : 0}')" "$c"
done
