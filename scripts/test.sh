#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI (.ci/run) runs it.
# Installs what the tests need first (scripts/install-test-deps.sh).
#
# Environment:
#   FUZZ_SECONDS  seconds each fuzz target runs (default 20; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-test-deps.sh

step "checking generated FlatBuffers code"
scripts/check-generated.sh

# One debug build: the binaries the end-to-end tests start, then the tests.
step "building binaries"
cargo build --workspace --bins --locked

step "unit, property and end-to-end tests"
cargo test --workspace --locked

fuzz_seconds=${FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" != 0 ]; then
  step "fuzz smoke run (${fuzz_seconds}s per target)"
  fuzz/smoke.sh "$fuzz_seconds"
fi

step "all tests passed"
