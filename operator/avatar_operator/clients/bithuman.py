"""bitHuman's cloud API over HTTP: the session request's sender and the token mint.

`send` posts a `CloudRequest` (built by `avatar_operator.build`) and retries
only what can succeed on a retry (design.md §3). It bounds the whole attempt
in time, does not follow redirects, and builds the form body afresh for each
attempt (the plugin re-sends one FormData object, whose parts aiohttp consumes
when it encodes them). Every error of an attempt, an answer aiohttp cannot
parse included, counts as that attempt and ends in an Outcome; none escapes.
Its policy may be a callable, read again before each attempt, so an edit of
the session's `spec.connection` counts from the next attempt on.

`mint_runtime_token` gets the scoped token that stands in for the account
secret in the room (build/mint_request.py says why), under the same policy.

A refusal carries bitHuman's error code (build/cloud_answer.py reads it), so
the caller can tell a concurrency limit from an empty balance.

Nothing here logs or returns request headers or bodies: they hold the bitHuman
credential and the avatar's LiveKit token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from avatar_operator.build import cloud_answer
from avatar_operator.build.cloud_request import FORM_FILE_FIELD, CloudRequest
from avatar_operator.build.mint_request import build_mint_request
from avatar_operator.clients import http

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
    # Read off the answer (its status and message are the refusal): bitHuman's
    # error body, {"error": {"code", "message"}}, when it has one.
    code: str | None = field(default=None, compare=False)
    detail: str | None = field(default=None, compare=False)
    retry_after: float | None = field(default=None, compare=False)  # a 403 CONCURRENCY_LIMIT_REACHED may say when to come back


@dataclass(frozen=True)
class RetriesExhausted:
    message: str  # the last attempt's error
    # An attempt failed after the request may have reached the server (a
    # timeout, a dropped or broken answer): it may have started an avatar.
    uncertain: bool = False


Outcome = Accepted | Rejected | RetriesExhausted


@dataclass(frozen=True)
class CloudResult:
    outcome: Outcome
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came


PolicySource = RetryPolicy | Callable[[], RetryPolicy]
"""A fixed policy, or one read afresh before each attempt (the session's
`spec.connection`, which a user may edit while the request is retried)."""

# Every way one request can fail without a usable answer: aiohttp's own errors
# (connection, payload, and ClientResponseError for an answer it cannot parse:
# a status line that is not HTTP, a bad Content-Length, an over-long header),
# the parser's HttpProcessingError, which the pure-Python parser lets escape
# from a body read, and the attempt's time bound.
_REQUEST_ERRORS = (aiohttp.ClientError, HttpProcessingError, TimeoutError)


@dataclass(frozen=True)
class _Retry:
    """A failed attempt that a later one may get past."""

    message: str
    status: int | None  # the server's status; None when no (parsable) answer came
    retry_after: float | None = None  # a 429's Retry-After, in seconds
    uncertain: bool = False  # see RetriesExhausted


async def send(
    session: aiohttp.ClientSession,
    req: CloudRequest,
    policy: PolicySource,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_attempt: Callable[[int], Awaitable[None]] | None = None,
) -> CloudResult:
    """POST `req`, retrying connection errors, timeouts, malformed answers, 429 and 5xx.

    Any other answer ends it at once: a 2xx is Accepted, the rest Rejected with
    the server's status and (truncated) body. `on_attempt(n)` runs before
    attempt n (1-based), so a caller can record progress.

    A callable `policy` is read before each attempt, and again after a failed
    one: the wait after a failure is the `retry_interval` read then, an attempt
    runs under the `timeout` read just before it, and the attempts already made
    count against the `max_retry` read at either point, so a lowered one stops
    the retries there. What the callable raises propagates.
    """
    current = _reader(policy)
    secrets = req.sensitive_values()
    attempt = 0
    uncertain = False
    step = current()
    while True:
        attempt += 1
        if on_attempt is not None:
            await on_attempt(attempt)
        answer = await _attempt(session, req, step, secrets)
        if not isinstance(answer, _Retry):
            return CloudResult(answer, attempt, answer.status)
        uncertain = uncertain or answer.uncertain
        logger.warning(
            "bitHuman request attempt %d/%d failed: %s", attempt, step.max_retry, answer.message
        )
        step = current()
        if attempt >= step.max_retry:
            break
        delay = step.retry_interval
        if answer.retry_after is not None:
            delay = max(delay, min(answer.retry_after, RETRY_AFTER_CAP_S))
        await sleep(delay)
        step = current()
        if attempt >= step.max_retry:
            break
    return CloudResult(RetriesExhausted(answer.message, uncertain), attempt, answer.status)


def _reader(policy: PolicySource) -> Callable[[], RetryPolicy]:
    if isinstance(policy, RetryPolicy):
        fixed = policy
        return lambda: fixed
    return policy


async def _attempt(
    session: aiohttp.ClientSession,
    req: CloudRequest,
    policy: RetryPolicy,
    secrets: tuple[str, ...],
) -> Accepted | Rejected | _Retry:
    """One POST. Every error of it ends here as a _Retry: a broken server may
    sit behind a balancer that sends the next attempt to a healthy one."""
    timeout = aiohttp.ClientTimeout(
        total=policy.timeout * TOTAL_TIMEOUT_FACTOR, sock_connect=policy.timeout
    )
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
            body = await _read_body(resp.content)
            retry_after = resp.headers.get("Retry-After")
            reason = resp.reason or ""
    except _REQUEST_ERRORS as err:
        # Only a refused connection surely sent nothing.
        sent = not isinstance(err, aiohttp.ClientConnectorError)
        return _Retry(_redact(_describe(err, policy), secrets)[:MESSAGE_LIMIT], None, uncertain=sent)
    if 200 <= status < 300:
        return Accepted(status, body)
    text = body.decode("utf-8", errors="replace").strip() or reason
    message = _redact(text, secrets)[:MESSAGE_LIMIT]
    if status != 429 and status < 500:
        code, detail = cloud_answer.error_fields(body)
        return Rejected(
            status,
            message,
            code=None if code is None else _redact(code, secrets)[:MESSAGE_LIMIT],
            detail=None if detail is None else _redact(detail, secrets)[:MESSAGE_LIMIT],
            retry_after=http.retry_after_s(retry_after),
        )
    wait = http.retry_after_s(retry_after) if status == 429 else None
    return _Retry(f"HTTP {status}: {message}", status, wait)


async def _read_body(content: aiohttp.StreamReader) -> bytes:
    """The answer up to _READ_LIMIT bytes. One read(n) returns only what has
    arrived so far, so a body split across packets needs the loop; a body cut
    short of its Content-Length raises ClientPayloadError here."""
    body = bytearray()
    while len(body) < _READ_LIMIT:
        chunk = await content.read(_READ_LIMIT - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


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
    if isinstance(err, aiohttp.ClientResponseError | HttpProcessingError):
        # An answer aiohttp could not parse. Its `status` (400) is aiohttp's
        # verdict, not the server's; the message quotes what the server sent.
        detail = f"malformed answer: {err.message}"
    else:
        detail = str(err)
    # The parser's messages span lines (the bad bytes, then a caret under them).
    detail = " ".join(detail.split())
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__



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
    policy: PolicySource,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """The scoped token for `agent_code` in `room_name` on `livekit_url`.

    `livekit_url` must be the URL the session request names: bitHuman refuses a
    token minted for another. Retries as `send` does, under `policy` (the
    session's `spec.connection`, as for the session request). An empty input
    raises MissingInputError; everything else that gets no token, MintError.
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
