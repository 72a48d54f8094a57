"""The RoomService client per room: reused while its token is young, and dropped once it is old."""

from __future__ import annotations

import aiohttp

from avatar_operator.clients import livekit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_room_reuses_its_client_until_half_the_token_life_is_gone() -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        client = livekit.Client("ws://lk.example", "key", "s" * 32, http, clock=clock)
        first = client._for("r1")
        assert client._for("r1") is first
        clock.t += livekit.TOKEN_TTL.total_seconds() / 2
        assert client._for("r1") is not first


async def test_rooms_no_longer_asked_about_are_dropped() -> None:
    """An operator that outlives many sessions does not keep a client for every room it ever saw."""
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        client = livekit.Client("ws://lk.example", "key", "s" * 32, http, clock=clock)
        for i in range(livekit.PRUNE_AT):
            client._for(f"old-{i}")
        clock.t += livekit.TOKEN_TTL.total_seconds()
        live = client._for("new")
        assert set(client._rooms) == {"new"}
        assert client._for("new") is live
        for i in range(3 * livekit.PRUNE_AT):  # all young: the live ones are kept, however many
            client._for(f"young-{i}")
        assert len(client._rooms) == 3 * livekit.PRUNE_AT + 1
