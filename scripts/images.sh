#!/usr/bin/env bash
# Build the project's two images here with podman, from their own Dockerfiles and the
# repository root, exactly as a registry build would except for one build argument:
# BASE_IMAGE, a Debian bookworm minbase made from Debian's packages with mmdebstrap (no
# container registry is reachable from this machine; the Dockerfiles' default base is the
# registry's debian:bookworm-slim, the same release, and both install Debian's python3).
#
#   scripts/images.sh [base|trainer|operator|all]...   (default: all)
#
# Safe to run again: every install is skipped when present, the base is made once per
# Debian release, and podman's layer cache plus a pip cache shared with the host's
# ~/.cache/pip make a rebuild after a code-only change take seconds.
# Prints one line per image: "<name> <image id> <size> <seconds>".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export CONTAINERS_CONF="$root/scripts/containers.conf"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
suite=bookworm
base_ref="localhost/kube-finetune/debian:${suite}-slim"
trainer_ref="${TRAINER_IMAGE:-ghcr.io/kube-finetune/trainer:$version}"
operator_ref="${OPERATOR_IMAGE:-ghcr.io/kube-finetune/operator:$version}"

log() { printf 'images.sh: %s\n' "$*" >&2; }

# Debian packages this script needs, installed once (apt-get update only when one is missing).
ensure_tools() {
  local missing=()
  for pkg in podman buildah runc mmdebstrap uidmap; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# buildah keeps `RUN --mount=type=cache,id=pip` in /var/tmp/buildah-cache/pip (as root;
# buildah-cache-<uid> rootless): point it at the host's pip cache, so wheels built once
# (DeepSpeed's) serve the virtualenv and every image build. (Downloads are cached only where
# the index lets pip store them.)
share_pip_cache() {
  local host_cache="${PIP_CACHE_DIR:-$HOME/.cache/pip}" link uid
  uid="$(id -u)"
  link="${TMPDIR:-/var/tmp}/buildah-cache$([[ $uid == 0 ]] || echo "-$uid")/pip"
  mkdir -p "$host_cache" "$(dirname "$link")"
  if [[ ! -L "$link" ]]; then
    [[ -d "$link" ]] && cp -a "$link/." "$host_cache/" && rm -rf "$link"
    ln -s "$host_cache" "$link"
  fi
}

# The base: Debian's minbase for $suite from Debian's packages, with the same apt sources as
# the registry's debian:bookworm-slim (main, updates, security), plus this machine's trusted
# certificates (the package registries may be reached through a TLS proxy with its own CA):
# the Dockerfiles' `apt-get install ca-certificates` adds them to the image's bundle, and
# PIP_CERT makes the bundled pip use that bundle.
build_base() {
  if podman image exists "$base_ref"; then
    log "base $base_ref present"
    return
  fi
  local tmp start=$SECONDS host_ca=/etc/ssl/certs/ca-certificates.crt
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  log "making base $base_ref with mmdebstrap"
  nice mmdebstrap --quiet --variant=minbase --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    --customize-hook="mkdir -p \"\$1/usr/local/share/ca-certificates\" && cp $host_ca \"\$1/usr/local/share/ca-certificates/host-trust.crt\"" \
    "$suite" "$tmp/rootfs.tar" \
    "deb http://deb.debian.org/debian $suite main" \
    "deb http://deb.debian.org/debian ${suite}-updates main" \
    "deb http://deb.debian.org/debian-security ${suite}-security main"
  podman import --quiet --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    "$tmp/rootfs.tar" "$base_ref" >/dev/null
  log "base made in $((SECONDS - start)) s"
}

build_image() {  # name dockerfile ref
  local name=$1 dockerfile=$2 ref=$3 start=$SECONDS
  log "building $name image $ref"
  nice podman build --layers --build-arg "BASE_IMAGE=$base_ref" -f "$dockerfile" -t "$ref" . >&2
  printf '%s %s %s %s\n' "$name" "$(podman image inspect -f '{{.Id}}' "$ref" | cut -c1-12)" \
    "$(podman image inspect -f '{{.Size}}' "$ref")" "$((SECONDS - start))"
}

targets=("$@")
((${#targets[@]})) || targets=(all)
ensure_tools
share_pip_cache
for target in "${targets[@]}"; do
  case "$target" in
    base) build_base ;;
    trainer) build_base && build_image trainer trainer_image/Dockerfile "$trainer_ref" ;;
    operator) build_base && build_image operator operator/Dockerfile "$operator_ref" ;;
    all)
      build_base
      build_image operator operator/Dockerfile "$operator_ref"
      build_image trainer trainer_image/Dockerfile "$trainer_ref"
      ;;
    *) echo "images.sh: unknown target '$target' (base, trainer, operator or all)" >&2; exit 2 ;;
  esac
done
