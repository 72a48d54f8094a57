"""An avatar that may come after its session has given up on it.

A cloud request whose outcome the operator can't know (an attempt timed out
or its answer broke, or the session was deleted while one was in flight) may
still have started an avatar at bitHuman, which then joins the room with the
token it was given. The operator watches the room for a while and removes
that avatar when it comes; the avatar's session attribute tells it from
another session's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from avatar_operator.controller import ports

POLL_S = 1.0


async def remove_when_it_comes(
    room: ports.RoomApi,
    clock: ports.Clock,
    stop: ports.Flag,
    *,
    room_name: str,
    identity: str,
    uid: str,
    for_s: float,
    on_removed: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Watches `room_name` for this session's avatar for `for_s` seconds, removing it each time it is there;
    True when it came and was removed.

    The watch goes on after a removal: a client removed while it was still
    connecting retries its join with the same token, and comes back.
    `on_removed` runs at the first removal, so what says so need not wait for the window's end."""
    end = clock.monotonic() + for_s
    removed = False
    while clock.monotonic() < end:
        try:
            seen = await room.observe(room_name, identity, uid)
            if seen.avatar_present and await room.remove(room_name, identity, uid):
                first, removed = not removed, True
                if first and on_removed is not None:
                    await on_removed()
        except Exception:  # noqa: BLE001, S110 - LiveKit down: look again until the time is up
            pass
        if await clock.wait(stop, min(POLL_S, max(0.0, end - clock.monotonic()))):
            return removed
    return removed
