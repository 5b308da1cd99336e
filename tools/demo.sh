#!/usr/bin/env bash
# The punchraw demo: a NAT lab with two different NATs and an RFC 5780 server, then
# `punchraw probe` from behind each NAT, then a UDP and a TCP punch between the two hosts,
# each moving 1 MiB each way. Everything it creates is removed on exit, Ctrl-C included.
#
#   sudo tools/demo.sh [KIND_A] [KIND_B]      (kinds: tools/natlab.sh kinds)
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_A="${1:-port-restricted-cone}"
KIND_B="${2:-symmetric-sequential}"
LAB="${PUNCHRAW_DEMO_LAB:-prdemo}"

if [ "$(id -u)" != 0 ]; then
  echo "demo: needs root to build network namespaces and nftables NATs; run: sudo $0 $*" >&2
  exit 1
fi
for cmd in ip nft; do
  command -v "$cmd" >/dev/null || { echo "demo: '$cmd' is missing; install iproute2 and nftables (apt-get install -y iproute2 nftables)" >&2; exit 1; }
done

BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  echo "== building punchraw (release)"
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi

SRV_PID=""
cleanup() {
  if [ -n "$SRV_PID" ] && kill -0 "$SRV_PID" 2>/dev/null; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
  fi
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== NAT lab: host A behind '$KIND_A', host B behind '$KIND_B'"
tools/natlab.sh up --name "$LAB" "$KIND_A" "$KIND_B"
eval "$(tools/natlab.sh info --name "$LAB")"

echo "== punchraw serve on $SRV1 and $SRV2 (RFC 5780: 2 addresses x 2 ports)"
tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" &
SRV_PID=$!
sleep 0.5

for side in a b; do
  kind="$KIND_A"; [ "$side" = b ] && kind="$KIND_B"
  echo
  echo "== probe from host $side (behind $kind)"
  tools/natlab.sh exec --name "$LAB" "$side" -- "$BIN" probe --server "$SRV1"
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; cleanup' EXIT
head -c 1048576 /dev/urandom > "$WORK/a.in"
head -c 1048576 /dev/urandom > "$WORK/b.in"
SECRET="demo-$RANDOM$RANDOM"

# punch TRANSPORT [FLAGS...]: A starts, B follows half a second later; both move 1 MiB.
punch() {
  local transport=$1; shift
  rm -f "$WORK"/*.out "$WORK"/*.json
  tools/natlab.sh exec --name "$LAB" a -- "$BIN" connect --server "$SRV1" --session "demo-$transport" \
    --secret "$SECRET" --report "$WORK/a.json" "$@" < "$WORK/a.in" > "$WORK/a.out" 2> >(sed 's/^/  [A] /' >&2) &
  local a_pid=$!
  sleep 0.5
  tools/natlab.sh exec --name "$LAB" b -- "$BIN" connect --server "$SRV1" --session "demo-$transport" \
    --secret "$SECRET" --report "$WORK/b.json" "$@" < "$WORK/b.in" > "$WORK/b.out" 2> >(sed 's/^/  [B] /' >&2) || true
  wait "$a_pid" || true
  echo
  # One line each; spaces inside the strings (the reasons) stay.
  echo "  report of A: $(python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))' < "$WORK/a.json")"
  echo "  report of B: $(python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))' < "$WORK/b.json")"
  if cmp -s "$WORK/a.in" "$WORK/b.out" && cmp -s "$WORK/b.in" "$WORK/a.out"; then
    echo "  data: 1 MiB each way arrived intact over $transport"
  else
    echo "  data: MISMATCH over $transport"
  fi
}

echo
echo "== punch UDP between host A and host B, then move 1 MiB each way over QUIC"
punch udp
echo
echo "== punch TCP (simultaneous open at the predicted ports), then 1 MiB each way over TLS"
punch tcp --tcp
echo
echo "== done; removing the lab"
