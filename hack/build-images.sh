#!/usr/bin/env bash
# Build both Dockerfile targets (operator, runner) without a Docker engine, and
# load them into the local stack's containerd (the real node) when it runs.
#
#   bash hack/build-images.sh            # or: make images
#   bash hack/build-images.sh --base-only  # only find or make the base image
#
# Builder: podman, else buildah (Debian packages), else docker when its engine
# answers. Base (the Dockerfile's PYTHON_IMAGE): $PYTHON_IMAGE when set; else
# the official python image when a registry answers; else a Debian bookworm
# rootfs made offline-from-registries by mmdebstrap (Debian's mirror only) and
# imported as localhost/avatar-python-base:bookworm.
# An extra CA bundle (an intercepting proxy's) is passed as the build secret
# `extra-ca`: $EXTRA_CA_FILE, else $PIP_CERT, else $SSL_CERT_FILE.
#
# Writes $AVATAR_STACK_DIR/images/{operator,runner}.tar (docker-archive) and, when
# the stack's node containerd socket exists, imports them into its k8s.io namespace.
# Every step prints how long it took.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
stack="${AVATAR_STACK_DIR:-$root/.stack}"
out="$stack/images"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-localhost/avatar-operator:dev}"
RUNNER_IMAGE="${RUNNER_IMAGE:-localhost/avatar-operator-runner:dev}"
OFFICIAL_PYTHON="${OFFICIAL_PYTHON:-docker.io/library/python:3.11.7-slim-bookworm}"
LOCAL_BASE="localhost/avatar-python-base:bookworm"

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step() { # step NAME CMD...: runs CMD, prints its time
  local name="$1" t0; shift; t0="$(now)"
  "$@"
  say "$name: $(took "$t0") s"
}

builder=""
if command -v podman >/dev/null; then builder=podman
elif command -v buildah >/dev/null; then builder=buildah
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then builder=docker
else die "no image builder: apt-get install podman (or buildah); no Docker engine is needed"
fi
say "builder: $builder"

image_exists() {
  case "$builder" in
    podman) podman image exists "$1" ;;
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
  esac
}

make_local_base() {
  command -v mmdebstrap >/dev/null || die "no registry answers and mmdebstrap is missing: apt-get install mmdebstrap (or set PYTHON_IMAGE)"
  say "no registry answers: making $LOCAL_BASE with mmdebstrap (Debian bookworm, python3)"
  local tmp; tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
    --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tmp/rootfs.tar"
  case "$builder" in
    podman) podman import --quiet "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null ;;
    buildah) local c; c="$(buildah from scratch)"
             tar -C "$(buildah mount "$c")" -xf "$tmp/rootfs.tar"
             buildah umount "$c" >/dev/null; buildah commit --quiet "$c" "$LOCAL_BASE" >/dev/null; buildah rm "$c" >/dev/null ;;
    docker) docker import "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null ;;
  esac
}

pick_base() {
  if [[ -n "${PYTHON_IMAGE:-}" ]]; then base="$PYTHON_IMAGE"; return; fi
  if image_exists "$OFFICIAL_PYTHON"; then base="$OFFICIAL_PYTHON"; return; fi
  if image_exists "$LOCAL_BASE" && [[ "${REBUILD_BASE:-0}" != 1 ]]; then base="$LOCAL_BASE"; return; fi
  if timeout 30 "$builder" pull -q "$OFFICIAL_PYTHON" >/dev/null 2>&1; then base="$OFFICIAL_PYTHON"; return; fi
  make_local_base
  base="$LOCAL_BASE"
}
step "base image" pick_base
say "base: $base"
[[ "${1:-}" == --base-only ]] && exit 0

args=(--build-arg "PYTHON_IMAGE=$base")
ca="${EXTRA_CA_FILE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
if [[ -n "$ca" && -s "$ca" ]]; then
  args+=(--secret "id=extra-ca,src=$ca")
  say "extra CA bundle (build secret extra-ca): $ca"
fi
case "$builder" in
  # chroot isolation: no runc or cgroups needed inside this sandbox; host
  # network: the build reaches Debian and PyPI as the host does.
  podman) build=(podman build --isolation chroot --network host --layers) ;;
  buildah) build=(buildah build --isolation chroot --network host --layers) ;;
  docker) build=(docker build) ;;
esac

# The operator first: the builder stage it shares with the runner is then cached.
step "build operator ($OPERATOR_IMAGE)" "${build[@]}" "${args[@]}" --target operator -t "$OPERATOR_IMAGE" -f "$root/Dockerfile" "$root"
step "build runner ($RUNNER_IMAGE)" "${build[@]}" "${args[@]}" --target runner -t "$RUNNER_IMAGE" -f "$root/Dockerfile" "$root"

mkdir -p "$out"
save() {
  rm -f "$2"
  case "$builder" in
    podman) podman save --quiet --format docker-archive -o "$2" "$1" ;;
    buildah) buildah push --quiet "$1" "docker-archive:$2:$1" ;;
    docker) docker save -o "$2" "$1" ;;
  esac
}
step "save operator.tar" save "$OPERATOR_IMAGE" "$out/operator.tar"
step "save runner.tar" save "$RUNNER_IMAGE" "$out/runner.tar"

sock="$stack/node/containerd/containerd.sock"
if [[ -S "$sock" ]]; then
  snap="$(cat "$stack/node/snapshotter" 2>/dev/null || echo overlayfs)"
  for t in operator runner; do
    step "import $t into the node's containerd ($snap)" \
      ctr --address "$sock" -n k8s.io images import --snapshotter "$snap" "$out/$t.tar" >/dev/null
  done
else
  say "no real node running ($sock): images saved in $out; \`hack/stack.py up --real-node\` imports them"
fi
say "done: $OPERATOR_IMAGE, $RUNNER_IMAGE"
