#!/usr/bin/env bash
# `make up`: a one-node Kubernetes cluster on this machine's loopback, built only from Go modules and
# Debian packages, running pvpool.
#
# Phases: apt packages, pinned tools (hack/tools/install.sh, cached), pvpool binaries (hack/build.sh),
# certificates, etcd + kube-apiserver + kube-controller-manager + kube-scheduler, bridge + containerd +
# locally built images + kubelet, then addons: snapshot CRDs + snapshot-controller, pvpool-apiserver
# (APIService), the CSI plugin (artifacts/csi), the seeds' backing volume, StorageClass and
# VolumeSnapshotClass.
#
# Idempotent: processes that are running are left alone, certificates are kept, manifests are applied.
# State: ${PVPOOL_CLUSTER_DIR:-<repo>/_output/cluster}; `make down` removes it.
# Env: PVPOOL_CLUSTER_DIR, PVPOOL_CACHE, PVPOOL_SKIP_APT=1, PVPOOL_SKIP_BUILD=1 (do not run hack/build.sh),
#      ports (see hack/cluster/lib.sh).
set -euo pipefail

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
source "${REPO_ROOT}/hack/cluster/certs.sh"
source "${REPO_ROOT}/hack/images/build.sh"

UP_START=${SECONDS}
PHASE_NAME=""
PHASE_START=0
PHASE_REPORT=()
phase() {
  phase_end
  PHASE_NAME="$1"
  PHASE_START=${SECONDS}
  log "=== ${PHASE_NAME}"
}
phase_end() {
  if [[ -n "${PHASE_NAME}" ]]; then
    PHASE_REPORT+=("$(printf '%5ss  %s' "$((SECONDS - PHASE_START))" "${PHASE_NAME}")")
    PHASE_NAME=""
  fi
}

if [[ ${EUID} -ne 0 ]]; then
  die "the cluster needs root (containerd, kubelet, mounts, cgroups)"
fi

# ---------------------------------------------------------------------------------------------------
install_packages() {
  if [[ "${PVPOOL_SKIP_APT:-0}" == 1 ]]; then
    return 0
  fi
  local missing=() p
  # shellcheck disable=SC2086
  for p in ${CLUSTER_APT_PACKAGES}; do
    if ! dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep "install ok installed" >/dev/null; then
      missing+=("${p}")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "apt packages present"
    return 0
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# start_process <name> <command...>: runs the command in its own session with its exact PID recorded
# in ${PID_DIR}/<name>.pid and output in ${LOG_DIR}/<name>.log; a running one is left alone.
start_process() {
  local name="$1"
  shift
  if pid_alive "${name}"; then
    log "${name} already running (pid $(cat "${PID_DIR}/${name}.pid"))"
    return 0
  fi
  log "starting ${name}"
  # The inner shell writes its own PID and then execs the program, so the PID file names the program
  # whatever setsid does.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "${PID_DIR}/${name}.pid" "$@" \
    >>"${LOG_DIR}/${name}.log" 2>&1 </dev/null &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "${PID_DIR}/${name}.pid" ]] && break
    sleep 0.1
  done
}

# wait_for <name> <timeout seconds> <description> <command...>: polls the command; fails early when
# the process <name> died (its log tail is printed).
wait_for() {
  local name="$1" timeout="$2" what="$3"
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "${name}" ]] && ! pid_alive "${name}"; then
      tail -n 30 "${LOG_DIR}/${name}.log" >&2 || true
      die "${name} exited while waiting for ${what}; log: ${LOG_DIR}/${name}.log"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n "${name}" ]] && tail -n 30 "${LOG_DIR}/${name}.log" >&2
      die "timed out after ${timeout}s waiting for ${what}"
    fi
    sleep 1
  done
  log "${what}: ok"
}

https_ok() {
  curl -sf --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" "$1" |
    grep -x ok >/dev/null
}

