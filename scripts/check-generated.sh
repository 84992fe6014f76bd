#!/usr/bin/env bash
# Fails if protocol/src/generated/ differs from what flatc makes of
# protocol/schema/*.fbs (someone edited the schema without regenerating, or
# edited generated code by hand).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/flatc.sh" "$tmp"
if ! diff -ru "$root/protocol/src/generated" "$tmp"; then
  echo "protocol/src/generated is stale: run scripts/flatc.sh and commit the result" >&2
  exit 1
fi
echo "generated FlatBuffers code matches the schema"
