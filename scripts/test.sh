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

# The end-to-end tests start `switchboard serve` with the I/O driver named
# by SWITCHBOARD_TEST_IO_DRIVER: everything once on io_uring, then the
# end-to-end crate again on the epoll fallback (same debug build).
step "unit, property and end-to-end tests (io_uring)"
SWITCHBOARD_TEST_IO_DRIVER=uring cargo test --workspace --locked

step "end-to-end tests again on the epoll driver"
SWITCHBOARD_TEST_IO_DRIVER=epoll cargo test -p switchboard-e2e --locked

fuzz_seconds=${FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" != 0 ]; then
  step "fuzz smoke run (${fuzz_seconds}s per target)"
  fuzz/smoke.sh "$fuzz_seconds"
fi

step "all tests passed"
