"""The gateway's clients' requests, built as the real clients build them, and sent.

- the plugin's JSON (`_send_json_request`: an `api-secret` header) and form
  (`_send_formdata_request`: `Authorization: Bearer`), with the livekit_token it
  mints (kind agent, the avatar's identity, the room, publish-on-behalf and the
  caller's key in its attributes);
- inference.AvatarSession's create (a JWT from livekit-agents' own
  `create_access_token`, an Idempotency-Key) and terminate.

Shared by the gateway tests and bench/gateway.py; no pytest here.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from livekit import api
from livekit.agents.inference import _utils as inference_utils

from tests.harness import gateway_bed

if TYPE_CHECKING:
    from tests.harness.gateway_bed import GatewayBed

AGENT = "agent-1"
AVATAR = "bithuman-avatar-agent"  # the plugin's avatar identity
INFERENCE_AVATAR = "bithuman-inference-avatar"  # inference.AvatarSession's, for provider bithuman


def plugin_token(
    key: str, secret: str, room: str, *, ttl: datetime.timedelta = datetime.timedelta(minutes=10)
) -> str:
    """The livekit_token the plugin mints (_start_cloud): kind agent, the avatar's identity,
    the room, publish-on-behalf and the caller's key in its attributes."""
    return (
        api.AccessToken(key, secret)
        .with_kind("agent")
        .with_identity(AVATAR)
        .with_name(AVATAR)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_attributes({"lk.publish_on_behalf": AGENT, "api_secret": "the-callers-key"})
        .with_ttl(ttl)
        .to_jwt()
    )


@dataclasses.dataclass
class Call:
    """One request: where, which headers, which body; what it sent that must stay out of logs."""

    path: str
    headers: dict[str, str]
    json_body: dict[str, Any] | None = None
    raw: bytes | None = None
    form: dict[str, str] | None = None
    image: bytes | None = None
    secrets: list[str] = dataclasses.field(default_factory=list)

    def data(self) -> Any:
        if self.raw is not None:
            return self.raw
        if self.form is None:
            return None
        form = aiohttp.FormData()
        for k, v in self.form.items():
            form.add_field(k, v)
        if self.image is not None:
            form.add_field("avatar_image", io.BytesIO(self.image), filename="avatar.jpg", content_type="image/jpeg")
        return form


def plugin_json(bed: GatewayBed, room: str, *, key: str | None = None, token: str | None = None) -> Call:
    """The plugin's JSON request (an essence model), as _send_json_request sends it."""
    key = bed.api_key if key is None else key
    token = token or plugin_token(bed.stack.livekit_api_key, bed.stack.livekit_api_secret, room)
    body = {
        "livekit_url": bed.stack.livekit_url, "livekit_token": token, "room_name": room,
        "mode": "cpu", "model": "essence", "agent_id": gateway_bed.AVATAR_ID,
    }
    return Call("/launch", {"api-secret": key}, json_body=body, secrets=[key, token])


def plugin_form(bed: GatewayBed, room: str, *, key: str | None = None, image: bytes | None = None) -> Call:
    """The plugin's form (an expression model), as _send_formdata_request sends it."""
    key = bed.api_key if key is None else key
    token = plugin_token(bed.stack.livekit_api_key, bed.stack.livekit_api_secret, room)
    form = {
        "livekit_url": bed.stack.livekit_url, "livekit_token": token, "room_name": room,
        "model": "expression", "avatar_id": gateway_bed.AVATAR_ID,
    }
    return Call("/launch", {"Authorization": f"Bearer {key}"}, form=form, image=image, secrets=[key, token])


def inference_jwt(key: str, secret: str, ttl: float = 600) -> str:
    """The JWT inference.AvatarSession sends, minted by livekit-agents' own function."""
    return inference_utils.create_access_token(key, secret, ttl=ttl)


def inference_create(bed: GatewayBed, room: str, *, jwt: str | None = None) -> Call:
    jwt = jwt or inference_jwt(bed.stack.livekit_api_key, bed.stack.livekit_api_secret)
    body = {
        "provider": "bithuman", "livekit_url": bed.stack.livekit_url, "room_name": room, "room_sid": "RM_test",
        "avatar_identity": INFERENCE_AVATAR, "avatar_name": INFERENCE_AVATAR,
        "agent_identity": AGENT, "avatar_id": gateway_bed.AVATAR_ID,
    }
    headers = {"Authorization": f"Bearer {jwt}", "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    return Call("/avatar/sessions", headers, json_body=body, secrets=[jwt])


async def send(bed: GatewayBed, call: Call, http: aiohttp.ClientSession | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, body: the JSON, else the text) of `call` at the bed's gateway."""
    if http is None:
        async with aiohttp.ClientSession() as own:
            return await send(bed, call, own)
    async with http.post(bed.gateway_url + call.path, headers=call.headers, json=call.json_body, data=call.data()) as response:
        text = await response.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return response.status, dict(response.headers), body
