"""bitHuman's cloud API over HTTP: the session request's sender and the token mint.

`send` posts a `CloudRequest` (built by `avatar_operator.build`) and retries
only what can succeed on a retry (design.md §3). It bounds the whole attempt
in time, does not follow redirects, and builds the form body afresh for each
attempt (the plugin re-sends one FormData object, whose parts aiohttp consumes
when it encodes them).

Nothing here logs or returns request headers or bodies: they hold the bitHuman
credential and the avatar's LiveKit token.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from avatar_operator.build.cloud_request import FORM_FILE_FIELD, CloudRequest
from avatar_operator.build.mint_request import build_mint_request

logger = logging.getLogger(__name__)

# The plugin's sock_connect-only timeout leaves reading the answer unbounded,
# so a server that accepts the connection and never answers would hold the
# handler forever. A total bound of a few connect timeouts keeps the plugin's
# meaning for `connection.timeout` and still ends a hung attempt.
TOTAL_TIMEOUT_FACTOR = 3.0
# A Retry-After beyond this is not waited for: the session would sit in
# Starting for longer than a user watching `kubectl get avs` expects.
RETRY_AFTER_CAP_S = 60.0
# How much of a refusal's body reaches the status condition and Events.
MESSAGE_LIMIT = 300
# How much of any answer is read: the useful part is short and the server is
# not trusted to bound it.
_READ_LIMIT = 64 * 1024
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class RetryPolicy:
    """The spec's `connection` (the plugin's APIConnectOptions)."""

    max_retry: int  # total attempts, as the plugin's range(max_retry)
    retry_interval: float
    timeout: float

    def __post_init__(self) -> None:
        if self.max_retry < 1:
            raise ValueError(f"max_retry must be >= 1, got {self.max_retry}")
        if self.retry_interval < 0:
            raise ValueError(f"retry_interval must be >= 0, got {self.retry_interval}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


@dataclass(frozen=True)
class Accepted:
    status: int
    body: bytes = field(repr=False)  # the 2xx answer, at most _READ_LIMIT bytes


@dataclass(frozen=True)
class Rejected:
    """A 4xx (other than 429) or 3xx: the server refused; retrying cannot help."""

    status: int
    message: str


@dataclass(frozen=True)
class RetriesExhausted:
    message: str  # the last attempt's error


Outcome = Accepted | Rejected | RetriesExhausted


@dataclass(frozen=True)
class CloudResult:
    outcome: Outcome
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came


async def send(
    session: aiohttp.ClientSession,
    req: CloudRequest,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_attempt: Callable[[int], Awaitable[None]] | None = None,
) -> CloudResult:
    """POST `req`, retrying connection errors, timeouts, 429 and 5xx.

    Any other answer ends it at once: a 2xx is Accepted, the rest Rejected with
    the server's status and (truncated) body. `on_attempt(n)` runs before
    attempt n (1-based), so a caller can record progress.
    """
    timeout = aiohttp.ClientTimeout(
        total=policy.timeout * TOTAL_TIMEOUT_FACTOR, sock_connect=policy.timeout
    )
    secrets = req.sensitive_values()
    last_error = ""
    last_status: int | None = None
    for attempt in range(1, policy.max_retry + 1):
        if on_attempt is not None:
            await on_attempt(attempt)
        delay = policy.retry_interval
        try:
            async with session.post(
                req.url,
                headers=dict(req.headers),
                json=None if req.json is None else dict(req.json),
                data=_form_data(req),
                timeout=timeout,
                # A redirect would re-send the api-secret header to wherever it points.
                allow_redirects=False,
            ) as resp:
                status = resp.status
                body = await resp.content.read(_READ_LIMIT)
                retry_after = resp.headers.get("Retry-After")
                reason = resp.reason or ""
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            last_status = None
            last_error = _redact(_describe(err, policy), secrets)
        else:
            if 200 <= status < 300:
                return CloudResult(Accepted(status, body), attempt, status)
            text = body.decode("utf-8", errors="replace").strip() or reason
            message = _redact(text, secrets)[:MESSAGE_LIMIT]
            if status != 429 and status < 500:
                return CloudResult(Rejected(status, message), attempt, status)
            last_status = status
            last_error = f"HTTP {status}: {message}"
            if status == 429:
                wait = _retry_after_s(retry_after)
                if wait is not None:
                    delay = max(delay, min(wait, RETRY_AFTER_CAP_S))
        logger.warning(
            "bitHuman request attempt %d/%d failed: %s", attempt, policy.max_retry, last_error
        )
        if attempt < policy.max_retry:
            await sleep(delay)
    return CloudResult(RetriesExhausted(last_error), policy.max_retry, last_status)


def _form_data(req: CloudRequest) -> aiohttp.FormData | None:
    if req.form is None:
        return None
    form = aiohttp.FormData()
    for name, value in req.form.items():
        form.add_field(name, value)
    if req.file is not None:
        form.add_field(
            FORM_FILE_FIELD,
            req.file.data,
            filename=req.file.filename,
            content_type=req.file.content_type,
        )
    return form


def _describe(err: BaseException, policy: RetryPolicy) -> str:
    if isinstance(err, TimeoutError):
        return (
            f"no answer in time (connect limit {policy.timeout:g}s, "
            f"total limit {policy.timeout * TOTAL_TIMEOUT_FACTOR:g}s)"
        )
    detail = str(err)
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        return max(seconds, 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    # A server may echo what it was sent; the credential must not ride along.
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


class MintError(Exception):
    """No token; the message says why (bitHuman's refusal, unreachable, or a
    useless answer) and never carries the account secret."""


async def mint_runtime_token(
    session: aiohttp.ClientSession,
    *,
    mint_url: str,
    api_secret: str,
    agent_code: str,
    room_name: str,
    livekit_url: str,
    policy: RetryPolicy,
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
            f"bitHuman refused to mint a runtime token (HTTP {outcome.status}): {outcome.message}"
        )
    if not isinstance(outcome, Accepted):
        raise MintError(
            f"could not reach bitHuman's mint endpoint after {result.attempts} attempts: "
            f"{outcome.message}"
        )
    try:
        token = json.loads(outcome.body)["scoped_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    # The answer is not echoed: it may hold the token under another name.
    if not isinstance(token, str) or not token:
        raise MintError("bitHuman's mint answer has no scoped_token")
    if api_secret in token:
        # The token goes where everyone in the room can read it.
        raise MintError("bitHuman's mint answer contains the account secret; not using it")
    return token
