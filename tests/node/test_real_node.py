"""The built images as real containers on the stack's real node (kubelet + containerd + runc).

Needs `make stack-up-real-node` (hack/stack.py up --real-node) and `make images`
(both Dockerfile targets, loaded into the node's containerd). Skipped with the
reason when either is missing, unless AVATAR_REQUIRE_REAL_NODE=1 (`make
test-real-node`), where that is a failure.

- a local-mode session's runner pod (the runner image, portrait renderer),
  launched by the operator as a process with the pod launcher, runs on the real
  node under `restricted`, mounts its token Secret, joins the stack's
  livekit-server and is Ready; `kubectl logs` and `kubectl exec` work; deleting
  the session stops its container;
- a pool's runner pods run there and take launches at their pod IPs;
- the chart installs the operator image as a real pod there, probes passing,
  and that operator runs a local session end to end.

The real node is tainted (hack/real_node.py): every pod here tolerates the
taint and selects the node.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.conftest import ROOT, Stack
from tests.harness import viewer as harness_viewer
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.viewer import Viewer

OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "localhost/avatar-operator:dev")
RUNNER_IMAGE = os.environ.get("RUNNER_IMAGE", "localhost/avatar-operator-runner:dev")
NODE_LABEL = "avatar-operator.dev/node"
UNUSED = {"url": "http://127.0.0.1:9/unused", "mint_url": "http://127.0.0.1:9/unused"}
# Small requests: the real node has the machine's cores (2 here), not kwok's 64.
SMALL = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
START_TIMEOUT = 240.0  # first container start unpacks the image; the machine is shared


@pytest.fixture(scope="module")
def node(stack: Stack) -> dict[str, str]:
    """The real node's name, IP, taint and the LiveKit URL pods dial; skips without one."""
    def missing(why: str) -> None:
        if os.environ.get("AVATAR_REQUIRE_REAL_NODE") == "1":
            pytest.fail(why)
        pytest.skip(why)

    name = stack.env.get("AVATAR_REAL_NODE")
    if not name:
        missing("the stack has no real node: `make stack-up-real-node` (hack/stack.py up --real-node), which needs "
                "containerd, runc, containernetworking-plugins and iptables from Debian and root")
    sock = stack.dir / "node" / "containerd" / "containerd.sock"
    images = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, check=False)
    have = set(images.stdout.split())
    lacking = [i for i in (OPERATOR_IMAGE, RUNNER_IMAGE) if i not in have]
    if lacking:
        missing(f"the real node's containerd lacks {', '.join(lacking)}: `make images` (hack/build-images.sh) with the node up")
    return {
        "name": str(name),
        "ip": stack.env["AVATAR_REAL_NODE_IP"],
        "taint": stack.env["AVATAR_REAL_NODE_TAINT"],
        "livekit_url": stack.env["AVATAR_REAL_NODE_LIVEKIT_URL"],
        "sock": str(sock),
    }


def placement(node: dict[str, str]) -> dict[str, Any]:
    return {
        "nodeSelector": {NODE_LABEL: "real"},
        "tolerations": [{"key": node["taint"], "operator": "Exists", "effect": "NoSchedule"}],
    }


