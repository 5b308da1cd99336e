#!/usr/bin/env bash
# Connect benchmark: for several NAT pairs, the time from the second peer's start to
# "connected" (from its --report), against the floor of one RTT to the server plus one RTT
# between the peers, and the probes sent (the sweep's cost; for TCP the SYN attempts, and A's
# SYNs sent with repeats and the sockets its punch opened: the descriptors). UDP and
# TCP (`--tcp`) per pair, TCP with each SYN engine (kernel sockets, crafted SYNs), and per
# pair the raw engine's mean time over the kernel engine's (#11: never above 1). One lab per
# pair.
#
#   sudo tools/bench-connect.sh [--delay MS] [--delay-b MS] [RUNS]   (default: no delay, 3 runs)
#   PAIRS="port-restricted-cone symmetric-random tcp" sudo tools/bench-connect.sh 6
#
# --delay MS puts MS one way on each NAT's uplink (tools/natlab.sh --delay), so the peers are
# 4 x MS apart and the server 2 x MS from each. --delay-b MS puts MS on NAT B's uplink instead
# (peers at different distances from the server; A's is --delay's, or none).
set -euo pipefail
cd "$(dirname "$0")/.."
ONEWAY="" ONEWAY_B=""
while [ $# -gt 0 ]; do
  case "$1" in
    --delay) ONEWAY="${2:?--delay needs MS}"; shift 2 ;;
    --delay-b) ONEWAY_B="${2:?--delay-b needs MS}"; shift 2 ;;
    *) break ;;
  esac
