"""Local mode: the runner's token Secret and its runner (through the launcher), and the runner's state as status.

Functions of a session's context (`context.SessionContext`), the one writer of status.
"""

from __future__ import annotations

from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import pod as pod_mod
from avatar_operator.build import secret as secret_mod
from avatar_operator.controller import context, credentials, podstate

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

# A runner the scheduler places within this is written once, as Starting, with one Event
# (Scheduled): the Pending write before it (runnerPod, PodCreated) and its Event would be two
# more writes, and one more event through every watch, for each session of a burst. Not
# shorter: under a burst the loop itself runs late.
SCHEDULED_WRITE_DELAY_S = 3.0


async def start(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
) -> None:
    """Creates the token Secret and starts the runner, unless a restart finds them made."""
    pod_name = names.runner_pod_name(ctx.ref.name)
    if ctx.status.runner_pod == pod_name:
        await _resume(ctx, spec, lk, pod_name)
        return
    token = ctx.avatar_token(spec, lk.api_key, lk.api_secret)
    await ctx.clients.kube.create(secret_mod.token_secret(ctx.ref, token))
    runner = ctx.settings.runner
    defaults = pod_mod.RunnerDefaults(image=runner.image, renderer=runner.renderer, cpu=runner.cpu, memory=runner.memory)
    pod = pod_mod.runner_pod(ctx.ref, spec, livekit_url=lk.url, bithuman_secret=bh.secret_name, defaults=defaults)
    await ctx.clients.launcher.start(ctx.ref, pod, token)
    # Written with the next step: a restart that finds no runnerPod
    # creates the same names again and finds them there (409).
    gpus = pod_mod.gpu_count(spec)
    await ctx.record(
        changes=(Change(Cond.RUNNER_SCHEDULED, False, Reason.POD_CREATED, f"runner pod {pod_name} created ({gpus} GPU); waiting for the scheduler"),),
        runner_pod=pod_name,
        flush=False,
    )
    await _until_placed(ctx, SCHEDULED_WRITE_DELAY_S)
    if _node(ctx) is None:
        # The creation is a step of its own only when the placement is not said with it (Scheduled):
        # each Event is one more write to the API server, for every session of a burst.
        ctx.clients.events(ctx.body, reason=Reason.POD_CREATED.value, message=f"created runner pod {pod_name} and its token Secret", warning=False)


async def _until_placed(ctx: context.SessionContext, within_s: float) -> None:
    """Waits, unwritten, up to `within_s` for the scheduler's word on the runner pod (its node, or why not)."""
    clock = ctx.clients.clock
    deadline = clock.monotonic() + within_s
    while not _placed(ctx) and (left := deadline - clock.monotonic()) > 0:
        await clock.wait(ctx.mailbox, left)


def _node(ctx: context.SessionContext) -> str | None:
    return None if ctx.mailbox.pod is None else podstate.read(ctx.mailbox.pod).node


def _placed(ctx: context.SessionContext) -> bool:
    if ctx.mailbox.pod_deleted or ctx.stopped.is_set():
        return True
    if ctx.mailbox.pod is None:
        return False
    state = podstate.read(ctx.mailbox.pod)
    return bool(state.node or state.unschedulable or state.phase in ("Succeeded", "Failed"))


async def _resume(
    ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials, pod_name: str
) -> None:
    """After a restart, what was made before is looked at once: the pod watch may not have spoken yet."""
    kube, ns = ctx.clients.kube, ctx.ref.namespace
    pod_obj = ctx.mailbox.pod
    if pod_obj is None and not ctx.mailbox.pod_deleted:
        pod_obj = await kube.read_pod(ns, pod_name)
        if ctx.mailbox.pod is None and not ctx.mailbox.pod_deleted:
            # Gone while the operator was down: the same fact as a deletion seen live.
            ctx.mailbox.post_pod(pod_obj)
    if pod_obj is not None and podstate.read(pod_obj).phase not in ("Succeeded", "Failed"):
        if await kube.read_secret(ns, names.token_secret_name(ctx.ref.name)) is None:
            # Its token Secret went while the operator was down: a pod that (re)starts needs it.
            await kube.create(secret_mod.token_secret(ctx.ref, ctx.avatar_token(spec, lk.api_key, lk.api_secret)))
            ctx.logger.info("the runner's token Secret was missing; made it again")


async def follow_pod(ctx: context.SessionContext, identity: str) -> None:
    """Turns the runner's newest state into conditions and the phase; room_watch writes them before it waits."""
    if ctx.mailbox.pod_deleted and ctx.mailbox.pod is None:
        await ctx.fail(Reason.RUNNER_FAILED, "the runner pod was deleted", Cond.RUNNER_SCHEDULED)
    if ctx.mailbox.pod is None:
        return
    state = podstate.read(ctx.mailbox.pod)
    if state.phase == "Failed":
        await ctx.fail(Reason.RUNNER_FAILED, f"runner failed: {state.exit_reason}", Cond.READY)
    if state.phase == "Succeeded":
        await ctx.succeed(Reason.RUNNER_EXITED, f"runner exited: {state.exit_reason}")
    if state.unschedulable:
        first = ctx.reason_of(Cond.RUNNER_SCHEDULED) != Reason.UNSCHEDULABLE
        await ctx.record(
            phase=Phase.PENDING,
            changes=(Change(Cond.RUNNER_SCHEDULED, False, Reason.UNSCHEDULABLE, state.unschedulable),),
            event=(Reason.UNSCHEDULABLE, state.unschedulable) if first else None,
            warning=True,
            flush=False,  # with the room's news, in the watch's flush before it waits
        )
    elif state.node and not ctx.is_true(Cond.RUNNER_SCHEDULED):
        await ctx.record(
            phase=Phase.STARTING,
            changes=(
                Change(Cond.RUNNER_SCHEDULED, True, Reason.SCHEDULED, f"runner pod on node {state.node}"),
                *(() if ctx.is_true(Cond.READY) else (ctx.waiting(identity),)),
            ),
            event=(Reason.SCHEDULED, f"runner pod {names.runner_pod_name(ctx.ref.name)} scheduled on {state.node}"),
            flush=False,
        )
