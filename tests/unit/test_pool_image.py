"""A pool session's picture: what the launch form carries (pure), and the operator's runner client
sending it to the runner's real launch API (its room session faked, as in test_runner_serve)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from avatar_operator.build import image
from avatar_operator.clients import pool_runner
from avatar_runner.serve import LaunchApi
from avatar_runner.tasks import TaskPool

from tests.unit.test_runner_serve import POOL_TOKEN, FakeRooms, form, jpeg

PICTURE = jpeg()


def test_a_url_goes_as_the_url_the_runner_fetches() -> None:
    assert image.launch_image("https://example.com/p.jpg", None) == image.LaunchImage(url="https://example.com/p.jpg")


def test_base64_goes_as_the_file_it_encodes() -> None:
    encoded = base64.b64encode(PICTURE).decode()
    assert image.launch_image("\n".join((encoded[:40], encoded[40:])), None) == image.LaunchImage(data=PICTURE)


def test_bytes_from_a_config_map_or_secret_go_as_they_are() -> None:
    assert image.launch_image(None, b"raw") == image.LaunchImage(data=b"raw")
    assert image.launch_image(None, None) == image.LaunchImage()


def test_an_image_that_is_neither_is_refused_without_echoing_it() -> None:
    with pytest.raises(image.InvalidImageError) as e:
        image.launch_image("/etc/secret-path.png", None)
    assert "secret-path" not in str(e.value)


async def launched(rooms: FakeRooms, n: int) -> None:
    """The runner starts a task's room session after it answers (async_mode): wait for the session to see it."""
    async with asyncio.timeout(5):
        while len(rooms.requests) < n:
            await asyncio.sleep(0.01)


@pytest.fixture
async def runner() -> AsyncIterator[tuple[str, FakeRooms, aiohttp.ClientSession]]:
    rooms = FakeRooms()
    api = LaunchApi(TaskPool(rooms, 2, stop_timeout=2.0), POOL_TOKEN, loaded=lambda: True, sync_timeout=5.0)
    server = TestServer(api.app())
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        try:
            yield str(server.make_url("")).rstrip("/"), rooms, http
        finally:
            for room in [r.room_name for r in rooms.requests]:
                rooms.end(room)
            await server.close()


async def test_the_file_reaches_the_runner_multipart(runner: tuple[str, FakeRooms, aiohttp.ClientSession]) -> None:
    url, rooms, http = runner
    client = pool_runner.RunnerClient(http)
    task = await client.launch(url, POOL_TOKEN, form("room-a"), "key-a", PICTURE)
    assert task
    await launched(rooms, 1)
    (request,) = rooms.requests
    assert request.image == PICTURE and request.image_url is None
    # A repeated launch (same key, a restarted operator) sends a fresh form and gets the same task.
    assert await client.launch(url, POOL_TOKEN, form("room-a"), "key-a", PICTURE) == task


async def test_a_url_reaches_the_runner_and_no_image_is_no_image(runner: tuple[str, FakeRooms, aiohttp.ClientSession]) -> None:
    url, rooms, http = runner
    client = pool_runner.RunnerClient(http)
    await client.launch(url, POOL_TOKEN, form("room-b", avatar_image_url="https://example.com/p.jpg"), "key-b")
    await client.launch(url, POOL_TOKEN, form("room-c"), "key-c")
    await launched(rooms, 2)
    by_room = {r.room_name: r for r in rooms.requests}
    assert (by_room["room-b"].image, by_room["room-b"].image_url) == (None, "https://example.com/p.jpg")
    assert (by_room["room-c"].image, by_room["room-c"].image_url) == (None, None)
