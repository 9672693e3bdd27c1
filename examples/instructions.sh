#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: Droid's server
# or client beside rathole's, under the same wrk load through an nginx
# origin. Wall-clock figures on a shared 2-core machine swing by a third
# from run to run; an instruction count of the same binary does not, so
# this is how a user-space change is measured before `peers` times it.
# It counts user space only: the kernel's share (syscalls, copies) is not in
# it, and under valgrind the threads take turns, so it says nothing of speed.
#
# Usage, from the checkout's root, after `bash ../shared/bench/peers.sh` has
# run once (it installs wrk, nginx and rathole into BENCH_DIR):
#   bash examples/instructions.sh [droid|rathole] [server|client] [small|big] [SECS]
# Prints one line: requests served, instructions, instructions per request.
# Everything listens on 127.0.0.1; every wait is bounded.
set -u
TARGET=${1:-droid}; WHICH=${2:-server}; TEST=${3:-small}; SECS=${4:-10}
D=${BENCH_DIR:-/tmp/droid-peerbench}
BIN=${DROID_BIN:-target/release/droid}
RATHOLE=$D/bin-rathole/bin/rathole
WORK=$(mktemp -d)
for tool in valgrind callgrind_control wrk nginx curl ss; do
  command -v "$tool" >/dev/null || { echo "needs $tool (peers.sh installs wrk and nginx; apt-get install valgrind)"; exit 2; }
done
[ -f "$D/origin/nginx.conf" ] || { echo "no origin in $D: run ../shared/bench/peers.sh once"; exit 2; }

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Waits up to 30 s for a command to succeed.
until_ok() { for _ in $(seq 300); do "$@" && return 0; sleep 0.1; done; echo "timed out: $*"; exit 1; }
status_is_200() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$@")" = 200 ]; }
listening() { ss -ltnH "sport = :$1" | grep -q .; }

nginx -c "$D/origin/nginx.conf" >/dev/null 2>&1 & PIDS+=($!)
until_ok status_is_200 http://127.0.0.1:8000/small

VG=(valgrind --tool=callgrind --callgrind-out-file="$WORK/out" --instr-atstart=no)
server_pre=(); client_pre=()
if [ "$WHICH" = server ]; then server_pre=("${VG[@]}"); else client_pre=("${VG[@]}"); fi
case $TARGET in
  droid)
    [ -x "$BIN" ] || { echo "no $BIN: cargo build --release"; exit 2; }
    "${server_pre[@]}" "$BIN" server --domain bench.test --http 127.0.0.1:8092 \
      --control 127.0.0.1:7836 >"$WORK/server.log" 2>&1 & PIDS+=($!); SERVER=$!
    until_ok listening 7836
    "${client_pre[@]}" "$BIN" http 127.0.0.1:8000 --server 127.0.0.1:7836 \
      --name bench ${DROID_CLIENT_ARGS:-} >"$WORK/client.log" 2>&1 & PIDS+=($!); CLIENT=$!
    URL=http://127.0.0.1:8092; HOST=(-H 'Host: bench.bench.test') ;;
  rathole)
    [ -x "$RATHOLE" ] || { echo "no $RATHOLE: run peers.sh with rathole once"; exit 2; }
    printf '[server]\nbind_addr = "127.0.0.1:2333"\ndefault_token = "t"\n[server.services.bench]\nbind_addr = "127.0.0.1:8091"\n' >"$WORK/s.toml"
    printf '[client]\nremote_addr = "127.0.0.1:2333"\ndefault_token = "t"\n[client.services.bench]\nlocal_addr = "127.0.0.1:8000"\n' >"$WORK/c.toml"
    "${server_pre[@]}" "$RATHOLE" --server "$WORK/s.toml" >"$WORK/server.log" 2>&1 & PIDS+=($!); SERVER=$!
    until_ok listening 2333
    "${client_pre[@]}" "$RATHOLE" --client "$WORK/c.toml" >"$WORK/client.log" 2>&1 & PIDS+=($!); CLIENT=$!
    URL=http://127.0.0.1:8091; HOST=() ;;
  *) echo "usage: $0 [droid|rathole] [server|client] [small|big] [SECS]"; exit 2 ;;
esac
until_ok status_is_200 "${HOST[@]}" "$URL/small"
if [ "$TEST" = small ]; then path=/small; conns=64; else path=/big; conns=16; fi
measured=$SERVER; [ "$WHICH" = client ] && measured=$CLIENT

# Warm up uncounted, then count only the measured window.
timeout 30 wrk -t2 -c"$conns" -d2s "${HOST[@]}" "$URL$path" >/dev/null
callgrind_control -i on "$measured" >/dev/null 2>&1
timeout $((SECS + 30)) wrk -t2 -c"$conns" -d"${SECS}s" "${HOST[@]}" "$URL$path" >"$WORK/wrk.txt"
callgrind_control -i off "$measured" >/dev/null 2>&1
requests=$(grep -o '[0-9]* requests' "$WORK/wrk.txt" | awk '{print $1}')
kill "$CLIENT" "$SERVER"; wait "$CLIENT" "$SERVER" 2>/dev/null
log=$WORK/server.log; [ "$WHICH" = client ] && log=$WORK/client.log
instructions=$(grep 'Collected' "$log" | tail -1 | tr -d , | awk '{print $4}')
[ -n "${CALLGRIND_OUT:-}" ] && cp "$WORK/out"* "$CALLGRIND_OUT" 2>/dev/null
[ -n "$requests" ] && [ "$requests" -gt 0 ] && [ -n "$instructions" ] || { echo "no count (see $log)"; exit 1; }
echo "$TARGET $WHICH $TEST: $requests requests, $instructions instructions, $((instructions / requests)) per request"
