#!/usr/bin/env bash
# Builds every command under cmd/ into bin/pvpool-<name> (cmd/apiserver -> bin/pvpool-apiserver,
# cmd/csi -> bin/pvpool-csi). Static (CGO_ENABLED=0 unless set) so the binaries drop into the locally
# built images. Commands that do not exist yet are simply not there to build.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '[build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

mkdir -p bin
shopt -s nullglob
built=0
for dir in cmd/*/; do
  name="$(basename "${dir}")"
  if ! compgen -G "${dir}*.go" >/dev/null; then
    continue
  fi
  start=${SECONDS}
  log "building bin/pvpool-${name}"
  go build -trimpath -o "bin/pvpool-${name}" "./${dir%/}"
  log "built bin/pvpool-${name} in $((SECONDS - start)) s"
  built=$((built + 1))
done
if [[ ${built} -eq 0 ]]; then
  log "no commands under cmd/ yet"
fi
