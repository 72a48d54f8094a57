"""An avatar that may come after its session has given up on it.

A cloud request whose outcome the operator can't know (an attempt timed out
or its answer broke, or the session was deleted while one was in flight) may
still have started an avatar at bitHuman, which then joins the room with the
token it was given. The operator watches the room for a while and removes
that avatar when it comes; the avatar's session attribute tells it from
another session's.
"""

from __future__ import annotations

from avatar_operator.controller import ports

POLL_S = 1.0
# A participant removed while it is still connecting reconnects with the same
# token (the SDK takes it for a dropped link): the avatar is removed once it has
# been seen on two looks or publishes, and the room is watched a while longer.
SETTLE_S = 5.0


async def remove_when_it_comes(
    room: ports.RoomApi, clock: ports.Clock, stop: ports.Flag, *, room_name: str, identity: str, uid: str, for_s: float
) -> bool:
    """Watches `room_name` for this session's avatar for `for_s` seconds; True once it came and was removed
    (and stayed out for SETTLE_S)."""
    end = clock.monotonic() + for_s
    removed, seen_before = False, False
    while clock.monotonic() < end:
        try:
            seen = await room.observe(room_name, identity, uid)
            settled = seen.avatar_present and (seen_before or seen.avatar_publishing_video)
            if settled and await room.remove(room_name, identity, uid) and not removed:
                removed, end = True, min(end, clock.monotonic() + SETTLE_S)
            seen_before = seen.avatar_present
        except Exception:  # noqa: BLE001 - LiveKit down: look again until the time is up
            pass
        if await clock.wait(stop, min(POLL_S, max(0.0, end - clock.monotonic()))):
            return removed
    return removed
