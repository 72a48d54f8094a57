"""`clients.bithuman.send`: a policy re-read before each attempt, and answers
that are not HTTP, against real local servers (the fake API, or a raw TCP
server writing bytes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import aiohttp
import aiohttp.client_proto
import aiohttp.http_parser
import pytest
from avatar_operator.build.cloud_request import CloudRequest, build_request
from avatar_operator.clients.bithuman import (
    Accepted,
    CloudResult,
    MintError,
    Rejected,
    RetriesExhausted,
    RetryPolicy,
    mint_runtime_token,
    send,
)

from tests.fakes.bithuman_api import FakeBithumanAPI, Route

SECRET = "bh-account-secret-0123456789"
LK_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdmF0YXIifQ.c2lnbmF0dXJl"


def _request(url: str) -> CloudRequest:
    return build_request(
        api_url=url,
        api_secret=SECRET,
        api_token=None,
        livekit_url="wss://livekit.example.com",
        livekit_token=LK_TOKEN,
        room="room-1",
        model=None,
        avatar_id="A23WJF0199",
        avatar_image=None,
        avatar_image_bytes=None,
        idempotency_key="ns/name/uid-1",
        default_api=True,
    )


class Connection:
    """The session's `spec.connection`, editable while a send runs."""

    def __init__(self, **values: Any) -> None:
        self.values: dict[str, Any] = dict(max_retry=5, retry_interval=1.0, timeout=10.0)
        self.values.update(values)
        self.reads = 0

    def edit(self, **values: Any) -> None:
        self.values.update(values)

    def __call__(self) -> RetryPolicy:
        self.reads += 1
        return RetryPolicy(**self.values)


class Sleep:
    """Records each wait; `during(n)` runs in the n-th wait (1-based), as an
    edit a user makes while the operator waits to retry."""

    def __init__(self, during: dict[int, Callable[[], None]] | None = None) -> None:
        self.delays: list[float] = []
        self._during = during or {}

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        action = self._during.get(len(self.delays))
        if action is not None:
            action()


class Recording:
    """An aiohttp session that records the timeout each POST was given."""

    def __init__(self, inner: aiohttp.ClientSession) -> None:
        self.inner = inner
        self.timeouts: list[aiohttp.ClientTimeout] = []

    def post(self, url: str, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs["timeout"])
        return self.inner.post(url, **kwargs)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBithumanAPI]:
    async with FakeBithumanAPI(api_secret=SECRET) as api:
        yield api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _send(
    http: aiohttp.ClientSession | Recording,
    url: str,
    policy: RetryPolicy | Callable[[], RetryPolicy],
    sleep: Sleep,
    during_attempt: dict[int, Callable[[], None]] | None = None,
) -> tuple[CloudResult, list[int]]:
    attempts: list[int] = []

    async def on_attempt(n: int) -> None:
        attempts.append(n)
        # Runs after the pre-attempt read: an edit here lands during attempt n.
        action = (during_attempt or {}).get(n)
        if action is not None:
            action()

    result = await send(
        cast(aiohttp.ClientSession, http), _request(url), policy, sleep=sleep, on_attempt=on_attempt
    )
    return result, attempts


# -- the policy, re-read before each attempt ---------------------------------------


async def test_an_edit_during_the_wait_sets_the_next_attempts_timeout_and_wait(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 3 + [{}])
    conn = Connection(retry_interval=1.0, timeout=1.0)

    def edit_in_wait(k: int) -> Callable[[], None]:
        return lambda: conn.edit(retry_interval=k + 1.0, timeout=k + 1.0)

    sleep = Sleep(during={k: edit_in_wait(k) for k in (1, 2, 3)})
    recording = Recording(http)

    result, attempts = await _send(recording, fake.url, conn, sleep)

    assert isinstance(result.outcome, Accepted) and attempts == [1, 2, 3, 4]
    # Each attempt runs under the timeout of the edit made in the wait before it.
    assert [t.sock_connect for t in recording.timeouts] == [1.0, 2.0, 3.0, 4.0]
    assert [t.total for t in recording.timeouts] == [3.0, 6.0, 9.0, 12.0]
    # The wait after attempt n uses the interval in force when attempt n failed.
    assert sleep.delays == [1.0, 2.0, 3.0]


async def test_an_edit_during_an_attempt_sets_the_wait_after_it(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 3 + [{}])
    conn = Connection(retry_interval=1.0)
    sleep = Sleep()

    result, _ = await _send(
        http, fake.url, conn, sleep, during_attempt={2: lambda: conn.edit(retry_interval=7.0)}
    )

    assert isinstance(result.outcome, Accepted)
    assert sleep.delays == [1.0, 7.0, 7.0]


