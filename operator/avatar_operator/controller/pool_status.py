"""An AvatarPool's status from what its worker saw (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from avatar_operator.api import conditions, names
from avatar_operator.api import pool as pool_mod
from avatar_operator.api import status as status_mod
from avatar_operator.controller import placement

Cond = status_mod.ConditionType
Reason = status_mod.Reason


def ready_change(replicas: int, views: Sequence[placement.RunnerView], slots: placement.SlotCount, failure: str | None) -> conditions.Change:
    """Ready: every runner the spec asks for is loaded and answering."""
    ready = sum(1 for v in views if v.ready and not v.draining)
    numbers = f"{ready}/{replicas} runners ready; slots: {slots.total} total, {slots.busy} busy, {slots.free} free"
    if failure is not None:
        return conditions.Change(Cond.READY, False, Reason.RUNNER_FAILED, f"{failure}; {numbers}")
    if ready >= replicas:
        return conditions.Change(Cond.READY, True, Reason.RUNNERS_READY, numbers)
    return conditions.Change(Cond.READY, False, Reason.RUNNERS_STARTING, numbers)


def build(
    previous: pool_mod.AvatarPoolStatus,
    *,
    name: str,
    generation: int,
    replicas: int,
    views: Sequence[placement.RunnerView],
    booked: Mapping[str, int],
    failure: str | None,
    now: datetime.datetime,
) -> pool_mod.AvatarPoolStatus:
    slots = placement.count(views, booked)
    change = ready_change(replicas, views, slots, failure)
    return pool_mod.AvatarPoolStatus(
        replicas=len(views),
        ready_replicas=sum(1 for v in views if v.ready),
        selector=names.pool_selector(name),
        slots=pool_mod.Slots(total=slots.total, busy=slots.busy, free=slots.free),
        runners=tuple(
            pool_mod.PoolRunnerStatus(name=v.name, ready=v.ready, sessions=booked.get(v.name, 0), draining=v.draining or None)
            for v in sorted(views, key=lambda v: v.name)
        ),
        observed_generation=generation,
        conditions=_settle(previous.conditions or (), conditions.pool_changes(change, stalled=failure is not None), generation, now),
    )


def _settle(
    conds: Sequence[status_mod.Condition], changes: Sequence[conditions.Change], generation: int, now: datetime.datetime
) -> tuple[status_mod.Condition, ...]:
    result = tuple(conds)
    for change in changes:
        result = conditions.set_condition(result, change, generation, now)
    return result
