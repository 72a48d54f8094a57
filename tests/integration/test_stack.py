"""The local stack is real: CEL admission, GPU scheduling, garbage collection, LiveKit media."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from livekit import api, rtc

from tests.conftest import Stack
from tests.harness.polling import wait_until

pytestmark = pytest.mark.stack

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.stack-test.avatar-operator.dev}
spec:
  group: stack-test.avatar-operator.dev
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer}
            x-kubernetes-validations:
            - rule: self.replicas >= 1
              message: spec.replicas must be at least 1
"""


def restricted_pod(name: str, gpus: int) -> dict[str, object]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/none:1",
                    "resources": resources,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def test_apiserver_ready(stack: Stack) -> None:
    assert stack.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_cel_rule_refuses_bad_object(stack: Stack, namespace: str) -> None:
    stack.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    stack.wait_established("crd/widgets.stack-test.avatar-operator.dev")
    good = {"apiVersion": "stack-test.avatar-operator.dev/v1", "kind": "Widget", "metadata": {"name": "ok"}, "spec": {"replicas": 1}}
    bad = {**good, "metadata": {"name": "bad"}, "spec": {"replicas": 0}}
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(good))
    refused = stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0
    assert "spec.replicas must be at least 1" in refused.stderr


def test_gpu_pods_fill_gpu_nodes_then_pend_unschedulable(stack: Stack, namespace: str) -> None:
    names = [f"gpu-{i}" for i in range(3)]
    try:
        for i, name in enumerate(names[:2]):
            stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(restricted_pod(name, 1)))

        def placed() -> dict[str, str] | None:
            pods = json.loads(stack.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
            got = {p["metadata"]["name"]: (p["spec"].get("nodeName", ""), p["status"].get("phase")) for p in pods}
            if len(got) == 2 and all(node and phase == "Running" for node, phase in got.values()):
                return {k: v[0] for k, v in got.items()}
            return None

        nodes = wait_until("two GPU pods Running", placed)
        assert sorted(nodes.values()) == ["kwok-gpu-0", "kwok-gpu-1"]

        stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(restricted_pod(names[2], 1)))

        def unschedulable() -> str | None:
            pod = json.loads(stack.kubectl("get", "pod", names[2], "-n", namespace, "-o", "json").stdout)
            for c in pod["status"].get("conditions", []):
                if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
                    return str(c.get("message", ""))
            return None

        message = wait_until("third GPU pod Unschedulable", unschedulable)
        assert "nvidia.com/gpu" in message
        pod = json.loads(stack.kubectl("get", "pod", names[2], "-n", namespace, "-o", "json").stdout)
        assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    finally:
        # Free the GPUs at once for the tests after this one.
        stack.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)


def test_restricted_namespace_refuses_privileged_pod(stack: Stack, namespace: str) -> None:
    pod = restricted_pod("root", 0)
    pod["spec"]["securityContext"] = {}  # type: ignore[index]
    refused = stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr


def test_deleting_owner_garbage_collects_owned(stack: Stack, namespace: str) -> None:
    stack.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=b")
    uid = stack.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    owned = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "owned",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
        "stringData": {"x": "y"},
    }
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(owned))
    stack.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_until(
        "the owned Secret to be garbage-collected",
        lambda: stack.kubectl("get", "secret", "owned", "-n", namespace, check=False).returncode != 0,
    )


async def test_livekit_participant_sees_published_track(stack: Stack) -> None:
    room_name = f"stack-{uuid.uuid4().hex[:8]}"

    def token(identity: str) -> str:
        return (
            api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret)
            .with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room_name))
            .to_jwt()
        )

    watcher, publisher = rtc.Room(), rtc.Room()
    seen: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    @watcher.on("track_subscribed")
    def _on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        if not seen.done():
            seen.set_result((participant.identity, track.kind))

    try:
        await watcher.connect(stack.livekit_url, token("watcher"))
        await publisher.connect(stack.livekit_url, token("publisher"))
        source = rtc.VideoSource(64, 64)
        track = rtc.LocalVideoTrack.create_video_track("cam", source)
        await publisher.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        frame = rtc.VideoFrame(64, 64, rtc.VideoBufferType.RGBA, bytes(64 * 64 * 4))
        for _ in range(50):
            source.capture_frame(frame)
            if seen.done():
                break
            await asyncio.sleep(0.04)
        identity, kind = await asyncio.wait_for(seen, 20)
        assert identity == "publisher"
        assert kind == rtc.TrackKind.KIND_VIDEO
        lk = api.LiveKitAPI(stack.livekit_url.replace("ws://", "http://"), stack.livekit_api_key, stack.livekit_api_secret)
        try:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room_name))
            assert {p.identity for p in listed.participants} == {"watcher", "publisher"}
        finally:
            await lk.aclose()
    finally:
        await publisher.disconnect()
        await watcher.disconnect()
