"""The AvatarSession (and image Secret) a gateway request becomes. Pure.

Named deterministically so a retried request finds the session the first one
made; labelled with the tenant and the protocol; the pool picked by the avatar
id (AvatarPool.spec.avatarIds) or the tenant's DEFAULT_POOL.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from avatar_operator.api import names, rules, validation
from avatar_operator.gateway import errors, image_input
from avatar_operator.gateway import tenants as tenants_mod

AVATAR_PROVIDER_ATTRIBUTE = "lk.avatar_provider"
IMAGE_COMPONENT = "gateway-image"


class Protocol(enum.StrEnum):
    PLUGIN = "plugin"
    INFERENCE = "inference"


@dataclasses.dataclass(frozen=True)
class SessionRequest:
    """What either protocol asks for, once its tokens are checked."""

    protocol: Protocol
    name: str
    room: str
    agent_identity: str
    avatar_identity: str
    avatar_name: str
    livekit_url: str
    avatar_id: str | None = None
    image: image_input.Image | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    session: dict[str, Any]
    image_secret: dict[str, Any] | None


def plugin_session_name(tenant: tenants_mod.Tenant, room: str, avatar_identity: str) -> str:
    """One avatar identity in one room is one session: the plugin's retries land on it."""
    return names.gateway_session_name(tenant.name, room, avatar_identity)


def inference_session_name(tenant: tenants_mod.Tenant, idempotency_key: str) -> str:
    return names.gateway_session_name(tenant.name, idempotency_key)


def avatar_ids(pool: Mapping[str, Any]) -> list[str]:
    ids = (pool.get("spec") or {}).get("avatarIds") or []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def choose_pool(pools: Sequence[Mapping[str, Any]], avatar_id: str | None, tenant: tenants_mod.Tenant, field: str) -> str:
    """The pool that lists the avatar id (the first by name when several do), else the tenant's DEFAULT_POOL."""
    if avatar_id is not None:
        serving = sorted(str(p["metadata"]["name"]) for p in pools if avatar_id in avatar_ids(p))
        if serving:
            return serving[0]
    if tenant.default_pool:
        return tenant.default_pool
    if avatar_id is None:
        raise errors.bad_request(
            field, f"no avatar id given and tenant {tenant.name!r} has no DEFAULT_POOL: send {field}, or set DEFAULT_POOL"
        )
    raise errors.bad_request(
        field,
        f"no AvatarPool in namespace {tenant.namespace!r} lists avatar id {avatar_id!r} in spec.avatarIds, and "
        f"tenant {tenant.name!r} has no DEFAULT_POOL: add the id to a pool's spec.avatarIds",
    )


def labels(tenant: tenants_mod.Tenant, protocol: Protocol) -> dict[str, str]:
    return {
        names.GATEWAY_TENANT_LABEL: names.shorten(tenant.name, names.LABEL_VALUE_MAX),
        names.GATEWAY_PROTOCOL_LABEL: protocol.value,
        names.MANAGED_BY_LABEL: "avatar-operator-gateway",
    }


def tenant_selector(tenant: tenants_mod.Tenant) -> str:
    return f"{names.GATEWAY_TENANT_LABEL}={names.shorten(tenant.name, names.LABEL_VALUE_MAX)}"


def _image_secret(namespace: str, session: str, data: bytes) -> dict[str, Any]:
    # No ownerReference yet: the session has no uid until it exists; admission adds it then.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.gateway_image_secret_name(session),
            "namespace": namespace,
            "labels": {names.SESSION_LABEL: names.shorten(session, names.LABEL_VALUE_MAX), names.COMPONENT_LABEL: IMAGE_COMPONENT},
        },
        "data": {names.GATEWAY_IMAGE_KEY: base64.b64encode(data).decode()},
    }


def _spec(req: SessionRequest, tenant: tenants_mod.Tenant, pool: str) -> dict[str, Any]:
    participant: dict[str, Any] = {"identity": req.avatar_identity, "name": req.avatar_name}
    if req.protocol is Protocol.INFERENCE:
        participant["attributes"] = {AVATAR_PROVIDER_ATTRIBUTE: "bithuman"}
    spec: dict[str, Any] = {
        "room": req.room,
        "agentIdentity": req.agent_identity,
        "avatarParticipant": participant,
        "livekit": {"url": req.livekit_url, "secretRef": {"name": tenant.name}},
        "poolRef": {"name": pool},
        "ttlSecondsAfterFinished": tenant.ttl_seconds_after_finished,
    }
    if tenant.max_duration is not None:
        spec["maxDuration"] = tenant.max_duration
    if req.image is not None and req.image.url is not None:
        spec["avatarImage"] = req.image.url
    elif req.image is not None and req.image.data is not None:
        ref = {"name": names.gateway_image_secret_name(req.name), "key": names.GATEWAY_IMAGE_KEY}
        spec["avatarImageFrom"] = {"secretKeyRef": ref}
    return spec


def build(req: SessionRequest, tenant: tenants_mod.Tenant, pool: str) -> Manifest:
    meta: dict[str, Any] = {"name": req.name, "namespace": tenant.namespace, "labels": labels(tenant, req.protocol)}
    if req.avatar_id is not None:
        meta["annotations"] = {names.GATEWAY_AVATAR_ID_ANNOTATION: req.avatar_id}
    session = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": meta, "spec": _spec(req, tenant, pool)}
    data = req.image.data if req.image is not None else None
    secret = None if data is None else _image_secret(tenant.namespace, req.name, data)
    return Manifest(session=session, image_secret=secret)


def problems(manifest: Manifest) -> list[rules.Problem]:
    """The operator's own rules on the session, before the API server sees it."""
    return validation.validate(manifest.session)


# The request field each spec field came from, so a refusal names what the caller sent.
_REQUEST_FIELDS = {
    Protocol.PLUGIN: {
        "spec.room": "room_name",
        "spec.agentIdentity": "livekit_token",
        "spec.avatarParticipant": "livekit_token",
        "spec.livekit.url": "livekit_url",
        "spec.avatarImage": "image",
    },
    Protocol.INFERENCE: {
        "spec.room": "room_name",
        "spec.agentIdentity": "agent_identity",
        "spec.avatarParticipant.identity": "avatar_identity",
        "spec.avatarParticipant.name": "avatar_name",
        "spec.livekit.url": "livekit_url",
        "spec.avatarImage": "image_url",
    },
}


def request_field(protocol: Protocol, spec_field: str) -> str:
    """The request's field behind a spec field (the longest known prefix), else the spec field itself."""
    fields = _REQUEST_FIELDS[protocol]
    for prefix in sorted(fields, key=len, reverse=True):
        if spec_field == prefix or spec_field.startswith(prefix + "."):
            return fields[prefix]
    return spec_field
