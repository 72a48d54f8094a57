"""A cloud session waiting for a concurrency slot: the operator's own line, and bitHuman's 403.

Both leave the session Pending with CloudRequestAccepted=False,
reason ConcurrencyLimited, until it fits or its maxDuration runs out; neither
uses up `connection.maxRetry`, which is for an API that does not answer.
"""

from __future__ import annotations

from avatar_operator import metrics
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.clients import bithuman
from avatar_operator.controller import cloud_queue, context, credentials

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

# How often a session in the operator's line looks again (kopf's index: no API call).
LINE_RECHECK_S = 1.0
# After bitHuman's 403 CONCURRENCY_LIMIT_REACHED without a Retry-After: the
# first wait, doubling per refusal up to the cap.
LIMITED_FIRST_WAIT_S = 2.0
LIMITED_MAX_WAIT_S = 20.0
# A Retry-After beyond this is not waited for whole: the slot may free sooner.
LIMITED_RETRY_AFTER_CAP_S = 60.0


def limited_wait_s(refusals: int, retry_after: float | None) -> float:
    """Seconds before asking again after the `refusals`-th 403 in a row (1-based): the server's word first."""
    if retry_after is not None:
        return min(retry_after, LIMITED_RETRY_AFTER_CAP_S)
    return min(LIMITED_FIRST_WAIT_S * 2.0 ** (refusals - 1), LIMITED_MAX_WAIT_S)


def next_key(uid: str, refusals: int) -> str:
    """The idempotency key after a refusal: a refused request started nothing, and a server that
    remembers its answer per key would refuse the same key again."""
    return f"{uid}-{refusals}"


async def wait_in_line(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, bh: credentials.BithumanCredentials) -> bool:
    """With a budget for the session's credential, waits until one of its slots is free, in creation order.

    True when a budget applies: the request's record is then the slot it holds, written before it is sent."""
    limit = await _budget(ctx, bh)
    if not limit:
        return False
    key = cloud_queue.credential_key(ctx.ref.namespace, spec, ctx.settings)
    meta = ctx.body.metadata
    me = cloud_queue.Slot(ctx.ref.uid, ctx.ref.namespace, ctx.ref.name, str(meta.get("creationTimestamp") or ""), cloud_queue.State.WAITING)
    said: int | None = None
    while (position := ctx.cloud_queue.try_admit(key, me, limit)) is not None:
        if position != said:
            message = (
                f"waiting for a concurrent-session slot of bitHuman credential Secret {key[1]!r} "
                f"(budget {limit}): number {position} in line, in creation order"
            )
            first = said is None
            said = position
            await ctx.record(
                phase=Phase.PENDING,
                changes=(Change(Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.CONCURRENCY_LIMITED, message),),
                event=(Reason.CONCURRENCY_LIMITED, message) if first else None,
            )
            if first:
                metrics.CLOUD_REQUESTS.labels(outcome="concurrency_limited").inc()
        # Leaving the line (deleted, timed out) is the worker's release of its place.
        if await ctx.clients.clock.wait(ctx.stopped, _capped(ctx, LINE_RECHECK_S)):
            raise context.Ended
        await ctx.end_if_past_deadline("while waiting in line for a concurrent-session slot")
    return True


async def after_limit(ctx: context.SessionContext, sent: status_mod.CloudRequest, refused: bithuman.Rejected, refusals: int) -> status_mod.CloudRequest:
    """bitHuman refused the start for its plan's concurrency limit: says so, waits, and returns the request to send next."""
    wait = limited_wait_s(refusals, refused.retry_after)
    message = (
        f"bitHuman's plan has no free concurrent-session slot (HTTP 403 CONCURRENCY_LIMIT_REACHED: "
        f"{refused.detail or refused.message}); asking again in {wait:g}s (refused {refusals} time(s) in a row)"
    )
    metrics.CLOUD_REQUESTS.labels(outcome="concurrency_limited").inc()
    await ctx.record(
        phase=Phase.PENDING,
        changes=(Change(Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.CONCURRENCY_LIMITED, message),),
        event=(Reason.CONCURRENCY_LIMITED, message) if refusals == 1 else None,
    )
    if await ctx.clients.clock.wait(ctx.stopped, _capped(ctx, wait)):
        raise context.Ended  # deleted while waiting: nothing was started
    await ctx.end_if_past_deadline("while bitHuman's plan had no free concurrent-session slot")
    # Recorded before it is sent, as the first key was.
    following = sent.model_copy(update={"idempotency_key": next_key(ctx.ref.uid, refusals)})
    await ctx.record(cloud_request=following, flush=False)
    return following


def _capped(ctx: context.SessionContext, seconds: float) -> float:
    left = ctx.seconds_left()
    return seconds if left is None else max(0.0, min(seconds, left))


async def _budget(ctx: context.SessionContext, bh: credentials.BithumanCredentials) -> int:
    try:
        return cloud_queue.budget(ctx.settings, bh.concurrency, bh.secret_name)
    except ValueError as e:
        await ctx.fail(Reason.SECRET_VALUE_INVALID, str(e), Cond.CREDENTIALS_READY)
