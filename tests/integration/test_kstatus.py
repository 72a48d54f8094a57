"""What GitOps tools read, asked of the real readers on live objects.

Sessions are driven into every phase (Pending: a Secret that is not there;
Starting: a cloud request accepted, no avatar; Running then Succeeded: an
avatar joins with the operator's token and maxDuration ends it; Failed: the
image is in no ConfigMap) and pools into not ready, ready and failing
(an operator with the process launcher: a portrait runner that loads, and a
bithuman runner with no SDK or model that exits). A watch keeps every
version of every object; hack/kstatus's program computes, for each version,
kstatus's status (sigs.k8s.io/cli-utils, what Flux and Helm's watcher use)
and the chart's health.lua in gopher-lua (Argo CD's interpreter). Each must
be what README's table says for the object's phase.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import urllib3
from livekit import rtc

from tests.conftest import ROOT, Stack
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import (
    BITHUMAN_SECRET,
    FakeAPI,
    apply_crds,
    get_json,
    secret_manifest,
    wait_for,
)

pytestmark = pytest.mark.stack

GROUP, VERSION = "avatar-operator.dev", "v1alpha1"
HEALTH = ROOT / "charts" / "avatar-operator" / "health"
# README "What GitOps tools read": what each phase reads as (kstatus, Argo CD).
SESSION_TABLE = {
    "Pending": ("InProgress", "Progressing"),
    "Starting": ("InProgress", "Progressing"),
    "Running": ("Current", "Healthy"),
    "Succeeded": ("Current", "Healthy"),
    "Failed": ("Failed", "Degraded"),
}
POOL_TABLE = {
    "NotReady": ("InProgress", "Progressing"),
    "Ready": ("Current", "Healthy"),
    "Stalled": ("Failed", "Degraded"),
}
# Before the operator's first write: kstatus knows nothing yet (Current), Argo CD waits.
NO_STATUS = ("Current", "Progressing")


@pytest.fixture(scope="module")
def kstatus_check(stack: Stack) -> pathlib.Path:
    """hack/kstatus built (cached: a warm run only links it) into the stack's bin."""
    subprocess.run(["bash", str(ROOT / "hack" / "kstatus" / "build.sh"), str(stack.bin_dir)], check=True, timeout=900)
    return stack.bin_dir / "kstatus-check"


@pytest.fixture(scope="module")
def ks_namespace(stack: Stack) -> Iterator[str]:
    """Not this run's prefix: only this module's operator acts on it."""
    apply_crds(stack)
    name = f"t-ks-{uuid.uuid4().hex[:8]}"
    stack.kubectl("create", "namespace", name)
    stack.kubectl("label", "namespace", name, "avatar-operator.dev/test=true")
    lk = {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}
    stack.kubectl("apply", "-n", name, "-f", "-", input=secret_manifest("livekit-credentials", lk))
    stack.kubectl("apply", "-n", name, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
    yield name
    for kind in ("avs", "avp"):
        stack.kubectl("delete", kind, "--all", "-n", name, "--timeout=60s", check=False)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def ks_operator(stack: Stack, fake_api: FakeAPI, ks_namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("kstatus")
    env = operator_env(
        stack.process_env(),
        livekit_url=stack.livekit_url,
        fake_urls=fake_api.urls,
        runner_image="registry.invalid/avatar-runner:test",
        extra={"AVATAR_RUNNER_LAUNCHER": "process", "AVATAR_RUNNER_RENDERER": "portrait", "AVATAR_PROCESS_WORKDIR": str(work)},
    )
    op = OperatorProcess(env, work / "operator.log", [ks_namespace], stop_grace=30.0)
    op.start()
    yield op
    for kind in ("avs", "avp"):
        stack.kubectl("delete", kind, "--all", "-n", ks_namespace, "--timeout=60s", check=False)
    op.stop()


class Versions:
    """Every version of the namespace's sessions and pools, from watches (restarted every few seconds)."""

    def __init__(self, stack: Stack, ns: str) -> None:
        client = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(stack.kubeconfig))  # type: ignore[no-untyped-call]
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._watch, args=(client, ns, p), daemon=True) for p in ("avatarsessions", "avatarpools")]
        for t in self.threads:
            t.start()

    def _watch(self, client: Any, ns: str, plural: str) -> None:
        while not self.stopped.is_set():
            w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for ev in w.stream(client.list_namespaced_custom_object, GROUP, VERSION, ns, plural, timeout_seconds=3):  # type: ignore[no-untyped-call]
                    obj = ev["object"]
                    if ev["type"] == "ERROR":  # an expired watch: the next one lists again
                        break
                    with self.lock:
                        self.seen[(obj["metadata"]["uid"], obj["metadata"]["resourceVersion"])] = obj
            except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError):
                self.stopped.wait(0.5)  # a dropped connection: watch again; a gap shows as a row not seen

    def stop(self) -> list[dict[str, Any]]:
        self.stopped.set()
        for t in self.threads:
            t.join(10)
        with self.lock:
            return [o for o in self.seen.values() if not o["metadata"].get("deletionTimestamp")]


