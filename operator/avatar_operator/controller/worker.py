"""One session's lifecycle, from applied to ended: the order of the steps.

A worker (one kopf daemon per AvatarSession) runs the steps on the session's
context, the single writer of its status. Everything it decides is recorded
in status before it acts on the world, so a restarted operator resumes where
the last one stopped: owned objects have fixed names and are created only
when absent, and the cloud request carries an idempotency key a restarted
operator sends again (the session's uid, or one recorded before it is sent). The steps of each mode live beside it: `local_mode`,
`cloud_mode`, then `room_watch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from avatar_operator import metrics
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.api import validation
from avatar_operator.controller import claims, cloud_end, cloud_mode, context, credentials, local_mode, pool_mode, room_watch

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

# A missing Secret is asked for again after this long, doubling up to the cap:
# a forgotten session costs little.
CREDENTIALS_FIRST_WAIT_S = 1.0
CREDENTIALS_MAX_WAIT_S = 30.0
# kopf restarts a worker that raised; a bug that raises every time would
# repeat whatever came before it (a token mint, a request) every few seconds.
MAX_WORKER_ERRORS = 3
# How often a session waiting for another's avatar identity looks again (kopf's index: no API call).
IDENTITY_RECHECK_S = 2.0


async def run(ctx: context.SessionContext) -> None:
    if ctx.status.phase in context.TERMINAL:
        await cloud_end.after_end(ctx)  # one the last operator could not end (it died, or bitHuman was down)
        return
    try:
        if (ctx.status.worker_errors or 0) >= MAX_WORKER_ERRORS:
            message = f"the operator failed {ctx.status.worker_errors} times on this session; see its log"
            await ctx.fail(Reason.OPERATOR_ERROR, message, Cond.ACCEPTED)
        spec = await accept(ctx)
        await await_avatar_identity(ctx, spec)
        lk, bh = await await_credentials(ctx, spec)
        if not ctx.status.runner_pod and ctx.status.cloud_request is None and ctx.status.runner is None:
            await ctx.end_if_past_deadline("before the avatar was started")
        if spec.pool_ref is not None:
            await pool_mode.start(ctx, spec, lk)
        elif spec.mode == spec_mod.Mode.LOCAL:
            await local_mode.start(ctx, spec, lk, bh)
        else:
            await cloud_mode.start(ctx, spec, lk, bh)
        await room_watch.watch(ctx, spec, lk)
    except context.AnotherOperator:
        await ctx.clients.launcher.release(ctx.ref)
    except context.Ended:
        await pool_mode.let_go(ctx)
        await cloud_end.after_end(ctx)
    except Exception as e:
        # kopf retries the daemon after an error; what was decided before it
        # is still true, so it is written rather than lost, with the count.
        metrics.retried("worker_error")
        with contextlib.suppress(Exception):
            await ctx.record(
                worker_errors=(ctx.status.worker_errors or 0) + 1,
                event=(Reason.OPERATOR_ERROR, f"the operator's worker failed ({type(e).__name__}); it is retried"),
                warning=True,
            )
        raise
    finally:
        ctx.clients.mailboxes.forget(ctx.ref.uid)
        ctx.cloud_queue.release(ctx.ref.uid)


async def accept(ctx: context.SessionContext) -> spec_mod.AvatarSessionSpec:
    """Validates the spec (the CRD's rules again: a cluster may run without CEL)."""
    problems = validation.validate(ctx.body)
    if problems:
        message = "; ".join(f"{p.field}: {p.message}" for p in problems)
        await ctx.record(
            phase=Phase.FAILED,
            changes=(Change(Cond.ACCEPTED, False, Reason.INVALID_SPEC, message), Change(Cond.READY, False, Reason.INVALID_SPEC, message)),
            event=(Reason.INVALID_SPEC, message),
            warning=True,
            end_time=ctx.now(),
        )
        raise context.Ended
    spec = ctx.live_spec()  # the one the later steps read too: one parse, one model held per session
    # No Event: the next step's (RequestAccepted, PodCreated, SlotClaimed, or what it waits for) says
    # the session was taken up, and each Event costs the API server a write.
    await ctx.record(
        phase=ctx.status.phase or Phase.PENDING,
        changes=(Change(Cond.ACCEPTED, True, Reason.VALID, f"{spec.mode.value} mode session accepted"),),
        mode=spec.mode,
        avatar_identity=context.identity(spec)[0],
        start_time=ctx.status.start_time or ctx.now(),
        flush=False,
    )
    return spec


async def await_avatar_identity(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec) -> None:
    """Waits while an older session puts the same avatar identity in the same room (see `claims`)."""
    if ctx.status.runner_pod or ctx.status.cloud_request is not None or ctx.status.runner is not None:
        return  # started already: it holds the identity
    key = claims.key(spec, ctx.settings.livekit.url)
    # The step that waits says so, as a pool's PoolExhausted will: the spec itself is accepted.
    step = Cond.RUNNER_SCHEDULED if spec.mode == spec_mod.Mode.LOCAL else Cond.CLOUD_REQUEST_ACCEPTED
    waited = False
    while (other := claims.holder(ctx.claims.claims(key), ctx.ref.uid)) is not None:
        if not waited:
            message = claims.in_use_message(other, key[2], spec.room)
            change = Change(step, False, Reason.AVATAR_IDENTITY_IN_USE, message)
            await ctx.record(phase=Phase.PENDING, changes=(change,), event=(Reason.AVATAR_IDENTITY_IN_USE, message), warning=True)
            waited = True
        if await ctx.clients.clock.wait(ctx.stopped, IDENTITY_RECHECK_S):
            raise context.Ended
        await ctx.end_if_past_deadline("while another session held its avatar identity")


def secret_names(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec) -> set[str]:
    """The Secrets a session's credentials may come from: its own, and the operator's defaults."""
    named = (
        spec.livekit.secret_ref.name if spec.livekit and spec.livekit.secret_ref else None,
        spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None,
        ctx.settings.livekit.secret_name,
        ctx.settings.bithuman.secret_name,
    )
    return {n for n in named if n}


async def await_credentials(
    ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec
) -> tuple[credentials.LiveKitCredentials, credentials.BithumanCredentials]:
    """Resolves credentials; while any is missing, says which in status and polls.

    Polling (get, never list/watch) keeps the RBAC to `get secrets`."""
    delay = CREDENTIALS_FIRST_WAIT_S
    last: tuple[Reason, str] | None = None
    while True:
        found: dict[str, Mapping[str, str] | None] = {
            n: await ctx.clients.kube.read_secret(ctx.ref.namespace, n) for n in secret_names(ctx, spec)
        }
        try:
            lk = credentials.livekit(spec, ctx.settings, found.get)
            bh = credentials.bithuman(spec, ctx.settings, found.get)
        except credentials.MissingCredentials as e:
            if last is None:
                metrics.credential_wait(e.reason)
            if (e.reason, e.message) != last:
                last = (e.reason, e.message)
                await ctx.record(
                    phase=Phase.PENDING,
                    changes=(Change(Cond.CREDENTIALS_READY, False, e.reason, e.message),),
                    event=(e.reason, e.message),
                    warning=True,
                )
            left = ctx.seconds_left()
            if await ctx.clients.clock.wait(ctx.stopped, delay if left is None else max(0.0, min(delay, left))):
                raise context.Ended from None
            await ctx.end_if_past_deadline("while waiting for credentials")
            delay = min(delay * 2, CREDENTIALS_MAX_WAIT_S)
            continue
        await _credentials_found(ctx)
        return lk, bh


async def _credentials_found(ctx: context.SessionContext) -> None:
    if ctx.is_true(Cond.CREDENTIALS_READY):
        return
    # An Event only when it ends a wait that earlier Events reported.
    was_missing = ctx.condition(Cond.CREDENTIALS_READY) is not None
    await ctx.record(
        changes=(Change(Cond.CREDENTIALS_READY, True, Reason.CREDENTIALS_FOUND, "LiveKit and bitHuman credentials found"),),
        event=(Reason.CREDENTIALS_FOUND, "credentials found") if was_missing else None,
        flush=False,
    )

