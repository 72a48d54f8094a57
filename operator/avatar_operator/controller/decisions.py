"""The worker's decisions about time and the room, as pure functions of what it saw and when.

Times come in as arguments (the worker's injected clock), so the grace
period and the deadline are unit-tested without waiting for either.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum

from avatar_operator.clients import livekit

# Seconds between two questions to LiveKit: quick while the avatar is coming,
# slow once it is there, quick again while it is missing.
FIRST_POLL_S = 0.5
POLL_GROWTH = 1.5
SLOW_POLL_S = 5.0
MISSING_POLL_S = 1.0
# A warm pool's avatar is there within a second of its launch: asked about often at first.
WARM_FIRST_POLL_S = 0.2
WARM_POLL_GROWTH = 1.15
# With LiveKit's webhooks a poll is only the fallback for a lost one: the wait grows by this much
# per poll, up to the settings' cap, so a thousand sessions waiting ask LiveKit rarely.
FALLBACK_GROWTH = 1.5


class Verdict(enum.Enum):
    PUBLISHING = "publishing"  # in the room with video: Ready
    WAITING = "waiting"  # not yet there, or there without video
    MISSING = "missing"  # was there, is gone, the grace period still runs
    LEFT = "left"  # gone for the whole grace period: the session is over


@dataclasses.dataclass(frozen=True)
class Presence:
    """What the worker knows of the avatar in the room between two polls."""

    was_present: bool = False
    absent_since: float | None = None  # monotonic time the avatar was first missed
    interval: float = FIRST_POLL_S  # seconds to the next poll
    growth: float = POLL_GROWTH  # the interval's growth while waiting
    cap: float = SLOW_POLL_S  # the longest interval while waiting


def observe(presence: Presence, seen: livekit.RoomView, now: float, grace_s: float) -> tuple[Verdict, Presence]:
    """What one answer from LiveKit means, and what to remember for the next.

    A LiveKit restart or a reconnect looks like a departure for a moment: a
    Ready avatar must stay away for `grace_s` before the session ends."""
    if seen.avatar_publishing_video:
        return Verdict.PUBLISHING, Presence(was_present=True, interval=SLOW_POLL_S, growth=presence.growth, cap=presence.cap)
    if presence.was_present and not seen.avatar_present:
        since = now if presence.absent_since is None else presence.absent_since
        verdict = Verdict.LEFT if now - since >= grace_s else Verdict.MISSING
        return verdict, Presence(was_present=True, absent_since=since, interval=MISSING_POLL_S, growth=presence.growth, cap=presence.cap)
    if presence.was_present:  # back, or still there without video: not a departure
        return Verdict.WAITING, dataclasses.replace(presence, absent_since=None)
    return Verdict.WAITING, dataclasses.replace(presence, interval=min(presence.interval * presence.growth, presence.cap))


def deadline(start: datetime.datetime | None, max_duration_s: float | None) -> datetime.datetime | None:
    """When maxDuration ends the session (None: no limit, or not started)."""
    if start is None or not max_duration_s:
        return None
    return start + datetime.timedelta(seconds=max_duration_s)


def deletion_due(end: datetime.datetime | None, ttl_s: int | None) -> datetime.datetime | None:
    """When spec.ttlSecondsAfterFinished deletes an ended session (None: no TTL, not ended, or a due time
    past the year 9999, which the int64 field allows and datetime cannot hold: such a session is kept)."""
    if end is None or ttl_s is None:
        return None
    try:
        return end + datetime.timedelta(seconds=max(0, ttl_s))
    except OverflowError:
        return None


def seconds_until(when: datetime.datetime | None, now: datetime.datetime) -> float | None:
    return None if when is None else (when - now).total_seconds()


def first_presence(was_present: bool, warm: bool) -> Presence:
    """The poll schedule a session starts (or, placed again, restarts) with."""
    if warm:
        return Presence(was_present=was_present, interval=WARM_FIRST_POLL_S, growth=WARM_POLL_GROWTH)
    return Presence(was_present=was_present)


def fallback_presence(was_present: bool, first_s: float, cap_s: float) -> Presence:
    """The poll schedule while a webhook receiver listens: the fallback, growing to its cap."""
    return Presence(was_present=was_present, interval=first_s, growth=FALLBACK_GROWTH, cap=max(first_s, cap_s))
