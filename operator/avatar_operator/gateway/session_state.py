"""What a session's status says to a waiting gateway request. Pure."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from avatar_operator.api import status as status_mod

Cond = status_mod.ConditionType
Reason = status_mod.Reason
# A Failed session with these reasons failed on what the caller sent: a 400, not the gateway's 502.
CALLER_REASONS = frozenset({Reason.INVALID_SPEC, Reason.IMAGE_NOT_FOUND, Reason.AVATAR_IDENTITY_IN_USE})


class State(enum.Enum):
    WAITING = "waiting"
    SCHEDULED = "scheduled"  # RunnerScheduled=True: the pool gave it a slot
    FAILED = "failed"
    FINISHED = "finished"  # Succeeded
    DELETING = "deleting"


@dataclasses.dataclass(frozen=True)
class Seen:
    state: State
    reason: str = ""
    message: str = ""

    @property
    def caller_at_fault(self) -> bool:
        return self.reason in CALLER_REASONS


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return {str(c.get("type")): c for c in conds if isinstance(c, Mapping)}


def _failure(conds: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """The condition that says why: the first step not True, else Stalled."""
    for step in (Cond.ACCEPTED, Cond.CREDENTIALS_READY, Cond.RUNNER_SCHEDULED, Cond.READY, Cond.STALLED):
        c = conds.get(step.value)
        if c is not None and (c.get("status") != "True") == (step is not Cond.STALLED):
            return str(c.get("reason") or ""), str(c.get("message") or "")
    return "", "the session failed"


def seen(obj: Mapping[str, Any]) -> Seen:
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return Seen(State.DELETING)
    status = obj.get("status") or {}
    conds = _conditions(obj)
    phase = status.get("phase")
    if phase == status_mod.Phase.FAILED.value:
        return Seen(State.FAILED, *_failure(conds))
    if phase == status_mod.Phase.SUCCEEDED.value or status.get("endTime"):
        return Seen(State.FINISHED)
    if (conds.get(Cond.RUNNER_SCHEDULED.value) or {}).get("status") == "True":
        return Seen(State.SCHEDULED)
    return Seen(State.WAITING)
