"""Where a pool session goes, and which runners a scale-down takes (pure).

The slot accounting is the operator's bookings (each session's placement,
recorded in its status before the launch) checked against what each runner
says of itself (`/health`): a runner counts as full by either, so a slot is
never promised twice, even to a task this operator did not launch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from avatar_operator.api import pool as pool_mod

Scheduling = pool_mod.Scheduling


@dataclasses.dataclass(frozen=True)
class RunnerView:
    """One runner, as the pool's last look saw it."""

    name: str
    url: str | None
    ready: bool  # alive, answering, its renderer loaded
    capacity: int  # min(sessionsPerRunner, the runner's own max_sessions)
    active: int  # the sessions the runner says it serves
    draining: bool = False  # being scaled away: no new session


def free(runner: RunnerView, booked: int) -> int:
    """Slots a new session may take on this runner."""
    if not runner.ready or runner.draining:
        return 0
    return max(0, runner.capacity - max(booked, runner.active))


def choose(runners: Sequence[RunnerView], booked: Mapping[str, int], scheduling: Scheduling) -> str | None:
    """The runner for the next session; None when every slot is taken.

    Packed: the busiest runner with a free slot, so others stay idle and can
    be scaled away. Distributed: the least busy. Ties go by name, so two
    operators' replicas would agree."""
    open_ = [r for r in runners if free(r, booked.get(r.name, 0)) > 0]
    if not open_:
        return None
    sign = -1 if scheduling is Scheduling.PACKED else 1
    return min(open_, key=lambda r: (sign * booked.get(r.name, 0), r.name)).name


@dataclasses.dataclass(frozen=True)
class SlotCount:
    total: int
    busy: int
    free: int


def count(runners: Sequence[RunnerView], booked: Mapping[str, int]) -> SlotCount:
    """The pool's slots: on ready runners; busy counts every booked session, wherever it waits."""
    total = sum(r.capacity for r in runners if r.ready)
    return SlotCount(
        total=total, busy=sum(booked.values()), free=sum(free(r, booked.get(r.name, 0)) for r in runners)
    )


def to_drain(runners: Sequence[RunnerView], booked: Mapping[str, int], replicas: int) -> list[str]:
    """Runners to scale away, beyond `replicas`: the idlest first, then the ones still starting.

    They take no new session and go once empty: a scale-down never cuts a live session."""
    serving = [r for r in runners if not r.draining]
    extra = len(serving) - replicas
    if extra <= 0:
        return []
    order = sorted(serving, key=lambda r: (max(booked.get(r.name, 0), r.active), r.ready, r.name))
    return [r.name for r in order[:extra]]


def to_undrain(runners: Sequence[RunnerView], replicas: int) -> list[str]:
    """Draining runners to keep after all, when replicas grew again (cheaper than new ones)."""
    serving = sum(1 for r in runners if not r.draining)
    missing = replicas - serving
    draining = sorted((r for r in runners if r.draining), key=lambda r: r.name)
    return [r.name for r in draining[: max(0, missing)]]


def to_remove(runners: Sequence[RunnerView], booked: Mapping[str, int]) -> list[str]:
    """Draining runners with no session left."""
    return [r.name for r in runners if r.draining and booked.get(r.name, 0) == 0 and r.active == 0]