async def test_a_429_retry_after_still_wins_over_a_shorter_edited_interval(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 429, "headers": {"Retry-After": "5"}}, {}])
    conn = Connection(retry_interval=1.0)
    sleep = Sleep()

    result, _ = await _send(
        http, fake.url, conn, sleep, during_attempt={1: lambda: conn.edit(retry_interval=3.0)}
    )

    assert isinstance(result.outcome, Accepted)
    assert sleep.delays == [5.0]


async def test_lowering_max_retry_during_an_attempt_stops_after_it(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 5)
    conn = Connection(max_retry=5)
    sleep = Sleep()

    result, attempts = await _send(
        http, fake.url, conn, sleep, during_attempt={2: lambda: conn.edit(max_retry=2)}
    )

    assert isinstance(result.outcome, RetriesExhausted)
    assert (result.attempts, result.status) == (2, 503)
    assert attempts == [1, 2]
    assert sleep.delays == [1.0]  # none after the attempt that used up the budget
    assert len(fake.requests) == 2


async def test_lowering_max_retry_below_the_attempts_made_stops_before_the_next(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 5)
    conn = Connection(max_retry=5)
    # Three attempts made; the edit lands in the wait after the third.
    sleep = Sleep(during={3: lambda: conn.edit(max_retry=1)})

    result, attempts = await _send(http, fake.url, conn, sleep)

    assert isinstance(result.outcome, RetriesExhausted)
    assert result.outcome.message.startswith("HTTP 503")
    assert (result.attempts, result.status) == (3, 503)
    assert attempts == [1, 2, 3]
    assert len(fake.requests) == 3


async def test_raising_max_retry_allows_more_attempts(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 3 + [{}])
    conn = Connection(max_retry=2)

    result, attempts = await _send(
        http, fake.url, conn, Sleep(), during_attempt={1: lambda: conn.edit(max_retry=4)}
    )

    assert isinstance(result.outcome, Accepted)
    assert attempts == [1, 2, 3, 4]


async def test_a_shortened_timeout_ends_a_hung_attempt_in_real_time(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    # Attempt 1 answers 503 under a 30 s timeout; the edit in the wait makes
    # attempt 2, which the server never answers, end within 3 x 0.05 s.
    fake.script([{"status": 503}, {"delay": 30}])
    conn = Connection(max_retry=2, retry_interval=0.0, timeout=30.0)
    sleep = Sleep(during={1: lambda: conn.edit(timeout=0.05)})

    result, attempts = await asyncio.wait_for(_send(http, fake.url, conn, sleep), timeout=5)

    assert isinstance(result.outcome, RetriesExhausted)
    assert "no answer in time (connect limit 0.05s, total limit 0.15s)" in result.outcome.message
    assert (result.attempts, result.status) == (2, None)


async def test_a_fixed_policy_is_still_accepted(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}, {}])
    sleep = Sleep()

    result, attempts = await _send(
        http, fake.url, RetryPolicy(max_retry=3, retry_interval=2.0, timeout=10.0), sleep
    )

    assert isinstance(result.outcome, Accepted) and attempts == [1, 2]
    assert sleep.delays == [2.0]


async def test_an_accepted_first_attempt_reads_the_policy_once(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    conn = Connection()

    result, _ = await _send(http, fake.url, conn, Sleep())

    assert isinstance(result.outcome, Accepted)
    assert conn.reads == 1


async def test_mint_takes_the_same_policy(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}] * 3, Route.MINT)
    conn = Connection(max_retry=3, retry_interval=4.0, timeout=10.0)
    sleep = Sleep(during={1: lambda: conn.edit(max_retry=1)})

    with pytest.raises(MintError, match="after 1 attempts") as err:
        await mint_runtime_token(
            http,
            mint_url=fake.mint_url,
            api_secret=SECRET,
            agent_code="A23WJF0199",
            room_name="room-1",
            livekit_url="wss://livekit.example.com",
            policy=conn,
            sleep=sleep,
        )

    assert "HTTP 503" in str(err.value)
    assert sleep.delays == [4.0]
    assert len(fake.requests) == 1


