"""Pool mode: the session takes a slot in a warm runner of its pool (spec.poolRef).

The placement (pool and runner) is written to status before the launch is
sent, and the launch carries an idempotency key made of the session's uid
and its restarts: a restarted operator finds the same slot, and the runner
answers a repeated launch with the same task. `Ready` stays media-plane
(`room_watch`): a task joining the room is not the avatar publishing.
"""

from __future__ import annotations

import asyncio
import dataclasses

from avatar_operator import metrics
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import image as image_mod
from avatar_operator.clients import pool_runner
from avatar_operator.controller import avatar_image, context, credentials, pools, ports

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

WAIT_S = 2.0  # a waiting session looks again this often, besides being woken
ENDED = {"completed": True, "stopped": True, "failed": False}  # a task's end: succeeded?


class _Again(Exception):
    """The launch did not take: place the session again."""


def _pool_name(spec: spec_mod.AvatarSessionSpec) -> str:
    assert spec.pool_ref is not None
    return spec.pool_ref.name


async def start(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """Places the session and launches its task, unless a restart finds it placed."""
    state = await _await_pool(ctx, _pool_name(spec))
    placed = ctx.status.runner
    if placed is not None and placed.pool == state.ref.name and placed.pod in state.runners:
        ctx.clients.pools.hold(state, ctx.ref.uid, placed.pod, placed.task_id)
        if placed.task_id is not None:
            return
        try:
            await _launch(ctx, spec, lk, state, placed.pod)
            return
        except _Again:
            pass
    elif placed is not None:
        await _moved(ctx, spec, lk, f"runner {placed.pod} is gone")
    await place(ctx, spec, lk)


async def place(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """Books a slot (in creation order), records it, launches; again while the launch does not take."""
    while True:
        state = await _await_pool(ctx, _pool_name(spec))
        runner = await _book(ctx, state)
        identity = context.identity(spec)[0]
        await ctx.record(
            runner=status_mod.RunnerPlacement(pool=state.ref.name, pod=runner),
            changes=(ctx.waiting(identity),),
        )  # written before the launch: the slot is found again after a restart
        try:
            await _launch(ctx, spec, lk, state, runner)
            return
        except _Again:
            continue


async def _await_pool(ctx: context.SessionContext, name: str) -> pools.PoolState:
    """The pool's state once its worker has looked at its runners; PoolNotFound while it does not exist."""
    said = False
    while True:
        state = ctx.clients.pools.get(ctx.ref.namespace, name)
        if state is not None and state.looked:
            return state
        if state is None and not said and await ctx.clients.kube.read_pool(ctx.ref.namespace, name) is None:
            message = f"AvatarPool {name!r} does not exist in namespace {ctx.ref.namespace!r}; the session starts when it does"
            change = Change(Cond.RUNNER_SCHEDULED, False, Reason.POOL_NOT_FOUND, message)
            await ctx.record(phase=Phase.PENDING, changes=(change,), event=(Reason.POOL_NOT_FOUND, message), warning=True)
            said = True
        await _pause(ctx, "while its pool did not exist")


async def _pause(ctx: context.SessionContext, when: str) -> None:
    await ctx.clients.clock.wait(ctx.mailbox, WAIT_S)
    ctx.end_if_stopped()
    await ctx.end_if_past_deadline(when)


async def _book(ctx: context.SessionContext, state: pools.PoolState) -> str:
    """A runner with a free slot; PoolExhausted, with the pool's numbers, while there is none."""
    created = str(ctx.body.metadata.get("creationTimestamp") or "")
    registry = ctx.clients.pools
    try:
        while (runner := registry.book(state, ctx.ref.uid, created, ctx.ref.name)) is None:
            slots = state.slots()
            ready = sum(1 for r in state.runners.values() if r.ready)
            message = (
                f"pool {state.ref.name!r} has no free slot: {slots.busy} busy of {slots.total} on {ready} ready "
                f"runner(s), {len(state.line)} session(s) waiting; the session takes the next free slot"
            )
            if ctx.reason_of(Cond.RUNNER_SCHEDULED) != Reason.POOL_EXHAUSTED:
                change = Change(Cond.RUNNER_SCHEDULED, False, Reason.POOL_EXHAUSTED, message)
                await ctx.record(phase=Phase.PENDING, changes=(change,), event=(Reason.POOL_EXHAUSTED, message), warning=True)
            await _pause(ctx, "while it waited for a slot")
            state = await _await_pool(ctx, state.ref.name)
    finally:
        registry.leave_line(ctx.ref.namespace, state.ref.name, ctx.ref.uid)
    return runner


async def _launch(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    state: pools.PoolState,
    runner: str,
) -> None:
    """POST /launch on the runner; records the task. _Again when the runner could not take it."""
    view = state.runners.get(runner)
    if view is None or view.url is None:
        ctx.clients.pools.release(ctx.ref.namespace, state.ref.name, ctx.ref.uid)
        raise _Again
    token = ctx.avatar_token(spec, lk.api_key, lk.api_secret)
    form = {"livekit_url": lk.url, "livekit_token": token, "room_name": spec.room, "async_mode": "true"}
    image = await _image(ctx, spec)
    if image.url is not None:
        form["avatar_image_url"] = image.url
    key = f"{ctx.ref.uid}-{ctx.status.restarts or 0}"
    try:
        task_id = await pool_runner.RunnerClient(ctx.clients.http).launch(view.url, state.token, form, key, image.data)
    except pool_runner.LaunchRefused as e:
        await _refused(ctx, state, runner, e)
        raise _Again from None
    except pool_runner.Unreachable as e:
        ctx.logger.warning("runner %s did not answer the launch (%s); placing the session again", runner, e)
        ctx.clients.pools.release(ctx.ref.namespace, state.ref.name, ctx.ref.uid)
        await _pause(ctx, "while its runner did not answer")
        raise _Again from None
    ctx.clients.pools.hold(state, ctx.ref.uid, runner, task_id)
    slots = state.slots()
    message = f"slot on runner {runner} of pool {state.ref.name!r} (pool: {slots.busy} busy of {slots.total})"
    await ctx.record(
        phase=Phase.STARTING,
        changes=(Change(Cond.RUNNER_SCHEDULED, True, Reason.SLOT_CLAIMED, message),),
        event=(Reason.SLOT_CLAIMED, message),
        runner=status_mod.RunnerPlacement(pool=state.ref.name, pod=runner, task_id=task_id),
    )


async def _image(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec) -> image_mod.LaunchImage:
    """The picture the runner animates (spec.avatarImage or avatarImageFrom); fails the session when it can't be had."""
    data = await avatar_image.from_cluster(ctx, spec, Cond.RUNNER_SCHEDULED)
    try:
        return image_mod.launch_image(spec.avatar_image, data)
    except image_mod.InvalidImageError as e:  # the CRD's rule admits only URLs and base64: an old object
        await ctx.fail(Reason.INVALID_SPEC, str(e), Cond.RUNNER_SCHEDULED)


async def _refused(ctx: context.SessionContext, state: pools.PoolState, runner: str, e: pool_runner.LaunchRefused) -> None:
    ctx.clients.pools.release(ctx.ref.namespace, state.ref.name, ctx.ref.uid)
    if e.at_capacity:
        # Full by a task this operator did not book: counted full until the next look.
        view = state.runners.get(runner)
        if view is not None:
            state.runners[runner] = dataclasses.replace(view, active=view.capacity)
        return
    message = f"runner {runner} of pool {state.ref.name!r} refused the launch: {e}"
    if 400 <= e.status < 500 and e.status not in (401, 403, 429):
        await ctx.fail(Reason.LAUNCH_REFUSED, message, Cond.RUNNER_SCHEDULED)
    await ctx.record(changes=(Change(Cond.RUNNER_SCHEDULED, False, Reason.LAUNCH_REFUSED, message),), event=(Reason.LAUNCH_REFUSED, message), warning=True)
    await _pause(ctx, "while its runner refused launches")


async def follow(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """The runner and the task behind the session: lost runners move it, an ended task ends it."""
    placed = ctx.status.runner
    if placed is None or placed.task_id is None:
        return
    state = ctx.clients.pools.get(ctx.ref.namespace, placed.pool)
    if state is None:
        if await ctx.clients.kube.read_pool(ctx.ref.namespace, placed.pool) is None:
            await ctx.fail(Reason.RUNNER_FAILED, f"its AvatarPool {placed.pool!r} was deleted", Cond.READY)
        return
    view = state.runners.get(placed.pod)
    if state.looked and view is None:
        await _moved(ctx, spec, lk, f"runner {placed.pod} was lost")
        await place(ctx, spec, lk)
        return
    if view is None or view.url is None or not ctx.clients.pools.task_gone(state, ctx.ref.uid):
        return
    try:
        task = await pool_runner.RunnerClient(ctx.clients.http).task(view.url, state.token, placed.task_id)
    except pool_runner.Unreachable:
        return  # the pool's worker decides whether the runner is lost
    if task is None:
        await _moved(ctx, spec, lk, f"runner {placed.pod} no longer knows task {placed.task_id}")
        await place(ctx, spec, lk)
        return
    ended = ENDED.get(str(task.get("status")))
    if ended is not None:
        ctx.clients.pools.release(ctx.ref.namespace, placed.pool, ctx.ref.uid)
        why = f"the runner's task {task.get('status')}: {task.get('reason') or 'no reason given'}"
        if ended:
            await ctx.succeed(Reason.RUNNER_EXITED, why)
        await ctx.fail(Reason.RUNNER_FAILED, why, Cond.READY)


async def _moved(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials, why: str) -> None:
    """Its runner is lost: counted, said, the slot let go and the lost task's avatar taken out of the room;
    the caller places it again."""
    placed = ctx.status.runner
    if placed is not None:
        ctx.clients.pools.release(ctx.ref.namespace, placed.pool, ctx.ref.uid)
    await _remove_lost_avatar(ctx, spec, lk)
    restarts = (ctx.status.restarts or 0) + 1
    metrics.retried("placement")
    message = f"{why}; placing the session again (restart {restarts})"
    await ctx.record(
        restarts=restarts,
        changes=(Change(Cond.READY, False, Reason.RUNNER_LOST, message), Change(Cond.RUNNER_SCHEDULED, False, Reason.RUNNER_LOST, message)),
        event=(Reason.RUNNER_LOST, message),
        warning=True,
    )


async def _remove_lost_avatar(ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
    """LiveKit keeps a killed runner's participant for its reconnect window (publishing its last track):
    the moved session must not count that ghost as its new avatar publishing. Best effort: the new task
    joining under the same identity replaces it too."""
    identity = context.identity(spec)[0]
    room = ctx.clients.rooms.get(lk.url, lk.api_key, lk.api_secret)
    try:
        await asyncio.wait_for(room.remove(spec.room, identity, ctx.ref.uid), ctx.settings.timing.cleanup_timeout_s)
    except Exception as e:  # noqa: BLE001 - LiveKit down must not keep the session from its new slot
        ctx.logger.warning("could not remove the lost task's avatar %r from room %r: %s", identity, spec.room, e or type(e).__name__)


async def stop(clients: ports.Clients, ref: names.SessionRef, placed: status_mod.RunnerPlacement | None) -> None:
    """Stops the session's task and frees its slot (deletion, maxDuration, the session's end)."""
    if placed is None:
        return
    state = clients.pools.get(ref.namespace, placed.pool)
    view = state.runners.get(placed.pod) if state is not None else None
    stopped = False
    if state is not None and view is not None and view.url and placed.task_id:
        try:
            await pool_runner.RunnerClient(clients.http).stop(view.url, state.token, placed.task_id)
            stopped = True
        except pool_runner.Unreachable:
            pass  # a runner that does not answer is the pool worker's to replace
    clients.pools.release(ref.namespace, placed.pool, ref.uid, stopped=stopped)


async def let_go(ctx: context.SessionContext) -> None:
    """After the worker stops: a session that ended frees its slot."""
    if ctx.status.phase in context.TERMINAL and ctx.status.runner is not None:
        await stop(ctx.clients, ctx.ref, ctx.status.runner)
