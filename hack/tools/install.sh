#!/usr/bin/env bash
# Builds pinned tools from Go modules into a versioned cache and prints where each one is.
#
#   hack/tools/install.sh <tool>...      build (or reuse) the tools, print "<tool> <path>" per tool
#   hack/tools/install.sh --path <tool>  print only the path (builds it first if needed)
#   hack/tools/install.sh --list         list the tools this script knows
#
# Cache: ${PVPOOL_CACHE:-$HOME/.cache/pvpool}/tools/<tool>-<version>/<tool>. A fresh machine builds from
# nothing; reruns reuse the binaries. Each tool is built in a throwaway module that requires the tool's
# module at its pinned version and copies that module's own replace directives (relative ones, which only
# work inside the tool's repository, are pointed at the published module of the pinned version).
# Builds run one at a time (a lock per throwaway module) because the machine is shared and has 2 cores.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../versions.env
source "${HACK_DIR}/versions.env"

PVPOOL_CACHE="${PVPOOL_CACHE:-${HOME}/.cache/pvpool}"
TOOLS_DIR="${PVPOOL_CACHE}/tools"
SRC_DIR="${PVPOOL_CACHE}/src"
LOCK_DIR="${PVPOOL_CACHE}/locks"
mkdir -p "${TOOLS_DIR}" "${SRC_DIR}" "${LOCK_DIR}"

# Tools are built with the repository's Go toolchain but outside its module.
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOWORK=off
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '[tools %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# jq reads the tools' go.mod files (go mod edit -json).
if ! command -v jq >/dev/null; then
  log "installing jq"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null
fi

KNOWN_TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl crictl
  csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller csi-sanity)

# tool_spec <tool> sets MODULE VERSION PKG RELATIVE_VERSION SRC_NAME LDFLAGS MAIN_SRC for the tool.
tool_spec() {
  MAIN_SRC=""
  LDFLAGS="-s -w"
  case "$1" in
  kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kubectl)
    MODULE=k8s.io/kubernetes VERSION="${KUBERNETES_VERSION}" PKG="k8s.io/kubernetes/cmd/$1"
    RELATIVE_VERSION="${KUBERNETES_STAGING_VERSION}" SRC_NAME="kubernetes-${KUBERNETES_VERSION}"
    local minor="${KUBERNETES_VERSION#v1.}"
    minor="${minor%%.*}"
    local x
    for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      LDFLAGS+=" -X ${x}.gitVersion=${KUBERNETES_VERSION} -X ${x}.gitMajor=1 -X ${x}.gitMinor=${minor}"
      LDFLAGS+=" -X ${x}.gitTreeState=clean -X ${x}.buildDate=1970-01-01T00:00:00Z"
    done
    ;;
  etcd)
    # The etcd binary's main lives in the repository root module, which is not published for v3.7;
    # etcdmain.Main is the whole of it.
    MODULE=go.etcd.io/etcd/server/v3 VERSION="${ETCD_VERSION}" PKG=pvpool.local/tools/etcd
    RELATIVE_VERSION="${ETCD_VERSION}" SRC_NAME="etcd-${ETCD_VERSION}"
    MAIN_SRC=$'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n'
    ;;
  crictl)
    MODULE=sigs.k8s.io/cri-tools VERSION="${CRICTL_VERSION}" PKG=sigs.k8s.io/cri-tools/cmd/crictl
    RELATIVE_VERSION="${CRICTL_VERSION}" SRC_NAME="cri-tools-${CRICTL_VERSION}"
    LDFLAGS+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}"
    ;;
  csi-provisioner)
    MODULE=github.com/kubernetes-csi/external-provisioner/v6 VERSION="${CSI_PROVISIONER_VERSION}"
    PKG="${MODULE}/cmd/csi-provisioner" RELATIVE_VERSION="${VERSION}" SRC_NAME="$1-${VERSION}"
    LDFLAGS+=" -X main.version=${VERSION}"
    ;;
  csi-attacher)
    MODULE=github.com/kubernetes-csi/external-attacher/v4 VERSION="${CSI_ATTACHER_VERSION}"
    PKG="${MODULE}/cmd/csi-attacher" RELATIVE_VERSION="${VERSION}" SRC_NAME="$1-${VERSION}"
    LDFLAGS+=" -X main.version=${VERSION}"
    ;;
  csi-resizer)
    MODULE=github.com/kubernetes-csi/external-resizer/v2 VERSION="${CSI_RESIZER_VERSION}"
    PKG="${MODULE}/cmd/csi-resizer" RELATIVE_VERSION="${VERSION}" SRC_NAME="$1-${VERSION}"
    LDFLAGS+=" -X main.version=${VERSION}"
    ;;
  csi-snapshotter | snapshot-controller)
    MODULE=github.com/kubernetes-csi/external-snapshotter/v8 VERSION="${EXTERNAL_SNAPSHOTTER_VERSION}"
    PKG="${MODULE}/cmd/$1" RELATIVE_VERSION="${VERSION}" SRC_NAME="external-snapshotter-${VERSION}"
    LDFLAGS+=" -X main.version=${VERSION}"
    ;;
  csi-sanity)
    MODULE=github.com/kubernetes-csi/csi-test/v5 VERSION="${CSI_SANITY_VERSION}"
    PKG="${MODULE}/cmd/csi-sanity" RELATIVE_VERSION="${VERSION}" SRC_NAME="csi-test-${VERSION}"
    LDFLAGS+=" -X main.version=${VERSION}"
    ;;
  *)
    echo "unknown tool: $1 (known: ${KNOWN_TOOLS[*]})" >&2
    return 1
    ;;
  esac
}

