#!/usr/bin/env bash
# Find or build every binary the local stack needs, and link them into one
# directory (default .stack/bin).
#
# Order for each binary: $KUBEBUILDER_ASSETS (the envtest convention), PATH,
# then the build cache; only when none has it is it built from Go modules.
# Kubernetes binaries from PATH are accepted only within one minor version of
# KUBERNETES_VERSION (version skew policy); everything else is taken as found.
# Builds are cached under $AVATAR_STACK_CACHE (default ~/.cache/avatar-operator),
# keyed by version, so a second run costs nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

dest="${1:-$here/../.stack/bin}"
cache="${AVATAR_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/avatar-operator}"
mkdir -p "$dest" "$cache/bin" "$cache/src" "$cache/logs"
dest="$(cd "$dest" && pwd)"
export GOFLAGS="${GOFLAGS:-} -mod=mod -buildvcs=false"
export CGO_ENABLED=0
# A dependency's toolchain line must not send the go command to the network
# for another Go release: build with the Go that is installed.
export GOTOOLCHAIN=local

say() { printf '[stack-build] %s\n' "$*" >&2; }
die() { printf '[stack-build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed; the stack's binaries are built from Go modules (install Go >= 1.24, or point KUBEBUILDER_ASSETS/PATH at prebuilt binaries)"

k8s_minor() { sed -n 's/^v\{0,1\}1\.\([0-9]*\)\..*/\1/p' <<<"$1"; }
want_minor="$(k8s_minor "$KUBERNETES_VERSION")"

# Prints the version a Kubernetes binary reports, e.g. v1.34.4.
k8s_bin_version() {
  case "$(basename "$1")" in
    kubectl) "$1" version --client 2>/dev/null | sed -n 's/^Client Version: \(v[0-9.]*\).*/\1/p' ;;
    *) "$1" --version 2>/dev/null | sed -n 's/^Kubernetes \(v[0-9.]*\).*/\1/p' ;;
  esac
}

