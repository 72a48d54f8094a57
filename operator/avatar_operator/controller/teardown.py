"""Stopping a session's avatar: on deletion and at maxDuration."""

from __future__ import annotations

import asyncio

from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.controller import ports


async def stop_session(
    clients: ports.Clients,
    ref: names.SessionRef,
    spec: spec_mod.AvatarSessionSpec,
    room: ports.RoomApi | None,
    identity: str,
    timeout_s: float,
) -> str | None:
    """Stops the runner or removes the cloud avatar; returns a warning when LiveKit could not be told."""
    if spec.mode == spec_mod.Mode.LOCAL:
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
