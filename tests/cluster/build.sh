#!/usr/bin/env bash
# Build every binary the local test cluster needs into .cache/cluster/bin/.
#
# Idempotent: each binary's file name carries its version (and, for our own Go
# program, a hash of its sources), so a binary that already exists is skipped.
# Usage: tests/cluster/build.sh [controlplane|kwok|helm|minio|kubectl|node|coredns|registry ...]
# (default: controlplane kwok helm minio; kubectl only where the machine has none; node,
# coredns and registry for the real node, tests/cluster/node.sh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

bin_dir="${FTJ_CLUSTER_BIN_DIR:-$root/.cache/cluster/bin}"
mkdir -p "$bin_dir"
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: go not found (expected Go >= 1.26)" >&2; exit 1; }

# Be gentle with shared machines: lower priority; Go still uses every core.
nice_cmd=(nice -n "${FTJ_BUILD_NICE:-10}")
ldflags="-s -w"

log() { printf '[build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# go_install NAME PACKAGE VERSION: go install PACKAGE@VERSION to bin/NAME-VERSION.
go_install() {
  local name="$1" pkg="$2" version="$3"
  local target="$bin_dir/$name-$version"
  if [[ -x "$target" ]]; then
    log "$name $version: cached"
    return
  fi
  local tmp
  tmp="$(mktemp -d "$bin_dir/.tmp-$name-XXXXXX")"
  log "$name $version: go install $pkg@$version"
  local start=$SECONDS
  GOBIN="$tmp" "${nice_cmd[@]}" go install -trimpath -ldflags="$ldflags" "$pkg@$version"
  mv "$tmp/$name" "$target"
  rm -rf "$tmp"
  log "$name $version: built in $((SECONDS - start)) s"
}

# version_ldflags: stamp the release into Kubernetes binaries, as Kubernetes' own
# build does; clients (kubectl, helm's kubeVersion checks) read it from /version.
version_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}" v x=""
  minor="${minor%%.*}"
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $v.gitVersion=$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  done
  echo "$x"
}

# kubectl at the pinned release, only for machines that have none (up.sh decides).
build_kubectl() {
  local target="$bin_dir/kubectl-$KUBERNETES_VERSION"
  if [[ -x "$target" ]]; then
    log "kubectl $KUBERNETES_VERSION: cached"
    return
  fi
  log "kubectl $KUBERNETES_VERSION: go build k8s.io/kubernetes/cmd/kubectl"
  local start=$SECONDS
  (cd "$here" && "${nice_cmd[@]}" go build -trimpath -ldflags="$ldflags $(version_ldflags)" -o "$target.tmp" k8s.io/kubernetes/cmd/kubectl)
  mv "$target.tmp" "$target"
  log "kubectl: built in $((SECONDS - start)) s"
}

# Our control-plane program: keyed by the Kubernetes version and a hash of its sources.
controlplane_target() {
  local hash
  hash="$(cd "$here" && cat go.mod go.sum $(find . -name '*.go' -not -path './testdata/*' -not -path './node/*' | LC_ALL=C sort) | sha256sum | cut -c1-12)"
  echo "$bin_dir/ftj-cluster-$KUBERNETES_VERSION-$hash"
}

build_controlplane() {
  local target
  target="$(controlplane_target)"
  if [[ -x "$target" ]]; then
    log "ftj-cluster $KUBERNETES_VERSION: cached ($(basename "$target"))"
    return
  fi
  log "ftj-cluster $KUBERNETES_VERSION: go build (etcd $ETCD_VERSION embedded)"
  local start=$SECONDS
  (cd "$here" && "${nice_cmd[@]}" go build -trimpath -ldflags="$ldflags $(version_ldflags)" -o "$target.tmp" ./cmd/ftj-cluster)
  mv "$target.tmp" "$target"
  # Old builds of the program are useless once the sources changed.
  find "$bin_dir" -maxdepth 1 -name "ftj-cluster-*" ! -name "$(basename "$target")" -delete
  log "ftj-cluster: built in $((SECONDS - start)) s"
}

# The real node's program (node/, its own Go module): the upstream kubelet and kube-proxy.
node_target() {
  local hash
  hash="$(cd "$here/node" && cat go.mod go.sum *.go | sha256sum | cut -c1-12)"
  echo "$bin_dir/ftj-node-$KUBERNETES_VERSION-$hash"
}

build_node() {
  local target
  target="$(node_target)"
  if [[ -x "$target" ]]; then
    log "ftj-node $KUBERNETES_VERSION: cached ($(basename "$target"))"
    return
  fi
  log "ftj-node $KUBERNETES_VERSION: go build (kubelet and kube-proxy)"
  local start=$SECONDS
  (cd "$here/node" && "${nice_cmd[@]}" go build -trimpath -ldflags="$ldflags $(version_ldflags)" -o "$target.tmp" .)
  mv "$target.tmp" "$target"
  find "$bin_dir" -maxdepth 1 -name "ftj-node-*" ! -name "$(basename "$target")" -delete
  log "ftj-node: built in $((SECONDS - start)) s"
}

# A machine-wide copy of every built binary, so a fresh clone on the same machine (CI's) links
# them instead of relinking from Go's cache. Names carry versions and source hashes: sharing is safe.
machine_cache="${FTJ_CLUSTER_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-finetune/cluster-bin}"
share_binaries() { # share_binaries FROM TO: hard-link (or copy) what TO lacks
  local f
  mkdir -p "$2"
  for f in "$1"/*; do
    [[ -f "$f" && -x "$f" && ! -e "$2/$(basename "$f")" ]] || continue
    ln "$f" "$2/" 2>/dev/null || cp -p "$f" "$2/"
  done
}
share_binaries "$machine_cache" "$bin_dir"
trap 'share_binaries "$bin_dir" "$machine_cache"' EXIT

what=("$@")
[[ ${#what[@]} -gt 0 ]] || what=(controlplane kwok helm minio)
for w in "${what[@]}"; do
  case "$w" in
    controlplane) build_controlplane ;;
    kwok) go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
    kubectl) build_kubectl ;;
    minio) go_install minio github.com/minio/minio "$MINIO_VERSION" ;;
    print-controlplane) controlplane_target ;;
    node) build_node ;;
    coredns) go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" ;;
    registry) go_install registry github.com/distribution/distribution/v3/cmd/registry "$REGISTRY_VERSION" ;;
    print-node) node_target ;;
    *) echo "build.sh: unknown target '$w'" >&2; exit 2 ;;
  esac
done
