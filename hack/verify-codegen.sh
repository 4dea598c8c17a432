#!/usr/bin/env bash
# Fails when the generated code is not what hack/update-codegen.sh produces from the current types.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Generate into a copy of the tree so a stale checkout is reported, never rewritten.
tar -C "$ROOT" --exclude=./.git --exclude=./_output --exclude=./bin -cf - . | tar -C "$work" -xf -
(cd "$work" && hack/update-codegen.sh >/dev/null)

if ! diff -ruN --exclude=.git --exclude=_output --exclude=bin "$ROOT/pkg" "$work/pkg" >"$work.diff" ||
  ! diff -uN "$ROOT/hack/api-rules-violations.list" "$work/hack/api-rules-violations.list" >>"$work.diff"; then
  cat "$work.diff"
  rm -f "$work.diff"
  echo "verify-codegen: generated code is stale; run hack/update-codegen.sh" >&2
  exit 1
fi
rm -f "$work.diff"
echo "verify-codegen: generated code is up to date"
