"""Minting a scoped bitHuman runtime token, against the fake API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from avatar_operator.build.cloud_request import CloudRequest, MissingInputError, build_request
from avatar_operator.build.mint_request import build_mint_request
from avatar_operator.clients.bithuman import (
    Accepted,
    MintError,
    Rejected,
    RetryPolicy,
    mint_runtime_token,
    send,
)

from tests.fakes.bithuman_api import FakeBithumanAPI, Route

SECRET = "bh-account-secret-0123456789"
LK_URL = "wss://livekit.example.com"
POLICY = RetryPolicy(max_retry=3, retry_interval=2.0, timeout=10.0)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBithumanAPI]:
    async with FakeBithumanAPI(api_secret=SECRET) as api:
        yield api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _mint(
    fake: FakeBithumanAPI,
    http: aiohttp.ClientSession,
    *,
    api_secret: str = SECRET,
    sleep: FakeSleep | None = None,
) -> str:
    return await mint_runtime_token(
        http,
        mint_url=fake.mint_url,
        api_secret=api_secret,
        agent_code="A23WJF0199",
        room_name="room-1",
        livekit_url=LK_URL,
        policy=POLICY,
        sleep=sleep or FakeSleep(),
    )


def _session_request(fake: FakeBithumanAPI, credential: str, room: str = "room-1") -> CloudRequest:
    return build_request(
        api_url=fake.url,
        api_secret=credential,
        api_token=None,
        livekit_url=LK_URL,
        livekit_token="lk-jwt",
        room=room,
        model=None,
        avatar_id="A23WJF0199",
        avatar_image=None,
        avatar_image_bytes=None,
        idempotency_key=f"key-{room}",
    )


async def test_mints_in_bithumans_documented_format(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    token = await _mint(fake, http)

    (request,) = fake.requests
    assert request["path"] == "/v1/runtime-tokens/mint"
    assert request["headers"]["api-secret"] == SECRET
    assert request["json"] == {
        "agent_code": "A23WJF0199",
        "scope": "livekit-cloud",
        "room_name": "room-1",
        "livekit_url": LK_URL,
    }
    assert token and token != SECRET


async def test_the_minted_token_starts_that_session_only(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    token = await _mint(fake, http)

    ok = await send(http, _session_request(fake, token), POLICY, sleep=FakeSleep())
    elsewhere = await send(
        http, _session_request(fake, token, room="room-2"), POLICY, sleep=FakeSleep()
    )

    assert isinstance(ok.outcome, Accepted)
    assert isinstance(elsewhere.outcome, Rejected) and elsewhere.outcome.status == 403


async def test_a_wrong_secret_is_refused_at_once(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    sleep = FakeSleep()

    with pytest.raises(MintError) as err:
        await _mint(fake, http, api_secret="wrong-secret", sleep=sleep)

    assert "refused" in str(err.value) and "HTTP 401" in str(err.value)
    assert "UNAUTHORIZED" in str(err.value)
    assert "wrong-secret" not in str(err.value)
    assert sleep.delays == []


async def test_a_transient_failure_is_retried(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}, {}], Route.MINT)
    sleep = FakeSleep()

    token = await _mint(fake, http, sleep=sleep)

    assert token
    assert sleep.delays == [2.0]


async def test_unreachable_after_the_attempts(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 3, Route.MINT)

    with pytest.raises(MintError) as err:
        await _mint(fake, http)

    assert "could not reach" in str(err.value) and "HTTP 503" in str(err.value)
    assert "3 attempts" in str(err.value)


@pytest.mark.parametrize("body", [{"expires_at": 1}, {"scoped_token": ""}, ["x"], "not json"])
async def test_an_answer_without_a_token_is_an_error(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession, body: object
) -> None:
    fake.script([{"status": 200, "body": body}], Route.MINT)

    with pytest.raises(MintError, match="no scoped_token"):
        await _mint(fake, http)


async def test_an_answer_echoing_the_secret_is_not_used(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 200, "body": {"scoped_token": f"x{SECRET}x"}}], Route.MINT)

    with pytest.raises(MintError, match="account secret") as err:
        await _mint(fake, http)

    assert SECRET not in str(err.value)


@pytest.mark.parametrize("field", ["api_secret", "agent_code", "room_name", "livekit_url"])
def test_refuses_empty_inputs(field: str) -> None:
    kwargs = dict(
        mint_url="https://api.bithuman.ai/v1/runtime-tokens/mint",
        api_secret=SECRET,
        agent_code="A1",
        room_name="r",
        livekit_url=LK_URL,
    )
    kwargs[field] = ""

    with pytest.raises(MissingInputError, match="required"):
        build_mint_request(**kwargs)


def test_the_request_repr_hides_the_secret() -> None:
    req = build_mint_request(
        mint_url="https://api.bithuman.ai/v1/runtime-tokens/mint",
        api_secret=SECRET,
        agent_code="A1",
        room_name="r",
        livekit_url=LK_URL,
    )

    assert SECRET not in repr(req)
