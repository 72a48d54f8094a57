#!/usr/bin/env python3
"""Start and stop the local real stack as processes on loopback.

    python3 hack/stack.py up      # idempotent; builds missing binaries first
    python3 hack/stack.py down    # stops every process it started
    python3 hack/stack.py status
    python3 hack/stack.py up --real-node   # or AVATAR_REAL_NODE=1: also a real node (hack/real_node.py)

etcd, kube-apiserver (TLS, RBAC, a locally generated service-account key),
kube-controller-manager (garbage collection of owned objects), kube-scheduler,
kwok (fake nodes: two with nvidia.com/gpu: 1, one CPU-only) and livekit-server.
Writes .stack/kubeconfig, .stack/env and .stack/bin/kubectl. Standard library
only, so it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
STACK = pathlib.Path(os.environ.get("AVATAR_STACK_DIR", ROOT / ".stack"))
BIN = STACK / "bin"
PKI = STACK / "pki"
LOGS = STACK / "logs"
RUN = STACK / "run"
STATE = STACK / "state.json"

# Namespace the examples and the demo use; it enforces `restricted` like the
# namespaces the tests create.
SESSIONS_NAMESPACE = "avatar-sessions"
OPERATOR_NAMESPACE = "avatar-system"
# The state's names of the ports livekit-server posts its webhooks to.
WEBHOOK_PORTS = ("webhook", "webhook_2")

# name, gpus. Capacity is generous so benchmarks can burst hundreds of pods.
NODES: Sequence[tuple[str, int]] = (("kwok-gpu-0", 1), ("kwok-gpu-1", 1), ("kwok-cpu-0", 0))


def say(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


class StackError(Exception):
    """A step of bringing the stack up failed; the message names the piece."""


# --- ports and processes ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state so a dead child counts as dead.
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: `down` stops it and its children
        env={**os.environ, **(env or {})},
        cwd=STACK,
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    say(f"started {name} (pid {proc.pid}, log {LOGS / (name + '.log')})")
    return proc.pid


def running(name: str) -> int | None:
    f = RUN / f"{name}.pid"
    if not f.exists():
        return None
    pid = int(f.read_text().strip() or 0)
    return pid if pid and pid_alive(pid) else None


def stop(name: str, grace: float = 10.0) -> None:
    f = RUN / f"{name}.pid"
    pid = running(name)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        say(f"stopped {name} (pid {pid})")
    f.unlink(missing_ok=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet; any failure means "try again"
            pass
        if log and not running(log):
            raise StackError(f"{log} exited while waiting for {what}; last lines of {LOGS / (log + '.log')}:\n{tail(log)}")
        time.sleep(0.25)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"; see {LOGS / (log + '.log')}:\n{tail(log)}" if log else ""))


def tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join((LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- PKI -------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=PKI)


def make_pki() -> None:
    """A CA, serving certs for the apiserver and etcd, an admin client cert and the SA key pair."""
    if (PKI / "admin.crt").exists():
        return
    if not shutil.which("openssl"):
        raise StackError("openssl is not installed (apt-get install openssl): it makes the stack's local TLS certificates")
    PKI.mkdir(parents=True, exist_ok=True)
    say("generating a local CA, serving and client certificates, and the service-account key")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=avatar-operator-local-ca")
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
    for name, subj, ext in (
        ("apiserver", "/CN=kube-apiserver", san),
        ("admin", "/O=system:masters/CN=avatar-admin", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj)
        (PKI / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")
    openssl("genrsa", "-out", "sa.key", "2048")
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def write_kubeconfig(path: pathlib.Path, server: str) -> None:
    # JSON is valid YAML; kubectl and the python client read it as a kubeconfig.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "avatar-local", "cluster": {"server": server, "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": "avatar-admin", "user": {"client-certificate": str(PKI / "admin.crt"), "client-key": str(PKI / "admin.key")}}],
        "contexts": [{"name": "avatar-local", "context": {"cluster": "avatar-local", "user": "avatar-admin"}}],
        "current-context": "avatar-local",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")


# --- the components --------------------------------------------------------


def https_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
        return r.status, r.read().decode()


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(STACK / "kubeconfig"), *args],
                          input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def start_etcd(st: dict[str, int]) -> None:
    if running("etcd"):
        return
    start("etcd", [str(BIN / "etcd"), "--data-dir", str(STACK / "etcd"), "--name", "avatar-local",
                   "--listen-client-urls", f"http://127.0.0.1:{st['etcd']}",
                   "--advertise-client-urls", f"http://127.0.0.1:{st['etcd']}",
                   "--listen-peer-urls", f"http://127.0.0.1:{st['etcd_peer']}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{st['etcd_peer']}",
                   "--initial-cluster", f"avatar-local=http://127.0.0.1:{st['etcd_peer']}",
                   "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn"])
    wait_for("etcd /health", lambda: b'"health":"true"' in urllib.request.urlopen(
        f"http://127.0.0.1:{st['etcd']}/health", timeout=2).read(), 60, log="etcd")


def start_apiserver(st: dict[str, int]) -> None:
    # The real node's kubelet: reached at its InternalIP (its hostname resolves
    # nowhere), as the admin (kubectl logs/exec); only with the real node.
    kubelet_client = [
        "--kubelet-client-certificate", str(PKI / "admin.crt"), "--kubelet-client-key", str(PKI / "admin.key"),
        "--kubelet-preferred-address-types", "InternalIP,Hostname",
    ] if st.get("real_node") else []
    if not running("kube-apiserver"):
        start("kube-apiserver", [
            str(BIN / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{st['etcd']}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(st["apiserver"]),
            "--tls-cert-file", str(PKI / "apiserver.crt"), "--tls-private-key-file", str(PKI / "apiserver.key"),
            "--client-ca-file", str(PKI / "ca.crt"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(PKI / "sa.pub"),
            "--service-account-signing-key-file", str(PKI / "sa.key"),
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--authorization-mode", "Node,RBAC",
            "--allow-privileged=false",
            "--storage-media-type", "application/json",
            "--cert-dir", str(PKI / "apiserver-generated"),
            "--max-requests-inflight", "1000", "--max-mutating-requests-inflight", "500",
            # MutatingAdmissionPolicy (beta in 1.34, off by default): the chart's
            # finalizer-policy.yaml puts the operator's finalizer on at admission.
            "--feature-gates", "MutatingAdmissionPolicy=true",
            "--runtime-config", "admissionregistration.k8s.io/v1beta1=true",
            "--v", "1",
            *kubelet_client,
        ])
    url = f"https://127.0.0.1:{st['apiserver']}/readyz"
    wait_for(f"kube-apiserver {url}", lambda: https_get(url)[1].strip() == "ok", 180, log="kube-apiserver")


def start_controllers(st: dict[str, int]) -> None:
    kc = str(STACK / "kubeconfig")
    if not running("kube-controller-manager"):
        start("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), "--kubeconfig", kc, "--authentication-kubeconfig", kc,
            "--authorization-kubeconfig", kc, "--leader-elect=false",
            "--bind-address", "127.0.0.1", "--secure-port", str(st["controller_manager"]),
            "--service-account-private-key-file", str(PKI / "sa.key"), "--root-ca-file", str(PKI / "ca.crt"),
            "--use-service-account-credentials=false",
            # Nodes are kwok's fake ones: no cloud, no node IPAM, no lifecycle evictions needed.
            "--controllers", "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-attachdetach",
            "--kube-api-qps", "200", "--kube-api-burst", "400", "--v", "1",
        ])
    if not running("kube-scheduler"):
        start("kube-scheduler", [
            str(BIN / "kube-scheduler"), "--kubeconfig", kc, "--authentication-kubeconfig", kc,
            "--authorization-kubeconfig", kc, "--leader-elect=false",
            "--bind-address", "127.0.0.1", "--secure-port", str(st["scheduler"]), "--v", "1",
        ])
    if not running("kwok"):
        start("kwok", [
            str(BIN / "kwok"), "--kubeconfig", kc, "--config", str(BIN / "kwok-stages.yaml"),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip", "127.0.0.1", "--cidr", "10.244.0.0/16",
            "--server-address", f"127.0.0.1:{st['kwok']}",
        ])


def node_manifest(name: str, gpus: int) -> dict[str, object]:
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "2000"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    labels = {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if gpus:
        labels["nvidia.com/gpu.present"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        # Nodes may carry status on create; kwok keeps it and marks them Ready.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def setup_cluster() -> None:
    items = [node_manifest(n, g) for n, g in NODES]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def nodes_ready() -> bool:
        out = json.loads(kubectl("get", "nodes", "-o", "json").stdout)
        ready = [n for n in out["items"] if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))]
        return len(ready) >= len(NODES)

    wait_for("kwok nodes Ready", nodes_ready, 60, log="kwok")
    # Admission taints new nodes not-ready; the node lifecycle controller, which
    # would lift it, is off (kwok's nodes have no kubelet to watch), so lift it here.
    for n, _ in NODES:
        kubectl("taint", "nodes", n, "node.kubernetes.io/not-ready:NoSchedule-", check=False)
    for ns in (SESSIONS_NAMESPACE, OPERATOR_NAMESPACE):
        kubectl("create", "namespace", ns, check=False)
        kubectl("label", "--overwrite", "namespace", ns,
                "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
    wait_for("the default ServiceAccount", lambda: kubectl("get", "serviceaccount", "default", "-n", SESSIONS_NAMESPACE, check=False).returncode == 0, 60)
    crds = sorted((ROOT / "crds").glob("*.yaml")) if (ROOT / "crds").is_dir() else []
    for crd in crds:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    if crds:
        # `kubectl wait` fails at once while a new CRD has no conditions yet: poll.
        def established() -> bool:
            return all(
                kubectl("get", "-f", str(c), "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False).stdout == "True"
                for c in crds  # one CRD per file
            )

        wait_for("the CRDs to be Established", established, 60)
        say(f"applied {len(crds)} CRD file(s) from crds/")


def start_livekit(st: dict[str, int | str]) -> None:
    cfg = STACK / "livekit.yaml"
    # With the real node, pods reach LiveKit on the node's bridge address, and
    # its ICE candidates name that address (the host reaches it as well).
    node_ip = f"{st['node_subnet']}.1" if st.get("real_node") else ""
    before = cfg.read_text() if cfg.exists() else ""
    cfg.write_text(
        "port: {port}\nbind_addresses: [{binds}]\n"
        "rtc:\n  tcp_port: {tcp}\n  udp_port: {udp}\n  use_external_ip: false\n  node_ip: {ip}\n"
        "keys:\n  {key}: {secret}\nlogging:\n  level: info\n"
        # Signed webhooks to the operators' receivers: two fixed ports, so two
        # test operators at once each get them (tests/harness/operator_process.py).
        "webhook:\n  api_key: {key}\n  urls:\n{urls}".format(
            port=st["livekit"], tcp=st["livekit_tcp"], udp=st["livekit_udp"], key=st["livekit_key"], secret=st["livekit_secret"],
            binds="'127.0.0.1'" + (f", '{node_ip}'" if node_ip else ""), ip=node_ip or "127.0.0.1",
            urls="".join(f"    - http://127.0.0.1:{st[k]}/webhook\n" for k in WEBHOOK_PORTS))
    )
    if running("livekit-server") and before != cfg.read_text():
        say("livekit.yaml changed: restarting livekit-server")
        stop("livekit-server")
    if not running("livekit-server"):
        start("livekit-server", [str(BIN / "livekit-server"), "--config", str(cfg), "--dev"])
    wait_for("livekit-server", lambda: urllib.request.urlopen(f"http://127.0.0.1:{st['livekit']}/", timeout=2).status == 200, 60, log="livekit-server")


def write_env(st: dict[str, int | str]) -> None:
    env = {
        "KUBECONFIG": str(STACK / "kubeconfig"),
        "LIVEKIT_URL": f"ws://127.0.0.1:{st['livekit']}",
        "LIVEKIT_API_KEY": str(st["livekit_key"]),
        "LIVEKIT_API_SECRET": str(st["livekit_secret"]),
        "AVATAR_STACK_BIN": str(BIN),
        "AVATAR_SESSIONS_NAMESPACE": SESSIONS_NAMESPACE,
        # Where livekit-server sends its webhooks (an operator's AVATAR_WEBHOOK_PORT), comma-separated.
        "AVATAR_STACK_WEBHOOK_PORTS": ",".join(str(st[k]) for k in WEBHOOK_PORTS),
    }
    if st.get("real_node"):
        import real_node

        ip = f"{st['node_subnet']}.1"
        env.update({
            "AVATAR_REAL_NODE": real_node.NODE_NAME,
            "AVATAR_REAL_NODE_IP": ip,
            "AVATAR_REAL_NODE_TAINT": real_node.TAINT_KEY,
            # What a pod on the real node dials: the same LiveKit, on the bridge.
            "AVATAR_REAL_NODE_LIVEKIT_URL": f"ws://{ip}:{st['livekit']}",
        })
    (STACK / "env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    os.chmod(STACK / "env", 0o600)


COMPONENTS = ("livekit-server", "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


def load_state() -> dict[str, int | str]:
    if STATE.exists():
        st = dict(json.loads(STATE.read_text()))
        if any(k not in st for k in WEBHOOK_PORTS):  # a stack from before the webhooks: their ports, kept from now on
            st.update({k: free_port() for k in WEBHOOK_PORTS if k not in st})
            STATE.write_text(json.dumps(st, indent=2))
        return st
    st: dict[str, int | str] = {
        k: free_port()
        for k in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler", "kwok", "livekit", "livekit_tcp", "livekit_udp", *WEBHOOK_PORTS)
    }
    # A LiveKit key pair made for this stack: long and unique, so the secret
    # scans in the security suite can't pass by luck.
    st["livekit_key"] = "avatar-local"
    st["livekit_secret"] = secrets.token_urlsafe(32)
    STACK.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(st, indent=2))
    os.chmod(STATE, 0o600)
    return st


def real_node_wanted(argv: Sequence[str]) -> bool:
    return "--real-node" in argv or os.environ.get("AVATAR_REAL_NODE") == "1"


def up(with_real_node: bool = False) -> None:
    t0 = time.monotonic()
    STACK.mkdir(parents=True, exist_ok=True)
    if not (BIN / "kube-apiserver").exists() or os.environ.get("STACK_REBUILD") == "1" or not all((BIN / b).exists() for b in ("etcd", "kwok", "kwok-stages.yaml", "livekit-server", "kubectl")):
        say("finding or building binaries (hack/build-binaries.sh)")
        subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh"), str(BIN)], check=True)
    if with_real_node and not all((BIN / b).exists() for b in ("kubelet", "pause")):
        say("finding or building kubelet and pause (AVATAR_REAL_NODE=1 hack/build-binaries.sh)")
        subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh"), str(BIN)], check=True, env={**os.environ, "AVATAR_REAL_NODE": "1"})
    for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "livekit-server"):
        if not (BIN / b).exists():
            raise StackError(f"missing binary {BIN / b}: run hack/build-binaries.sh (or put it on PATH / KUBEBUILDER_ASSETS)")
    make_pki()
    st = load_state()
    node = None
    if with_real_node or st.get("real_node"):
        import real_node

        node = real_node.Node(sys.modules[__name__])
        if not st.get("real_node"):
            if running("kube-apiserver"):
                raise StackError("the real node is set up with the stack: `stack.py down`, then `stack.py up --real-node`")
            miss = node.missing()
            if miss:
                raise StackError(f"the real node needs: {', '.join(miss)} (apt-get install {real_node.PACKAGES})")
            st.update(real_node=1, node_subnet=node.pick_subnet(st), kubelet=free_port(), kubelet_healthz=free_port())
            STATE.write_text(json.dumps(st, indent=2))
        node.net_up(st)
    write_kubeconfig(STACK / "kubeconfig", f"https://127.0.0.1:{st['apiserver']}")
    start_etcd(st)  # type: ignore[arg-type]
    start_apiserver(st)  # type: ignore[arg-type]
    start_controllers(st)  # type: ignore[arg-type]
    setup_cluster()
    start_livekit(st)
    if node is not None:
        node.up(st)
    write_env(st)
    say(f"up in {time.monotonic() - t0:.1f}s: KUBECONFIG={STACK / 'kubeconfig'}, LiveKit ws://127.0.0.1:{st['livekit']}; `source .stack/env`")


def down() -> None:
    if (STACK / "node").exists():
        import real_node

        real_node.Node(sys.modules[__name__]).down()
    for name in COMPONENTS:
        stop(name)
    # Anything else a test or the demo left in .stack/run (operator, runners, fakes).
    if RUN.is_dir():
        for f in RUN.glob("*.pid"):
            stop(f.stem)
    for p in (STATE, STACK / "env", STACK / "etcd"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    say("down: no stack process left")


def status() -> int:
    bad = 0
    for name in reversed(COMPONENTS):
        pid = running(name)
        print(f"{name:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        bad += pid is None
    if (STACK / "node").exists():
        import real_node

        for name, state in real_node.Node(sys.modules[__name__]).status():
            print(f"{name:26} {state}")
            bad += state == "stopped"
    return 1 if bad else 0


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    try:
        if cmd == "up":
            up(real_node_wanted(argv[1:]))
        elif cmd == "down":
            down()
        elif cmd == "status":
            return status()
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except StackError as e:
        say(f"ERROR: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        say(f"ERROR: {' '.join(map(str, e.cmd))} exited {e.returncode}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
