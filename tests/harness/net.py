"""Ports on 127.0.0.1 and the runner's HTTP endpoints (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from avatar_runner.launcher import RunnerLauncher


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(url: str, http: aiohttp.ClientSession | None = None) -> tuple[int, str]:
    """(status, body) of a GET, on `http` or on a session of its own."""
    if http is None:
        async with aiohttp.ClientSession() as own:
            return await http_get(url, own)
    async with http.get(url) as response:
        return response.status, await response.text()


async def wait_healthy(
    url: str, launcher: RunnerLauncher, key: str, timeout: float, http: aiohttp.ClientSession | None = None
) -> None:
    """Until `url` answers 200; RuntimeError as soon as the runner `key` has exited, or after `timeout`."""
    if http is None:
        async with aiohttp.ClientSession() as own:
            return await wait_healthy(url, launcher, key, timeout, own)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not launcher.is_running(key):
            raise RuntimeError(f"runner {key} exited: {launcher.status(key)}")
        try:
            if (await http_get(url, http))[0] == 200:
                return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def metric(page: str, name: str, default: float | None = None) -> float:
    """A sample's value on a Prometheus text page; `default` when absent (None: AssertionError)."""
    for line in page.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    if default is None:
        raise AssertionError(f"{name} not in /metrics")
    return default
