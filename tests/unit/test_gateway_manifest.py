"""The AvatarSession a gateway request becomes: names, labels, spec, the image Secret, the pool (no cluster)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from avatar_operator.api import names
from avatar_operator.gateway import (
    errors,
    image_input,
    session_manifest,
    session_state,
    settings,
    tenants,
    terminate,
)
from avatar_operator.gateway import metrics as gateway_metrics

TENANT = tenants.Tenant(
    namespace="team-a", name="acme", livekit_api_key="k", livekit_api_secret="s", default_pool="warm", max_duration=90.0
)
P = session_manifest.Protocol


def request(protocol: P = P.PLUGIN, image: image_input.Image | None = None, avatar_id: str | None = "A91") -> session_manifest.SessionRequest:
    name = (
        session_manifest.plugin_session_name(TENANT, "room-1", "bithuman-avatar-agent")
        if protocol is P.PLUGIN
        else session_manifest.inference_session_name(TENANT, "idem-1")
    )
    return session_manifest.SessionRequest(
        protocol=protocol,
        name=name,
        room="room-1",
        agent_identity="agent-7",
        avatar_identity="bithuman-avatar-agent",
        avatar_name="bitHuman Avatar",
        livekit_url="ws://lk:7880",
        avatar_id=avatar_id,
        image=image,
    )


def test_names_are_deterministic_and_per_tenant() -> None:
    a = session_manifest.plugin_session_name(TENANT, "room-1", "avatar")
    assert a == session_manifest.plugin_session_name(TENANT, "room-1", "avatar")
    assert a != session_manifest.plugin_session_name(TENANT, "room-2", "avatar")
    other = tenants.Tenant(namespace="team-a", name="other", livekit_api_key="k", livekit_api_secret="s")
    assert a != session_manifest.plugin_session_name(other, "room-1", "avatar")
    # sha256(tenant + "\0" + room + "\0" + identity), 20 hex characters, as the contract spells it.
    import hashlib

    assert a == "gw-" + hashlib.sha256(b"acme\0room-1\0avatar").hexdigest()[:20]
    assert session_manifest.inference_session_name(TENANT, "k1") == "gw-" + hashlib.sha256(b"acme\0k1").hexdigest()[:20]
    # No joining trick makes two requests one name: the separator is a NUL.
    assert session_manifest.plugin_session_name(TENANT, "a\0b", "c") == session_manifest.plugin_session_name(TENANT, "a", "b\0c")


def test_the_plugin_session() -> None:
    m = session_manifest.build(request(), TENANT, "warm")
    assert m.image_secret is None
    meta, spec = m.session["metadata"], m.session["spec"]
    assert meta["namespace"] == "team-a" and meta["name"].startswith("gw-")
    assert meta["labels"][names.GATEWAY_TENANT_LABEL] == "acme" and meta["labels"][names.GATEWAY_PROTOCOL_LABEL] == "plugin"
    assert meta["annotations"] == {names.GATEWAY_AVATAR_ID_ANNOTATION: "A91"}
    assert spec == {
        "room": "room-1",
        "agentIdentity": "agent-7",
        "avatarParticipant": {"identity": "bithuman-avatar-agent", "name": "bitHuman Avatar"},
        "livekit": {"url": "ws://lk:7880", "secretRef": {"name": "acme"}},
        "poolRef": {"name": "warm"},
        "ttlSecondsAfterFinished": 300,
        "maxDuration": 90.0,
    }
    assert session_manifest.problems(m) == []


def test_the_inference_session_carries_the_provider_attribute() -> None:
    m = session_manifest.build(request(P.INFERENCE, image=image_input.Image(url="https://img/a.png")), TENANT, "warm")
    spec = m.session["spec"]
    assert spec["avatarParticipant"]["attributes"] == {"lk.avatar_provider": "bithuman"}
    assert spec["avatarImage"] == "https://img/a.png"
    assert m.session["metadata"]["labels"][names.GATEWAY_PROTOCOL_LABEL] == "inference"
    assert session_manifest.problems(m) == []


def test_an_uploaded_image_goes_into_a_secret_the_session_names() -> None:
    m = session_manifest.build(request(image=image_input.Image(data=b"\xff\xd8jpeg")), TENANT, "warm")
    assert m.image_secret is not None
    name = m.image_secret["metadata"]["name"]
    assert name == m.session["metadata"]["name"] + "-image"
    assert m.image_secret["data"] == {"avatar-image": base64.b64encode(b"\xff\xd8jpeg").decode()}
    assert m.session["spec"]["avatarImageFrom"] == {"secretKeyRef": {"name": name, "key": "avatar-image"}}
    # Not a tenant: the image Secret must never carry the tenant label "true".
    assert not tenants.is_tenant_secret(m.image_secret)
    assert session_manifest.problems(m) == []


def test_the_rules_refuse_a_bad_room_naming_the_request_field() -> None:
    req = request()
    bad = session_manifest.SessionRequest(**{**req.__dict__, "room": "r" * 300})
    problems = session_manifest.problems(session_manifest.build(bad, TENANT, "warm"))
    assert problems and problems[0].field == "spec.room"
    assert session_manifest.request_field(P.PLUGIN, problems[0].field) == "room_name"
    assert session_manifest.request_field(P.INFERENCE, "spec.avatarParticipant.identity") == "avatar_identity"


def pool(name: str, *ids: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"avatarIds": list(ids)}}


def test_the_pool_is_picked_by_avatar_id_then_the_default() -> None:
    pools = [pool("b", "A91"), pool("a", "A91", "B2"), pool("c")]
    assert session_manifest.choose_pool(pools, "A91", TENANT, "avatar_id") == "a"
    assert session_manifest.choose_pool(pools, "B2", TENANT, "avatar_id") == "a"
    assert session_manifest.choose_pool(pools, "Z", TENANT, "avatar_id") == "warm"
    assert session_manifest.choose_pool(pools, None, TENANT, "avatar_id") == "warm"
    bare = tenants.Tenant(namespace="team-a", name="bare", livekit_api_key="k", livekit_api_secret="s")
    with pytest.raises(errors.Refusal) as caught:
        session_manifest.choose_pool(pools, "Z", bare, "avatar_id")
    assert caught.value.field == "avatar_id" and "'Z'" in caught.value.message and "spec.avatarIds" in caught.value.message


def test_terminate_tokens() -> None:
    key = b"k" * 32
    token = terminate.token(key, "team-a/gw-1", "uid-1")
    assert terminate.valid(key, "team-a/gw-1", "uid-1", token)
    assert not terminate.valid(key, "team-a/gw-1", "uid-2", token)  # a later session of that name
    assert not terminate.valid(key, "team-a/gw-2", "uid-1", token)
    assert not terminate.valid(b"x" * 32, "team-a/gw-1", "uid-1", token)
    assert not terminate.valid(key, "team-a/gw-1", "uid-1", token[:-1] + ("0" if token[-1] != "0" else "1"))


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_what_a_session_status_says() -> None:
    S = session_state.State
    assert session_state.seen({"metadata": {}}).state is S.WAITING
    waiting = {"metadata": {}, "status": {"phase": "Pending", "conditions": [cond("RunnerScheduled", "False", "PoolExhausted")]}}
    assert session_state.seen(waiting).state is S.WAITING
    scheduled = {"metadata": {}, "status": {"phase": "Starting", "conditions": [cond("RunnerScheduled", "True")]}}
    assert session_state.seen(scheduled).state is S.SCHEDULED
    failed = {"metadata": {}, "status": {"phase": "Failed", "conditions": [cond("Accepted", "False", "InvalidSpec", "spec.x: bad")]}}
    seen = session_state.seen(failed)
    assert (seen.state, seen.reason, seen.message, seen.caller_at_fault) == (S.FAILED, "InvalidSpec", "spec.x: bad", True)
    assert session_state.seen({"metadata": {}, "status": {"phase": "Succeeded"}}).state is S.FINISHED
    assert session_state.seen({"metadata": {"deletionTimestamp": "t"}, "status": scheduled["status"]}).state is S.DELETING


def test_settings(tmp_path: Any) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123\n")
    s = settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_NAMESPACES": "a, b"})
    assert (s.port, s.admission_wait_s, s.retry_after_s, s.max_body_bytes) == (8090, 5.0, 2, 8388608)
    assert s.namespace_list() == ("a", "b") and s.signing_key() == b"0123456789abcdef0123"
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_SIGNING_KEY_FILE"):
        settings.from_env({})
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_ADMISSION_WAIT_S"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_ADMISSION_WAIT_S": "soon"})
    with pytest.raises(ValueError, match="TLS_KEY_FILE"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_TLS_CERT_FILE": "/c"})
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(short)}).signing_key()


def test_metric_outcomes() -> None:
    assert [gateway_metrics.outcome(s) for s in (200, 400, 401, 403, 413, 503, 500, 422)] == [
        "ok",
        "bad_request",
        "unauthorized",
        "forbidden",
        "too_large",
        "unavailable",
        "error",
        "bad_request",
    ]
