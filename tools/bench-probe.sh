#!/usr/bin/env bash
# Probe-time benchmark: punchraw probe vs the classic RFC 3489 `stun` client and coturn's
# `turnutils_natdiscovery -m -f`, all against the same `punchraw serve`, from behind the
# same lab NAT, in one run. Prints medians and the ratios the project targets
# (punchraw <= 1/2 of stun, <= 1/8 of turnutils_natdiscovery).
#
#   sudo tools/bench-probe.sh [--delay MS] [KIND] [RUNS]   (default: no delay, port-restricted-cone, 5)
#
# --delay MS puts MS one way on the NAT's uplink (tools/natlab.sh --delay): the probe at a
# real round-trip time, where the goal is also at most 6 RTTs + 150 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
ONEWAY=""
if [ "${1:-}" = --delay ]; then
  ONEWAY="${2:?--delay needs MS}"
  shift 2
fi
KIND="${1:-port-restricted-cone}"
RUNS="${2:-5}"
LAB="${PUNCHRAW_BENCH_LAB:-prbench}"

[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces); run: sudo $0 $*" >&2; exit 1; }
for cmd in nft stun turnutils_natdiscovery; do
  command -v "$cmd" >/dev/null || { echo "bench: '$cmd' missing; apt-get install -y nftables stun-client coturn" >&2; exit 1; }
done
BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi

SRV_PID=""
cleanup() {
  # serve exits 143 on SIGTERM; that must not end the cleanup under set -e.
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tools/natlab.sh up --name "$LAB" ${ONEWAY:+--delay "$ONEWAY"} "$KIND" >/dev/null
eval "$(tools/natlab.sh info --name "$LAB")"
tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" 2>/dev/null &
SRV_PID=$!
sleep 0.5

# Milliseconds one command takes inside host A; its output is discarded.
time_ms() {
  local t0 t1
  t0=$(date +%s%N)
  tools/natlab.sh exec --name "$LAB" a -- "$@" >/dev/null 2>&1 || true
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A all
for tool in punchraw stun natdiscovery; do all[$tool]=""; done
for i in $(seq 1 "$RUNS"); do
  # --no-port-mapping: neither anchor asks the router for mappings; this compares the NAT
  # classification alone (the port-mapping check runs beside the TCP half by default).
  all[punchraw]+=" $(time_ms "$BIN" probe --server "$SRV1" --no-tcp --no-port-mapping --json)"
  all[stun]+=" $(time_ms stun "$SRV1")"
  all[natdiscovery]+=" $(time_ms turnutils_natdiscovery -m -f "$SRV1")"
  echo "run $i/$RUNS done" >&2
done

p=$(echo ${all[punchraw]} | median)
s=$(echo ${all[stun]} | median)
n=$(echo ${all[natdiscovery]} | median)
echo "NAT kind: $KIND, one-way delay: ${ONEWAY:-0} ms, runs: $RUNS (median wall time, ms)"
printf '  %-34s %6s ms   (%s)\n' "punchraw probe --no-tcp --no-port-mapping" "$p" "${all[punchraw]# }"
printf '  %-34s %6s ms   (%s)\n' "stun (RFC 3489 client)" "$s" "${all[stun]# }"
printf '  %-34s %6s ms   (%s)\n' "turnutils_natdiscovery -m -f" "$n" "${all[natdiscovery]# }"
awk -v p="$p" -v s="$s" -v n="$n" -v d="${ONEWAY:-0}" 'BEGIN {
  printf "ratio punchraw/stun:          %.3f  (target <= 0.5)\n", p / s;
  printf "ratio punchraw/natdiscovery:  %.3f  (target <= 0.125)\n", p / n;
  if (d > 0) printf "punchraw / (6 RTT + 150 ms):  %.3f  (target <= 1; RTT %d ms from the delay alone)\n", p / (12 * d + 150), 2 * d;
}'
