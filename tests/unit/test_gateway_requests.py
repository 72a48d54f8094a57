"""The request shapes the gateway accepts: what the installed plugin and livekit-agents really send
(their own request code against the gateway's body decoding, in process), and each refusal naming its field."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web
from avatar_operator.gateway import errors, inference_request, plugin_request, server
from livekit.plugins import bithuman
from PIL import Image


def _png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 90)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


PNG = _png()


class Captured:
    """A server whose one route decodes the body as the gateway's /launch does."""

    def __init__(self) -> None:
        self.requests: list[plugin_request.PluginRequest] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await server.plugin_body(request))
        self.headers.append(dict(request.headers))
        return web.json_response({"status": "pending", "task_id": "ns/gw-x"})


@pytest.fixture
async def captured() -> AsyncIterator[tuple[Captured, str]]:
    cap = Captured()
    app = web.Application()
    app.router.add_post("/launch", cap.handle)
    async with test_utils.TestServer(app) as srv:
        yield cap, str(srv.make_url("/launch"))


async def send(avatar: bithuman.AvatarSession, form: bool, async_mode: bool | None = None) -> None:
    async with aiohttp.ClientSession() as http:
        avatar._http_session = http
        if form:
            await avatar._send_formdata_request("ws://lk:7880", "the.token.jwt", "room-1", async_mode=async_mode)
        else:
            await avatar._send_json_request("ws://lk:7880", "the.token.jwt", "room-1")


async def test_the_plugins_json_request(captured: tuple[Captured, str]) -> None:
    cap, url = captured
    await send(bithuman.AvatarSession(api_url=url, api_secret="caller-key", avatar_id="A91XMB7113", model="essence"), form=False)
    req = cap.requests[0]
    assert (req.livekit_url, req.livekit_token, req.room_name, req.avatar_id, req.model) == (
        "ws://lk:7880",
        "the.token.jwt",
        "room-1",
        "A91XMB7113",
        "essence",
    )
    assert cap.headers[0]["api-secret"] == "caller-key" and req.image is None


async def test_the_plugins_json_request_with_a_pil_image(captured: tuple[Captured, str]) -> None:
    cap, url = captured
    await send(bithuman.AvatarSession(api_url=url, api_secret="k", avatar_image=Image.new("RGB", (8, 8), "red")), form=False)
    image = cap.requests[0].image
    assert image is not None and image.url is None and image.data is not None and image.data[:2] == b"\xff\xd8"  # a JPEG


async def test_the_plugins_form_without_a_file_is_urlencoded(captured: tuple[Captured, str]) -> None:
    cap, url = captured
    avatar = bithuman.AvatarSession(api_url=url, api_token="caller-key", api_secret="s", avatar_image="https://img/x.png", model="expression")
    await send(avatar, form=True, async_mode=False)
    req = cap.requests[0]
    assert cap.headers[0]["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert cap.headers[0]["Authorization"] == "Bearer caller-key"
    assert req.image is not None and req.image.url == "https://img/x.png" and req.async_mode is False and req.model == "expression"


async def test_the_plugins_form_with_a_file_is_multipart(captured: tuple[Captured, str]) -> None:
    cap, url = captured
    avatar = bithuman.AvatarSession(api_url=url, api_secret="k", avatar_image=PNG, avatar_id="agent-9", model="expression")
    await send(avatar, form=True, async_mode=True)
    req = cap.requests[0]
    assert cap.headers[0]["Content-Type"].startswith("multipart/form-data")
    assert req.image is not None and req.image.data == base64.b64decode(PNG) and req.avatar_id == "agent-9" and req.async_mode


async def test_a_pil_image_in_a_form(captured: tuple[Captured, str]) -> None:
    cap, url = captured
    await send(bithuman.AvatarSession(api_url=url, api_secret="k", avatar_image=Image.new("RGB", (4, 4))), form=True)
    image = cap.requests[0].image
    assert image is not None and image.data is not None and image.data[:2] == b"\xff\xd8"


def fields(**extra: Any) -> dict[str, Any]:
    return {"livekit_url": "wss://lk.example", "livekit_token": "t", "room_name": "r", **extra}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"livekit_token": "t", "room_name": "r"}, "livekit_url"),
        (fields(room_name=" "), "room_name"),
        (fields(livekit_url="ftp://x"), "livekit_url"),
        (fields(model="essence-3"), "model"),
        (fields(async_mode="maybe"), "async_mode"),
        (fields(image="not base64!"), "image"),
        (fields(avatar_image_url="file:///etc/passwd"), "avatar_image_url"),
        (fields(image="https://a/b.png", avatar_image_url="https://a/c.png"), "avatar_image_url"),
        (fields(agent_id="a", avatar_id="b"), "avatar_id"),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_fields(body)
    assert (caught.value.status, caught.value.field) == (400, field)


