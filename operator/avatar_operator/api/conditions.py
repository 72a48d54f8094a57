"""Setting a condition on a status, as apimachinery's meta.SetStatusCondition does, and the
conditions kstatus reads, derived from the phase (pure).

kstatus (sigs.k8s.io/cli-utils, what Flux's health checks and Helm's
--wait=watcher use) reads observedGeneration, then `Reconciling=True`
(InProgress) and `Stalled=True` (Failed), then `Ready`: True is Current,
False or Unknown is InProgress. Every status write passes `settle_session` or
`settle_pool`, so the three never disagree with the phase.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from avatar_operator.api import status as status_mod

Type = status_mod.ConditionType
Reason = status_mod.Reason
Status = status_mod.ConditionStatus
Phase = status_mod.Phase

# The steps a session passes, in order: the first one not True is what it waits on.
SESSION_STEPS = (Type.ACCEPTED, Type.CREDENTIALS_READY, Type.RUNNER_SCHEDULED, Type.CLOUD_REQUEST_ACCEPTED, Type.READY)
# How `kubectl describe` lists them: the steps in order, then what kstatus reads.
ORDER = {t: i for i, t in enumerate((*SESSION_STEPS, Type.RECONCILING, Type.STALLED))}
# No phase yet counts as on its way: the first write is Pending.
ON_ITS_WAY = (None, Phase.PENDING, Phase.STARTING)
NOT_IN_ROOM = "the avatar is not in the room yet"


@dataclasses.dataclass(frozen=True)
class Change:
    """What a step decided about one condition; the time and generation come when it is recorded."""

    type: Type
    ok: bool
    reason: Reason
    message: str


def set_condition(
    conditions: Sequence[status_mod.Condition], change: Change, generation: int | None, now: datetime.datetime
) -> tuple[status_mod.Condition, ...]:
    """`conditions` with `change` applied: lastTransitionTime moves only when the status changes."""
    new = status_mod.Condition(
        type=change.type,
        status=Status.TRUE if change.ok else Status.FALSE,
        reason=change.reason,
        # A message past the schema's bound would make the whole status patch fail.
        message=change.message[: status_mod.MESSAGE_MAX],
        last_transition_time=status_mod.whole_seconds(now),
        observed_generation=generation,
    )
    result: list[status_mod.Condition] = []
    for old in conditions:
        if old.type != change.type:
            result.append(old)
            continue
        if old.status == new.status:
            new = new.model_copy(update={"last_transition_time": old.last_transition_time})
        result.append(new)
    if not any(c.type == change.type for c in conditions):
        result.append(new)
    return tuple(result)


def find(status: status_mod.AvatarSessionStatus, type: Type) -> status_mod.Condition | None:
    return next((c for c in status.conditions or () if c.type == type), None)


def is_true(status: status_mod.AvatarSessionStatus, type: Type) -> bool:
    c = find(status, type)
    return c is not None and c.status == Status.TRUE


def session_word(phase: Phase | None, conds: Sequence[status_mod.Condition]) -> tuple[Reason, str]:
    """What Reconciling and Stalled tell a reader: the step a session waits on, or what Ready last said.

    Once Ready is gone (Succeeded), the last word stays where it was put."""
    by_type = {c.type: c for c in conds}
    steps = SESSION_STEPS if phase in ON_ITS_WAY else ()
    waiting = next((by_type[t] for t in steps if t in by_type and by_type[t].status != Status.TRUE), None)
    said = waiting or by_type.get(Type.READY) or by_type.get(Type.RECONCILING)
    return (said.reason, said.message) if said is not None else (Reason.WAITING_FOR_AVATAR, NOT_IN_ROOM)


def session_changes(phase: Phase | None, conds: Sequence[status_mod.Condition]) -> tuple[Change, ...]:
    """Ready from the first write, Reconciling while Pending or Starting, Stalled once Failed."""
    reason, message = session_word(phase, conds)
    ready = () if any(c.type == Type.READY for c in conds) else (Change(Type.READY, False, Reason.WAITING_FOR_AVATAR, NOT_IN_ROOM),)
    return (
        *ready,
        Change(Type.RECONCILING, phase in ON_ITS_WAY, reason, message),
        Change(Type.STALLED, phase == Phase.FAILED, reason, message),
    )


def settle_session(
    phase: Phase | None, conds: Sequence[status_mod.Condition], generation: int | None, now: datetime.datetime
) -> tuple[status_mod.Condition, ...]:
    """A session's conditions as kstatus must read them for `phase`.

    Succeeded drops Ready: kstatus reads Ready=False as InProgress for ever,
    and Ready=True would tell `kubectl wait --for=condition=Ready` that an
    ended session's avatar is in the room. Without Ready, kstatus says Current
    (done), and how it ended stays on Reconciling=False."""
    result = tuple(conds)
    # The word is taken while Ready still says how the session ended.
    for change in session_changes(phase, conds):
        result = set_condition(result, change, generation, now)
    if phase == Phase.SUCCEEDED:
        result = tuple(c for c in result if c.type != Type.READY)
    return tuple(sorted(result, key=lambda c: ORDER.get(c.type, len(ORDER))))


def pool_changes(ready: Change, stalled: bool) -> tuple[Change, ...]:
    """A pool's Ready, with Reconciling while runners start and Stalled while they fail, saying what Ready says."""
    return (
        ready,
        Change(Type.RECONCILING, not ready.ok and not stalled, ready.reason, ready.message),
        Change(Type.STALLED, stalled, ready.reason, ready.message),
    )
