"""The reconcile loop on the real stack: apiserver, scheduler, kwok nodes, livekit-server, fake bitHuman API."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
import threading
import time
import uuid
from typing import Any

import kubernetes
import PIL.Image
import pytest
from livekit import api, rtc

from tests.conftest import Stack
from tests.integration.conftest import BITHUMAN_SECRET, FakeAPI, Operator, get_json, secret_manifest, wait_for

pytestmark = pytest.mark.stack


def session(name: str, **spec: Any) -> str:
    body = {"room": f"room-{name}", "agentIdentity": "agent-1", **spec}
    return json.dumps({"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name}, "spec": body})


LOCAL_GPU = {"model": "expression", "modelPath": "/models/avatar.imx", "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}}}


def status(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return dict(get_json(stack, "avatarsession", name, "-n", ns).get("status") or {})


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), None)


def events(stack: Stack, ns: str, name: str) -> list[dict[str, Any]]:
    items = get_json(stack, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return list(items)


def owned(stack: Stack, ns: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in get_json(stack, kind, "-n", ns)["items"] if o["metadata"].get("ownerReferences")]


def test_local_session_owns_one_token_secret_and_one_gpu_runner_pod(stack: Stack, operator: Operator, model_claim: str) -> None:
    ns = model_claim
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("local-a", **LOCAL_GPU))
    st = wait_for("RunnerScheduled", lambda: (s := status(stack, ns, "local-a")) and (c := condition(s, "RunnerScheduled")) and c["status"] == "True" and s)
    assert st["phase"] == "Starting" and st["mode"] == "local"
    assert st["runnerPod"] == "local-a-runner" and st["observedGeneration"] == 1
    assert condition(st, "Accepted")["status"] == "True"  # type: ignore[index]
    assert condition(st, "CredentialsReady")["status"] == "True"  # type: ignore[index]
    ready = condition(st, "Ready")
    # kwok runs no container: no avatar joins, and the session must not claim Ready.
    assert ready is None or ready["status"] == "False"

    pods = owned(stack, ns, "pods")
    secrets = owned(stack, ns, "secrets")
    assert [p["metadata"]["name"] for p in pods] == ["local-a-runner"]
    assert [s["metadata"]["name"] for s in secrets] == ["local-a-token"]
    pod = pods[0]
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in mounts
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert "LIVEKIT_TOKEN" not in env  # the token is a mounted file from the session's Secret
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "local-a-token"
    assert env["LIVEKIT_TOKEN_FILE"]["value"].startswith("/var/run/secrets/avatar-operator/")
    assert "LIVEKIT_API_SECRET" not in env  # the runner never gets the LiveKit API secret
    reasons = {e["reason"] for e in events(stack, ns, "local-a")}
    # Scheduled says both steps when it comes within the wait; PodCreated only before a slower one.
    assert "Scheduled" in reasons
    assert "Valid" not in reasons  # being taken up is said by the step after it
    # Credentials were there from the start: no wait ended, so no Event says so.
    assert "CredentialsFound" not in reasons

    stack.kubectl("delete", "avatarsession", "local-a", "-n", ns, "--timeout=60s")
    wait_for("owned objects removed", lambda: not owned(stack, ns, "pods") and not owned(stack, ns, "secrets"))


def test_third_gpu_session_is_pending_unschedulable(stack: Stack, operator: Operator, model_claim: str) -> None:
    ns = model_claim
    names = ["gpu-0", "gpu-1", "gpu-2"]
    try:
        for n in names:
            stack.kubectl("apply", "-n", ns, "-f", "-", input=session(n, **LOCAL_GPU))

        def settled() -> list[dict[str, Any]] | None:
            sts = [status(stack, ns, n) for n in names]
            conds = [condition(s, "RunnerScheduled") for s in sts]
            if all(c and c["reason"] in ("Scheduled", "Unschedulable") for c in conds):
                return sts
            return None

        sts = wait_for("all three sessions placed or refused by the scheduler", settled, timeout=90)
        pending = [s for s in sts if condition(s, "RunnerScheduled")["reason"] == "Unschedulable"]  # type: ignore[index]
        assert len(pending) == 1, sts
        assert pending[0]["phase"] == "Pending"
        assert "nvidia.com/gpu" in condition(pending[0], "RunnerScheduled")["message"]  # type: ignore[index]
        assert sum(s["phase"] == "Starting" for s in sts) == 2
    finally:
        stack.kubectl("delete", "avatarsessions", "--all", "-n", ns, "--timeout=60s", check=False)
        wait_for("GPU pods gone", lambda: not get_json(stack, "pods", "-n", ns)["items"])


def test_missing_credentials_wait_then_proceed(stack: Stack, operator: Operator, namespace: str) -> None:
    ns = namespace
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("waits", **LOCAL_GPU))
    st = wait_for("CredentialsReady False", lambda: (s := status(stack, ns, "waits")) and (c := condition(s, "CredentialsReady")) and c["status"] == "False" and s)
    assert st["phase"] == "Pending"
    stack.kubectl(
        "apply", "-n", ns, "-f", "-",
        input=secret_manifest("livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}),
    )
    st = wait_for(
        "the bitHuman credential complaint",
        lambda: (s := status(stack, ns, "waits")) and "BITHUMAN_API_SECRET or BITHUMAN_API_TOKEN are required for local mode" in (condition(s, "CredentialsReady") or {}).get("message", "") and s,
    )
    assert not get_json(stack, "pods", "-n", ns)["items"]
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_TOKEN": "tok"}))
    wait_for("the session to proceed by itself", lambda: status(stack, ns, "waits").get("runnerPod") == "waits-runner", timeout=90)
    assert "CredentialsFound" in {e["reason"] for e in events(stack, ns, "waits")}
    stack.kubectl("delete", "avatarsession", "waits", "-n", ns, "--timeout=60s")


def _cloud(fake: FakeAPI, stack: Stack, ns: str, name: str, **spec: Any) -> None:
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session(name, avatarId=f"A-{name}", connection={"maxRetry": 3, "retryInterval": 0.2, "timeout": 2}, **spec))


def _requests_for(fake: FakeAPI, room: str) -> list[dict[str, Any]]:
    out = []
    for r in fake.requests():
        fields = r.get("json") or r.get("form") or {}
        if r.get("route") == "session" and fields.get("room_name") == room:
            out.append(r)
    return out


def token_attributes_api_secret(jwt: str, stack: Stack) -> str:
    return str(api.TokenVerifier(stack.livekit_api_key, stack.livekit_api_secret).verify(jwt).attributes["api_secret"])


def test_cloud_session_retries_503_then_is_accepted(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    ns = credentials
    fake_api.script([{"status": 503}, {}])
    _cloud(fake_api, stack, ns, "cloud-a", model="essence")
    st = wait_for("CloudRequestAccepted", lambda: (s := status(stack, ns, "cloud-a")) and (c := condition(s, "CloudRequestAccepted")) and c["status"] == "True" and s)
    assert st["attempts"] == 2 and st["phase"] == "Starting" and st["mode"] == "cloud"
    reqs = _requests_for(fake_api, "room-cloud-a")
    assert len(reqs) == 2
    body = reqs[-1]["json"]
    assert set(body) == {"livekit_url", "livekit_token", "room_name", "mode", "model", "agent_id"}
    assert body["mode"] == "cpu" and body["model"] == "essence" and body["agent_id"] == "A-cloud-a"
    assert body["livekit_url"] == stack.livekit_url
    # The account secret went to the mint endpoint only; the request carries
    # the scoped runtime token minted for this agent, room and server.
    sent = reqs[-1]["headers"].get("api-secret")
    assert sent and sent != BITHUMAN_SECRET and sent == token_attributes_api_secret(body["livekit_token"], stack)
    assert len({r["headers"].get("Idempotency-Key") for r in reqs}) == 1
    token = api.TokenVerifier(stack.livekit_api_key, stack.livekit_api_secret).verify(body["livekit_token"])
    assert token.kind == "agent" and token.video.room == "room-cloud-a" and token.video.room_join
    assert token.attributes["lk.publish_on_behalf"] == "agent-1" and token.attributes["agent_id"] == "A-cloud-a"
    assert BITHUMAN_SECRET not in json.dumps(dict(token.attributes))
    sessions = [s for s in fake_api.sessions() if s["room_name"] == "room-cloud-a"]
    assert len(sessions) == 1


def test_cloud_session_reaches_starting_in_one_status_write(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    """Every write costs the API server a validation and a fan-out to each
    watcher: a cloud session whose request is answered at once writes status
    once on its way to Starting (its idempotency key is its uid, so the record
    rides on the answer's write: controller/cloud_attempts.py), and kopf writes
    only its finalizer (no last-handled-configuration)."""
    ns = credentials
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        w = kubernetes.watch.Watch()
        client = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(stack.kubeconfig))
        for ev in w.stream(
            client.list_namespaced_custom_object, "avatar-operator.dev", "v1alpha1", ns, "avatarsessions",
            field_selector="metadata.name=cloud-writes", timeout_seconds=60,
        ):
            seen.append(ev)
            if (ev["object"].get("status") or {}).get("phase") == "Starting":
                w.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)  # the watch is open before the session exists
    _cloud(fake_api, stack, ns, "cloud-writes")
    watcher.join(60)
    assert seen and seen[0]["type"] == "ADDED"
    objs = [e["object"] for e in seen]
    assert objs[-1]["status"]["phase"] == "Starting", objs[-1].get("status")
    status_writes = [o["status"] for prev, o in zip(objs, objs[1:]) if o.get("status") != prev.get("status")]
    assert len(status_writes) == 1, [w.get("conditions") for w in status_writes]
    [starting] = status_writes
    assert starting["cloudRequest"]["idempotencyKey"] == objs[0]["metadata"]["uid"] and starting["attempts"] == 1
    assert {c["type"]: c["status"] for c in starting["conditions"]} == {
        "Accepted": "True", "CredentialsReady": "True", "CloudRequestAccepted": "True", "Ready": "False", "Reconciling": "True", "Stalled": "False",
    }
    ready = condition(starting, "Ready")
    assert ready is not None and ready["reason"] == "WaitingForAvatar"
    assert len(objs) == 1 + 1 + 1, "one ADDED, the finalizer, one status write"
    assert not any("last-handled" in k for k in objs[-1]["metadata"].get("annotations") or {})
    stack.kubectl("delete", "avatarsession", "cloud-writes", "-n", ns, "--timeout=60s")


def test_cloud_session_sends_the_image_from_a_config_map(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    ns = credentials
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 120, 80)).save(buf, format="PNG")
    path = pathlib.Path(stack.dir) / f"{ns}-face.png"
    path.write_bytes(buf.getvalue())
    stack.kubectl("create", "configmap", "faces", "-n", ns, f"--from-file=face.png={path}")
    stack.kubectl(
        "apply", "-n", ns, "-f", "-",
        input=session("cloud-cm", avatarImageFrom={"configMapKeyRef": {"name": "faces", "key": "face.png"}}, connection={"maxRetry": 2, "retryInterval": 0.2, "timeout": 2}),
    )
    wait_for("CloudRequestAccepted", lambda: (c := condition(status(stack, ns, "cloud-cm"), "CloudRequestAccepted")) and c["status"] == "True")
    body = _requests_for(fake_api, "room-cloud-cm")[-1]["json"]
    sent = PIL.Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert sent.format == "JPEG" and sent.size == (64, 64)  # re-encoded as the plugin does

    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("cloud-cm-missing", avatarImageFrom={"configMapKeyRef": {"name": "faces", "key": "nope.png"}}))
    st = wait_for("Failed", lambda: (s := status(stack, ns, "cloud-cm-missing")) and s.get("phase") == "Failed" and s)
    c = condition(st, "CloudRequestAccepted")
    assert c is not None and c["reason"] == "ImageNotFound" and "ConfigMap 'faces' key 'nope.png' not found" in c["message"]
    stack.kubectl("delete", "avatarsessions", "--all", "-n", ns, "--timeout=60s")


def test_cloud_session_fails_at_once_on_401(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    ns = credentials
    fake_api.script([{"status": 401, "body": {"error": "invalid api secret for this account"}}])
    _cloud(fake_api, stack, ns, "cloud-401")
    st = wait_for("Failed", lambda: (s := status(stack, ns, "cloud-401")) and s.get("phase") == "Failed" and s)
    c = condition(st, "CloudRequestAccepted")
    assert c is not None and c["reason"] == "RequestRejected"
    assert "401" in c["message"] and "invalid api secret for this account" in c["message"]
    assert st["attempts"] == 1
    assert len(_requests_for(fake_api, "room-cloud-401")) == 1
    assert "RequestRejected" in {e["reason"] for e in events(stack, ns, "cloud-401")}


def test_cloud_session_turns_ready_when_avatar_publishes_and_succeeds_when_it_leaves(
    stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str
) -> None:
    """Plays bitHuman's cloud worker: joins with the token the operator sent and publishes video."""
    ns = credentials
    _cloud(fake_api, stack, ns, "cloud-live")
    wait_for("accepted", lambda: (c := condition(status(stack, ns, "cloud-live"), "CloudRequestAccepted")) and c["status"] == "True")
    token = _requests_for(fake_api, "room-cloud-live")[-1]["json"]["livekit_token"]
    assert condition(status(stack, ns, "cloud-live"), "Ready")["status"] == "False"  # type: ignore[index]

    async def worker() -> None:
        room = rtc.Room()
        await room.connect(stack.livekit_url, token)
        source = rtc.VideoSource(32, 32)
        track = rtc.LocalVideoTrack.create_video_track("avatar", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        frame = rtc.VideoFrame(32, 32, rtc.VideoBufferType.RGBA, bytes(32 * 32 * 4))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            source.capture_frame(frame)
            st = await asyncio.to_thread(status, stack, ns, "cloud-live")
            if (condition(st, "Ready") or {}).get("status") == "True":
                break
            await asyncio.sleep(0.2)
        await room.disconnect()

    asyncio.run(worker())
    st = status(stack, ns, "cloud-live")
    assert st["readyTime"] and condition(st, "Ready")["reason"] == "AvatarPublishing"  # type: ignore[index]
    st = wait_for("Succeeded after the avatar left", lambda: (s := status(stack, ns, "cloud-live")) and s.get("phase") == "Succeeded" and s)
    # Ended: no Ready (kstatus reads it Current); how it ended is on Reconciling.
    assert condition(st, "Ready") is None and condition(st, "Reconciling")["status"] == "False" and st["endTime"]  # type: ignore[index]


def test_operator_killed_mid_creation_leaves_one_pod_and_one_request(
    stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str
) -> None:
    ns = credentials
    # Slow answers keep the cloud request in flight when the operator dies.
    fake_api.script([{"delay": 1.5}, {"delay": 1.5}])
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session("crash-local", model="essence", modelPath="/m/a.imx"))
    _cloud(fake_api, stack, ns, "crash-cloud")
    wait_for("the cloud request in flight", lambda: _requests_for(fake_api, "room-crash-cloud"), interval=0.05)
    operator.kill()
    operator.start()
    wait_for("cloud accepted after restart", lambda: (c := condition(status(stack, ns, "crash-cloud"), "CloudRequestAccepted")) and c["status"] == "True", timeout=90)
    wait_for("local pod scheduled after restart", lambda: (c := condition(status(stack, ns, "crash-local"), "RunnerScheduled")) and c["status"] == "True", timeout=90)
    assert len([p for p in get_json(stack, "pods", "-n", ns)["items"]]) == 1
    assert len(owned(stack, ns, "secrets")) == 1
    assert len([s for s in fake_api.sessions() if s["room_name"] == "room-crash-cloud"]) == 1


async def _join_as_cloud_avatar(stack: Stack, token: str) -> rtc.Room:
    room = rtc.Room()
    await room.connect(stack.livekit_url, token)
    source = rtc.VideoSource(32, 32)
    track = rtc.LocalVideoTrack.create_video_track("avatar", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
    source.capture_frame(rtc.VideoFrame(32, 32, rtc.VideoBufferType.RGBA, bytes(32 * 32 * 4)))
    return room


async def _participants(stack: Stack, room: str) -> set[str]:
    lk = api.LiveKitAPI(stack.livekit_url.replace("ws://", "http://"), stack.livekit_api_key, stack.livekit_api_secret)
    try:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        return {p.identity for p in listed.participants}
    finally:
        await lk.aclose()


def test_max_duration_ends_the_session_and_removes_the_avatar(
    stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str
) -> None:
    ns = credentials
    _cloud(fake_api, stack, ns, "timed", maxDuration=4)
    wait_for("accepted", lambda: (c := condition(status(stack, ns, "timed"), "CloudRequestAccepted")) and c["status"] == "True")
    token = _requests_for(fake_api, "room-timed")[-1]["json"]["livekit_token"]

    async def scenario() -> tuple[dict[str, Any], set[str]]:
        room = await _join_as_cloud_avatar(stack, token)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = await asyncio.to_thread(status, stack, ns, "timed")
                if st.get("phase") == "Succeeded":
                    break
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)
            return st, await _participants(stack, "room-timed")
        finally:
            await room.disconnect()

    st, left = asyncio.run(scenario())
    assert st["phase"] == "Succeeded", st
    assert condition(st, "Reconciling")["reason"] == "MaxDurationReached"  # type: ignore[index]
    assert "bithuman-avatar-agent" not in left  # the operator removed the avatar from the room


def test_deleting_a_cloud_session_removes_its_avatar_from_the_room(
    stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str
) -> None:
    ns = credentials
    _cloud(fake_api, stack, ns, "del-cloud")
    wait_for("accepted", lambda: (c := condition(status(stack, ns, "del-cloud"), "CloudRequestAccepted")) and c["status"] == "True")
    token = _requests_for(fake_api, "room-del-cloud")[-1]["json"]["livekit_token"]

    async def scenario() -> set[str]:
        room = await _join_as_cloud_avatar(stack, token)
        try:
            await asyncio.to_thread(
                wait_for, "Ready", lambda: (condition(status(stack, ns, "del-cloud"), "Ready") or {}).get("status") == "True"
            )
            await asyncio.to_thread(stack.kubectl, "delete", "avatarsession", "del-cloud", "-n", ns, "--timeout=60s")
            await asyncio.sleep(0.5)
            return await _participants(stack, "room-del-cloud")
        finally:
            await room.disconnect()

    assert "bithuman-avatar-agent" not in asyncio.run(scenario())


def test_deletion_lets_go_when_livekit_is_unreachable(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    ns = credentials
    # Nothing listens on port 9 (discard) here: LiveKit is unreachable for this session.
    _cloud(fake_api, stack, ns, "lk-down", livekit={"url": "ws://127.0.0.1:9"})
    wait_for("accepted", lambda: (c := condition(status(stack, ns, "lk-down"), "CloudRequestAccepted")) and c["status"] == "True")
    wait_for("Ready False: LiveKit unreachable", lambda: (condition(status(stack, ns, "lk-down"), "Ready") or {}).get("reason") == "LiveKitUnreachable")
    t0 = time.monotonic()
    stack.kubectl("delete", "avatarsession", "lk-down", "-n", ns, "--timeout=60s")
    assert time.monotonic() - t0 < 30
    warnings = [e for e in events(stack, ns, "lk-down") if e["type"] == "Warning" and e["reason"] == "CleanupIncomplete"]
    assert warnings and "could not remove avatar" in warnings[0]["message"]


def test_no_secret_in_status_events_tokens_or_logs(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    """Runs last in this module: scans everything the tests above left behind."""
    ns = credentials
    _cloud(fake_api, stack, ns, "scan")
    wait_for("accepted", lambda: (c := condition(status(stack, ns, "scan"), "CloudRequestAccepted")) and c["status"] == "True")
    secrets = [BITHUMAN_SECRET, stack.livekit_api_secret]
    haystacks = {
        "statuses": json.dumps(get_json(stack, "avatarsessions", "-A")),
        "events": json.dumps(get_json(stack, "events", "-A")),
        "operator log": operator.logs(),
        "runner pods": json.dumps(get_json(stack, "pods", "-A")),
    }
    for r in fake_api.requests():
        fields = r.get("json") or r.get("form") or {}
        if "livekit_token" in fields:
            tok = api.TokenVerifier(stack.livekit_api_key, stack.livekit_api_secret).verify(fields["livekit_token"])
            haystacks[f"token {uuid.uuid4().hex[:4]}"] = fields["livekit_token"] + json.dumps(dict(tok.attributes))
    for name, text in haystacks.items():
        for s in secrets:
            assert s not in text, f"a secret appears in {name}"
