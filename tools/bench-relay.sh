#!/usr/bin/env bash
# Relay benchmark (#12): `punchraw serve --relay` against coturn's turnserver, in the same lab
# and run, with ratios (punchraw / coturn).
#
#   sudo tools/bench-relay.sh [RUNS]      (default 2 runs per throughput cell; medians printed)
#   PARTS="throughput" sudo tools/bench-relay.sh 5   (only those parts: throughput memory firstbyte)
#
# - Relayed throughput: two random-symmetric NATs (no hole opens), A sends MIB (default 64)
#   MiB to B through the relay: `connect` with the server's own relay (session credentials)
#   against `--relay turn://...` to coturn. MiB/s = bytes / stream_ms of B's --report.
# - Memory per allocation: tools/loadgen's punchraw-turn-alloc makes ALLOCS (default 10,000)
#   allocations on each server from the server's namespace and holds them; the server's
#   resident memory (VmRSS) before and while they are held, divided by ALLOCS. Also the rate
#   at which they were made.
# - Time to first byte: a port-restricted-cone pair (a hole opens) FB_DELAY ms (default 40) one
#   way from the server and each other, the server's relay on offer: B's time_to_first_byte_ms
#   with relay first (the default) against direct only (`--relay off`), medians of RUNS.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-2}"
MIB="${MIB:-64}"
ALLOCS="${ALLOCS:-10000}"
FB_DELAY="${FB_DELAY:-40}"
PARTS="${PARTS:-throughput memory firstbyte}"
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" = 0 ] || { echo "bench: needs root (network namespaces); run: sudo $0 $*" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "bench: needs coturn's turnserver (apt-get install coturn)" >&2; exit 1; }
cargo build --release --quiet -p punchraw -p punchraw-loadgen
BIN="$PWD/target/release"
LAB="${PUNCHRAW_BENCH_LAB:-prbrly}"
# The cone pair's lab (set before `natlab.sh info` output, which names LAB, is evaluated).
CLAB="${LAB}c"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  PIDS=()
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
  tools/natlab.sh down --name "$CLAB" >/dev/null 2>&1 || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" "$2" | tr -d '" '; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f\n", a / b }'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# The pid of the program run by `natlab.sh exec` in the background as $1 (its child).
inner_pid() {
  local p
  for _ in $(seq 50); do
    p=$(pgrep -P "$1" | head -1 || true)
    [ -n "$p" ] && { echo "$p"; return; }
    sleep 0.1
  done
  echo "$1"
}

tools/natlab.sh up --name "$LAB" symmetric-random symmetric-random >/dev/null
eval "$(tools/natlab.sh info --name "$LAB")"
# Three port ranges that do not meet: the allocation generator's own sockets (ephemeral), the
# relayed ports of punchraw and those of coturn; a relayed port bound by a generator socket
# would be refused as a full server.
tools/natlab.sh exec --name "$LAB" srv -- sysctl -qw net.ipv4.ip_local_port_range="50000 65000"
tools/natlab.sh exec --name "$LAB" srv -- "$BIN/punchraw" serve --listen "$SRV1" --alternate "$SRV2" \
  --relay --relay-ports 10000-29999 --relay-user bench:bench --relay-user-quota "$ALLOCS" \
  --relay-max-allocations "$((ALLOCS + 100))" 2>"$WORK/serve.err" &
PIDS+=($!)
SERVE=$(inner_pid $!)
printf '' > "$WORK/turnserver.conf"
tools/natlab.sh exec --name "$LAB" srv -- turnserver -c "$WORK/turnserver.conf" -L "$SRV1" \
  --listening-port 3480 --relay-ip "$SRV1" --min-port 30000 --max-port 49999 --lt-cred-mech \
  --user bench:bench --realm lab --user-quota 0 --total-quota 0 --no-cli --no-tls --no-dtls \
  --log-file stdout --pidfile "$WORK/turnserver.pid" >/dev/null 2>&1 &
PIDS+=($!)
COTURN=$(inner_pid $!)
sleep 1

# One relayed transfer of $MIB MiB from A to B; prints MiB/s (or "fail").
relayed_run() {
  local session=$1; shift
  head -c $((MIB * 1048576)) /dev/urandom > "$WORK/in"
  tools/natlab.sh exec --name "$LAB" a -- "$BIN/punchraw" connect --server "$SRV1" --session "$session" \
    --secret bench --timeout 60 --punch-budget 2 -q "$@" < "$WORK/in" > /dev/null 2>"$WORK/a.err" &
  local a=$!
  sleep 0.3
  if tools/natlab.sh exec --name "$LAB" b -- "$BIN/punchraw" connect --server "$SRV1" --session "$session" \
      --secret bench --timeout 60 --punch-budget 2 -q --report "$WORK/b.json" "$@" < /dev/null > "$WORK/out" \
      2>"$WORK/b.err" && wait "$a" && cmp -s "$WORK/in" "$WORK/out" \
      && [ "$(field path "$WORK/b.json")" = relay ]; then
    awk -v b=$((MIB * 1048576)) -v ms="$(field stream_ms "$WORK/b.json")" \
      'BEGIN { if (ms <= 0) print "nan"; else printf "%.1f\n", b / 1048576 / (ms / 1000) }'
  else
    wait "$a" 2>/dev/null || true
    echo fail
  fi
}