def test_json_must_be_an_object_of_strings() -> None:
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_json(["x"])
    assert caught.value.field == "body"
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_json(fields(room_name=7))
    assert caught.value.field == "room_name"
    assert plugin_request.from_json(fields(async_mode=False, mode="cpu")).async_mode is False


def test_a_file_where_text_belongs_and_an_empty_file() -> None:
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_fields(fields(room_name=plugin_request.Upload(b"x")))
    assert caught.value.field == "room_name"
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_fields(fields(avatar_image=plugin_request.Upload(b"")))
    assert caught.value.field == "avatar_image"


def test_bytes_that_are_no_image_are_refused_naming_the_field() -> None:
    # A PNG signature and nothing after it: refused here, not by the runner after a slot was taken.
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    for value in (plugin_request.Upload(b"not an image"), broken):
        with pytest.raises(errors.Refusal) as caught:
            plugin_request.from_fields(fields(avatar_image=value))
        assert caught.value.status == 400 and caught.value.field == "avatar_image"
        assert "not an image Pillow can read" in caught.value.message


def test_a_data_uri_image_is_decoded() -> None:
    req = plugin_request.from_fields(fields(avatar_image=f"data:image/png;base64,{PNG}"))
    assert req.image is not None and req.image.data == base64.b64decode(PNG)


INFERENCE = {
    "provider": "bithuman",
    "livekit_url": "ws://lk:7880",
    "room_name": "room-1",
    "room_sid": "RM_x",
    "avatar_identity": "bithuman-inference-avatar",
    "avatar_name": "bithuman-inference-avatar",
    "agent_identity": "agent-7",
    "avatar_id": "A91",
    "extra_kwargs": {"anything": 1},
}


def test_the_inference_create_body() -> None:
    req = inference_request.create_from_json(INFERENCE, "idem-1")
    assert (req.room_name, req.avatar_identity, req.agent_identity, req.avatar_id, req.idempotency_key) == (
        "room-1",
        "bithuman-inference-avatar",
        "agent-7",
        "A91",
        "idem-1",
    )


@pytest.mark.parametrize(
    ("body", "key", "field"),
    [
        ({**INFERENCE, "provider": "lemonslice"}, "k", "provider"),
        ({k: v for k, v in INFERENCE.items() if k != "agent_identity"}, "k", "agent_identity"),
        ({**INFERENCE, "room_name": 5}, "k", "room_name"),
        (INFERENCE, None, "Idempotency-Key"),
        (INFERENCE, "x" * 257, "Idempotency-Key"),
        ({**INFERENCE, "image_url": "https://a/b.png"}, "k", "image_url"),
    ],
)
def test_bad_inference_bodies_are_named(body: dict[str, Any], key: str | None, field: str) -> None:
    with pytest.raises(errors.Refusal) as caught:
        inference_request.create_from_json(body, key)
    assert (caught.value.status, caught.value.field) == (400, field)


def test_the_terminate_body() -> None:
    req = inference_request.terminate_from_json({"provider": "bithuman", "provider_session_id": "ns/gw-1", "terminate_token": "ab"})
    assert (req.provider_session_id, req.terminate_token) == ("ns/gw-1", "ab")
    with pytest.raises(errors.Refusal) as caught:
        inference_request.terminate_from_json({"provider": "bithuman", "provider_session_id": "ns/gw-1"})
    assert caught.value.field == "terminate_token"


async def test_livekit_agents_inference_request_decodes() -> None:
    """inference.AvatarSession's own _create_session against a route that decodes as the gateway does."""
    from livekit.agents import inference

    seen: list[inference_request.CreateRequest] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(inference_request.create_from_json(await request.json(), request.headers.get("Idempotency-Key")))
        return web.json_response({"session_id": "u", "provider_session_id": "ns/n", "terminate_token": "t", "sample_rate": 16000})

    app = web.Application()
    app.router.add_post("/avatar/sessions", handle)
    async with test_utils.TestServer(app) as srv, aiohttp.ClientSession() as http:
        avatar = inference.AvatarSession("bithuman/A91", base_url=str(srv.make_url("")), api_key="k", api_secret="s" * 32, http_session=http)
        answer = await avatar._create_session(room_name="room-1", room_sid="RM_1", livekit_url="ws://lk:7880", agent_identity="agent-7")
    assert answer["provider_session_id"] == "ns/n"
    assert (seen[0].avatar_id, seen[0].avatar_identity, seen[0].agent_identity) == ("A91", "bithuman-inference-avatar", "agent-7")
    assert len(seen[0].idempotency_key) == 32


def test_an_image_too_big_for_a_secret() -> None:
    big = b"\0" * (960 * 1024 + 1)
    with pytest.raises(errors.Refusal) as caught:
        plugin_request.from_fields(fields(avatar_image=plugin_request.Upload(big)))
    assert caught.value.field == "avatar_image" and "smaller image or a URL" in caught.value.message
