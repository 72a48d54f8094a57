"""`clients.kube.Kube.request`: a 429 whose Retry-After is an HTTP-date is waited
for until that date, then the request is sent again (a real local server)."""

from __future__ import annotations

import email.utils
import math
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from avatar_operator.clients import kube_login
from avatar_operator.clients.kube import RETRY_AFTER_CAP_S, Kube


class Busy:
    """Answers the first request 429 with `Retry-After: <HTTP-date>`, the next ones 200."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []  # time.time() of each request
        self.retry_at = 0.0  # the date the 429 named, as a timestamp

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.time())
        if len(self.arrivals) == 1:
            # A whole second (an HTTP-date has no finer one) at least 1 s ahead.
            self.retry_at = float(math.ceil(time.time() + 1.0))
            date = email.utils.formatdate(self.retry_at, usegmt=True)
            return web.json_response({"kind": "Status", "code": 429}, status=429, headers={"Retry-After": date})
        return web.json_response({"kind": "Secret", "metadata": {"name": request.match_info["name"]}})


@pytest.fixture
async def busy() -> AsyncIterator[tuple[Busy, str]]:
    server = Busy()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_a_429_with_an_http_date_is_waited_for_then_retried(busy: tuple[Busy, str]) -> None:
    server, host = busy
    client = Kube(kube_login.Login(host=host), tls=False)
    try:
        started = time.monotonic()
        status, obj = await client.request("GET", "/api/v1/namespaces/ns/secrets/s")
        took = time.monotonic() - started
    finally:
        await client.close()
    assert (status, obj["metadata"]["name"]) == (200, "s")
    assert len(server.arrivals) == 2
    # Not sent again before the date the server named (to the clock's grain)...
    assert server.arrivals[1] >= server.retry_at - 0.05, (server.arrivals, server.retry_at)
    # ...which was at least a second away, and below the cap on any one wait.
    assert 0.95 <= took < RETRY_AFTER_CAP_S