# ---------------------------------------------------------------------------------------------------
start_control_plane() {
  start_process etcd "$(tool etcd)" \
    --name=pvpool --data-dir="${STATE_DIR}/etcd" \
    --listen-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="pvpool=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd 60 "etcd health" curl -sf "http://127.0.0.1:${ETCD_CLIENT_PORT}/health"

  start_process kube-apiserver "$(tool kube-apiserver)" \
    --etcd-servers="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --bind-address=127.0.0.1 --secure-port="${KUBE_APISERVER_PORT}" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="${PKI_DIR}/apiserver.crt" --tls-private-key-file="${PKI_DIR}/apiserver.key" \
    --client-ca-file="${PKI_DIR}/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="${PKI_DIR}/sa.pub" \
    --service-account-signing-key-file="${PKI_DIR}/sa.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --kubelet-client-certificate="${PKI_DIR}/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${PKI_DIR}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="${PKI_DIR}/ca.crt" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --requestheader-client-ca-file="${PKI_DIR}/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-uid-headers=X-Remote-Uid \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="${PKI_DIR}/front-proxy-client.crt" \
    --proxy-client-key-file="${PKI_DIR}/front-proxy-client.key" \
    --enable-aggregator-routing=false \
    --profiling=false --v=1
  wait_for kube-apiserver 120 "kube-apiserver /readyz" https_ok "https://127.0.0.1:${KUBE_APISERVER_PORT}/readyz"

  start_process kube-controller-manager "$(tool kube-controller-manager)" \
    --kubeconfig="${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="${CONTROLLER_MANAGER_PORT}" \
    --cluster-signing-cert-file="${PKI_DIR}/ca.crt" --cluster-signing-key-file="${PKI_DIR}/ca.key" \
    --root-ca-file="${PKI_DIR}/ca.crt" \
    --service-account-private-key-file="${PKI_DIR}/sa.key" \
    --use-service-account-credentials=true \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --allocate-node-cidrs=false \
    --leader-elect=false --profiling=false --v=1
  start_process kube-scheduler "$(tool kube-scheduler)" \
    --kubeconfig="${KUBECONFIG_DIR}/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="${KUBECONFIG_DIR}/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="${KUBECONFIG_DIR}/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="${SCHEDULER_PORT}" \
    --leader-elect=false --profiling=false --v=1
  wait_for kube-controller-manager 60 "kube-controller-manager /healthz" \
    curl -skf "https://127.0.0.1:${CONTROLLER_MANAGER_PORT}/healthz"
  wait_for kube-scheduler 60 "kube-scheduler /healthz" curl -skf "https://127.0.0.1:${SCHEDULER_PORT}/healthz"
}

