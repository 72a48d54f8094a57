"""Both modes, from the start to the end: the avatar in the room, and maxDuration.

`Ready` comes from what LiveKit lists, not from a pod's phase. Functions of a
session's worker (`session.Worker`), which stays the one writer of status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import TYPE_CHECKING

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.clients import livekit as room
from avatar_operator.controller import credentials, local_mode, teardown

if TYPE_CHECKING:
    from avatar_operator.controller import worker as session

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason


@dataclasses.dataclass
class Presence:
    """What the worker knows of the avatar in the room between two polls."""

    was_present: bool = False
    absent_since: float | None = None  # loop time the avatar was first missed
    interval: float = 0.5  # seconds to the next poll


async def watch(w: session.Worker, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """Follows the room (and the runner pod) until the session ends: Ready, left, maxDuration."""
    identity, _ = w.identity(spec)
    client = room.Client(lk.url, lk.api_key, lk.api_secret, w.http)
    presence = Presence(was_present=w.is_true(Cond.READY))
    loop = asyncio.get_running_loop()
    next_poll = loop.time()
    while True:
        if spec.mode == spec_mod.Mode.LOCAL:
            await local_mode.follow_pod(w, identity)
        await check_deadline(w, spec, client, identity)
        # A pod event wakes the worker early; LiveKit is asked on its own schedule.
        if loop.time() >= next_poll:
            await poll_room(w, spec, client, identity, presence)
            next_poll = loop.time() + presence.interval
            if not presence.was_present:
                presence.interval = min(presence.interval * 1.5, 5.0)
        w.end_if_stopped()
        await w.flush()
        await w.mailbox.wait(max(0.0, next_poll - loop.time()))
        w.end_if_stopped()


async def poll_room(w: session.Worker, spec: spec_mod.AvatarSessionSpec, client: room.Client, identity: str, presence: Presence) -> None:
    """Asks LiveKit about the room once and records what it says."""
    loop = asyncio.get_running_loop()
    try:
        seen = await client.observe(spec.room, identity, spec.agent_identity)
    except Exception as e:  # noqa: BLE001 - LiveKit down must not fail the session
        await w.record(conditions=((Cond.READY, False, Reason.LIVEKIT_UNREACHABLE, f"cannot ask LiveKit about room {spec.room!r}: {e}"),), flush=False)
        return
    if seen.avatar_publishing_video:
        if not w.is_true(Cond.READY):
            await w.record(
                phase=Phase.RUNNING,
                conditions=((Cond.READY, True, Reason.AVATAR_PUBLISHING, f"avatar {identity!r} is in room {spec.room!r} publishing video"),),
                event=(Reason.AVATAR_PUBLISHING.value, f"avatar {identity!r} is publishing video in room {spec.room!r}"),
                readyTime=status_mod.timestamp(status_mod.now()),
            )
        presence.was_present = True
        presence.absent_since = None
        presence.interval = 5.0
    elif presence.was_present and not seen.avatar_present:
        # A LiveKit restart or a reconnect looks like a departure for
        # a moment: the avatar must stay away for the grace period.
        if presence.absent_since is None:
            presence.absent_since = loop.time()
        if loop.time() - presence.absent_since >= w.settings.absence_grace_s:
            await w.succeed(Reason.AVATAR_LEFT, f"avatar {identity!r} left room {spec.room!r}")
        presence.interval = 1.0
    elif not w.is_true(Cond.READY):
        await w.record(conditions=(w.waiting(identity, seen.avatar_present),), flush=False)


async def check_deadline(w: session.Worker, spec: spec_mod.AvatarSessionSpec, client: room.Client, identity: str) -> None:
    """Stops the avatar and ends the session once maxDuration has passed since startTime."""
    live = w.live_spec()
    if not live.max_duration or not w.status.get("startTime"):
        return
    started = datetime.datetime.strptime(w.status["startTime"], status_mod.TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    if status_mod.now() < started + datetime.timedelta(seconds=live.max_duration):
        return
    await teardown.stop_session(w.ref, spec, client, identity, w.settings, w.logger)
    await w.succeed(Reason.MAX_DURATION_REACHED, f"maxDuration of {live.max_duration}s reached; avatar stopped")

