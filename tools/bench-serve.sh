#!/usr/bin/env bash
# STUN throughput benchmark: the same load (tools/loadgen) against `punchraw serve` and then
# against coturn, both on the loopback of one private network namespace, in one run. Prints
# responses/s of each and the ratio punchraw/coturn, then the rendezvous capacity (bytes per
# session waiting for its second peer, measured in-process over 100,000 sessions).
#
#   sudo tools/bench-serve.sh [SECONDS]        (default 5 per server)
#
# PUNCHRAW_BENCH_SOCKETS / PUNCHRAW_BENCH_WINDOW set the load (default 4 sockets x 64 in
# flight). The machine's cores are shared by server and load generator, as in production
# benchmarks on one host.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
SOCKETS="${PUNCHRAW_BENCH_SOCKETS:-4}"
WINDOW="${PUNCHRAW_BENCH_WINDOW:-64}"
NS="prbsrv$$"
IP=127.0.0.1
PORT=3478

[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespace); run: sudo $0 $*" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "bench: 'turnserver' missing; apt-get install -y coturn" >&2; exit 1; }
cargo build --release --quiet -p punchraw -p punchraw-loadgen
BIN="$PWD/target/release"
TMP="$(mktemp -d)"
SRV_PID=""

stop_server() {
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
cleanup() {
  stop_server
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

# Waits until something answers STUN on $IP:$PORT (at most ~5 s).
wait_ready() {
  for _ in $(seq 1 50); do
    if in_ns "$BIN/punchraw-loadgen" --target "$IP:$PORT" --sockets 1 --window 1 \
        --duration 0.1 --json 2>/dev/null | grep -q '"responses":[1-9]'; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench: the server on $IP:$PORT never answered" >&2
  return 1
}

load() {
  in_ns "$BIN/punchraw-loadgen" --target "$IP:$PORT" --sockets "$SOCKETS" --window "$WINDOW" \
    --duration "$SECS" --json
}
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

# Started directly (not through the in_ns function) so that $! is the server itself.
ip netns exec "$NS" "$BIN/punchraw" serve --listen "$IP" --port "$PORT" 2>"$TMP/punchraw.log" &
SRV_PID=$!
wait_ready
P_JSON="$(load)"
stop_server

: >"$TMP/empty.conf"
ip netns exec "$NS" turnserver -c "$TMP/empty.conf" --stun-only -L "$IP" -p "$PORT" --no-cli --no-tls --no-dtls \
  --log-file stdout >"$TMP/coturn.log" 2>&1 &
SRV_PID=$!
wait_ready
C_JSON="$(load)"
stop_server

p=$(echo "$P_JSON" | field responses_per_s)
c=$(echo "$C_JSON" | field responses_per_s)
echo "load: $SOCKETS sockets x $WINDOW in flight, ${SECS} s per server, $(nproc) cores shared with the load generator"
printf '%-9s %10s %8s %9s %9s %9s\n' server "resp/s" loss "p50 us" "p99 us" unmatched
for row in "punchraw $P_JSON" "coturn $C_JSON"; do
  name="${row%% *}"; j="${row#* }"
  printf '%-9s %10.0f %8s %9s %9s %9s\n' "$name" "$(echo "$j" | field responses_per_s)" \
    "$(echo "$j" | field loss)" "$(echo "$j" | field p50_us)" "$(echo "$j" | field p99_us)" \
    "$(echo "$j" | field unmatched)"
done
awk -v p="$p" -v c="$c" 'BEGIN { if (c > 0) printf "ratio punchraw/coturn: %.2f\n", p / c; else print "ratio: coturn answered nothing" }'

echo
echo "rendezvous capacity (in-memory registry, 100,000 sessions waiting for their second peer):"
"$BIN/punchraw-rdv-capacity" --sessions 100000
