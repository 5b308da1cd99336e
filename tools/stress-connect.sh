#!/usr/bin/env bash
# Robustness sweep: connect pairs under path conditions the tests do not fix -- long delays,
# jitter and reordering, loss -- through each pair of NAT kinds, over UDP and TCP, with
# 1 MiB each way checked by hash. Prints one line per run (exit codes, data, time to
# connected, path) and a summary; the stderr of both peers of every failed run is kept.
# One lab per condition and pair; everything it creates is removed, also on Ctrl-C.
#
#   sudo tools/stress-connect.sh [RUNS] [CONDITION...]
#
# RUNS (default 2) runs per condition, pair and transport. A CONDITION is tools/natlab.sh
# `up` options in one word with commas for spaces, e.g. "--delay,150/20" or
# "--delay,40,--loss,5"; the default list is below. PAIRS="kindA:kindB ..." and
# TRANSPORTS="udp tcp" override the pairs and transports.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-2}"
shift || true
CONDITIONS=("$@")
if [ ${#CONDITIONS[@]} -eq 0 ]; then
  CONDITIONS=("--delay,150/20" "--delay,250" "--delay,40,--loss,5" "--loss,10" "--delay,40/30,--reorder")
fi
PAIRS="${PAIRS:-port-restricted-cone:port-restricted-cone port-restricted-cone:symmetric-sequential port-restricted-cone:symmetric-random symmetric-sequential:symmetric-sequential cgn-block-random:port-restricted-cone}"
TRANSPORTS="${TRANSPORTS:-udp tcp}"
[ "$(id -u)" = 0 ] || { echo "stress: needs root (network namespaces); run: sudo $0 $*" >&2; exit 1; }
BIN="${PUNCHRAW_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN="$PWD/target/release/punchraw"
fi
LAB="${PUNCHRAW_STRESS_LAB:-prstress}"
WORK=$(mktemp -d)
KEEP="${PUNCHRAW_STRESS_KEEP:-$PWD/stress-failures}"
SRV_PID=""
cleanup() {
  [ -n "$SRV_PID" ] && kill -TERM "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
  tools/natlab.sh down --name "$LAB" >/dev/null 2>&1 || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p" "$2" | tr -d '" '; }

head -c 1048576 /dev/urandom >"$WORK/in"
want=$(sha256sum <"$WORK/in" | cut -c1-64)
total=0
bad=0
for cond in "${CONDITIONS[@]}"; do
  IFS=, read -r -a opts <<<"$cond"
  for pair in $PAIRS; do
    a_kind="${pair%%:*}"
    b_kind="${pair#*:}"
    tools/natlab.sh up --name "$LAB" "${opts[@]}" "$a_kind" "$b_kind" >/dev/null
    eval "$(tools/natlab.sh info --name "$LAB")"
    tools/natlab.sh exec --name "$LAB" srv -- "$BIN" serve --listen "$SRV1" --alternate "$SRV2" 2>/dev/null &
    SRV_PID=$!
    sleep 0.5
    for transport in $TRANSPORTS; do
      extra=()
      [ "$transport" = tcp ] && extra=(--tcp)
      for i in $(seq 1 "$RUNS"); do
        session="stress$$-$total"
        # A bound on each peer: a hang is a failure to see, not a reason to stop the sweep.
        tools/natlab.sh exec --name "$LAB" a -- timeout 120 "$BIN" connect "${extra[@]}" -v \
          --server "$SRV1" --session "$session" --secret stress --report "$WORK/a.json" \
          <"$WORK/in" >"$WORK/a.out" 2>"$WORK/a.err" &
        a_pid=$!
        sleep 0.3
        rb=0
        tools/natlab.sh exec --name "$LAB" b -- timeout 120 "$BIN" connect "${extra[@]}" -v \
          --server "$SRV1" --session "$session" --secret stress --report "$WORK/b.json" \
          <"$WORK/in" >"$WORK/b.out" 2>"$WORK/b.err" || rb=$?
        ra=0
        wait "$a_pid" || ra=$?
        data=ok
        for s in a b; do
          [ "$(sha256sum <"$WORK/$s.out" | cut -c1-64)" = "$want" ] || data=BAD
        done
        total=$((total + 1))
        line=$(printf '%-24s %-44s %-3s run %d: exit %3s %3s  data %-3s  %6s ms  %s' "$cond" \
          "$a_kind x $b_kind" "$transport" "$i" "$ra" "$rb" "$data" \
          "$(field elapsed_ms "$WORK/b.json")" "$(field path "$WORK/b.json")")
        echo "$line"
        if [ "$ra" != 0 ] || [ "$rb" != 0 ] || [ "$data" != ok ]; then
          bad=$((bad + 1))
          mkdir -p "$KEEP"
          cp "$WORK/a.err" "$KEEP/$session-a.err"
          cp "$WORK/b.err" "$KEEP/$session-b.err"
        fi
      done
    done
    cleanup
  done
done
echo "stress: $((total - bad)) of $total runs connected with the data intact"
[ "$bad" = 0 ] || echo "stress: the stderr of both peers of each failed run is in $KEEP"
[ "$bad" = 0 ]
