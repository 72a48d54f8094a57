"""Fixtures the worker's cloud tests share: a real HTTP client, and the fake bitHuman API it talks to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.bithuman_api import FakeBithumanAPI
from tests.unit.worker_fakes import BITHUMAN_DATA


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bithuman_api() -> AsyncIterator[FakeBithumanAPI]:
    async with FakeBithumanAPI(api_secret=BITHUMAN_DATA["BITHUMAN_API_SECRET"]) as api:
        yield api