done
RUNS="${1:-3}"
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces); run: sudo $0 $*" >&2; exit 1; }
BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi
LAB="${PUNCHRAW_BENCH_LAB:-prbconn}"
WORK=$(mktemp -d)
SRV_PID=""
cleanup() {
  # serve exits 143 on SIGTERM; that must not end the cleanup under set -e.
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" "$2" | tr -d '" '; }

printf '%-44s %-10s %-8s %10s %10s %10s %8s %8s %6s %6s\n' "pair (A x B)" "" strategy "B->conn" "B->punch" floor ratio probes syns socks
pairs=("port-restricted-cone port-restricted-cone udp tcp" "full-cone symmetric-random udp"
       "port-restricted-cone symmetric-sequential udp tcp" "symmetric-sequential symmetric-sequential tcp"
       "port-restricted-cone symmetric-random udp tcp" "cgn-block-random symmetric-sequential udp tcp"
       "port-restricted-rst port-restricted-rst+router tcp")
# PAIRS="KIND_A KIND_B TRANSPORT...; ..." runs only those, e.g. more runs of one random sweep.
if [ -n "${PAIRS:-}" ]; then
  IFS=';' read -r -a pairs <<< "$PAIRS"
fi
for pair in "${pairs[@]}"; do
  set -- $pair
  transports="${*:3}"
  # KIND_B+router: a router hop in front of NAT B, where low-TTL priming can work.
  lab_opts=()
  case "$2" in *+router) lab_opts=(--router-b); set -- "$1" "${2%+router}" "${@:3}" ;; esac
  label="$1 x $2${lab_opts[*]:+ (router)}${ONEWAY_B:+ (B +${ONEWAY_B} ms)}"
  tools/natlab.sh up --name "$LAB" ${ONEWAY:+--delay "$ONEWAY"} ${ONEWAY_B:+--delay-b "$ONEWAY_B"} \
    "${lab_opts[@]}" "$1" "$2" >/dev/null
  eval "$(tools/natlab.sh info --name "$LAB")"
  tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" 2>/dev/null &
  SRV_PID=$!
  sleep 0.5
  # The floor: B's RTT to the server (from the probe) plus one RTT between the peers.
  # Without delay elements the peers cross the same bridge as the server path, so that is the
  # RTT again; with them they cross both delayed uplinks where each server path crosses one,
  # so the peer RTT is the sum of A's and B's server RTTs, and with --delay alone the floor
  # is three server RTTs (#10: 240 ms at 80 ms).
  # The first rtt_ms is the UDP one (a greedy match would take a later, possibly null, one).
  server_rtt() {
    tools/natlab.sh exec --name "$LAB" "$1" -- "$BIN" probe --server "$SRV1" --json --no-tcp --no-port-mapping \
      | grep -o '"rtt_ms":[0-9.]*' | head -n 1 | cut -d: -f2
  }
  rtt=$(server_rtt b)
  if [ -n "$ONEWAY$ONEWAY_B" ]; then
    rtt_a=$(server_rtt a)
    floor=$(awk -v a="$rtt_a" -v b="$rtt" 'BEGIN { printf "%.1f", 2 * b + a }')
  else
    floor=$(awk -v b="$rtt" 'BEGIN { printf "%.1f", 2 * b }')
  fi
  declare -A total=() count=()
  variants=""
  for t in $transports; do
    case $t in tcp) variants+=" tcp-kernel tcp-raw" ;; *) variants+=" $t" ;; esac
  done
  for i in $(seq 1 "$RUNS"); do
   for t in $variants; do
    s="bench$i${t%%-*}$RANDOM"
    flag=""
    case $t in tcp-*) flag="--tcp --syn-engine ${t#tcp-}" ;; esac
    rm -f "$WORK/a.json" "$WORK/b.json"
    tools/natlab.sh exec --name "$LAB" a -- "$BIN" connect -q $flag --server "$SRV1" --session "$s" --secret b \
      --report "$WORK/a.json" </dev/null >/dev/null 2>&1 &
    a=$!
    sleep 0.3
    tools/natlab.sh exec --name "$LAB" b -- "$BIN" connect -q $flag --server "$SRV1" --session "$s" --secret b \
      --report "$WORK/b.json" </dev/null >/dev/null 2>&1 || true
    wait "$a" || true
    ms=$(field elapsed_ms "$WORK/b.json"); probes=$(field probes_sent "$WORK/a.json")
    punched=$(field time_to_punched_ms "$WORK/b.json")
    strat=$(field strategy "$WORK/b.json"); ok=$(field connected "$WORK/b.json")
    syns=$(field syns_sent "$WORK/a.json"); socks=$(field punch_sockets "$WORK/a.json")
    ratio=$(awk -v m="$ms" -v f="$floor" 'BEGIN { if (f > 0) printf "%.0f", m / f; else print "-" }')
    [ "$ok" = true ] || strat="FAILED"
    if [ "$ok" = true ]; then
      total[$t]=$(( ${total[$t]:-0} + ms )); count[$t]=$(( ${count[$t]:-0} + 1 ))
    fi
    printf '%-44s %-10s %-8s %8s ms %8s ms %8s ms %8s %8s %6s %6s\n' "$label" "$t" "$strat" "$ms" "${punched:--}" "$floor" "$ratio" "$probes" "${syns:--}" "${socks:--}"
   done
  done
  if [ -n "${count[tcp-kernel]:-}" ] && [ -n "${count[tcp-raw]:-}" ]; then
    awk -v l="$label" -v r="${total[tcp-raw]}" -v rn="${count[tcp-raw]}" -v k="${total[tcp-kernel]}" -v kn="${count[tcp-kernel]}" \
      'BEGIN { printf "%-44s raw/kernel mean time to connected: %.0f / %.0f ms = %.2f\n", l, r / rn, k / kn, (r / rn) / (k / kn) }'
    # #11's goal for a cone pair: 2 x (server RTT + peer RTT) + 100 ms, i.e. twice the floor.
    awk -v l="$label" -v r="${total[tcp-raw]}" -v rn="${count[tcp-raw]}" -v f="$floor" \
      'BEGIN { g = 2 * f + 100; printf "%-44s raw mean %.0f ms against 2 x floor + 100 = %.0f ms: %s\n", l, r / rn, g, (r / rn <= g ? "within" : "over") }'
  fi
  unset total count
  cleanup
done
echo "B->conn includes B's own quick NAT classification (two RTTs to the server);"
echo "probes = punch packets sent by A (the prober in a sweep); for tcp, connection attempts (SYNs) by A;"
echo "syns, socks = tcp only: SYNs A sent (repeats included) and sockets A's punch opened (null: not connected);"
echo "TCP's B->conn includes observing the NAT's TCP ports through the server and the TLS handshake;"
echo "B->punch is until the hole opened (time_to_punched_ms: for tcp the TCP handshake, before TLS)."
