"""Local mode: the runner's token Secret and pod, and the pod's state as status.

Functions of a session's worker (`session.Worker`), which stays the one
writer of status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import pod as manifests
from avatar_operator.build import secret
from avatar_operator.build import token as tokens
from avatar_operator.clients import kube
from avatar_operator.controller import credentials, podstate

if TYPE_CHECKING:
    from avatar_operator.controller import worker as session

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason


async def start(
    w: session.Worker,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
) -> None:
    """Creates the token Secret and the runner pod (or process), unless a restart finds them made."""
    identity, name = w.identity(spec)
    pod_name = names.child_name(w.ref.name, "runner")
    if w.status.get("runnerPod") != pod_name:
        token = tokens.avatar_token(
            api_key=lk.api_key,
            api_secret=lk.api_secret,
            room=spec.room,
            identity=identity,
            name=name,
            agent_identity=spec.agent_identity,
            ttl=w.token_ttl(spec),
        )
        await kube.create(secret.token_secret(w.ref, token))
        pod = manifests.runner_pod(
            w.ref,
            spec,
            livekit_url=lk.url,
            bithuman_secret=bh.secret_name,
            defaults=manifests.RunnerDefaults(
                image=w.settings.runner_image,
                renderer=w.settings.runner_renderer,
                cpu=w.settings.runner_cpu,
                memory=w.settings.runner_memory,
            ),
        )
        if w.settings.launcher == settings_mod.Launcher.PROCESS:
            from avatar_operator.launchers import process as process_launcher  # dev only: needs the runner package

            process_launcher.start(w.ref, pod, token)
        else:
            await kube.create(pod)
        gpus = manifests.gpu_count(spec)
        # Written with the next step: a restart that finds no runnerPod
        # creates the same names again and finds them there (409).
        await w.record(
            conditions=((Cond.RUNNER_SCHEDULED, False, Reason.POD_CREATED, f"runner pod {pod_name} created ({gpus} GPU); waiting for the scheduler"),),
            event=(Reason.POD_CREATED.value, f"created runner pod {pod_name} and its token Secret"),
            runnerPod=pod_name,
            flush=False,
        )
    elif w.mailbox.pod is None:
        # After a restart the pod watch may not have spoken yet: look once.
        pod_obj = await kube.read_pod(w.ref.namespace, pod_name)
        if pod_obj is not None and w.mailbox.pod is None:
            w.mailbox.pod = pod_obj


async def follow_pod(w: session.Worker, identity: str) -> None:
    """Turns the runner pod's newest state into conditions and the phase."""
    if w.mailbox.pod_deleted and w.mailbox.pod is None:
        await w.fail(Reason.RUNNER_FAILED, "the runner pod was deleted", Cond.RUNNER_SCHEDULED)
    if w.mailbox.pod is None:
        return
    state = podstate.read(w.mailbox.pod)
    if state.phase == "Failed":
        await w.fail(Reason.RUNNER_FAILED, f"runner failed: {state.exit_reason}", Cond.READY)
    if state.phase == "Succeeded":
        await w.succeed(Reason.RUNNER_EXITED, f"runner exited: {state.exit_reason}")
    if state.unschedulable:
        await w.record(
            phase=Phase.PENDING,
            conditions=((Cond.RUNNER_SCHEDULED, False, Reason.UNSCHEDULABLE, state.unschedulable),),
            event=(Reason.UNSCHEDULABLE.value, state.unschedulable) if w.condition_reason(Cond.RUNNER_SCHEDULED) != Reason.UNSCHEDULABLE.value else None,
            warning=True,
        )
    elif state.node and not w.is_true(Cond.RUNNER_SCHEDULED):
        await w.record(
            phase=Phase.STARTING,
            conditions=(
                (Cond.RUNNER_SCHEDULED, True, Reason.SCHEDULED, f"runner pod on node {state.node}"),
                *(() if w.is_true(Cond.READY) else (w.waiting(identity),)),
            ),
            event=(Reason.SCHEDULED.value, f"runner pod scheduled on {state.node}"),
        )

