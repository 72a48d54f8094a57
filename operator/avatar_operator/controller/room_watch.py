"""Both modes, from the start to the end: the avatar in the room, and maxDuration.

`Ready` comes from what LiveKit lists, not from a pod's phase. The deadline
is read from the live spec on every turn, so an edit of maxDuration counts
within a poll interval, and the operator (not the runner) enforces it.
With LiveKit's webhooks on (`webhooks`), a webhook about the avatar makes the
worker ask LiveKit at once, and its own polls while waiting slow to the
fallback interval.
"""

from __future__ import annotations

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.clients import livekit
from avatar_operator.controller import context, credentials, decisions, local_mode, pool_mode, ports, teardown

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change
Verdict = decisions.Verdict


async def watch(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """Follows the room (and the runner) until the session ends: Ready, left, maxDuration."""
    identity, _ = context.identity(spec)
    room = ctx.clients.rooms.get(lk.url, lk.api_key, lk.api_secret)
    clock = ctx.clients.clock
    warm = spec.pool_ref is not None
    ctx.clients.mailboxes.watch_room(ctx.ref.uid, spec.room, identity)
    presence = first_presence(ctx, ctx.is_true(Cond.READY), warm)
    next_poll = clock.monotonic() + first_wait(ctx, presence, warm)
    while True:
        # The deadline first: a runner pod gone because the last operator
        # stopped it at maxDuration (and died before it wrote so) is not a failure.
        left = await check_deadline(ctx, spec, room, identity)
        if spec.pool_ref is not None:
            restarts = ctx.status.restarts
            await pool_mode.follow(ctx, spec, lk)
            if ctx.status.restarts != restarts:  # placed again: the avatar comes back
                presence = first_presence(ctx, False, warm)
                next_poll = clock.monotonic()
        elif spec.mode == spec_mod.Mode.LOCAL:
            await local_mode.follow_pod(ctx, identity)
        # A runner event wakes the worker early; LiveKit is asked on its own schedule, or at once after a webhook.
        woken = ctx.mailbox.take_room_changed()
        if woken and not ctx.is_true(Cond.READY):
            presence = quickened(presence, warm)
        if woken or clock.monotonic() >= next_poll:
            presence = await poll_room(ctx, spec, room, identity, presence, keys=lk.source())
            next_poll = clock.monotonic() + presence.interval
        ctx.end_if_stopped()
        await ctx.flush()
        timeout = next_poll - clock.monotonic()
        await clock.wait(ctx.mailbox, timeout if left is None else min(timeout, left))
        ctx.end_if_stopped()


def first_presence(ctx: context.SessionContext, was_present: bool, warm: bool) -> decisions.Presence:
    """The poll schedule: quick while waiting, or, while a webhook receiver listens, the slow fallback."""
    if not ctx.clients.mailboxes.webhooks_live:
        return decisions.first_presence(was_present, warm)
    webhook = ctx.settings.webhook
    return decisions.fallback_presence(was_present, webhook.fallback_poll_s, webhook.fallback_max_s)


def first_wait(ctx: context.SessionContext, presence: decisions.Presence, warm: bool) -> float:
    """Seconds to the first poll. At once, but for an avatar just asked for while webhooks come:
    it cannot be in the room yet, and its joining is a webhook (a burst of sessions then asks
    LiveKit nothing while it is created). A warm pool's avatar may have joined already."""
    if ctx.clients.mailboxes.webhooks_live and not warm and not presence.was_present:
        return presence.interval
    return 0.0


def quickened(presence: decisions.Presence, warm: bool) -> decisions.Presence:
    """After a webhook about the avatar, the quick schedule again until it is seen: its video may
    come a moment after the event (a second track, a track unmuted), and no webhook says so."""
    quick = decisions.first_presence(presence.was_present, warm)
    return decisions.Presence(presence.was_present, presence.absent_since, quick.interval, quick.growth, presence.cap)


async def poll_room(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    room: ports.RoomApi,
    identity: str,
    presence: decisions.Presence,
    *,
    keys: str = "its LiveKit Secret",
) -> decisions.Presence:
    """Asks LiveKit about the room once and records what it says."""
    try:
        seen = await room.observe(spec.room, identity, ctx.ref.uid)
    except Exception as e:  # noqa: BLE001 - LiveKit down must not fail the session
        if livekit.is_credentials_refused(e):
            reason, message = Reason.LIVEKIT_CREDENTIALS_REFUSED, f"LiveKit refused the API key and secret from {keys}: {e}"
        else:
            reason, message = Reason.LIVEKIT_UNREACHABLE, f"cannot ask LiveKit about room {spec.room!r}: {e}"
        await ctx.record(changes=(Change(Cond.READY, False, reason, message),), flush=False)
        return presence
    verdict, presence = decisions.observe(presence, seen, ctx.clients.clock.monotonic(), ctx.settings.timing.absence_grace_s)
    if verdict is Verdict.PUBLISHING and not ctx.is_true(Cond.READY):
        await ctx.record(
            phase=Phase.RUNNING,
            changes=(Change(Cond.READY, True, Reason.AVATAR_PUBLISHING, f"avatar {identity!r} is in room {spec.room!r} publishing video"),),
            # Once: after a LiveKit outage Ready comes back without news for a person.
            event=None if ctx.status.ready_time else (Reason.AVATAR_PUBLISHING, f"avatar {identity!r} is publishing video in room {spec.room!r}"),
            ready_time=ctx.status.ready_time or ctx.now(),
        )
    elif verdict is Verdict.LEFT:
        await ctx.succeed(Reason.AVATAR_LEFT, f"avatar {identity!r} left room {spec.room!r}")
    elif verdict is Verdict.WAITING and not ctx.is_true(Cond.READY):
        await ctx.record(changes=(ctx.waiting(identity, seen.avatar_present),), flush=False)
    return presence


async def check_deadline(
    ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, room: ports.RoomApi, identity: str
) -> float | None:
    """Seconds left before maxDuration (None: no limit); at the deadline, stops the avatar and ends the session."""
    left = ctx.seconds_left()
    if left is None or left > 0:
        return left
    await teardown.stop_session(
        ctx.clients, ctx.ref, spec, room, identity, ctx.settings.timing.cleanup_timeout_s, placed=ctx.status.runner
    )
    await ctx.succeed(Reason.MAX_DURATION_REACHED, f"maxDuration of {ctx.live_spec().max_duration}s reached; avatar stopped")
