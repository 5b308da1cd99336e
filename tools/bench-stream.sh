#!/usr/bin/env bash
# Stream benchmark (#17): MiB/s of the QUIC stream (UDP punch), the TLS stream (--tcp punch)
# and a plain TCP baseline (no punchraw: a DNAT on NAT B, so the same two hosts through both
# NATs -- the path's capacity), one way from A to B, between two port-restricted cones, in
# one run per configuration, with the ratios the issue targets (QUIC >= 0.8 x TLS and
# >= 0.5 x plain TCP on clean paths).
#
#   sudo tools/bench-stream.sh [RUNS]     (default 2 runs per cell; medians printed)
#   DELAYS="0" LOSSES="0 1" RATES=0 sudo tools/bench-stream.sh 3   (only those cells)
#
# Configurations: 0 and 40 ms one way on each NAT uplink (tools/natlab.sh --delay; that delay
# element is a userspace bridge, so it is also the capacity limit of the delayed cells), each
# with 0, 1 and 5% random loss at each NAT; and the 0 ms cells again with each NAT uplink
# shaped to 1 Gbit/s each way (natlab.sh --rate 1000; RATES lists the rates in Mbit/s, 0 for
# none; rates up to 100 also with the delays). Without a shaper the lab's path is as fast as
# the machine's cores move packets, so the unshaped 0 ms cells compare what each stream costs
# in CPU; the shaped ones compare them on a path whose capacity, as on a real line, is below
# that. Sizes: 256 MiB without delay and loss, 8 MiB with delay and 5% loss, 32 MiB otherwise.
# Throughput = bytes / stream_ms of B's --report (from connected to done) for punchraw,
# bytes / transfer time for the baseline. Like the baseline's receiver, B discards what it receives (to /dev/null; its report's byte count is
# checked), so that no side's number includes writing a file; A reads its input from a file
# (in the page cache), as a user sending one does, where the baseline sends from memory.
#
# Each cell also prints the CPU time both ends spent per GiB moved (user + system, medians):
# punchraw's `stream_cpu_ms` of A and B (from connected until done, as `stream_ms`), the
# baseline's two socket loops from their first byte. On the clean 0 ms path both hosts and
# both NATs share the machine's cores, so that cost, more than the path, bounds each stream.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-2}"
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces); run: sudo $0 $*" >&2; exit 1; }
BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi
LAB="${PUNCHRAW_BENCH_LAB:-prbstrm}"
WORK=$(mktemp -d)
SRV_PID=""
SINK_PID=""
cleanup() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null || true
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
  SRV_PID="" SINK_PID=""
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" "$2" | tr -d '" '; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
mibs() { awk -v b="$1" -v ms="$2" 'BEGIN { if (ms <= 0) print "nan"; else printf "%.1f\n", b / 1048576 / (ms / 1000) }'; }
# CPU seconds per GiB: milliseconds $2 + $3 spent on $1 MiB.
per_gib() { awk -v m="$1" -v a="$2" -v b="$3" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null") print "nan"; else printf "%.2f\n", (a + b) / 1000 * 1024 / m }'; }

# One punchraw transfer of $1 MiB from A to B; prints MiB/s and CPU s/GiB (or "fail").
punchraw_run() {
  local mib=$1 session=$2; shift 2
  head -c $((mib * 1048576)) /dev/zero > "$WORK/in"
  tools/natlab.sh exec --name "$LAB" a -- "$BIN" connect --server "$SRV1" --session "$session" \
    --secret bench --timeout 60 -q --report "$WORK/a.json" "$@" < "$WORK/in" > /dev/null 2>"$WORK/a.err" &
  local a=$!
  sleep 0.3
  if tools/natlab.sh exec --name "$LAB" b -- "$BIN" connect --server "$SRV1" --session "$session" \
      --secret bench --timeout 60 -q --report "$WORK/b.json" "$@" < /dev/null > /dev/null 2>"$WORK/b.err" \
     && wait "$a" && [ "$(field bytes_received "$WORK/b.json")" = $((mib * 1048576)) ]; then
    echo "$(mibs "$((mib * 1048576))" "$(field stream_ms "$WORK/b.json")")" \
      "$(per_gib "$mib" "$(field stream_cpu_ms "$WORK/a.json")" "$(field stream_cpu_ms "$WORK/b.json")")"
  else
    wait "$a" 2>/dev/null || true
    echo fail
  fi
}

# The baseline: a plain TCP connection A -> NAT_B:5201, forwarded by NAT B to B.
tcp_run() {
  local mib=$1
  tools/natlab.sh exec --name "$LAB" b -- timeout 600 python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); c, _ = s.accept(); n = 0; t0 = None
while True:
    d = c.recv(1 << 20)
    if not d: break
    if t0 is None: t0 = time.monotonic(); c0 = time.process_time()
    n += len(d)
print(n, int((time.monotonic() - t0) * 1000), int((time.process_time() - c0) * 1000))' > "$WORK/sink" &
  SINK_PID=$!
  sleep 0.3
  tools/natlab.sh exec --name "$LAB" a -- timeout 600 python3 -c '
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5201)); buf = bytes(1 << 20); c0 = time.process_time()
for _ in range(int(sys.argv[2])): c.sendall(buf)
c.close()
print(int((time.process_time() - c0) * 1000))' "$NAT_B" "$mib" > "$WORK/source" || true
  wait "$SINK_PID" || true
  SINK_PID=""
  read -r bytes ms sink_cpu < "$WORK/sink" || { echo fail; return; }
  read -r source_cpu < "$WORK/source" || source_cpu=""
  if [ "$bytes" = $((mib * 1048576)) ]; then
    echo "$(mibs "$bytes" "$ms")" "$(per_gib "$mib" "$source_cpu" "$sink_cpu")"
  else
    echo fail
  fi
}

