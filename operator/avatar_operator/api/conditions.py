"""Setting a condition on a status, as apimachinery's meta.SetStatusCondition does (pure)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from avatar_operator.api import status as status_mod

Type = status_mod.ConditionType
Reason = status_mod.Reason
Status = status_mod.ConditionStatus


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
