"""The AvatarSession a gateway request becomes: names, labels, spec, the image Secret, the pool (no cluster)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from avatar_operator.api import names
from avatar_operator.gateway import errors, image_input, session_manifest, tenants

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
