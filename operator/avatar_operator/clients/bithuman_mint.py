"""A short-lived bitHuman runtime token, so the account secret stays out of the room.

For a cloud avatar, the plugin copies its `api_secret` into the avatar
participant's attributes (key `api_secret`), where bitHuman's cloud worker
reads it and every other participant can too. bitHuman's advice is to mint a
token for that one agent, room and LiveKit server and hand it over in the
secret's place: the operator sends it in the session request's `api-secret`
header and as the `api_secret` attribute, and the account secret only ever
travels to the mint endpoint.

The format, as bitHuman documents it (docs "Authentication" and "LiveKit";
the installed `bithuman` SDK never mints, it only calls
`/v1/runtime-tokens/request` for itself):

    POST https://api.bithuman.ai/v1/runtime-tokens/mint
    api-secret: <account secret>
    {"agent_code": "A23WJF0199", "scope": "livekit-cloud",
     "room_name": "<room>", "livekit_url": "<wss://...>"}
    -> 200 {"scoped_token": "...", "expires_at": <unix seconds>}
       401 missing/invalid secret, 403 suspended account or a mismatch

The token lives one hour, fixed by bitHuman (the request has no lifetime
field); a session that outlives it keeps running. It is scoped to an agent
code, so only `avatarId` sessions can use it.
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Awaitable, Callable

import aiohttp

from avatar_operator.build.cloud_request import (
    Accepted,
    CloudRequest,
    Rejected,
    RequestFormat,
    RetryPolicy,
    send,
)

DEFAULT_MINT_URL = "https://api.bithuman.ai/v1/runtime-tokens/mint"
SCOPE_LIVEKIT_CLOUD = "livekit-cloud"
# The plugin's connection defaults (APIConnectOptions).
DEFAULT_POLICY = RetryPolicy(max_retry=3, retry_interval=2.0, timeout=10.0)


class MintError(Exception):
    """No token. `retryable` is False when bitHuman refused (a 4xx) and a later
    try would be refused again; True when it could not be reached."""

    def __init__(self, message: str, *, status: int | None, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def build_mint_request(
    *, mint_url: str, api_secret: str, agent_code: str, room_name: str, livekit_url: str
) -> CloudRequest:
    for what, value in (
        ("BITHUMAN_API_SECRET", api_secret),
        ("avatarId", agent_code),
        ("room", room_name),
        ("livekit.url", livekit_url),
    ):
        if not value:
            raise ValueError(f"{what} is required to mint a bitHuman runtime token")
    return CloudRequest(
        url=mint_url,
        format=RequestFormat.JSON,
        headers=types.MappingProxyType(
            {"Content-Type": "application/json", "api-secret": api_secret}
        ),
        json=types.MappingProxyType(
            {
                "agent_code": agent_code,
                "scope": SCOPE_LIVEKIT_CLOUD,
                "room_name": room_name,
                "livekit_url": livekit_url,
            }
        ),
    )


async def mint_runtime_token(
    session: aiohttp.ClientSession,
    *,
    mint_url: str,
    api_secret: str,
    agent_code: str,
    room_name: str,
    livekit_url: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """The scoped token for `agent_code` in `room_name` on `livekit_url`.

    `livekit_url` must be the URL the session request names: bitHuman refuses a
    token minted for another. Retries as the session request does.
    """
    req = build_mint_request(
        mint_url=mint_url,
        api_secret=api_secret,
        agent_code=agent_code,
        room_name=room_name,
        livekit_url=livekit_url,
    )
    result = await send(session, req, policy, sleep=sleep)
    outcome = result.outcome
    if isinstance(outcome, Rejected):
        raise MintError(
            f"bitHuman refused to mint a runtime token (HTTP {outcome.status}): {outcome.message}",
            status=outcome.status,
            retryable=False,
        )
    if not isinstance(outcome, Accepted):
        raise MintError(
            f"could not reach bitHuman's mint endpoint after {result.attempts} attempts: "
            f"{outcome.message}",
            status=result.status,
            retryable=True,
        )
    try:
        token = json.loads(outcome.body)["scoped_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    # The answer is not echoed: it may hold the token under another name.
    if not isinstance(token, str) or not token:
        raise MintError(
            "bitHuman's mint answer has no scoped_token", status=result.status, retryable=True
        )
    if api_secret in token:
        # The token goes where everyone in the room can read it.
        raise MintError(
            "bitHuman's mint answer contains the account secret; not using it",
            status=result.status,
            retryable=False,
        )
    return token
