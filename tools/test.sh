#!/usr/bin/env bash
# Runs every test: unit, simulated-NAT, fuzz-target build plus a short fuzz run, and the
# NAT-lab and interop tests (those need root, nftables, coturn, stun-client and tshark; as
# root they are required, not skipped, so a broken lab fails instead of passing silently).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  export PUNCHRAW_REQUIRE_LAB="${PUNCHRAW_REQUIRE_LAB:-1}"
else
  echo "note: not root -- NAT-lab and interop tests will be skipped (run with sudo for all of them)" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The API documentation builds without a warning, and its examples compile (doctests are not
# among --all-targets).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
cargo test --doc --quiet

# Fuzz targets must keep building; a few seconds each catches regressions in the parsers.
if [ -x tools/fuzz.sh ]; then
  tools/fuzz.sh "${PUNCHRAW_FUZZ_SECONDS:-10}"
fi

# The examples as programs (`cargo test --all-targets` builds them only as test harnesses):
# tests/lab_examples.rs runs them in the lab.
cargo build --examples --quiet

# `cargo install --path .` gives a working binary (issue #15): into a temporary root, reusing
# the debug build, then run and removed.
inst=$(mktemp -d)
cargo install --quiet --path . --debug --locked --root "$inst" --target-dir target
"$inst/bin/punchraw" --version >/dev/null
rm -rf "$inst"

# Lab tests each build their own namespaces under unique names, so they may run in
# parallel; two threads match the machine.
cargo test --workspace --all-targets -- --test-threads="${PUNCHRAW_TEST_THREADS:-2}"
