"""What the controller needs from the world, as small protocols.

The worker reaches the API server, LiveKit, the launcher, the clock and the
Event stream only through these, held in one `Clients` value (built once in
kopf's memo). Production passes `clients.kube.Kube`, `clients.livekit.Rooms`,
a launcher and `RealClock`; the worker's unit tests pass in-memory fakes and
a clock that jumps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import aiohttp

from avatar_operator.clients import livekit
from avatar_operator.controller import flights, mailbox
from avatar_operator.controller import pools as pools_mod
from avatar_operator.launchers import base as launcher_base


class KubeApi(Protocol):
    """The Kubernetes calls a session makes (clients.kube.Kube)."""

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None: ...
    async def read_config_map_key(self, namespace: str, name: str, key: str) -> bytes | None: ...
    async def create(self, obj: Mapping[str, Any]) -> bool: ...
    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def delete(self, kind: str, namespace: str, name: str) -> None: ...
    async def delete_session_by_uid(self, namespace: str, name: str, uid: str) -> bool: ...
    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool: ...
    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool: ...
    async def read_pool(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def close(self) -> None: ...


class RoomApi(Protocol):
    """What a session asks LiveKit (clients.livekit.Client)."""

    async def observe(self, room: str, avatar_identity: str, session_uid: str) -> livekit.RoomView: ...
    async def remove(self, room: str, identity: str, session_uid: str) -> bool: ...


class RoomApis(Protocol):
    """A RoomApi per LiveKit server and key (clients.livekit.Rooms)."""

    def get(self, url: str, api_key: str, api_secret: str) -> RoomApi: ...


class Flag(Protocol):
    """Something a worker waits on: a mailbox, or kopf's DaemonStopped."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float) -> Awaitable[object]: ...


class Clock(Protocol):
    def now(self) -> datetime.datetime: ...
    def monotonic(self) -> float: ...
    async def wait(self, flag: Flag, timeout: float) -> bool:
        """Until `flag` is set or `timeout` seconds pass; True when it was set."""
        ...


class RealClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, flag: Flag, timeout: float) -> bool:
        # A mailbox's wait clears its flag; kopf's DaemonStopped answers itself, true once set.
        return bool(await flag.wait(max(0.0, timeout)))


class Events(Protocol):
    """Posts a Kubernetes Event about the session (kopf.info / kopf.warn)."""

    def __call__(self, body: Any, *, reason: str, message: str, warning: bool) -> None: ...


def kopf_events(body: Any, *, reason: str, message: str, warning: bool) -> None:
    import kopf

    (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)


@dataclasses.dataclass(frozen=True)
class Clients:
    """Everything a worker talks to, built once per operator."""

    kube: KubeApi
    http: aiohttp.ClientSession
    rooms: RoomApis
    launcher: launcher_base.Launcher
    mailboxes: mailbox.Mailboxes
    clock: Clock = dataclasses.field(default_factory=RealClock)
    events: Events = kopf_events
    flights: flights.Flights = dataclasses.field(default_factory=flights.Flights)
    # Who this operator is, in each session's status.operator (kopf's POD_ID, else host and process).
    instance: str = dataclasses.field(default_factory=lambda: instance_id())
    # Work that outlives a handler (watching for a late avatar after deletion); cancelled at exit.
    background: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    # Warm pools: what runs their runners, and their runners and bookings in memory.
    pool_launcher: launcher_base.PoolLauncher | None = None
    pools: pools_mod.Pools = dataclasses.field(default_factory=pools_mod.Pools)


def instance_id() -> str:
    return os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}"


class _Never:
    """A flag never set: a plain wait."""

    def is_set(self) -> bool:
        return False

    async def wait(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


NEVER: Flag = _Never()
