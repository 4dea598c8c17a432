#!/usr/bin/env bash
# Runs csi-sanity (pinned in hack/versions.env, built by hack/tools/install.sh) against pvpool-csi, once per
# access type (Block, then Filesystem), with real qemu-storage-daemon processes, nbdfuse and loop devices.
# Needs root, /dev/fuse and /dev/loop-control.
#
#   hack/csi-sanity.sh                    both access types
#   ACCESS_TYPES=block hack/csi-sanity.sh one of them
#   SANITY_ARGS='--ginkgo.focus=Snapshot' extra csi-sanity arguments
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ACCESS_TYPES="${ACCESS_TYPES:-block mount}"
SANITY_ARGS="${SANITY_ARGS:-}"
log() { printf '[csi-sanity %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ $(id -u) -ne 0 || ! -e /dev/fuse || ! -e /dev/loop-control ]]; then
  echo "csi-sanity needs root, /dev/fuse and /dev/loop-control" >&2
  exit 1
fi

log "installing node dependencies"
"${ROOT}/hack/install-node-deps.sh"
log "building bin/pvpool-csi"
(cd "${ROOT}" && go build -o bin/pvpool-csi ./cmd/csi)
log "getting csi-sanity"
SANITY="$("${ROOT}/hack/tools/install.sh" --path csi-sanity)"

WORK="$(mktemp -d /tmp/pvpool-csi-sanity.XXXXXX)"
ARTIFACTS="${ARTIFACTS:-${ROOT}/_output/csi-sanity}"
mkdir -p "${ARTIFACTS}"
PLUGIN_PID=""

cleanup() {
  local rc=$?
  if [[ -n "${PLUGIN_PID}" ]] && kill -0 "${PLUGIN_PID}" 2>/dev/null; then
    kill "${PLUGIN_PID}" 2>/dev/null || true
    wait "${PLUGIN_PID}" 2>/dev/null || true
  fi
  # Whatever a failed run left behind under WORK: bind mounts, filesystems, loop devices, nbdfuse, daemons.
  local m
  for m in $(awk -v w="${WORK}" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "${m}" 2>/dev/null || true
  done
  local dev
  for dev in $(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v w="${WORK}" 'index($2, w) == 1 {print $1}'); do
    losetup -d "${dev}" 2>/dev/null || true
  done
  local pidfile pid
  for pidfile in $(find "${WORK}" -name 'qsd.pid' -o -name 'nbdfuse.pid' 2>/dev/null); do
    pid="$(cat "${pidfile}" 2>/dev/null || true)"
    [[ -n "${pid}" ]] && kill "${pid}" 2>/dev/null || true
  done
  rm -rf "${WORK}" 2>/dev/null || true
  exit "${rc}"
}
trap cleanup EXIT

status=0
for access in ${ACCESS_TYPES}; do
  dir="${WORK}/${access}"
  mkdir -p "${dir}/backing" "${dir}/run"
  cat >"${dir}/params.yaml" <<PARAMS
backingClaimName: backing-pvc
backingClaimNamespace: default
basePath: sanity/${access}
PARAMS
  log "starting pvpool-csi for access type ${access} (log: ${ARTIFACTS}/plugin-${access}.log)"
  "${ROOT}/bin/pvpool-csi" --endpoint "unix://${dir}/csi.sock" --mode all --nodeid sanity-node \
    --backing-dir "${dir}/backing" --run-dir "${dir}/run" -v 4 >"${ARTIFACTS}/plugin-${access}.log" 2>&1 &
  PLUGIN_PID=$!
  for _ in $(seq 100); do
    [[ -S "${dir}/csi.sock" ]] && break
    sleep 0.1
  done
  log "running csi-sanity (${access})"
  # shellcheck disable=SC2086
  if ! "${SANITY}" -csi.endpoint "${dir}/csi.sock" -csi.stagingdir "${dir}/staging" -csi.mountdir "${dir}/mount" \
    -csi.testvolumeaccesstype "${access}" -csi.testvolumesize $((64 << 20)) -csi.testvolumeexpandsize $((128 << 20)) \
    -csi.testvolumeparameters "${dir}/params.yaml" -csi.junitfile "${ARTIFACTS}/junit-${access}.xml" \
    --ginkgo.no-color ${SANITY_ARGS} 2>&1 | tee "${ARTIFACTS}/sanity-${access}.log"; then
    status=1
  fi
  if [[ ${PIPESTATUS[0]} -ne 0 ]]; then status=1; fi
  kill "${PLUGIN_PID}"
  wait "${PLUGIN_PID}" || true
  PLUGIN_PID=""
  leftover="$(losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v w="${dir}" 'index($2, w) == 1' || true)"
  if [[ -n "${leftover}" ]]; then
    log "FAIL: loop devices left attached after ${access}: ${leftover}"
    status=1
  fi
  grep -E '^(Ran|PASS|FAIL|SUCCESS)' "${ARTIFACTS}/sanity-${access}.log" | sed "s/^/[${access}] /" >&2 || true
done
exit "${status}"