p=() c=()
part throughput && for r in $(seq "$RUNS"); do
  p+=("$(relayed_run "p$r")")
  c+=("$(relayed_run "c$r" --relay "turn://bench:bench@$SRV1:3480")")
done
mp=$(printf '%s\n' "${p[@]}" | { grep -v fail || true; } | median)
mc=$(printf '%s\n' "${c[@]}" | { grep -v fail || true; } | median)

# Memory: $1 = pid, $2 = TURN endpoint. Prints "KB_before KB_held allocs_per_s".
alloc_run() {
  local before after
  if ! kill -0 "$1" 2>/dev/null; then
    echo "bench: the server (pid $1) is gone; no memory figures for it" >&2
    echo "0 0 nan 0"
    return
  fi
  rm -f "$WORK/ready"
  before=$(rss_kb "$1")
  tools/natlab.sh exec --name "$LAB" srv -- "$BIN/punchraw-turn-alloc" --server "$2" --user bench:bench \
    --allocations "$ALLOCS" --hold 3 --ready-file "$WORK/ready" --json > "$WORK/alloc.json" &
  local l=$!
  while [ ! -e "$WORK/ready" ] && kill -0 "$l" 2>/dev/null; do sleep 0.1; done
  sleep 0.5
  after=$(rss_kb "$1")
  wait "$l" || true
  echo "$before $after $(field allocations_per_s "$WORK/alloc.json" | cut -d. -f1) $(field allocated "$WORK/alloc.json")"
}
pb=0 pa=0 prate=nan pn=0 cb=0 ca=0 crate=nan cn=0
if part memory; then
  read -r pb pa prate pn <<< "$(alloc_run "$SERVE" "$SRV1:3478")"
  read -r cb ca crate cn <<< "$(alloc_run "$COTURN" "$SRV1:3480")"
fi
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { if (n <= 0) print "nan"; else printf "%.0f\n", (b - a) * 1024 / n }'; }
pp=$(per "$pb" "$pa" "$pn")
cp=$(per "$cb" "$ca" "$cn")

# Time to first byte on a cone pair: relay first against direct only. Prints B's ms.
cleanup
rf=() d=()
if part firstbyte; then
tools/natlab.sh up --name "$CLAB" --delay "$FB_DELAY" port-restricted-cone port-restricted-cone >/dev/null
eval "$(tools/natlab.sh info --name "$CLAB")"
tools/natlab.sh exec --name "$CLAB" srv -- "$BIN/punchraw" serve --listen "$SRV1" --alternate "$SRV2" \
  --relay 2>/dev/null &
PIDS+=($!)
sleep 0.5
first_byte() {
  local session=$1; shift
  head -c 4096 /dev/urandom > "$WORK/small"
  tools/natlab.sh exec --name "$CLAB" a -- "$BIN/punchraw" connect --server "$SRV1" --session "$session" \
    --secret bench --timeout 30 -q "$@" < "$WORK/small" > /dev/null 2>/dev/null &
  local a=$!
  sleep 0.3
  if tools/natlab.sh exec --name "$CLAB" b -- "$BIN/punchraw" connect --server "$SRV1" --session "$session" \
      --secret bench --timeout 30 -q --report "$WORK/f.json" "$@" < /dev/null > /dev/null 2>/dev/null; then
    wait "$a" || true
    field time_to_first_byte_ms "$WORK/f.json"
  else
    wait "$a" 2>/dev/null || true
    echo fail
  fi
}
for r in $(seq "$RUNS"); do
  rf+=("$(first_byte "f$r")")
  d+=("$(first_byte "d$r" --relay off)")
done
fi
mrf=$(printf '%s\n' "${rf[@]}" | { grep -v fail || true; } | median)
md=$(printf '%s\n' "${d[@]}" | { grep -v fail || true; } | median)

if part throughput || part memory; then
  printf '%-34s %12s %12s %8s\n' "" punchraw coturn ratio
fi
part throughput && printf '%-34s %12s %12s %8s   (runs punchraw %s, coturn %s)\n' \
  "relayed MiB/s ($MIB MiB one way)" "$mp" "$mc" "$(ratio "$mp" "$mc")" "${p[*]}" "${c[*]}"
if part memory; then
  printf '%-34s %12s %12s %8s   (%s and %s of %s held; RSS %s->%s KB, %s->%s KB)\n' \
    "bytes of memory per allocation" "$pp" "$cp" "$(ratio "$pp" "$cp")" "$pn" "$cn" "$ALLOCS" \
    "$pb" "$pa" "$cb" "$ca"
  printf '%-34s %12s %12s %8s\n' "allocations made per second" "$prate" "$crate" "$(ratio "$prate" "$crate")"
fi
if part firstbyte; then
  printf '\n%-34s %12s %12s %8s\n' "" "relay first" "direct only" ratio
  printf '%-34s %12s %12s %8s   (runs %s and %s)\n' "cone pair, ms to first byte ($FB_DELAY ms)" \
    "$mrf" "$md" "$(ratio "$mrf" "$md")" "${rf[*]}" "${d[*]}"
fi