def kget(stack: Stack, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def secret(name: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                       "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def credentials(stack: Stack, ns: str) -> None:
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret(
        "livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}))
    # The plugin's rules want a bitHuman credential in local mode; the portrait renderer never uses it.
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret("bithuman-credentials", {"BITHUMAN_API_TOKEN": "unused-by-portrait"}))


async def until(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Room:
    """An agent and a viewer in one room (a runner publishes once someone listens)."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.agent, self.viewer = rtc.Room(), Viewer(watch_video=False)

    async def join(self) -> None:
        key, sec = self.stack.livekit_api_key, self.stack.livekit_api_secret
        await self.agent.connect(self.stack.livekit_url, harness_viewer.participant_token(key, sec, self.name, "agent", agent=True),
                                 rtc.RoomOptions(auto_subscribe=False))
        await self.viewer.join(self.stack.livekit_url, harness_viewer.participant_token(key, sec, self.name, "viewer"))

    async def leave(self) -> None:
        await self.viewer.leave()
        await self.agent.disconnect()


def session(name: str, room: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name},
            "spec": {"room": room, "agentIdentity": "agent", "maxDuration": 600, **spec}}


def local_session(node: dict[str, str], name: str, room: str) -> dict[str, Any]:
    return session(name, room, modelPath="/models/demo.imx", runner={"resources": SMALL, **placement(node)})


def tasks(node: dict[str, str]) -> str:
    return subprocess.run(["ctr", "--address", node["sock"], "-n", "k8s.io", "tasks", "ls"], capture_output=True, text=True, check=False).stdout


@pytest.fixture
def operator(stack: Stack, namespace: str, node: dict[str, str], tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    """The operator as a process beside the stack, with the pod launcher and the built runner image."""
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    env = operator_env(
        stack.process_env(), livekit_url=node["livekit_url"], fake_urls=UNUSED, runner_image=RUNNER_IMAGE,
        extra={"AVATAR_RUNNER_LAUNCHER": "pod", "AVATAR_RUNNER_RENDERER": "portrait",
               "LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret},
    )
    credentials(stack, namespace)
    op = OperatorProcess(env, tmp_path / "operator.log", [namespace], stop_grace=30.0)
    op.start()
    try:
        yield op
    finally:
        for kind in ("avs", "avp"):
            stack.kubectl("delete", kind, "--all", "-n", namespace, "--timeout=90s", check=False)
        op.stop()
        print((tmp_path / "operator.log").read_text()[-3000:])


def test_the_real_node_is_ready_on_the_stacks_own_addresses(stack: Stack, node: dict[str, str]) -> None:
    n = kget(stack, "default", "node", node["name"])
    assert condition(n, "Ready").get("status") == "True"
    addresses = {a["type"]: a["address"] for a in n["status"]["addresses"]}
    assert addresses["InternalIP"] == node["ip"]
    taints = {t["key"] for t in n["spec"].get("taints") or []}
    assert node["taint"] in taints and "node.kubernetes.io/not-ready" not in taints
    versions = (ROOT / "hack" / "versions.env").read_text()
    assert f"KUBERNETES_VERSION={n['status']['nodeInfo']['kubeletVersion']}" in versions
    assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


async def test_a_local_sessions_runner_pod_runs_on_the_real_node(
    stack: Stack, namespace: str, node: dict[str, str], operator: OperatorProcess
) -> None:
    ns, name = namespace, "real"
    room = Room(stack, f"{ns}-{name}")
    await room.join()
    try:
        t0 = time.monotonic()
        stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(local_session(node, name, room.name)))
        await until("the session Ready", lambda: condition(kget(stack, ns, "avs", name), "Ready").get("status") == "True", START_TIMEOUT)
        print(f"local session Ready with its runner pod on {node['name']} in {time.monotonic() - t0:.1f} s")
        st = kget(stack, ns, "avs", name)["status"]
        pod = kget(stack, ns, "pod", st["runnerPod"])
        assert pod["spec"]["nodeName"] == node["name"]
        assert pod["spec"]["containers"][0]["image"] == RUNNER_IMAGE
        assert pod["status"]["podIP"].startswith(node["ip"].rsplit(".", 1)[0] + ".")
        # The session is Ready on the media plane; the pod once the kubelet's next readiness probe
        # (every 2 s, /readyz: the first frame published) has run.
        pod = await until("the runner pod Ready", lambda: condition(p := kget(stack, ns, "pod", st["runnerPod"]), "Ready").get("status") == "True" and p, 15)
        cstatus = pod["status"]["containerStatuses"][0]
        assert "running" in cstatus["state"] and cstatus["restartCount"] == 0
        cid = cstatus["containerID"].removeprefix("containerd://")
        assert cid in tasks(node)

        pod_name = pod["metadata"]["name"]
        # exec: the restricted securityContext as the kernel sees it.
        out = stack.kubectl("exec", "-n", ns, pod_name, "--", "python", "-c",
                            "import os, json; p = os.environ['LIVEKIT_TOKEN_FILE']; "
                            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'token': os.path.getsize(p), "
                            "'ro': not os.access('/', os.W_OK), 'sa': os.path.exists('/var/run/secrets/kubernetes.io')}))").stdout
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen == {"uid": 10001, "gid": 10001, "token": seen["token"], "ro": True, "sa": False}, seen
        assert seen["token"] > 20  # a JWT from the session's Secret
        write = stack.kubectl("exec", "-n", ns, pod_name, "--", "sh", "-c", "touch /probe", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr + write.stdout
        logs = stack.kubectl("logs", "-n", ns, pod_name).stdout
        assert logs.strip(), "kubectl logs returned nothing"
        print("runner log (first lines):\n" + "\n".join(logs.splitlines()[:5]))

        # Deleting the session stops the container.
        t1 = time.monotonic()
        stack.kubectl("delete", "avs", name, "-n", ns, "--timeout=90s")
        await until("the runner pod gone", lambda: stack.kubectl("get", "pod", pod_name, "-n", ns, check=False).returncode != 0, 90)
        await until("its container gone from containerd", lambda: cid not in tasks(node), 60)
        print(f"session deleted: pod and container gone in {time.monotonic() - t1:.1f} s")
    finally:
        await room.leave()


async def test_a_pools_runner_pods_run_on_the_real_node_and_take_launches(
    stack: Stack, namespace: str, node: dict[str, str], operator: OperatorProcess
) -> None:
    ns, pool_name = namespace, "warm"
    room = Room(stack, f"{ns}-pooled")
    await room.join()
    try:
        t0 = time.monotonic()
        stack.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarPool",
            "metadata": {"name": pool_name, "namespace": ns},
            "spec": {"replicas": 1, "sessionsPerRunner": 2, "modelPath": "/models/demo.imx",
                     "runner": {"resources": SMALL, **placement(node)}},
        }))
        await until("the pool Ready", lambda: condition(kget(stack, ns, "avp", pool_name), "Ready").get("status") == "True", START_TIMEOUT)
        print(f"pool of 1 runner pod Ready on {node['name']} in {time.monotonic() - t0:.1f} s")
        pods = json.loads(stack.kubectl("get", "pods", "-n", ns, "-l", f"avatar-operator.dev/pool={pool_name}", "-o", "json").stdout)["items"]
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == node["name"]
        pod_ip = pods[0]["status"]["podIP"]
        assert pod_ip.startswith(node["ip"].rsplit(".", 1)[0] + ".")

        t1 = time.monotonic()
        stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(session("pooled", room.name, poolRef={"name": pool_name})))
        await until("the pooled session Ready", lambda: condition(kget(stack, ns, "avs", "pooled"), "Ready").get("status") == "True", 90)
        print(f"pooled session Ready {time.monotonic() - t1:.1f} s after its create")
        runner = kget(stack, ns, "avs", "pooled")["status"]["runner"]
        assert runner["pool"] == pool_name and runner["pod"] == pods[0]["metadata"]["name"] and runner["taskId"]
        # The launch went to the pod's IP on the runner's launch port: the runner logged it.
        logs = stack.kubectl("logs", "-n", ns, pods[0]["metadata"]["name"]).stdout
        assert runner["taskId"] in logs or "launch" in logs.lower(), logs[-2000:]
    finally:
        await room.leave()


async def test_the_chart_runs_the_operator_image_on_the_real_node(stack: Stack, namespace: str, node: dict[str, str], tmp_path: pathlib.Path) -> None:
    helm = stack.bin_dir / "helm"
    if not helm.exists():
        pytest.skip(f"{helm} missing: hack/build-binaries.sh builds it")
    ns, release = namespace, f"op-{uuid.uuid4().hex[:6]}"
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    credentials(stack, ns)
    repo, tag = OPERATOR_IMAGE.rsplit(":", 1)
    rrepo, rtag = RUNNER_IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "runner": {"image": {"repository": rrepo, "tag": rtag}, "renderer": "portrait", "cpu": "100m", "memory": "256Mi"},
        "livekit": {"url": node["livekit_url"]},
        "logging": {"format": "plain"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        **placement(node),
    }
    (tmp_path / "values.json").write_text(json.dumps(values))
    env = stack.process_env()
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(subprocess.run, [str(helm), "install", release, str(ROOT / "charts" / "avatar-operator"), "-n", ns, "--kubeconfig", stack.kubeconfig,
                        "-f", str(tmp_path / "values.json"), "--wait", "--timeout", f"{int(START_TIMEOUT)}s"],
                       check=True, capture_output=True, text=True, env=env, timeout=START_TIMEOUT + 30)
        print(f"helm install --wait: the operator pod Ready on {node['name']} in {time.monotonic() - t0:.1f} s")
        pods = json.loads(stack.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=avatar-operator", "-o", "json").stdout)["items"]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        pod = pods[0]
        assert pod["spec"]["nodeName"] == node["name"]
        assert condition(pod, "Ready").get("status") == "True"
        cs = pod["status"]["containerStatuses"][0]
        assert cs["restartCount"] == 0 and cs["started"] is True and cs["image"].endswith(OPERATOR_IMAGE.split("/", 1)[1])
        logs = stack.kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout
        assert logs.strip()
        uid = stack.kubectl("exec", "-n", ns, pod["metadata"]["name"], "--", "python", "-c", "import os; print(os.getuid())").stdout.strip()
        assert uid == "10001"

        # That operator (in-cluster config through the `kubernetes` Service) runs a local session end to end.
        room = Room(stack, f"{ns}-chart")
        await room.join()
        try:
            t1 = time.monotonic()
            stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(local_session(node, "via-chart", room.name)))
            await until("the chart operator's session Ready", lambda: condition(kget(stack, ns, "avs", "via-chart"), "Ready").get("status") == "True", START_TIMEOUT)
            print(f"session of the chart's operator Ready in {time.monotonic() - t1:.1f} s")
            runner = kget(stack, ns, "pod", kget(stack, ns, "avs", "via-chart")["status"]["runnerPod"])
            assert runner["spec"]["nodeName"] == node["name"]
            stack.kubectl("delete", "avs", "via-chart", "-n", ns, "--timeout=90s")
        finally:
            await room.leave()
    except subprocess.CalledProcessError as e:
        described = stack.kubectl("describe", "pods", "-n", ns, check=False).stdout
        previous = stack.kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/name=avatar-operator", "--previous", "--tail=40", check=False)
        raise AssertionError(f"helm install failed: {e.stderr}\n{described[-3000:]}\nlast run's log:\n{previous.stdout}{previous.stderr}") from e
    finally:
        await asyncio.to_thread(subprocess.run, [str(helm), "uninstall", release, "-n", ns, "--kubeconfig", stack.kubeconfig, "--wait", "--timeout", "90s"],
                                check=False, capture_output=True, env=env, timeout=120)
