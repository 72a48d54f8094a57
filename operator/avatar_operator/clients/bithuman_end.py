"""Ending a started cloud session at bitHuman, so billing and its concurrency slot stop at once.

The request comes from build/cloud_end.py; it is sent as the start is
(`bithuman.send`: bounded attempts, connection errors and 5xx retried, no
redirects, credentials redacted from every message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from avatar_operator.build import cloud_request
from avatar_operator.clients import bithuman


@dataclass(frozen=True)
class EndResult:
    ended: bool
    attempts: int
    message: str  # what bitHuman said, or why it could not be told


async def end_session(
    session: aiohttp.ClientSession,
    req: cloud_request.CloudRequest,
    policy: bithuman.PolicySource,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> EndResult:
    """Ends a started session (the request from build/cloud_end.py), retrying as `send` does.

    Ending is idempotent at bitHuman: a repeat is harmless, and a 404 (no such
    session or task, so nothing bills under it) counts as ended."""
    result = await bithuman.send(session, req, policy, sleep=sleep)
    outcome = result.outcome
    if isinstance(outcome, bithuman.Accepted):
        return EndResult(True, result.attempts, f"HTTP {outcome.status}")
    if isinstance(outcome, bithuman.Rejected):
        if outcome.status == 404:
            return EndResult(True, result.attempts, "HTTP 404: bitHuman knows no such session (already ended)")
        return EndResult(False, result.attempts, f"HTTP {outcome.status}: {outcome.message}")
    return EndResult(False, result.attempts, f"unreachable after {result.attempts} attempt(s): {outcome.message}")


