"""Stopping a session's avatar: on deletion and at maxDuration."""

from __future__ import annotations

import asyncio
import logging

import kopf

from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.clients import kube
from avatar_operator.clients import livekit as room


async def stop_session(
    ref: names.SessionRef,
    spec: spec_mod.AvatarSessionSpec,
    client: room.Client | None,
    identity: str,
    settings: settings_mod.Settings,
    logger: logging.Logger | kopf.Logger,
) -> str | None:
    """Stops the runner or removes the cloud avatar; returns a warning when LiveKit could not be told."""
    if spec.mode == spec_mod.Mode.LOCAL:
        if settings.launcher == settings_mod.Launcher.PROCESS:
            from avatar_operator.launchers import process as process_launcher

            process_launcher.stop(ref)
        await kube.delete("Pod", ref.namespace, names.child_name(ref.name, "runner"))
        await kube.delete("Secret", ref.namespace, names.child_name(ref.name, "token"))
    if client is None:
        return "no LiveKit credentials to remove the avatar participant with"
    try:
        await asyncio.wait_for(client.remove(spec.room, identity), settings.cleanup_timeout_s)
    except Exception as e:  # noqa: BLE001 - deletion must let go even when LiveKit is down
        return f"could not remove avatar {identity!r} from room {spec.room!r}: {e or type(e).__name__}"
    return None
