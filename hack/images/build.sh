#!/usr/bin/env bash
# Builds pvpool's container images from files on this host and imports them into the cluster's
# containerd (namespace k8s.io), without any registry.
#
#   hack/images/build.sh [image...]     images: pause busybox apiserver csi sidecars (default: all)
#
# Env: PVPOOL_CLUSTER_DIR (state dir, default <repo>/_output/cluster), PVPOOL_CACHE.
# Images whose inputs are missing (bin/pvpool-apiserver, bin/pvpool-csi not built yet) are skipped with a
# message. An image is imported again only when its archive changed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "${REPO_ROOT}/hack/versions.env"
source "${REPO_ROOT}/hack/cluster/lib.sh"

IMAGES_DIR="${STATE_DIR}/images"
mkdir -p "${IMAGES_DIR}" "${STATE_DIR}/bin"

# Image names the manifests use (also exported to hack/cluster/up.sh).
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE="docker.io/library/busybox:stable-musl"
APISERVER_IMAGE="docker.io/pvpool/pvpool-apiserver:dev"
CSI_IMAGE="docker.io/pvpool/pvpool-csi:dev"

# Host programs the CSI plugin runs inside its container (qcow2, qemu-storage-daemon, NBD/FUSE, loop
# devices, file systems). Extra ones: PVPOOL_CSI_IMAGE_EXTRA_BINS="/path/a /path/b".
CSI_HOST_BINS=(/usr/bin/qemu-img /usr/bin/qemu-io /usr/bin/qemu-storage-daemon /usr/bin/nbdfuse /usr/bin/nbdinfo
  /usr/bin/nbdcopy /usr/bin/fusermount3 /usr/sbin/losetup /usr/bin/mount /usr/bin/umount /usr/sbin/blkid
  /usr/sbin/blockdev /usr/bin/findmnt /usr/sbin/mkfs.ext4 /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/resize2fs
  /usr/sbin/tune2fs /usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /usr/sbin/xfs_repair /usr/sbin/fsck.ext4 /usr/sbin/wipefs)

# Images (re)imported by this run: workloads running an older build of the same tag are restarted.
IMPORTED_REFS=()

imagebuild() {
  local bin="${STATE_DIR}/bin/imagebuild"
  if [[ ! -x "${bin}" ]]; then
    (cd "${REPO_ROOT}/hack/images" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "${bin}" ./imagebuild)
  fi
  "${bin}" "$@"
}

# import_image <archive> <ref>: imports the archive unless the same archive was imported already.
import_image() {
  local archive="$1" ref="$2"
  local sum
  sum="$(sha256sum "${archive}" | cut -d' ' -f1)"
  if [[ -f "${archive}.imported" && "$(cat "${archive}.imported")" == "${sum}" ]] &&
    ctr_k8s images ls -q | grep -xF -- "${ref}" >/dev/null; then
    log "image ${ref} up to date"
    return 0
  fi
  ctr_k8s images import --no-unpack=false "${archive}" >/dev/null
  echo "${sum}" >"${archive}.imported"
  IMPORTED_REFS+=("${ref}")
  log "imported ${ref}"
}

build_pause() {
  (cd "${REPO_ROOT}/hack/images" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${STATE_DIR}/bin/pause" ./pause)
  imagebuild -tag "${PAUSE_IMAGE}" -o "${IMAGES_DIR}/pause.tar" -bin "${STATE_DIR}/bin/pause:/pause" -entrypoint /pause
  import_image "${IMAGES_DIR}/pause.tar" "${PAUSE_IMAGE}"
}

build_busybox() {
  imagebuild -tag "${BUSYBOX_IMAGE}" -o "${IMAGES_DIR}/busybox.tar" -busybox /bin/busybox -cmd sh
  import_image "${IMAGES_DIR}/busybox.tar" "${BUSYBOX_IMAGE}"
}

build_apiserver() {
  if [[ ! -x "${REPO_ROOT}/bin/pvpool-apiserver" ]]; then
    log "skipping image ${APISERVER_IMAGE}: bin/pvpool-apiserver does not exist (run hack/build.sh once cmd/apiserver exists)"
    return 0
  fi
  imagebuild -tag "${APISERVER_IMAGE}" -o "${IMAGES_DIR}/pvpool-apiserver.tar" \
    -bin "${REPO_ROOT}/bin/pvpool-apiserver:/usr/local/bin/pvpool-apiserver" -busybox /bin/busybox \
    -entrypoint /usr/local/bin/pvpool-apiserver
  import_image "${IMAGES_DIR}/pvpool-apiserver.tar" "${APISERVER_IMAGE}"
}

build_csi() {
  if [[ ! -x "${REPO_ROOT}/bin/pvpool-csi" ]]; then
    log "skipping image ${CSI_IMAGE}: bin/pvpool-csi does not exist (run hack/build.sh once cmd/csi exists)"
    return 0
  fi
  local args=(-bin "${REPO_ROOT}/bin/pvpool-csi:/usr/local/bin/pvpool-csi" -busybox /bin/busybox
    -file /etc/mke2fs.conf -entrypoint /usr/local/bin/pvpool-csi)
  local b
  # shellcheck disable=SC2206
  local extra=(${PVPOOL_CSI_IMAGE_EXTRA_BINS:-})
  for b in "${CSI_HOST_BINS[@]}" "${extra[@]}"; do
    if [[ -e "${b}" ]]; then
      args+=(-bin "${b}")
    else
      log "warning: ${b} not on this host; the CSI image will lack it"
    fi
  done
  # qemu loads optional block drivers from here.
  local mod
  for mod in /usr/lib/x86_64-linux-gnu/qemu/block-*.so; do
    [[ -e "${mod}" ]] && args+=(-bin "${mod}")
  done
  imagebuild -tag "${CSI_IMAGE}" -o "${IMAGES_DIR}/pvpool-csi.tar" "${args[@]}"
  import_image "${IMAGES_DIR}/pvpool-csi.tar" "${CSI_IMAGE}"
}

build_sidecars() {
  local tool version
  for tool in csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller; do
    version="$(sidecar_version "${tool}")"
    local ref="registry.k8s.io/sig-storage/${tool}:${version}"
    local path
    path="$("${REPO_ROOT}/hack/tools/install.sh" --path "${tool}")"
    imagebuild -tag "${ref}" -o "${IMAGES_DIR}/${tool}.tar" -bin "${path}:/${tool}" -entrypoint "/${tool}"
    import_image "${IMAGES_DIR}/${tool}.tar" "${ref}"
  done
}

main() {
  local images=("$@")
  if [[ ${#images[@]} -eq 0 ]]; then
    images=(pause busybox sidecars apiserver csi)
  fi
  local i
  for i in "${images[@]}"; do
    case "${i}" in
    pause | busybox | apiserver | csi | sidecars) "build_${i}" ;;
    *)
      echo "unknown image ${i}" >&2
      exit 2
      ;;
    esac
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