# ---------------------------------------------------------------------------------------------------
setup_node_network() {
  # The bridge exists before kubelet starts because the node's address lives on it; the CNI bridge
  # plugin adopts it.
  if ! ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
    log "creating bridge ${BRIDGE_NAME} with ${NODE_IP}"
    ip link add "${BRIDGE_NAME}" type bridge
  fi
  local prefix="${POD_SUBNET#*/}"
  if ! ip -4 addr show dev "${BRIDGE_NAME}" | grep "inet ${NODE_IP}/" >/dev/null; then
    ip addr add "${NODE_IP}/${prefix}" dev "${BRIDGE_NAME}"
  fi
  ip link set "${BRIDGE_NAME}" up
  mkdir -p "${CNI_DIR}/net.d" "${CNI_DIR}/ipam"
  cat >"${CNI_DIR}/net.d/10-pvpool.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "pvpool",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE_NAME}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${CNI_DIR}/ipam",
        "ranges": [[{"subnet": "${POD_SUBNET}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
}

start_containerd() {
  mkdir -p "${CONTAINERD_DIR}/root" "${CONTAINERD_DIR}/state" "${CONTAINERD_DIR}/opt"
  cat >"${CONTAINERD_DIR}/config.toml" <<TOML
version = 2
root = "${CONTAINERD_DIR}/root"
state = "${CONTAINERD_DIR}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"

[debug]
  address = "${CONTAINERD_SOCK}.debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "${CONTAINERD_DIR}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: without this runc fails "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${CNI_DIR}/net.d"
TOML
  start_process containerd containerd --config "${CONTAINERD_DIR}/config.toml"
  wait_for containerd 60 "containerd" ctr --address "${CONTAINERD_SOCK}" version
}

start_kubelet() {
  mkdir -p "${KUBELET_ROOT}" "${LOG_DIR}/pods" "${STATE_DIR}/kubelet-volume-plugins"
  # CSI node plugins mount with Bidirectional propagation, which needs the kubelet root on a shared mount.
  if ! findmnt -n -o TARGET --mountpoint "${KUBELET_ROOT}" >/dev/null 2>&1; then
    mount --bind "${KUBELET_ROOT}" "${KUBELET_ROOT}"
  fi
  mount --make-rshared "${KUBELET_ROOT}"
  # kubelet requires its cgroup root to exist in every hierarchy.
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    mkdir -p "${hierarchy%/}${CGROUP_ROOT}"
  done
  cat >"${STATE_DIR}/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${PKI_DIR}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI_DIR}/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ${PKI_DIR}/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
# This VM has cgroup v1 only and swap settings kubelet would otherwise refuse.
cgroupDriver: cgroupfs
cgroupRoot: ${CGROUP_ROOT}
failCgroupV1: false
failSwapOn: false
podLogsDir: ${LOG_DIR}/pods
volumePluginDir: ${STATE_DIR}/kubelet-volume-plugins
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Images are imported locally and cannot be pulled again: never garbage-collect them, never evict on
# the shared disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
maxPods: 110
YAML
  start_process kubelet "$(tool kubelet)" \
    --config="${STATE_DIR}/kubelet-config.yaml" \
    --kubeconfig="${KUBECONFIG_DIR}/kubelet.kubeconfig" \
    --root-dir="${KUBELET_ROOT}" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --v=1
  wait_for kubelet 120 "kubelet /healthz" curl -sf "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz"
  wait_for kubelet 120 "node ${NODE_NAME} registered" kubectl_admin get node "${NODE_NAME}"
  wait_for kubelet 180 "node ${NODE_NAME} Ready" \
    kubectl_admin wait --for=condition=Ready "node/${NODE_NAME}" --timeout=5s
}

# ---------------------------------------------------------------------------------------------------
# render <file> <variables...>: substitutes only the named ${VARS}, leaving any other $ alone.
render() {
  local file="$1"
  shift
  local vars="" v
  for v in "$@"; do
    vars+="\${${v}} "
    export "${v?}"
  done
  envsubst "${vars}" <"${file}"
}

deploy_snapshot_support() {
  kubectl_admin apply --server-side --force-conflicts -f "${REPO_ROOT}/artifacts/cluster/snapshot-crds/" >/dev/null
  kubectl_admin wait --for=condition=Established --timeout=60s \
    crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
    crd/volumesnapshotclasses.snapshot.storage.k8s.io >/dev/null
  SNAPSHOT_CONTROLLER_METRICS_PORT="${PVPOOL_SNAPSHOT_CONTROLLER_METRICS_PORT:-10280}"
  render "${REPO_ROOT}/artifacts/cluster/snapshot-controller.yaml" \
    EXTERNAL_SNAPSHOTTER_VERSION KUBE_APISERVER_PORT SNAPSHOT_CONTROLLER_METRICS_PORT |
    kubectl_admin apply -f - >/dev/null
  log "snapshot CRDs and snapshot-controller applied"
}

deploy_pvpool_apiserver() {
  render "${REPO_ROOT}/artifacts/apiserver/rbac.yaml" PVPOOL_NAMESPACE | kubectl_admin apply -f - >/dev/null
  if [[ ! -f "${IMAGES_DIR}/pvpool-apiserver.tar" ]]; then
    log "SKIPPING pvpool-apiserver: bin/pvpool-apiserver is not built yet (cmd/apiserver missing?)."
    log "  Build it (hack/build.sh) and run 'make up' again to register v1alpha1.pvpool.puppet.com."
    return 0
  fi
  kubectl_admin -n "${PVPOOL_NAMESPACE}" create secret tls pvpool-apiserver-tls \
    --cert="${PKI_DIR}/pvpool-apiserver.crt" --key="${PKI_DIR}/pvpool-apiserver.key" \
    --dry-run=client -o yaml | kubectl_admin apply -f - >/dev/null
  PVPOOL_APISERVER_CA_BUNDLE="$(base64 -w0 "${PKI_DIR}/ca.crt")"
  PVPOOL_APISERVER_IMAGE="${APISERVER_IMAGE}"
  PVPOOL_APISERVER_IMAGE_SUM="$(cat "${IMAGES_DIR}/pvpool-apiserver.tar.imported")"
  PVPOOL_APISERVER_DATA_DIR="${STATE_DIR}/pvpool-apiserver"
  render "${REPO_ROOT}/artifacts/apiserver/apiserver.yaml" PVPOOL_NAMESPACE PVPOOL_APISERVER_SERVICE \
    AGGREGATED_APISERVER_PORT PVPOOL_APISERVER_CA_BUNDLE PVPOOL_APISERVER_IMAGE PVPOOL_APISERVER_IMAGE_SUM \
    PVPOOL_APISERVER_DATA_DIR KUBE_APISERVER_PORT | kubectl_admin apply -f - >/dev/null
  if ! kubectl_admin -n "${PVPOOL_NAMESPACE}" rollout status deployment/pvpool-apiserver --timeout=120s >&2; then
    kubectl_admin -n "${PVPOOL_NAMESPACE}" logs deployment/pvpool-apiserver --tail=40 >&2 || true
    die "pvpool-apiserver did not become ready"
  fi
  if ! kubectl_admin wait --for=condition=Available apiservice/v1alpha1.pvpool.puppet.com --timeout=60s >/dev/null; then
    kubectl_admin get apiservice v1alpha1.pvpool.puppet.com -o yaml >&2 || true
    die "APIService v1alpha1.pvpool.puppet.com is not Available"
  fi
  log "APIService v1alpha1.pvpool.puppet.com Available"
}

# restart_workloads_of <image>: a rebuilt image keeps its tag, so pods of Deployments and DaemonSets
# running it are rolled when this run imported a new build.
# Workloads created by this run start with the new image anyway: only those in <existing> are rolled.
list_workloads() {
  kubectl_admin get deployments,daemonsets -A -o \
    jsonpath='{range .items[*]}{.kind}/{.metadata.name} {.metadata.namespace} {.spec.template.spec.containers[*].image}{"\n"}{end}'
}

restart_workloads_of() {
  local image="$1" existing="$2"
  [[ " ${IMPORTED_REFS[*]:-} " == *" ${image} "* ]] || return 0
  local kind_name namespace images
  while read -r kind_name namespace images; do
    [[ " ${images} " == *" ${image} "* ]] || continue
    grep -F -- "${kind_name} ${namespace} " <<<"${existing}" >/dev/null || continue
    log "restarting ${namespace}/${kind_name} for the new ${image}"
    kubectl_admin -n "${namespace}" rollout restart "${kind_name}" >/dev/null
  done < <(list_workloads)
}

deploy_storage() {
  BACKING_DIR="${STATE_DIR}/backing"
  mkdir -p "${BACKING_DIR}"
  if [[ -d "${REPO_ROOT}/artifacts/csi" ]] && compgen -G "${REPO_ROOT}/artifacts/csi/*.yaml" >/dev/null; then
    # CSI manifests are written for a standard host. Here the kubelet root lives in the state dir (the
    # plugin sees kubelet's paths, so inside and outside change alike), and so do the plugin's own host
    # directories (only the hostPath side changes), so `make down` finds and removes all of it.
    local f existing
    existing="$(list_workloads)"
    for f in "${REPO_ROOT}"/artifacts/csi/*.yaml; do
      sed -e "s#/var/lib/kubelet#${KUBELET_ROOT}#g" \
        -e "s#^\(\s*path:\s*\)/run/pvpool-csi#\1${STATE_DIR}/csi/run#" \
        -e "s#^\(\s*path:\s*\)/var/lib/pvpool-csi#\1${STATE_DIR}/csi/lib#" \
        -e "/name: KUBERNETES_SERVICE_PORT/{n;s/value: .*/value: \"${KUBE_APISERVER_PORT}\"/}" \
        "${f}" | kubectl_admin apply -f - >/dev/null
    done
    log "artifacts/csi applied (kubelet root ${KUBELET_ROOT})"
    restart_workloads_of "${CSI_IMAGE}" "${existing}"
  else
    log "no artifacts/csi/*.yaml yet: CSI plugin not deployed"
  fi
  render "${REPO_ROOT}/artifacts/cluster/storage.yaml" BACKING_DIR NODE_NAME | kubectl_admin apply -f - >/dev/null
  log "backing-pvc, StorageClass my-storage-class and VolumeSnapshotClass subprovisioner applied"
}

# ---------------------------------------------------------------------------------------------------
main() {
  mkdir -p "${STATE_DIR}" "${PID_DIR}" "${LOG_DIR}"
  log "state directory ${STATE_DIR}"

  phase "apt packages"
  install_packages

  phase "tools (hack/tools/install.sh; cold: ~30-40 min on 2 cores, warm: seconds)"
  "${REPO_ROOT}/hack/tools/install.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kubelet \
    kubectl crictl csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller >/dev/null

  if [[ "${PVPOOL_SKIP_BUILD:-0}" != 1 ]]; then
    phase "pvpool binaries (hack/build.sh)"
    "${REPO_ROOT}/hack/build.sh"
  fi

  phase "certificates"
  generate_certs

  phase "control plane"
  start_control_plane

  phase "containerd and images"
  setup_node_network
  start_containerd
  main_images=(pause busybox sidecars apiserver csi)
  local i
  for i in "${main_images[@]}"; do
    "build_${i}"
  done

  phase "kubelet"
  start_kubelet

  phase "addons"
  deploy_snapshot_support
  deploy_pvpool_apiserver
  deploy_storage
  phase_end

  log "phase timings:"
  printf '  %s\n' "${PHASE_REPORT[@]}" >&2
  log "cluster up in $((SECONDS - UP_START)) s"
  cat <<EOF_MSG

pvpool cluster is up (state: ${STATE_DIR}).
  export KUBECONFIG=${ADMIN_KUBECONFIG}
  export PATH=$(dirname "$(tool kubectl)"):\$PATH   # kubectl ${KUBERNETES_VERSION}
  kubectl get nodes
  kubectl get --raw /apis/pvpool.puppet.com/v1alpha1
  kubectl create namespace storage && kubectl -n storage create -f <pool.yaml> && kubectl -n storage get pools
Stop and clean up with: make down (with the same PVPOOL_* settings, if any)
EOF_MSG
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
