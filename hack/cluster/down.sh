#!/usr/bin/env bash
# `make down`: stops everything hack/cluster/up.sh started (by recorded PID) and removes what the cluster
# left on the host: pod sandboxes and their network namespaces, mounts under the state dir, loop devices
# backed by files under it, its cgroups, the bridge, and finally the state dir itself.
# Safe to run when nothing is up, and more than once.
set -euo pipefail

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

if [[ ${EUID} -ne 0 ]]; then
  die "needs root"
fi
if [[ ! -d "${STATE_DIR}" ]] && ! ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
  log "nothing to tear down (${STATE_DIR} does not exist)"
  exit 0
fi
START=${SECONDS}

# Workload pods go first, while kubelet and the CSI node plugin still run, so volumes are unpublished,
# unstaged and detached by their owners rather than torn away below.
drain_workloads() {
  pid_alive kube-apiserver && pid_alive kubelet || return 0
  local namespaces ns
  namespaces="$(kubectl_admin get namespaces -o jsonpath='{.items[*].metadata.name}' 2>/dev/null)" || return 0
  for ns in ${namespaces}; do
    case "${ns}" in kube-system | kube-public | kube-node-lease | "${PVPOOL_NAMESPACE}") continue ;; esac
    # Controllers would recreate the pods: remove them first.
    kubectl_admin -n "${ns}" delete deployments,statefulsets,daemonsets,replicasets,jobs --all \
      --wait=false >/dev/null 2>&1 || true
    kubectl_admin -n "${ns}" delete pods --all --wait=false --grace-period=5 >/dev/null 2>&1 || true
  done
  log "waiting up to 60s for workload pods to go"
  local deadline=$((SECONDS + 60)) left
  while ((SECONDS < deadline)); do
    left="$(kubectl_admin get pods -A --no-headers 2>/dev/null |
      awk -v sys="${PVPOOL_NAMESPACE}" '$1 != "kube-system" && $1 != sys' | wc -l)" || break
    [[ "${left}" == 0 ]] && break
    sleep 1
  done
}

remove_sandboxes() {
  pid_alive containerd || return 0
  local crictl="${PVPOOL_CACHE}/tools/crictl-${CRICTL_VERSION}/crictl"
  if [[ -x "${crictl}" ]]; then
    log "removing pod sandboxes"
    "${crictl}" --runtime-endpoint "unix://${CONTAINERD_SOCK}" --image-endpoint "unix://${CONTAINERD_SOCK}" \
      --timeout 60s rmp --all --force >/dev/null 2>&1 || true
  fi
}

# Processes still in this cluster's cgroup root belong to its containers.
kill_pod_processes() {
  local procs pid
  procs="$(find /sys/fs/cgroup/*"${CGROUP_ROOT}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)" || true
  for pid in ${procs}; do
    kill -KILL "${pid}" 2>/dev/null || true
  done
}

# containerd shims outlive containerd; they are the processes started with this cluster's socket.
kill_shims() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    if tr "\\0" " " 2>/dev/null <"${dir}/cmdline" | grep -F -- "-address ${CONTAINERD_SOCK} " >/dev/null; then
      log "stopping containerd shim ${pid}"
      kill -TERM "${pid}" 2>/dev/null || true
    fi
  done
}

# Network namespaces of this containerd's sandboxes (read from its metadata before it is removed).
remove_netns() {
  local db="${CONTAINERD_DIR}/root/io.containerd.metadata.v1.bolt/meta.db" ns
  [[ -f "${db}" ]] || return 0
  for ns in $(grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' "${db}" | sort -u); do
    if [[ -e "${ns}" ]]; then
      umount "${ns}" 2>/dev/null || true
      rm -f "${ns}"
    fi
  done
}

# FUSE file systems mounted inside this cluster's pods (the CSI plugin exports volumes through FUSE and
# backs loop devices with them). Their device numbers identify the loop devices that are the cluster's
# even though the kernel names the backing files by their paths inside the containers.
POD_FUSE_DEVICES=" "
collect_pod_fuse_devices() {
  local pid
  for pid in $(find /sys/fs/cgroup/*"${CGROUP_ROOT}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
    POD_FUSE_DEVICES+="$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") break; if ($(i + 1) ~ /^fuse/) printf "%s ", $3 }' \
      "/proc/${pid}/mountinfo" 2>/dev/null) "
  done
}

detach_loop_devices() {
  local dev majmin back
  while read -r dev majmin back; do
    [[ -n "${dev}" ]] || continue
    if [[ "${back}" == "${STATE_DIR}"/* || "${POD_FUSE_DEVICES}" == *" ${majmin} "* ]]; then
      log "detaching ${dev} (${back})"
      losetup -d "${dev}" 2>/dev/null || true
    fi
  done < <(losetup -l -n -O NAME,BACK-MAJ:MIN,BACK-FILE 2>/dev/null)
}

mounts_under_state() {
  # mountinfo field 5 is the mount point (octal-escaped); deepest first.
  awk -v root="${STATE_DIR}" '{ mp = $5; gsub(/\\040/, " ", mp); if (mp == root || index(mp, root "/") == 1) print mp }' \
    /proc/self/mountinfo | sort -r
}

unmount_state() {
  local mp attempt
  for attempt in 1 2 3; do
    while read -r mp; do
      [[ -n "${mp}" ]] || continue
      umount "${mp}" 2>/dev/null || umount -l "${mp}" 2>/dev/null || true
    done < <(mounts_under_state)
    [[ -z "$(mounts_under_state)" ]] && return 0
    sleep 1
  done
  log "WARNING: mounts remain under ${STATE_DIR}:"
  mounts_under_state >&2
  return 1
}

remove_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*"${CGROUP_ROOT}"; do
    [[ -d "${dir}" ]] || continue
    find "${dir}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

main() {
  drain_workloads
  collect_pod_fuse_devices
  stop_pid kubelet 30
  remove_sandboxes
  kill_pod_processes
  stop_pid containerd 20
  kill_shims
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver 30
  stop_pid etcd
  local name
  for name in "${PID_DIR}"/*.pid; do
    [[ -e "${name}" ]] || continue
    name="$(basename "${name}" .pid)"
    stop_pid "${name}"
  done
  kill_pod_processes
  remove_netns
  detach_loop_devices
  unmount_state || die "refusing to delete ${STATE_DIR} while something is mounted under it"
  detach_loop_devices
  remove_cgroups
  if ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
    log "deleting bridge ${BRIDGE_NAME}"
    ip link delete "${BRIDGE_NAME}"
  fi
  # kubelet links container logs into /var/log/containers.
  local link
  for link in /var/log/containers/*.log; do
    [[ -L "${link}" ]] || continue
    [[ "$(readlink "${link}")" == "${LOG_DIR}"/* ]] && rm -f "${link}"
  done
  rm -rf "${STATE_DIR}"
  log "cluster down in $((SECONDS - START)) s"
}

main "$@"
