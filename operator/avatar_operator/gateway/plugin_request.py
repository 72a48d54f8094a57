"""The plugin protocol's POST /launch body, in the shapes livekit-plugins-bithuman sends it.

JSON (`_send_json_request`): livekit_url, livekit_token, room_name, mode, model,
image (URL or base64), agent_id. A form, urlencoded or multipart
(`_send_formdata_request`, and the reference's form for every custom endpoint):
the same three, model, async_mode, avatar_image (a file or base64 text) or
avatar_image_url, avatar_id. Pure: the server hands in the decoded fields.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

from avatar_operator.api import spec as spec_mod
from avatar_operator.gateway import errors, image_input

REQUIRED = ("livekit_url", "livekit_token", "room_name")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
TEXT_MAX = 4096


@dataclasses.dataclass(frozen=True)
class Upload:
    """A multipart file field."""

    data: bytes = dataclasses.field(repr=False)
    filename: str | None = None


Field = str | Upload


@dataclasses.dataclass(frozen=True)
class PluginRequest:
    livekit_url: str
    livekit_token: str = dataclasses.field(repr=False)
    room_name: str
    model: spec_mod.Model | None = None
    avatar_id: str | None = None
    image: image_input.Image | None = None
    async_mode: bool = True


def _text(fields: Mapping[str, Field], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, Upload):
        raise errors.bad_request(name, f"{name} must be a text field, not a file")
    value = value.strip()
    if len(value) > TEXT_MAX:
        raise errors.bad_request(name, f"{name} is over {TEXT_MAX} characters")
    return value or None


def _livekit_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme.lower() not in ("ws", "wss", "http", "https") or not parsed.hostname:
        raise errors.bad_request("livekit_url", "livekit_url must be a URL starting with ws://, wss://, http:// or https://")
    return value


def _model(fields: Mapping[str, Field]) -> spec_mod.Model | None:
    raw = _text(fields, "model")
    if raw is None:
        return None
    try:
        return spec_mod.Model(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in spec_mod.Model)
        raise errors.bad_request("model", f"model must be one of {allowed}, got {raw[:40]!r}") from None


def _async_mode(fields: Mapping[str, Field]) -> bool:
    raw = _text(fields, "async_mode")
    if raw is None or raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise errors.bad_request("async_mode", f"async_mode must be true or false, got {raw[:20]!r}")


def _image(fields: Mapping[str, Field]) -> image_input.Image | None:
    found: list[tuple[str, image_input.Image]] = []
    for name in ("avatar_image", "image"):
        value = fields.get(name)
        if isinstance(value, Upload):
            found.append((name, image_input.from_bytes(name, value.data)))
        elif value is not None and value.strip():
            found.append((name, image_input.from_text(name, value)))
    url = _text(fields, "avatar_image_url")
    if url is not None:
        found.append(("avatar_image_url", image_input.from_url("avatar_image_url", url)))
    if len(found) > 1:
        raise errors.bad_request(found[1][0], f"send one image, not both {found[0][0]} and {found[1][0]}")
    return found[0][1] if found else None


def _avatar_id(fields: Mapping[str, Field]) -> str | None:
    ids = {name: v for name in ("avatar_id", "agent_id") if (v := _text(fields, name)) is not None}
    if len(set(ids.values())) > 1:
        raise errors.bad_request("avatar_id", "avatar_id and agent_id differ: send one")
    return next(iter(ids.values()), None)


def from_fields(fields: Mapping[str, Field]) -> PluginRequest:
    """A form's fields (or a JSON object's, as text) -> the request; a Refusal naming the first bad field."""
    values: dict[str, str] = {}
    for name in REQUIRED:
        value = _text(fields, name)
        if value is None:
            raise errors.bad_request(name, f"{name} is required", code="missing_field")
        values[name] = value
    return PluginRequest(
        livekit_url=_livekit_url(values["livekit_url"]),
        livekit_token=values["livekit_token"],
        room_name=values["room_name"],
        model=_model(fields),
        avatar_id=_avatar_id(fields),
        image=_image(fields),
        async_mode=_async_mode(fields),
    )


def from_json(body: Any) -> PluginRequest:
    """The JSON shape: an object whose values are strings (a bool async_mode too)."""
    if not isinstance(body, dict):
        raise errors.bad_request("body", "the JSON body must be an object", code="malformed_body")
    fields: dict[str, Field] = {}
    for name, value in body.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str):
            raise errors.bad_request(str(name), f"{name} must be a string")
        fields[str(name)] = value
    return from_fields(fields)