# prepare_module writes the throwaway module for MODULE@VERSION into $1 (once).
prepare_module() {
  local src="$1"
  if [[ -f "${src}/.prepared" ]]; then
    return 0
  fi
  rm -rf "${src}"
  mkdir -p "${src}"
  log "preparing throwaway module for ${MODULE}@${VERSION}"
  local gomod
  gomod="$(cd "${src}" && go mod download -json "${MODULE}@${VERSION}" | jq -r .GoMod)"
  local goversion
  goversion="$(go mod edit -json "${gomod}" | jq -r '.Go // "1.25"')"
  (
    cd "${src}"
    go mod init pvpool.local/tools >/dev/null 2>&1
    go mod edit -go="${goversion}" -require="${MODULE}@${VERSION}"
    # Copy the tool's replace directives; relative ones point into the tool's own repository.
    local old new newver
    while IFS=$'\t' read -r old new newver; do
      if [[ "${new}" == .* ]]; then
        go mod edit -replace="${old}=${old}@${RELATIVE_VERSION}"
      elif [[ -n "${newver}" ]]; then
        go mod edit -replace="${old}=${new}@${newver}"
      fi
    done < <(go mod edit -json "${gomod}" | jq -r '.Replace // [] | .[] | [.Old.Path, .New.Path, (.New.Version // "")] | @tsv')
    if [[ -n "${MAIN_SRC}" ]]; then
      mkdir -p "${src}/${PKG#pvpool.local/tools/}"
      printf '%s' "${MAIN_SRC}" >"${src}/${PKG#pvpool.local/tools/}/main.go"
    fi
  )
  touch "${src}/.prepared"
}

# build_tool builds one tool into its cache directory unless it is already there.
build_tool() {
  local tool="$1"
  tool_spec "${tool}"
  local dest="${TOOLS_DIR}/${tool}-${VERSION}"
  if [[ -x "${dest}/${tool}" ]]; then
    return 0
  fi
  local src="${SRC_DIR}/${SRC_NAME}"
  (
    # One build at a time per throwaway module: concurrent callers wait, then reuse the result.
    exec 9>"${LOCK_DIR}/${SRC_NAME}.lock"
    if ! flock -n 9; then
      log "waiting for another build in ${SRC_NAME}"
      flock 9
    fi
    if [[ -x "${dest}/${tool}" ]]; then
      exit 0
    fi
    prepare_module "${src}"
    local start=${SECONDS}
    log "building ${tool} ${VERSION} (${PKG}); cold builds of Kubernetes binaries take ~10 min on 2 cores"
    cd "${src}"
    if [[ "${PKG}" != pvpool.local/* ]]; then
      go get "${PKG}@${VERSION}" >/dev/null 2>&1 || go get "${PKG}@${VERSION}"
    else
      go mod tidy >/dev/null 2>&1 || go mod tidy
    fi
    mkdir -p "${dest}"
    # Progress for long builds: a heartbeat line every minute.
    # The ticker must not inherit the lock (fd 9), or the lock outlives the build by up to a minute.
    (
      exec 9>&-
      while sleep 60; do log "  ... still building ${tool} ($((SECONDS - start)) s)"; done
    ) &
    local ticker=$!
    trap 'kill ${ticker} 2>/dev/null || true' EXIT
    go build -trimpath -ldflags "${LDFLAGS}" -o "${dest}/${tool}.tmp" "${PKG}"
    mv "${dest}/${tool}.tmp" "${dest}/${tool}"
    log "built ${tool} ${VERSION} in $((SECONDS - start)) s"
  )
}

tool_path() {
  tool_spec "$1"
  echo "${TOOLS_DIR}/$1-${VERSION}/$1"
}

main() {
  if [[ $# -eq 0 ]]; then
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
  fi
  case "$1" in
  --list)
    printf '%s\n' "${KNOWN_TOOLS[@]}"
    ;;
  --path)
    shift
    local t
    for t in "$@"; do
      build_tool "${t}"
      tool_path "${t}"
    done
    ;;
  *)
    local t
    for t in "$@"; do
      tool_spec "${t}" # fail early on unknown names
    done
    for t in "$@"; do
      build_tool "${t}"
      echo "${t} $(tool_path "${t}")"
    done
    ;;
  esac
}

main "$@"
