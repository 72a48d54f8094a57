#!/usr/bin/env bash
# Builds kstatus-check (main.go: kstatus and gopher-lua, pinned in go.mod and
# go.sum) and links it into DEST (default .stack/bin). The build is cached
# under $AVATAR_STACK_CACHE like the stack's binaries, keyed by a hash of the
# sources, so a warm run costs a hash and a symlink.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/../../.stack/bin}"
cache="${AVATAR_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/avatar-operator}"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16)"
out="$cache/bin/kstatus-check-$key"
mkdir -p "$dest"

if [[ ! -f "$out/.complete" ]]; then
  command -v go >/dev/null || { echo "[kstatus-check] ERROR: go is not installed (Go >= 1.24 builds hack/kstatus)" >&2; exit 1; }
  echo "[kstatus-check] building from $here (sigs.k8s.io/cli-utils, github.com/yuin/gopher-lua)" >&2
  mkdir -p "$out"
  # As hack/build-binaries.sh: the installed Go, no cgo, no VCS stamp; go.sum
  # pins every module, so nothing is resolved anew (-mod=readonly).
  (cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -ldflags "-s -w" -o "$out/kstatus-check" .)
  touch "$out/.complete"
fi
ln -sfn "$out/kstatus-check" "$dest/kstatus-check"