# -- answers that are not HTTP: every one an attempt, retried ----------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
MALFORMED: dict[str, Sequence[bytes]] = {
    "not_http": [b"SMTP 220 mail.example.com ready\r\n\r\n"],
    "garbage": [b"\x00\x01\x02\xff\r\n\r\n"],
    "content_length_abc": [b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}"],
    "header_over_8190": [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n\r\n{}"
    ],
    "status_line_over_8190": [b"HTTP/1.1 200 " + b"O" * 9000 + b"\r\n\r\n"],
    "status_not_a_number": [b"HTTP/1.1 abc Weird\r\nContent-Length: 0\r\n\r\n"],
    "too_many_headers": [
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        + b"Content-Length: 2\r\n\r\n{}"
    ],
    "bad_chunk_size": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"],
    # Headers first, the broken chunk in a later packet: it surfaces from the body read.
    "late_bad_chunk": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"zz\r\n{}\r\n",
    ],
    "body_cut_short": [b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"sess'],
    "bad_gzip": [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"],
    "closed_at_once": [],
}


class RawServer:
    """Answers the n-th connection with answers[n] (the last one repeats),
    written part by part, then closes it."""

    def __init__(self, answers: Sequence[Sequence[bytes]]) -> None:
        self.answers = answers
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/runtime-tokens/request"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parts = self.answers[min(self.connections, len(self.answers) - 1)]
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            for i, part in enumerate(parts):
                if i:
                    await asyncio.sleep(0.05)
                writer.write(part)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture(params=["default", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """aiohttp's C parser where it is built, and the pure-Python one it falls
    back to elsewhere; they fail differently on the same bytes."""
    if request.param == "python":
        monkeypatch.setattr(
            aiohttp.client_proto, "HttpResponseParser", aiohttp.http_parser.HttpResponseParserPy
        )
    return cast(str, request.param)


async def _against(
    answers: Sequence[Sequence[bytes]], max_retry: int
) -> tuple[CloudResult, Sleep, list[int], RawServer]:
    sleep = Sleep()
    policy = RetryPolicy(max_retry=max_retry, retry_interval=0.5, timeout=0.2)
    async with RawServer(answers) as server, aiohttp.ClientSession() as http:
        # A hang would end by the attempt's own bound (0.6 s); this bounds the test.
        result, attempts = await asyncio.wait_for(_send(http, server.url, policy, sleep), 10)
    return result, sleep, attempts, server


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_an_attempt_and_retried(
    parser: str, answer: Sequence[bytes]
) -> None:
    result, sleep, attempts, server = await _against([answer, [OK]], max_retry=3)

    assert isinstance(result.outcome, Accepted), result.outcome
    assert (result.attempts, result.status, result.outcome.body) == (2, 200, b"{}")
    assert attempts == [1, 2]
    assert sleep.delays == [0.5]
    assert server.connections == 2


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_every_time_exhausts_the_attempts(
    parser: str, answer: Sequence[bytes]
) -> None:
    result, sleep, attempts, _ = await _against([answer], max_retry=2)

    assert isinstance(result.outcome, RetriesExhausted)
    # aiohttp's 400 for an unparsable answer is not the server's status.
    assert (result.attempts, result.status) == (2, None)
    assert attempts == [1, 2]
    assert sleep.delays == [0.5]
    message = result.outcome.message
    assert message and "\n" not in message and len(message) <= 300


async def test_an_unparsable_answer_is_described_as_such() -> None:
    result, _, _, _ = await _against([MALFORMED["content_length_abc"]], max_retry=1)

    assert isinstance(result.outcome, RetriesExhausted)
    assert result.outcome.message.startswith("ClientResponseError: malformed answer:")
    assert "Content-Length" in result.outcome.message


async def test_a_malformed_answer_echoing_the_secret_is_redacted() -> None:
    echo = b"NOTHTTP api-secret=" + SECRET.encode() + b" token=" + LK_TOKEN.encode()
    result, _, _, _ = await _against([[echo + b"\r\n\r\n"]], max_retry=1)

    assert isinstance(result.outcome, RetriesExhausted)
    assert SECRET not in result.outcome.message and LK_TOKEN not in result.outcome.message


async def test_a_body_split_across_packets_is_read_whole(parser: str) -> None:
    body = b'{"scoped_token": "' + b"t" * 3000 + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    split = [head + body[:10], body[10:1500], body[1500:]]

    result, _, _, _ = await _against([split], max_retry=1)

    assert isinstance(result.outcome, Accepted)
    assert result.outcome.body == body


async def test_a_redirect_from_a_raw_server_is_still_rejected() -> None:
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n"
    result, sleep, _, server = await _against([[redirect]], max_retry=3)

    assert result.outcome == Rejected(302, "Found")
    assert (result.attempts, server.connections, sleep.delays) == (1, 1, [])


async def test_cancelling_a_send_is_not_swallowed() -> None:
    # The catch is the aiohttp family and TimeoutError, not everything.
    hang: list[asyncio.Future[None]] = []
    started = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        hang.append(future)
        with contextlib.suppress(asyncio.CancelledError):
            await future
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = RetryPolicy(max_retry=3, retry_interval=0.0, timeout=30.0)
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(send(http, _request(f"http://127.0.0.1:{port}/x"), policy))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for future in hang:
        future.cancel()
    server.close()
    await server.wait_closed()
