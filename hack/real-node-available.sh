#!/usr/bin/env bash
# Exit 0 when this machine can run the stack's real node and build the images:
# root, and the Debian packages `make test-real-node` needs. Says what is missing otherwise.
missing=()
for b in containerd containerd-shim-runc-v2 runc iptables ip podman mmdebstrap; do
  command -v "$b" >/dev/null || missing+=("$b")
done
[[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || missing+=(containernetworking-plugins)
[[ "$(id -u)" == 0 ]] || missing+=("root")
# Root in a container may still lack CAP_NET_ADMIN: try the bridge the node needs.
if ((${#missing[@]} == 0)); then
  probe="avnprobe$$"
  if ip link add "$probe" type bridge 2>/dev/null; then ip link del "$probe"; else missing+=("CAP_NET_ADMIN (ip link add type bridge failed)"); fi
fi
if ((${#missing[@]})); then
  echo "real node: skipped (missing: ${missing[*]}; see README, A real node and the images)" >&2
  exit 1
fi
