"""The `POST /launch` form, checked: what bitHuman's self-hosted container takes.

Fields: `livekit_url`, `livekit_token`, `room_name` (required),
`avatar_image` (a file, or base64 text) or `avatar_image_url`, `async_mode`
("true"/"false", default true). The others the plugin sends (`avatar_id`,
`model`, `prompt`, `api_secret`) are accepted and ignored: this runner
renders what it loaded.

The agent whose speech the avatar renders is read from the room token, the
way bitHuman's avatar reads it: its `lk.publish_on_behalf` attribute. The
token's signature is not checked here (the runner has no LiveKit secret);
LiveKit checks it when the avatar joins.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .tasks import TaskRequest

ATTRIBUTE_PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
REQUIRED = ("livekit_url", "livekit_token", "room_name")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
IDEMPOTENCY_KEY_MAX = 256


class LaunchError(ValueError):
    """A field is missing or invalid: a 400 naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Launch:
    request: TaskRequest
    async_mode: bool


Field = str | bytes  # a text field, or an uploaded file's content


def _text(fields: Mapping[str, Field], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        raise LaunchError(name, f"{name} must be a text field, not a file")
    return value.strip() or None


def _url(value: str, name: str, schemes: tuple[str, ...]) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme.lower() not in schemes or not parsed.hostname:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise LaunchError(name, f"{name} must be a URL starting with {allowed}")
    return value


def token_claims(token: str) -> dict[str, Any]:
    """The JWT's payload, not verified; LaunchError naming livekit_token when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise LaunchError("livekit_token", "livekit_token is not a JWT")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        raise LaunchError("livekit_token", "livekit_token is not a JWT: its payload does not decode") from None
    if not isinstance(claims, dict):
        raise LaunchError("livekit_token", "livekit_token is not a JWT: its payload is not an object")
    return claims


def _agent_and_room(token: str) -> tuple[str, str | None]:
    claims = token_claims(token)
    attributes = claims.get("attributes")
    agent = attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) if isinstance(attributes, dict) else None
    if not isinstance(agent, str) or not agent:
        raise LaunchError(
            "livekit_token",
            f"livekit_token has no {ATTRIBUTE_PUBLISH_ON_BEHALF} attribute: whose speech the avatar renders",
        )
    video = claims.get("video")
    room = video.get("room") if isinstance(video, dict) else None
    return agent, room if isinstance(room, str) and room else None


def _async_mode(fields: Mapping[str, Field]) -> bool:
    raw = _text(fields, "async_mode")
    if raw is None:
        return True
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise LaunchError("async_mode", f"async_mode must be true or false, got {raw[:20]!r}")


def _image(fields: Mapping[str, Field]) -> bytes | None:
    value = fields.get("avatar_image")
    if value is None or isinstance(value, bytes):
        return value or None
    text = value.strip()
    if not text:
        return None
    if text.startswith("data:"):  # a data: URI
        text = text.partition(",")[2]
    text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LaunchError("avatar_image", "avatar_image must be an image file or base64 image data") from None


def parse_launch(fields: Mapping[str, Field]) -> Launch:
    """The launch a form asks for; LaunchError naming the first bad field."""
    values = {}
    for name in REQUIRED:
        value = _text(fields, name)
        if value is None:
            raise LaunchError(name, f"{name} is required")
        values[name] = value
    url = _url(values["livekit_url"], "livekit_url", ("ws", "wss", "http", "https"))
    agent, token_room = _agent_and_room(values["livekit_token"])
    if token_room is not None and token_room != values["room_name"]:
        raise LaunchError("room_name", "room_name is not the room livekit_token is for")
    image_url = _text(fields, "avatar_image_url")
    if image_url is not None:
        _url(image_url, "avatar_image_url", ("http", "https"))
    request = TaskRequest(
        livekit_url=url,
        livekit_token=values["livekit_token"],
        room_name=values["room_name"],
        agent_identity=agent,
        image=_image(fields),
        image_url=image_url,
    )
    return Launch(request=request, async_mode=_async_mode(fields))


def idempotency_key(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise LaunchError("Idempotency-Key", f"the Idempotency-Key header is over {IDEMPOTENCY_KEY_MAX} characters")
    return value.strip()
