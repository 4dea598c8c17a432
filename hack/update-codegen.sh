#!/usr/bin/env bash
# Regenerates every generated file: zz_generated.* beside the API types and everything in pkg/generated.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
THIS_PKG=github.com/pvpool/pvpool
CODEGEN_PKG=${CODEGEN_PKG:-$(go list -m -f '{{.Dir}}' k8s.io/code-generator)}
BOILERPLATE=$ROOT/hack/boilerplate.go.txt

# kube_codegen.sh installs the generators into GOBIN; keep them in a directory named after the
# code-generator version so several checkouts share them and a version bump rebuilds them.
CODEGEN_VERSION=$(go list -m -f '{{.Version}}' k8s.io/code-generator)
export GOBIN=${PVPOOL_CACHE:-$HOME/.cache/pvpool}/codegen-$CODEGEN_VERSION/bin
mkdir -p "$GOBIN"

source "$CODEGEN_PKG/kube_codegen.sh"

echo "codegen: helpers (deepcopy, defaults, conversion)"
kube::codegen::gen_helpers --boilerplate "$BOILERPLATE" "$ROOT/pkg/apis"

echo "codegen: openapi"
kube::codegen::gen_openapi \
  --output-dir "$ROOT/pkg/generated/openapi" \
  --output-pkg "$THIS_PKG/pkg/generated/openapi" \
  --report-filename "$ROOT/hack/api-rules-violations.list" \
  --update-report \
  --output-model-name-file zz_generated.model_name.go \
  --extra-pkgs k8s.io/api/core/v1 \
  --extra-pkgs k8s.io/api/batch/v1 \
  --extra-pkgs k8s.io/api/scheduling/v1alpha3 \
  --extra-pkgs k8s.io/apimachinery/pkg/util/intstr \
  --boilerplate "$BOILERPLATE" \
  "$ROOT/pkg/apis"

echo "codegen: clientset, listers, informers, applyconfigurations"
models=$(mktemp)
trap 'rm -f "$models"' EXIT
go run ./hack/models-schema >"$models"
kube::codegen::gen_client \
  --with-watch \
  --with-applyconfig \
  --applyconfig-openapi-schema "$models" \
  --applyconfig-externals "k8s.io/api/core/v1.PersistentVolumeClaimSpec:k8s.io/client-go/applyconfigurations/core/v1,k8s.io/api/batch/v1.JobSpec:k8s.io/client-go/applyconfigurations/batch/v1,k8s.io/api/core/v1.LocalObjectReference:k8s.io/client-go/applyconfigurations/core/v1" \
  --output-dir "$ROOT/pkg/generated" \
  --output-pkg "$THIS_PKG/pkg/generated" \
  --boilerplate "$BOILERPLATE" \
  "$ROOT/pkg/apis"
echo "codegen: done"
