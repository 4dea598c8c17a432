#!/usr/bin/env bash
# The project's test command (`make test`, run by CI through .ci/run): every suite, in order of cost,
# with the time each phase took. PVPOOL_TEST_PHASES picks a subset, e.g. "unit integration".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PHASES=${PVPOOL_TEST_PHASES:-"deps verify-codegen vet unit integration csi-sanity e2e"}

log() { printf '[test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

run_phase() {
  case "$1" in
    deps) hack/install-node-deps.sh ;;
    verify-codegen) hack/verify-codegen.sh ;;
    vet)
      unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './_output/*'))
      if [[ -n "${unformatted}" ]]; then
        echo "gofmt would change: ${unformatted}" >&2
        return 1
      fi
      go vet ./...
      ;;
    unit) go test -count=1 ./pkg/... ./cmd/... ./test/bench/... ;;
    integration) go test -count=1 -v ./test/integration/... ;;
    csi-sanity) hack/csi-sanity.sh ;;
    e2e) hack/e2e.sh ;;
    *) log "unknown phase $1"; return 1 ;;
  esac
}

timings=()
status=0
for phase in $PHASES; do
  log "phase $phase: start"
  start=$SECONDS
  if run_phase "$phase"; then result=ok; else result=FAILED; status=1; fi
  timings+=("$(printf '%6ss  %-15s %s' "$((SECONDS - start))" "$phase" "$result")")
  log "phase $phase: $result in $((SECONDS - start)) s"
done

log "phase timings:"
printf '  %s\n' "${timings[@]}" >&2
exit "$status"