printf '%-16s %8s %8s %8s %10s %10s\n' "delay/loss@rate" QUIC TLS TCP "QUIC/TLS" "QUIC/TCP"
n=0
for rate in ${RATES:-0 1000}; do
for delay in ${DELAYS:-0 40}; do
  # The delay element moves at most ~60 MB/s, in bursts (lab, 2026-12-07): a faster shaper
  # behind it would not bind. RATES=100 DELAYS=40 is a long path on a 100 Mbit/s line.
  [ "$rate" -gt 100 ] && [ "$delay" != 0 ] && continue
  for loss in ${LOSSES:-0 1 5}; do
    opts=()
    [ "$rate" != 0 ] && opts+=(--rate "$rate")
    [ "$delay" != 0 ] && opts+=(--delay "$delay")
    [ "$loss" != 0 ] && opts+=(--loss "$loss")
    mib=32
    [ "$delay" = 0 ] && [ "$loss" = 0 ] && mib=256
    # Through 5% loss at each NAT and 160 ms RTT both streams move 2-3 MiB/s (lab, 8 MiB):
    # 32 MiB ran past the baseline's timeout, and 2 MiB measured mostly the ramp-up.
    [ "$delay" != 0 ] && [ "$loss" -ge 5 ] && mib=8
    tools/natlab.sh up --name "$LAB" "${opts[@]}" port-restricted-cone port-restricted-cone >/dev/null
    eval "$(tools/natlab.sh info --name "$LAB")"
    tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" 2>/dev/null &
    SRV_PID=$!
    # The baseline's port forward, inside the lab's own table (its forward chain drops new
    # inbound flows; a chain of another table could not overrule that).
    tools/natlab.sh exec --name "$LAB" nat-b -- nft add rule ip natlab prerouting \
      ip daddr "$NAT_B" tcp dport 5201 dnat to "$B"
    tools/natlab.sh exec --name "$LAB" nat-b -- nft insert rule ip natlab forward \
      ip daddr "$B" tcp dport 5201 accept
    sleep 0.5
    q=() t=() p=()
    for r in $(seq "$RUNS"); do
      n=$((n + 1)); q+=("$(punchraw_run "$mib" "s$n")")
      n=$((n + 1)); t+=("$(punchraw_run "$mib" "s$n" --tcp)")
      p+=("$(tcp_run "$mib")")
    done
    # A cell whose runs all failed prints nan and the runs' "fail", not an abort. Each run is
    # "MiB/s CPU-s/GiB"; `med COLUMN RUNS...` over the runs that did not fail.
    med() { local c=$1; shift; printf '%s\n' "$@" | { grep -v fail || true; } | awk -v c="$c" '{print $c}' | { grep -v nan || true; } | median; }
    mq=$(med 1 "${q[@]}"); mt=$(med 1 "${t[@]}"); mp=$(med 1 "${p[@]}")
    cq=$(med 2 "${q[@]}"); ct=$(med 2 "${t[@]}"); cp=$(med 2 "${p[@]}")
    speeds() { printf '%s\n' "$@" | awk '{printf "%s%s", (NR > 1 ? " " : ""), $1} END {print ""}'; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f\n", a / b }'; }
    cell="${delay} ms / ${loss}%"
    [ "$rate" != 0 ] && cell+=" @${rate}M"
    printf '%-16s %8s %8s %8s %10s %10s   (%s MiB; runs QUIC %s, TLS %s, TCP %s)\n' \
      "$cell" "$mq" "$mt" "$mp" "$(ratio "$mq" "$mt")" "$(ratio "$mq" "$mp")" \
      "$mib" "$(speeds "${q[@]}")" "$(speeds "${t[@]}")" "$(speeds "${p[@]}")"
    printf '%-16s %8s %8s %8s %10s %10s   (CPU s per GiB, both ends)\n' \
      "" "$cq" "$ct" "$cp" "$(ratio "$cq" "$ct")" "$(ratio "$cq" "$cp")"
    cleanup
  done
done
done
