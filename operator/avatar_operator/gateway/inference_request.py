"""The inference protocol's bodies, as livekit-agents' inference.AvatarSession sends them.

POST /avatar/sessions: provider, livekit_url, room_name, room_sid,
avatar_identity, avatar_name, agent_identity, avatar_id, image_url and the
other first-class options, extra_kwargs; with an Idempotency-Key header.
POST /avatar/sessions/terminate: provider, provider_session_id, terminate_token.
Pure.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any

from avatar_operator.api import spec as spec_mod
from avatar_operator.gateway import errors, image_input

PROVIDER = "bithuman"
IDEMPOTENCY_KEY_MAX = 256


@dataclasses.dataclass(frozen=True)
class CreateRequest:
    livekit_url: str
    room_name: str
    avatar_identity: str
    avatar_name: str
    agent_identity: str
    idempotency_key: str
    avatar_id: str | None = None
    image: image_input.Image | None = None


@dataclasses.dataclass(frozen=True)
class TerminateRequest:
    provider_session_id: str
    terminate_token: str = dataclasses.field(repr=False)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.bad_request("body", "the JSON body must be an object", code="malformed_body")
    return body


def _string(body: dict[str, Any], name: str, *, required: bool, limit: int = spec_mod.IDENTITY_MAX) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise errors.bad_request(name, f"{name} is required", code="missing_field")
        return None
    if not isinstance(value, str):
        raise errors.bad_request(name, f"{name} must be a string")
    if len(value) > limit:
        raise errors.bad_request(name, f"{name} is over {limit} characters")
    return value.strip()


def _provider(body: dict[str, Any]) -> None:
    provider = _string(body, "provider", required=True)
    if provider != PROVIDER:
        raise errors.bad_request("provider", f"provider {provider!r} is not served here: use {PROVIDER!r} (\"{PROVIDER}/<avatar id>\")")


def _idempotency_key(header: str | None) -> str:
    key = (header or "").strip()
    if not key:
        raise errors.bad_request("Idempotency-Key", "the Idempotency-Key header is required", code="missing_field")
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise errors.bad_request("Idempotency-Key", f"the Idempotency-Key header is over {IDEMPOTENCY_KEY_MAX} characters")
    return key


def create_from_json(body: Any, idempotency_key: str | None) -> CreateRequest:
    obj = _object(body)
    _provider(obj)
    livekit_url = _string(obj, "livekit_url", required=True, limit=spec_mod.URL_MAX) or ""
    parsed = urllib.parse.urlsplit(livekit_url)
    if parsed.scheme.lower() not in ("ws", "wss", "http", "https") or not parsed.hostname:
        raise errors.bad_request("livekit_url", "livekit_url must be a URL starting with ws://, wss://, http:// or https://")
    avatar_identity = _string(obj, "avatar_identity", required=True) or ""
    image_url = _string(obj, "image_url", required=False, limit=spec_mod.URL_MAX)
    avatar_id = _string(obj, "avatar_id", required=False)
    if image_url is not None and avatar_id is not None:
        raise errors.bad_request("image_url", "send avatar_id (\"bithuman/<avatar id>\") or image_url, not both")
    return CreateRequest(
        livekit_url=livekit_url,
        room_name=_string(obj, "room_name", required=True) or "",
        avatar_identity=avatar_identity,
        avatar_name=_string(obj, "avatar_name", required=False) or avatar_identity,
        agent_identity=_string(obj, "agent_identity", required=True) or "",
        idempotency_key=_idempotency_key(idempotency_key),
        avatar_id=avatar_id,
        image=None if image_url is None else image_input.from_url("image_url", image_url),
    )


def terminate_from_json(body: Any) -> TerminateRequest:
    obj = _object(body)
    _provider(obj)
    return TerminateRequest(
        provider_session_id=_string(obj, "provider_session_id", required=True, limit=512) or "",
        terminate_token=_string(obj, "terminate_token", required=True, limit=512) or "",
    )
