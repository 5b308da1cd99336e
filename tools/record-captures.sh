#!/usr/bin/env bash
# Regenerates the sample captures in captures/ from the NAT lab: a probe (UDP and TCP) from
# behind a sequential symmetric NAT, and a UDP and a TCP punch between a port-restricted cone and that
# NAT (the TCP one: the classification's STUN, then every SYN, SYN-ACK, RST and ICMP of the
# punch as seen on host A).
#
#   sudo tools/record-captures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "record-captures: needs root (network namespaces); run: sudo $0" >&2; exit 1; }
BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi
LAB="${PUNCHRAW_CAPTURE_LAB:-prcap}"
OUT="$PWD/captures"
mkdir -p "$OUT"
SRV_PID=""
cleanup() {
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

tools/natlab.sh up --name "$LAB" port-restricted-cone symmetric-sequential >/dev/null
eval "$(tools/natlab.sh info --name "$LAB")"
tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" 2>/dev/null &
SRV_PID=$!
sleep 0.5

tools/natlab.sh exec --name "$LAB" b -- "$BIN" probe --server "$SRV1" --capture "$OUT/probe-symmetric-sequential.pcap" >/dev/null

echo hello-from-a | tools/natlab.sh exec --name "$LAB" a -- "$BIN" connect -q --server "$SRV1" \
  --session capture --secret capture --capture "$OUT/udp-punch-a.pcap" >/dev/null &
A=$!
sleep 0.3
echo hello-from-b | tools/natlab.sh exec --name "$LAB" b -- "$BIN" connect -q --server "$SRV1" \
  --session capture --secret capture >/dev/null
wait "$A"

echo hello-from-a | tools/natlab.sh exec --name "$LAB" a -- "$BIN" connect -q --tcp --server "$SRV1" \
  --session capture-tcp --secret capture --capture "$OUT/tcp-punch-a.pcap" >/dev/null &
A=$!
sleep 0.3
echo hello-from-b | tools/natlab.sh exec --name "$LAB" b -- "$BIN" connect -q --tcp --server "$SRV1" \
  --session capture-tcp --secret capture >/dev/null
wait "$A"
ls -l "$OUT"
