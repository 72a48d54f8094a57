"""The RoomService token per room: reused while it is young, dropped once it is old, and the one each call sends."""

from __future__ import annotations

import aiohttp
from aiohttp import test_utils, web
from livekit import api

from avatar_operator.clients import livekit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_room_reuses_its_token_until_half_its_life_is_gone() -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        client = livekit.Client("ws://lk.example", "key", "s" * 32, http, clock=clock)
        first = client._token("r1")
        assert client._token("r1") is first
        clock.t += livekit.TOKEN_TTL.total_seconds() / 2
        assert client._token("r1") is not first


async def test_each_call_sends_the_token_for_its_own_room() -> None:
    """One RoomService serves every room: the token a call carries grants admin of that call's room only."""
    seen: list[str] = []

    async def twirp(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"].removeprefix("Bearer "))
        return web.Response(body=api.ListParticipantsResponse().SerializeToString(), content_type="application/protobuf")

    app = web.Application()
    app.router.add_post("/twirp/livekit.RoomService/ListParticipants", twirp)
    async with test_utils.TestServer(app) as server, aiohttp.ClientSession() as http:
        client = livekit.Client(f"ws://{server.host}:{server.port}", "key", "s" * 32, http)
        for room in ("r1", "r2", "r1"):
            assert await client.observe(room, "avatar", "uid") == livekit.RoomView(False, False)
    rooms = [api.TokenVerifier("key", "s" * 32).verify(t).video.room for t in seen]
    assert rooms == ["r1", "r2", "r1"]
    assert seen[0] == seen[2] != seen[1]


async def test_rooms_no_longer_asked_about_are_dropped() -> None:
    """An operator that outlives many sessions does not keep a client for every room it ever saw."""
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        client = livekit.Client("ws://lk.example", "key", "s" * 32, http, clock=clock)
        for i in range(livekit.PRUNE_AT):
            client._token(f"old-{i}")
        clock.t += livekit.TOKEN_TTL.total_seconds()
        live = client._token("new")
        assert set(client._tokens) == {"new"}
        assert client._token("new") is live
        for i in range(3 * livekit.PRUNE_AT):  # all young: the live ones are kept, however many
            client._token(f"young-{i}")
        assert len(client._tokens) == 3 * livekit.PRUNE_AT + 1
