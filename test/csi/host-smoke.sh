#!/usr/bin/env bash
# Smoke test of pvpool-csi through a real kubelet without container images: runs the plugin (controller +
# node, self-registered with kubelet) and csi-provisioner as host processes next to the running local
# cluster (make up), under a separate driver name so it never collides with the deployed driver, then
# provisions Block and Filesystem claims, runs pods on them, clones a claim at a bigger size, deletes
# everything and checks no volume, image, loop device or daemon is left.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/hack/cluster/lib.sh"
cd "${REPO_ROOT}"

DRIVER=smoke.pvpool-csi.test
NS=pvpool-csi-smoke
CLASS=pvpool-csi-smoke
WORK="$(mktemp -d /tmp/pvpool-csi-smoke.XXXXXX)"
RUN_DIR="/run/pvpool-csi-smoke"
SOCKET="${KUBELET_ROOT}/plugins/${DRIVER}/csi.sock"
K=(kubectl --kubeconfig "${ADMIN_KUBECONFIG}")
say() { printf '[csi-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
PIDS=()

[[ -f "${ADMIN_KUBECONFIG}" ]] || { echo "no local cluster (make up)" >&2; exit 1; }

cleanup() {
  local rc=$?
  "${K[@]}" delete ns "${NS}" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
  local pid
  for pid in "${PIDS[@]}"; do kill "${pid}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "${pid}" 2>/dev/null || true; done
  "${K[@]}" delete sc "${CLASS}" --ignore-not-found >/dev/null 2>&1 || true
  "${K[@]}" delete csidriver "${DRIVER}" --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "${KUBELET_ROOT}/plugins/${DRIVER}" "${RUN_DIR}"
  if [[ ${rc} -ne 0 ]]; then
    say "FAILED; logs in ${WORK}"
  else
    rm -rf "${WORK}"
  fi
  exit "${rc}"
}
trap cleanup EXIT

say "building bin/pvpool-csi"
go build -o bin/pvpool-csi ./cmd/csi
PROVISIONER="$("${REPO_ROOT}/hack/tools/install.sh" --path csi-provisioner)"
mkdir -p "${WORK}/backing" "${RUN_DIR}"

say "starting pvpool-csi (${DRIVER}) and csi-provisioner on the host"
bin/pvpool-csi --mode all --drivername "${DRIVER}" --nodeid "${NODE_NAME}" --endpoint "unix://${SOCKET}" \
  --kubelet-registration-dir "${KUBELET_ROOT}/plugins_registry" --backing-dir "${WORK}/backing" \
  --run-dir "${RUN_DIR}" -v 3 >"${WORK}/plugin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -S "${SOCKET}" ]] && break; sleep 0.1; done
"${PROVISIONER}" --csi-address="${SOCKET}" --kubeconfig="${ADMIN_KUBECONFIG}" --extra-create-metadata \
  --default-fstype=ext4 --v=2 >"${WORK}/provisioner.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "Registered with kubelet" "${WORK}/plugin.log" && break; sleep 0.1; done
grep -q "Registered with kubelet" "${WORK}/plugin.log" || { say "kubelet did not register the plugin"; exit 1; }
say "kubelet registered ${DRIVER}"

"${K[@]}" apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: ${DRIVER}}
spec: {attachRequired: false, podInfoOnMount: false, volumeLifecycleModes: [Persistent]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ${CLASS}}
provisioner: ${DRIVER}
parameters: {basePath: smoke}
---
apiVersion: v1
kind: Namespace
metadata: {name: ${NS}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: blk, namespace: ${NS}}
spec: {accessModes: [ReadWriteOnce], volumeMode: Block, storageClassName: ${CLASS}, resources: {requests: {storage: 64Mi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: fs, namespace: ${NS}}
spec: {accessModes: [ReadWriteOnce], volumeMode: Filesystem, storageClassName: ${CLASS}, resources: {requests: {storage: 64Mi}}}
YAML

# run_pod NAME BLOCK_CLAIM FS_CLAIM SCRIPT: runs a busybox pod to completion and prints its output.
run_pod() {
  "${K[@]}" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: ${NS}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: docker.io/library/busybox:stable-musl
    imagePullPolicy: Never
    command: [sh, -c, "set -e; $4"]
    volumeDevices: [{name: blk, devicePath: /dev/xvda}]
    volumeMounts: [{name: fs, mountPath: /workspace}]
  volumes:
  - {name: blk, persistentVolumeClaim: {claimName: $2}}
  - {name: fs, persistentVolumeClaim: {claimName: $3}}
YAML
  local phase=""
  for _ in $(seq 90); do
    phase="$("${K[@]}" -n "${NS}" get pod "$1" -o jsonpath='{.status.phase}')"
    [[ "${phase}" == Succeeded || "${phase}" == Failed ]] && break
    sleep 2
  done
  "${K[@]}" -n "${NS}" logs "$1"
  "${K[@]}" -n "${NS}" delete pod "$1" --wait=true >/dev/null
  if [[ "${phase}" != Succeeded ]]; then
    "${K[@]}" -n "${NS}" get events >&2
    say "pod $1 ended ${phase:-nowhere}"
    return 1
  fi
}

expect() { # expect WHAT GOT WANT
  if [[ "$2" != "$3" ]]; then say "FAIL: $1: got '$2', want '$3'"; exit 1; fi
  say "ok: $1 = $3"
}

out="$(run_pod writer blk fs "blockdev --getsize64 /dev/xvda; echo blockdata | dd of=/dev/xvda conv=fsync 2>/dev/null; echo hello > /workspace/data.txt; grep ' /workspace ' /proc/mounts | cut -d' ' -f3")"
expect "block size" "$(sed -n 1p <<<"${out}")" 67108864
expect "filesystem type" "$(sed -n 2p <<<"${out}")" ext4

"${K[@]}" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: blk-clone, namespace: ${NS}}
spec: {accessModes: [ReadWriteOnce], volumeMode: Block, storageClassName: ${CLASS}, resources: {requests: {storage: 128Mi}}, dataSource: {kind: PersistentVolumeClaim, name: blk}}
YAML
out="$(run_pod reader blk-clone fs "blockdev --getsize64 /dev/xvda; dd if=/dev/xvda bs=9 count=1 2>/dev/null; echo; cat /workspace/data.txt; dd if=/dev/xvda bs=1M skip=64 count=64 2>/dev/null | md5sum | cut -d' ' -f1; dd if=/dev/zero bs=1M count=64 2>/dev/null | md5sum | cut -d' ' -f1")"
expect "clone size" "$(sed -n 1p <<<"${out}")" 134217728
expect "clone data" "$(sed -n 2p <<<"${out}")" blockdata
expect "filesystem data" "$(sed -n 3p <<<"${out}")" hello
expect "clone tail is zero" "$(sed -n 4p <<<"${out}")" "$(sed -n 5p <<<"${out}")"

say "deleting claims"
"${K[@]}" -n "${NS}" delete pvc --all --wait=true >/dev/null
for _ in $(seq 60); do
  [[ -z "$("${K[@]}" get pv -o jsonpath="{.items[?(@.spec.csi.driver==\"${DRIVER}\")].metadata.name}")" ]] && break
  sleep 1
done
expect "volumes left" "$("${K[@]}" get pv -o jsonpath="{.items[?(@.spec.csi.driver==\"${DRIVER}\")].metadata.name}")" ""
expect "images left" "$(find "${WORK}/backing" -name '*.qcow2' | wc -l)" 0
expect "staged volumes left" "$(ls "${RUN_DIR}/volumes" 2>/dev/null | wc -l)" 0
expect "loop devices left" "$(losetup -nO BACK-FILE | grep -c "${RUN_DIR}" || true)" 0
say "PASS"
