#!/usr/bin/env bash
# Builds every fuzz target and runs each one, one after another, for a bounded
# time. Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]   (default 30)
# Exits non-zero if a target fails to build or any run finds a crash.
# New inputs found go to a temporary directory; fuzz/corpus/ is only read.
set -euo pipefail

secs="${1:-30}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "smoke.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
for target in $(cargo +nightly fuzz list); do
    echo "=== $target: ${secs}s"
    mkdir -p "$work/$target" "fuzz/corpus/$target"
    # The first corpus directory receives new inputs; the seeds are read only.
    if ! cargo +nightly fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "smoke.sh: crash or failure in: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke.sh: all targets ran ${secs}s without a crash"