# found BIN [k8s]: prints a path to an existing BIN from KUBEBUILDER_ASSETS or PATH.
found() {
  local bin="$1" kind="${2:-}" cand="" v m
  for cand in "${KUBEBUILDER_ASSETS:+$KUBEBUILDER_ASSETS/$bin}" "$(command -v "$bin" 2>/dev/null || true)"; do
    [[ -n "$cand" && -x "$cand" ]] || continue
    [[ "$(readlink -f "$cand")" == "$dest"/* ]] && continue
    if [[ "$kind" == k8s ]]; then
      v="$(k8s_bin_version "$cand")"; m="$(k8s_minor "$v")"
      if [[ -z "$m" ]] || (( m < want_minor - 1 || m > want_minor + 1 )); then
        say "ignoring $cand (reports '${v:-no version}', outside the skew of $KUBERNETES_VERSION)"
        continue
      fi
    fi
    printf '%s\n' "$cand"; return 0
  done
  return 1
}

# Prints go build -v output as a running count, and keeps the whole log.
progress() {
  local name="$1" log="$cache/logs/$1.log"
  awk -v name="$name" -v logf="$log" '
    { print > logf; n++; if (n % 100 == 0) { printf "[stack-build] %s: %d packages compiled\n", name, n > "/dev/stderr"; fflush() } }
    END { printf "[stack-build] %s: %d packages compiled (log: %s)\n", name, n, logf > "/dev/stderr" }'
}

# Replace directives of a module's go.mod that point at other modules (not at
# local directories), as `replace` lines for a wrapper module.
module_replaces() {
  local gomod="$1"
  awk '
    /^replace \(/ { inblock = 1; next }
    inblock && /^\)/ { inblock = 0; next }
    /^replace / { sub(/^replace /, ""); if ($3 !~ /^\./) print "replace " $0; next }
    inblock && NF >= 4 && $3 !~ /^\./ { print "replace " $0 }
  ' "$gomod"
}

gomod_of() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'; }

# wrapper_module DIR MODULE@VERSION: a module whose go.mod requires MODULE and
# repeats its non-local replace directives. `go install pkg@version` refuses
# modules that carry replace directives; a wrapper builds them as their own
# repository does.
wrapper_module() {
  local dir="$1" modver="$2" gomod
  mkdir -p "$dir"
  gomod="$(gomod_of "$modver")" || die "cannot download $modver from the Go module proxy"
  {
    printf 'module avatar-operator.dev/stack/%s\n\ngo %s\n\nrequire %s %s\n\n' \
      "$(basename "$dir")" "$(go env GOVERSION | sed 's/^go//')" "${modver%@*}" "${modver#*@}"
    module_replaces "$gomod"
  } >"$dir/go.mod"
}

build_kubernetes() {
  local out="$cache/bin/kubernetes-$KUBERNETES_VERSION" src="$cache/src/kubernetes-$KUBERNETES_VERSION"
  [[ -f "$out/.complete" ]] && return 0
  say "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION from k8s.io/kubernetes (one go build; 15-30 min cold on 2 cores)"
  wrapper_module "$src" "k8s.io/kubernetes@$KUBERNETES_VERSION"
  # k8s.io/kubernetes replaces its staging modules with ./staging/src/...;
  # the wrapper pins each one to the matching published v0.X.Y instead.
  local gomod staging="v0${KUBERNETES_VERSION#v1}"
  gomod="$(gomod_of "k8s.io/kubernetes@$KUBERNETES_VERSION")"
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging"'#p' "$gomod" >>"$src/go.mod"
  local pkg=k8s.io/component-base/version date
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$want_minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  ldflags+=" -X ${pkg/component-base/client-go/pkg}.gitVersion=$KUBERNETES_VERSION"
  mkdir -p "$out"
  (cd "$src" && go build -v -ldflags "$ldflags" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl 2>&1 | progress kubernetes) \
    && [[ -x "$out/kube-apiserver" ]] || die "building Kubernetes $KUBERNETES_VERSION failed; see $cache/logs/kubernetes.log"
  touch "$out/.complete"
}

build_etcd() {
  local out="$cache/bin/etcd-$ETCD_VERSION" src="$cache/src/etcd-$ETCD_VERSION"
  [[ -f "$out/.complete" ]] && return 0
  say "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  mkdir -p "$src" "$out"
  # etcd's own main package lives in a module that replaces its siblings with
  # local directories; the wrapper requires each sibling at the same version.
  cat >"$src/go.mod" <<EOF
module avatar-operator.dev/stack/etcd

go $(go env GOVERSION | sed 's/^go//')

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  cat >"$src/main.go" <<'EOF'
// etcd's main, as go.etcd.io/etcd/v3's main.go has it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$src" && go build -v -ldflags "-s -w" -o "$out/etcd" . 2>&1 | progress etcd) \
    && [[ -x "$out/etcd" ]] || die "building etcd $ETCD_VERSION failed; see $cache/logs/etcd.log"
  touch "$out/.complete"
}

build_livekit() {
  local out="$cache/bin/livekit-$LIVEKIT_SERVER_VERSION" src="$cache/src/livekit-$LIVEKIT_SERVER_VERSION"
  [[ -f "$out/.complete" ]] && return 0
  say "building livekit-server $LIVEKIT_SERVER_VERSION from github.com/livekit/livekit-server"
  wrapper_module "$src" "github.com/livekit/livekit-server@$LIVEKIT_SERVER_VERSION"
  mkdir -p "$out"
  (cd "$src" && go build -v -ldflags "-s -w" -o "$out/livekit-server" github.com/livekit/livekit-server/cmd/server 2>&1 | progress livekit-server) \
    && [[ -x "$out/livekit-server" ]] || die "building livekit-server failed; see $cache/logs/livekit-server.log"
  touch "$out/.complete"
}

# go_install NAME PKG VERSION: modules without replace directives.
go_install() {
  local name="$1" pkg="$2" version="$3" out="$cache/bin/$1-$3"
  [[ -f "$out/.complete" ]] && return 0
  say "building $name $version ($pkg)"
  mkdir -p "$out"
  (GOBIN="$out" GOFLAGS=-buildvcs=false go install -v -ldflags "-s -w" "$pkg@$version" 2>&1 | progress "$name") \
    && [[ -x "$out/$name" ]] || die "building $name $version failed; see $cache/logs/$name.log"
  touch "$out/.complete"
}

link() { ln -sfn "$2" "$dest/$1"; say "$1 -> $2"; }

# Kubernetes: the group is built in one go build when any of it is missing.
need_k8s=0
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  found "$b" k8s >/dev/null || need_k8s=1
done
if (( need_k8s )); then build_kubernetes; fi
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  link "$b" "$(found "$b" k8s || echo "$cache/bin/kubernetes-$KUBERNETES_VERSION/$b")"
done

if p="$(found etcd)"; then link etcd "$p"; else build_etcd; link etcd "$cache/bin/etcd-$ETCD_VERSION/etcd"; fi
if p="$(found livekit-server)"; then link livekit-server "$p"; else build_livekit; link livekit-server "$cache/bin/livekit-$LIVEKIT_SERVER_VERSION/livekit-server"; fi
if p="$(found kwok)"; then link kwok "$p"; else go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"; link kwok "$cache/bin/kwok-$KWOK_VERSION/kwok"; fi
# kwok needs Stage objects to act on nodes and pods; its release's own "fast"
# stages come from the same module (the Go module proxy), whatever binary is used.
kwok_stages() {
  local out="$dest/kwok-stages.yaml" dir
  [[ -s "$out" ]] && grep -q "kwok $KWOK_VERSION" "$out" && return 0
  dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -d "$dir" ]] || die "cannot download sigs.k8s.io/kwok@$KWOK_VERSION for its stages"
  {
    echo "# kwok $KWOK_VERSION stages: node-initialize, node-heartbeat, pod-ready, pod-complete, pod-delete"
    for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"; cat "$dir/kustomize/stage/$f"
    done
  } >"$out"
  say "kwok stages -> $out"
}
kwok_stages
# The real node (AVATAR_REAL_NODE=1, hack/stack.py up --real-node): kubelet
# from the same k8s.io/kubernetes module as the control plane, and a static
# "pause" binary for the sandbox image the stack makes itself (no registry).
build_kubelet() {
  local out="$cache/bin/kubelet-$KUBERNETES_VERSION" src="$cache/src/kubernetes-$KUBERNETES_VERSION"
  [[ -f "$out/.complete" ]] && return 0
  say "building kubelet $KUBERNETES_VERSION from k8s.io/kubernetes (about 2 min with the module cache warm)"
  if [[ ! -f "$src/go.mod" ]]; then
    wrapper_module "$src" "k8s.io/kubernetes@$KUBERNETES_VERSION"
    local gomod staging="v0${KUBERNETES_VERSION#v1}"
    gomod="$(gomod_of "k8s.io/kubernetes@$KUBERNETES_VERSION")"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#replace \1 => \1 '"$staging"'#p' "$gomod" >>"$src/go.mod"
  fi
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$want_minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  mkdir -p "$out"
  (cd "$src" && go build -v -ldflags "$ldflags" -o "$out/" k8s.io/kubernetes/cmd/kubelet 2>&1 | progress kubelet) \
    && [[ -x "$out/kubelet" ]] || die "building kubelet $KUBERNETES_VERSION failed; see $cache/logs/kubelet.log"
  touch "$out/.complete"
}

build_pause() {
  local out="$cache/bin/pause-1" src="$cache/src/pause-1"
  [[ -f "$out/.complete" ]] && return 0
  say "building a static pause binary (the pod sandbox's only process)"
  mkdir -p "$src" "$out"
  printf 'module avatar-operator.dev/stack/pause\n\ngo 1.21\n' >"$src/go.mod"
  cat >"$src/main.go" <<'EOF'
// pause: the sandbox container's process. It holds the pod's namespaces,
// reaps orphans (it is PID 1 when the pod shares its PID namespace) and exits
// on SIGINT/SIGTERM, as the upstream pause does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
EOF
  (cd "$src" && go build -ldflags "-s -w" -o "$out/pause" . 2>&1 | progress pause) \
    && [[ -x "$out/pause" ]] || die "building pause failed; see $cache/logs/pause.log"
  touch "$out/.complete"
}

if [[ "${AVATAR_REAL_NODE:-0}" == 1 ]]; then
  if p="$(found kubelet k8s)"; then link kubelet "$p"; else build_kubelet; link kubelet "$cache/bin/kubelet-$KUBERNETES_VERSION/kubelet"; fi
  build_pause; link pause "$cache/bin/pause-1/pause"
fi
if [[ "${STACK_SKIP_CHART_TOOLS:-0}" != 1 ]]; then
  if p="$(found helm)"; then link helm "$p"; else go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"; link helm "$cache/bin/helm-$HELM_VERSION/helm"; fi
  if p="$(found kubeconform)"; then link kubeconform "$p"; else go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"; link kubeconform "$cache/bin/kubeconform-$KUBECONFORM_VERSION/kubeconform"; fi
fi
say "all binaries ready in $dest"
