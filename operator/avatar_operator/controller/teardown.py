"""Stopping a session's avatar: on deletion and at maxDuration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from avatar_operator.api import conditions, names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.controller import flights, late_avatar, pool_mode, ports

Cond = status_mod.ConditionType
Reason = status_mod.Reason


async def stop_session(
    clients: ports.Clients,
    ref: names.SessionRef,
    spec: spec_mod.AvatarSessionSpec,
    room: ports.RoomApi | None,
    identity: str,
    timeout_s: float,
    *,
    placed: status_mod.RunnerPlacement | None = None,
) -> str | None:
    """Stops the runner (or the pool task) or removes the cloud avatar; returns a warning when LiveKit could not be told."""
    if spec.pool_ref is not None:
        await pool_mode.stop(clients, ref, placed)
    elif spec.mode == spec_mod.Mode.LOCAL:
        await stop_runner(clients, ref)
    if room is None:
        return "no LiveKit credentials to remove the avatar participant with"
    try:
        await asyncio.wait_for(room.remove(spec.room, identity, ref.uid), timeout_s)
    except Exception as e:  # noqa: BLE001 - deletion must let go even when LiveKit is down
        return f"could not remove avatar {identity!r} from room {spec.room!r}: {e or type(e).__name__}"
    return None


async def stop_runner(clients: ports.Clients, ref: names.SessionRef) -> None:
    """The runner and its token Secret (the garbage collector would take them too, later)."""
    await clients.launcher.stop(ref)
    await clients.kube.delete("Secret", ref.namespace, names.token_secret_name(ref.name))


def watch_if_an_avatar_may_come(
    clients: ports.Clients,
    ref: names.SessionRef,
    room: ports.RoomApi,
    spec: spec_mod.AvatarSessionSpec,
    identity: str,
    raw_status: Mapping[str, Any] | None,
    *,
    for_s: float,
    warn: Callable[[str], None],
) -> None:
    """After a cloud session's deletion: watches for its avatar when one may still come."""
    try:
        status = status_mod.from_wire(raw_status)
    except pydantic.ValidationError:  # a status this operator did not write: nothing to go by
        status = status_mod.AvatarSessionStatus()
    if may_have_an_avatar_coming(clients.flights, ref.uid, status):
        watch_for_late_avatar(clients, ref, room, room_name=spec.room, identity=identity, for_s=for_s, warn=warn)


def may_have_an_avatar_coming(known: flights.Flights, uid: str, status: status_mod.AvatarSessionStatus) -> bool:
    """A deleted cloud session whose request is in flight, or accepted (or unknowable) with no avatar seen yet."""
    flight = known.get(uid)
    if flight is not None and not flight.done.is_set():
        return True  # in flight
    refused = conditions.find(status, Cond.CLOUD_REQUEST_ACCEPTED)
    if status.cloud_request is None:
        if flight is not None:  # sent from here, its record never written (the worker was cancelled)
            return flight.may_have_started
        return not known.took_up(uid) and _may_have_sent_unrecorded(status)
    return status.ready_time is None and not (refused is not None and refused.reason == Reason.REQUEST_REJECTED)


def _may_have_sent_unrecorded(status: status_mod.AvatarSessionStatus) -> bool:
    """A first request is recorded by the write after its answer: an operator that died with it in
    flight left a status that says nothing of it. Anything written about the request's step, an
    end, or credentials still missing rules that out."""
    credentials_missing = conditions.find(status, Cond.CREDENTIALS_READY)
    return (
        status.phase not in (status_mod.Phase.SUCCEEDED, status_mod.Phase.FAILED)
        and conditions.find(status, Cond.CLOUD_REQUEST_ACCEPTED) is None
        and not (credentials_missing is not None and credentials_missing.status == status_mod.ConditionStatus.FALSE)
    )


def watch_for_late_avatar(
    clients: ports.Clients,
    ref: names.SessionRef,
    room: ports.RoomApi,
    *,
    room_name: str,
    identity: str,
    for_s: float,
    warn: Callable[[str], None],
) -> None:
    """In the background (deletion does not wait): the avatar bitHuman may still send is removed when it comes.

    Held in memory only: an operator restart in that window forgets it (the
    avatar's token expires at maxDuration plus the token margin)."""

    async def watch() -> None:
        flight = clients.flights.get(ref.uid)
        if flight is not None:
            await asyncio.wait_for(flight.done.wait(), for_s)
            if not flight.may_have_started:
                return
        if await late_avatar.remove_when_it_comes(
            room, clients.clock, ports.NEVER, room_name=room_name, identity=identity, uid=ref.uid, for_s=for_s
        ):
            warn(f"an avatar bitHuman started for the deleted session joined room {room_name!r}; removed it")

    task = asyncio.get_running_loop().create_task(watch())
    clients.background.add(task)
    task.add_done_callback(clients.background.discard)

