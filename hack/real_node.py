"""A real node for the local stack: kubelet + containerd + runc + a CNI bridge.

Used by hack/stack.py when asked (`stack.py up --real-node`, or AVATAR_REAL_NODE=1);
off by default. Everything sits on addresses the stack makes itself: a Linux
bridge with a /24 of 10.233.0.0/16 (the node's InternalIP is the bridge's
address; pods get addresses on it), loopback for the rest. Nothing leaves the
machine.

    containerd  CRI with restrict_oom_score_adj, disable_cgroup, no AppArmor,
                netns under its state dir, runc's state under the stack;
                snapshotter overlayfs when an overlay mounts here, else native
    kubelet     built from the stack's Kubernetes version (hack/build-binaries.sh),
                cgroupfs driver, cgroupsPerQOS false, enforceNodeAllocatable [],
                failSwapOn false, x509 + webhook auth (the apiserver calls it with
                the admin cert, so `kubectl logs/exec` work)
    pause       a static Go binary as the sandbox image, made here (no registry)
    kubernetes  Service 10.0.0.1:443 reaches the apiserver from pods: a DNAT on the
                bridge to 127.0.0.1 (route_localnet on the bridge only)

The node is tainted avatar-operator.dev/real-node=true:NoSchedule, so only pods
that tolerate it (the tests that want a real container) land there; kwok's
nodes keep everything else. `down` removes every process, mount, netns, the
bridge and the NAT chain it made.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import time
import types
import urllib.request
from typing import Any

NODE_NAME = "real-0"
TAINT_KEY = "avatar-operator.dev/real-node"
LABEL = "avatar-operator.dev/node"  # = "real"
PAUSE_IMAGE = "localhost/avatar-pause:1"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
PACKAGES = "containerd runc containernetworking-plugins iptables"
SERVICE_IP = "10.0.0.1"


def _sh(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(list(argv), capture_output=True, input=input, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    return p


class Node:
    def __init__(self, S: types.ModuleType) -> None:
        self.S = S
        self.dir: pathlib.Path = S.STACK / "node"
        key = hashlib.sha256(str(S.STACK.resolve()).encode()).hexdigest()
        self.bridge = "avn" + key[:8]
        self.chain = "AVN-" + key[:8].upper()
        self.sock = self.dir / "containerd" / "containerd.sock"
        self.runc_root = self.dir / "runc"

    # --- prerequisites --------------------------------------------------------

    def missing(self) -> list[str]:
        need = {"containerd": "containerd", "containerd-shim-runc-v2": "containerd", "ctr": "containerd",
                "runc": "runc", "iptables": "iptables", "ip": "iproute2"}
        miss = sorted({pkg for b, pkg in need.items() if not shutil.which(b)})
        if not any(os.path.exists(os.path.join(d, "bridge")) for d in CNI_BIN_DIRS):
            miss.append("containernetworking-plugins")
        if os.geteuid() != 0:
            miss.append("(root: a bridge, mounts and containers need it)")
        return miss

    def cni_bin(self) -> str:
        return next(d for d in CNI_BIN_DIRS if os.path.exists(os.path.join(d, "bridge")))

    # --- network --------------------------------------------------------------

    def pick_subnet(self, st: dict[str, Any]) -> str:
        if "node_subnet" in st:
            return str(st["node_subnet"])
        used = _sh("ip", "-4", "-o", "addr").stdout.decode()
        start = int(hashlib.sha256(self.bridge.encode()).hexdigest(), 16) % 250
        for i in range(250):
            n = (start + i) % 250 + 1
            if f" 10.233.{n}." not in used:
                return f"10.233.{n}"
        raise self.S.StackError("no free /24 in 10.233.0.0/16 for the node's bridge")

    def net_up(self, st: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)  # `down` looks for it
        prefix = st["node_subnet"]
        ip = f"{prefix}.1"
        if _sh("ip", "link", "show", self.bridge, check=False).returncode != 0:
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
        if ip not in _sh("ip", "-4", "-o", "addr", "show", "dev", self.bridge).stdout.decode():
            _sh("ip", "addr", "add", f"{ip}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        # Pods reach the apiserver (127.0.0.1) through the `kubernetes` Service IP.
        pathlib.Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1\n")
        if _sh("iptables", "-t", "nat", "-L", self.chain, "-n", check=False).returncode != 0:
            _sh("iptables", "-t", "nat", "-N", self.chain)
        _sh("iptables", "-t", "nat", "-F", self.chain)
        _sh("iptables", "-t", "nat", "-A", self.chain, "-d", SERVICE_IP, "-p", "tcp", "--dport", "443",
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{st['apiserver']}")
        jump = ("PREROUTING", "-i", self.bridge, "-j", self.chain)
        if _sh("iptables", "-t", "nat", "-C", *jump, check=False).returncode != 0:
            _sh("iptables", "-t", "nat", "-A", *jump)

    def net_down(self) -> None:
        _sh("iptables", "-t", "nat", "-D", "PREROUTING", "-i", self.bridge, "-j", self.chain, check=False)
        _sh("iptables", "-t", "nat", "-F", self.chain, check=False)
        _sh("iptables", "-t", "nat", "-X", self.chain, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    # --- PKI ------------------------------------------------------------------

    def certs(self, ip: str) -> None:
        pki = self.S.PKI
        for name, subj, ext in (
            ("node-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", "extendedKeyUsage=clientAuth"),
            ("node-serving", f"/CN={NODE_NAME}", f"subjectAltName=DNS:{NODE_NAME},IP:{ip}\nextendedKeyUsage=serverAuth"),
        ):
            if (pki / f"{name}.crt").exists() and (name != "node-serving" or ip in _sh(
                    "openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(pki / f"{name}.crt")).stdout.decode()):
                continue
            self.S.openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
            (pki / f"{name}.ext").write_text(ext + "\n")
            self.S.openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                           "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")

    # --- containerd -----------------------------------------------------------

    def snapshotter(self) -> str:
        """overlayfs when an overlay mounts in the node's directory, else native (a full copy per container)."""
        f = self.dir / "snapshotter"
        if f.exists():
            return f.read_text().strip()
        probe = self.dir / "overlay-probe"
        for d in ("lower", "upper", "work", "merged"):
            (probe / d).mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        ok = _sh("mount", "-t", "overlay", "overlay", "-o", opts, str(probe / "merged"), check=False).returncode == 0
        if ok:
            _sh("umount", str(probe / "merged"), check=False)
        shutil.rmtree(probe, ignore_errors=True)
        name = "overlayfs" if ok else "native"
        f.write_text(name + "\n")
        return name

    def containerd_config(self, st: dict[str, Any]) -> pathlib.Path:
        d = self.dir
        cni_conf = d / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-avatar.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0",
            "name": "avatar-node",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(d / "cni" / "ipam"),
                          "ranges": [[{"subnet": f"{st['node_subnet']}.0/24", "rangeStart": f"{st['node_subnet']}.10",
                                       "gateway": f"{st['node_subnet']}.1"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        }, indent=2) + "\n")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        cfg = d / "containerd.toml"
        cfg.write_text(f"""version = 2
root = "{d / 'containerd' / 'root'}"
state = "{d / 'containerd' / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_cgroup = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "{self.snapshotter()}"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc')}"
        Root = "{self.runc_root}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{self.cni_bin()}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
""")
        return cfg

    def ctr(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _sh("ctr", "--address", str(self.sock), "-n", "k8s.io", *args, check=check, input=input)

    def import_image(self, tar: pathlib.Path) -> None:
        self.ctr("images", "import", "--snapshotter", self.snapshotter(), str(tar))

    def pause_tar(self) -> pathlib.Path:
        """A docker-archive of one layer with the static pause binary as /pause."""
        out = self.dir / "pause.tar"
        binary = self.S.BIN / "pause"
        if out.exists() and out.stat().st_mtime >= binary.stat().st_mtime:
            return out
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as t:
            info = tarfile.TarInfo("pause")
            data = binary.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            t.addfile(info, io.BytesIO(data))
        layer_bytes = layer.getvalue()
        diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }).encode()
        cfg_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": cfg_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]).encode()
        with tarfile.open(out, "w") as t:
            for name, blob in (("layer.tar", layer_bytes), (cfg_name, config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(blob), 0o644
                t.addfile(info, io.BytesIO(blob))
        return out

    # --- kubelet --------------------------------------------------------------

    def kubelet_config(self, st: dict[str, Any]) -> tuple[pathlib.Path, pathlib.Path]:
        d, pki = self.dir, self.S.PKI
        ip = f"{st['node_subnet']}.1"
        kubeconfig = d / "kubelet.kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"https://127.0.0.1:{st['apiserver']}", "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "node", "user": {"client-certificate": str(pki / "node-client.crt"), "client-key": str(pki / "node-client.key")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
            "current-context": "local",
        }, indent=2) + "\n")
        cfg = d / "kubelet.yaml"
        cfg.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": ip,
            "port": st["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": st["kubelet_healthz"],
            "tlsCertFile": str(pki / "node-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "node-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(d / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "registerNode": True,
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "maxPods": 50,
            "localStorageCapacityIsolation": True,
            "protectKernelDefaults": False,
        }, indent=2) + "\n")
        return cfg, kubeconfig

    # --- up / down ------------------------------------------------------------

    def up(self, st: dict[str, Any]) -> None:
        S = self.S
        miss = self.missing()
        if miss:
            raise S.StackError(f"the real node needs: {', '.join(miss)} (apt-get install {PACKAGES})")
        for b in ("kubelet", "pause"):
            if not (S.BIN / b).exists():
                raise S.StackError(f"missing {S.BIN / b}: AVATAR_REAL_NODE=1 bash hack/build-binaries.sh {S.BIN}")
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        ip = f"{st['node_subnet']}.1"
        self.net_up(st)
        self.certs(ip)
        cfg = self.containerd_config(st)
        if not S.running("containerd"):
            S.start("containerd", ["containerd", "--config", str(cfg), "--log-level", "warn"])
        S.wait_for("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, log="containerd")
        self.import_image(self.pause_tar())
        images = S.STACK / "images"
        for t in ("operator.tar", "runner.tar"):
            if (images / t).exists():
                self.import_image(images / t)
                S.say(f"imported {images / t} into the node's containerd")
        kcfg, kkc = self.kubelet_config(st)
        if not S.running("kubelet"):
            S.start("kubelet", [str(S.BIN / "kubelet"), "--config", str(kcfg), "--kubeconfig", str(kkc),
                                "--root-dir", str(self.dir / "kubelet"), "--cert-dir", str(self.dir / "kubelet-pki"),
                                "--hostname-override", NODE_NAME, "--node-ip", ip,
                                "--node-labels", f"{LABEL}=real,type=real", "--v", "1"])

        def ready() -> bool:
            out = json.loads(S.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
            return any(c["type"] == "Ready" and c["status"] == "True" for c in out["status"].get("conditions", []))

        S.wait_for(f"node {NODE_NAME} Ready", ready, 120, log="kubelet")
        # As for kwok's nodes: the node lifecycle controller, which would lift it, is off.
        S.kubectl("taint", "nodes", NODE_NAME, "node.kubernetes.io/not-ready:NoSchedule-", check=False)
        S.say(f"real node {NODE_NAME} Ready in {time.monotonic() - t0:.1f}s (IP {ip}, bridge {self.bridge}, "
              f"snapshotter {self.snapshotter()}, taint {TAINT_KEY}=true:NoSchedule)")

    def our_pids(self) -> list[int]:
        """Processes of this node that left containerd's process group: shims (and what they run)."""
        mark = str(self.sock).encode()
        pids = []
        for p in pathlib.Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                if mark in p.joinpath("cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
        return pids

    def mounts(self) -> list[str]:
        base = str(self.dir.resolve()) + "/"
        out = []
        for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if (mp + "/").startswith(base):
                out.append(mp)
        return out

    def down(self) -> None:
        S = self.S
        if not self.dir.exists() and _sh("ip", "link", "show", self.bridge, check=False).returncode != 0:
            return
        S.stop("kubelet")
        if self.sock.exists() and S.running("containerd"):
            # Every container and sandbox, as CRI would stop them.
            for line in self.ctr("tasks", "ls", "-q", check=False).stdout.decode().split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
            time.sleep(0.5)
            for line in self.ctr("tasks", "ls", "-q", check=False).stdout.decode().split():
                self.ctr("tasks", "delete", "-f", line, check=False)
            for line in self.ctr("containers", "ls", "-q", check=False).stdout.decode().split():
                self.ctr("containers", "delete", line, check=False)
        S.stop("containerd")
        # Whatever is left: shims by their -address, containers in runc's state under the stack.
        if self.runc_root.is_dir() and shutil.which("runc"):
            for c in json.loads(_sh("runc", "--root", str(self.runc_root), "list", "--format", "json", check=False).stdout or b"null") or []:
                _sh("runc", "--root", str(self.runc_root), "kill", c["id"], "KILL", check=False)
                _sh("runc", "--root", str(self.runc_root), "delete", "--force", c["id"], check=False)
        for pid in self.our_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.our_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Mounts (secret tmpfs, rootfs, shm, netns) deepest first; then the network.
        for _ in range(3):
            for mp in sorted(self.mounts(), key=len, reverse=True):
                _sh("umount", mp, check=False)
            if not self.mounts():
                break
            for mp in self.mounts():
                _sh("umount", "-l", mp, check=False)
        self.net_down()
        shutil.rmtree(self.dir, ignore_errors=True)
        S.say(f"real node down: no kubelet, containerd, shim, mount, netns or bridge {self.bridge} left")

    def status(self) -> list[tuple[str, str]]:
        out = []
        for name in ("containerd", "kubelet"):
            pid = self.S.running(name)
            out.append((name, f"running pid {pid}" if pid else "stopped"))
        return out

    def healthz(self, st: dict[str, Any]) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{st['kubelet_healthz']}/healthz", timeout=2).read() == b"ok"
        except OSError:
            return False