def session(name: str, **spec: Any) -> str:
    body = {"room": f"room-{name}", "agentIdentity": "agent-1", "avatarId": f"A-{name}", "connection": {"maxRetry": 2, "retryInterval": 0.2, "timeout": 2}, **spec}
    body = {k: v for k, v in body.items() if v is not None}
    return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "AvatarSession", "metadata": {"name": name}, "spec": body})


def pool(name: str, renderer: str) -> str:
    spec = {"replicas": 1, "sessionsPerRunner": 2, "modelPath": "/models/none.imx", "runner": {"renderer": renderer}}
    return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "AvatarPool", "metadata": {"name": name}, "spec": spec})


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def phase_of(obj: dict[str, Any]) -> str | None:
    st = obj.get("status") or {}
    if obj["kind"] == "AvatarSession":
        return st.get("phase")
    if not st:
        return None
    if condition(obj, "Stalled").get("status") == "True":
        return "Stalled"
    return "Ready" if condition(obj, "Ready").get("status") == "True" else "NotReady"


def read(binary: pathlib.Path, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus and the Argo CD health.lua on each object, by the real libraries."""
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    out = subprocess.run([str(binary), "-lua", str(HEALTH)], input=doc, capture_output=True, text=True, check=True, timeout=60)
    return [json.loads(line) for line in out.stdout.splitlines()]


def join_as_avatar(stack: Stack, fake_api: FakeAPI, ns: str, name: str) -> None:
    """Plays bitHuman's cloud worker with the token the operator sent, until the session has ended."""
    sent = [r.get("json") or r.get("form") or {} for r in fake_api.requests() if r.get("route") == "session"]
    token = next(f["livekit_token"] for f in reversed(sent) if f.get("room_name") == f"room-{name}")

    async def worker() -> None:
        room = rtc.Room()
        await room.connect(stack.livekit_url, token)
        source = rtc.VideoSource(32, 32)
        track = rtc.LocalVideoTrack.create_video_track("avatar", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        frame = rtc.VideoFrame(32, 32, rtc.VideoBufferType.RGBA, bytes(32 * 32 * 4))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                source.capture_frame(frame)
                st = await asyncio.to_thread(lambda: get_json(stack, "avs", name, "-n", ns).get("status") or {})
                if st.get("phase") in ("Succeeded", "Failed"):
                    return
                await asyncio.sleep(0.3)
        finally:
            await room.disconnect()

    asyncio.run(worker())


def test_every_version_reads_as_the_readme_says(
    stack: Stack, ks_operator: OperatorProcess, fake_api: FakeAPI, ks_namespace: str, kstatus_check: pathlib.Path
) -> None:
    ns = ks_namespace
    versions = Versions(stack, ns)

    def live(kind: str, name: str) -> dict[str, Any]:
        return dict(get_json(stack, kind, name, "-n", ns))

    # Failed with nothing scripted at the fake (another module's session may be asking it too).
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("failed", avatarId=None, avatarImageFrom={"configMapKeyRef": {"name": "absent", "key": "face.png"}}))
    wait_for("Failed", lambda: phase_of(live("avs", "failed")) == "Failed")
    stack.kubectl("apply", "-n", ns, "-f", "-", input=pool("warm", "portrait"))
    stack.kubectl("apply", "-n", ns, "-f", "-", input=pool("broken", "bithuman"))
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("pending", livekit={"secretRef": {"name": "not-there"}}))
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("starting"))
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("live", maxDuration=12))
    wait_for("pending waits for its Secret", lambda: condition(live("avs", "pending"), "CredentialsReady").get("status") == "False")
    wait_for("starting accepted", lambda: phase_of(live("avs", "starting")) == "Starting")
    wait_for("live accepted", lambda: phase_of(live("avs", "live")) == "Starting")
    join_as_avatar(stack, fake_api, ns, "live")
    assert phase_of(live("avs", "live")) == "Succeeded"
    wait_for("the warm pool Ready", lambda: phase_of(live("avp", "warm")) == "Ready", timeout=120)
    wait_for("the broken pool Stalled", lambda: phase_of(live("avp", "broken")) == "Stalled", timeout=120)
    # README's `kubectl describe` sample comes from here (checked by eye).
    artifacts = stack.dir / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for name in ("live", "failed"):
        (artifacts / f"describe-{name}.txt").write_text(stack.kubectl("describe", "avs", name, "-n", ns).stdout)
    time.sleep(1)  # the watches bring the last writes in (they are read, not asserted on timing)
    objects = versions.stop()

    verdicts = read(kstatus_check, objects)
    assert len(verdicts) == len(objects)
    seen: dict[tuple[str, str | None], set[str]] = {}
    wrong = []
    for obj, v in zip(objects, verdicts, strict=True):
        p = phase_of(obj)
        table = SESSION_TABLE if obj["kind"] == "AvatarSession" else POOL_TABLE
        want = table[p] if p is not None else NO_STATUS
        seen.setdefault((obj["kind"], p), set()).add(obj["metadata"]["name"])
        if (v["kstatus"], v["argo"]) != want:
            wrong.append((obj["kind"], obj["metadata"]["name"], p, want, v, (obj.get("status") or {}).get("conditions")))
    assert not wrong, "\n".join(map(str, wrong))
    # Every row of both tables was read on a live object, by the object that should show it.
    assert {p for k, p in seen if k == "AvatarSession"} >= set(SESSION_TABLE), seen
    assert {p for k, p in seen if k == "AvatarPool"} >= set(POOL_TABLE), seen
    assert "pending" in seen[("AvatarSession", "Pending")] and "starting" in seen[("AvatarSession", "Starting")]
    assert seen[("AvatarSession", "Running")] == {"live"} and seen[("AvatarSession", "Succeeded")] == {"live"}
    assert "failed" in seen[("AvatarSession", "Failed")]
    assert "warm" in seen[("AvatarPool", "Ready")] and seen[("AvatarPool", "Stalled")] == {"broken"}


def test_the_lua_checks_and_kstatus_break_when_the_mapping_does(kstatus_check: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The readers are not a formality: a Running session whose Ready turned False reads
    InProgress/Progressing, and a health.lua that maps Failed wrongly is caught."""
    obj = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AvatarSession", "metadata": {"name": "s", "generation": 1},
        "status": {"phase": "Failed", "observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": "RunnerFailed", "message": "runner failed"},
            {"type": "Reconciling", "status": "False", "reason": "RunnerFailed", "message": "runner failed"},
            {"type": "Stalled", "status": "False", "reason": "RunnerFailed", "message": "runner failed"},
        ]},
    }
    # Without Stalled=True, kstatus reads the failed session as still on its way.
    [v] = read(kstatus_check, [obj])
    assert v["kstatus"] == "InProgress" and v["argo"] == "Degraded"
    broken = tmp_path / "avatarsession.lua"
    broken.write_text((HEALTH / "avatarsession.lua").read_text().replace('hs.status = "Degraded"', 'hs.status = "Healthy"'))
    doc = json.dumps(obj)
    out = subprocess.run([str(kstatus_check), "-lua", str(tmp_path)], input=doc, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["argo"] == "Healthy" != SESSION_TABLE["Failed"][1]
