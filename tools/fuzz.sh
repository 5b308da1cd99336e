#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (`cargo fuzz list`: stun_parse, server_handle,
# rendezvous_msg, rendezvous_client, punch_input, captured_packet, crafted_segment,
# portmap_parse, portmap_client, channel_data, turn_client, turn_server, relay_offer, and any
# added later)
# and runs each for SECONDS (default 30), from
# the committed seeds in fuzz/corpus_seed/<target>/. New corpus entries go to
# fuzz/corpus/<target>/ and crash inputs to fuzz/artifacts/<target>/ (both gitignored).
# Exits non-zero if any target crashes, leaks, times out or fails to build.
#
# cargo-fuzz needs a nightly compiler (-Zsanitizer=address). A nightly rustup toolchain is
# used when one is installed; otherwise stable with RUSTC_BOOTSTRAP=1.
#
# Usage: tools/fuzz.sh [SECONDS]      e.g. tools/fuzz.sh 60
set -uo pipefail

secs="${1:-30}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
echo "fuzz.sh: using $(cargo "${toolchain[@]}" --version) ${RUSTC_BOOTSTRAP:+(RUSTC_BOOTSTRAP=1)}" >&2

targets=$(cargo "${toolchain[@]}" fuzz list) || exit 2
if ! cargo "${toolchain[@]}" fuzz build; then
    echo "fuzz.sh: build failed" >&2
    exit 2
fi

failed=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    seeds=()
    [ -d "fuzz/corpus_seed/$t" ] && seeds=("fuzz/corpus_seed/$t")
    echo "fuzz.sh: running $t for ${secs}s" >&2
    # The first corpus directory is written to; the seed directory is only read.
    if ! cargo "${toolchain[@]}" fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "fuzz.sh: all targets ran ${secs}s without a crash:" $targets >&2
