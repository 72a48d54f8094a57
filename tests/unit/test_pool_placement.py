"""Placement (pure) and the pool registry's bookings: where a session goes, in what order, and what scaling takes."""

from __future__ import annotations

import time

from avatar_operator.api import names
from avatar_operator.api import pool as pool_mod
from avatar_operator.controller import mailbox, placement, pools
from hypothesis import given
from hypothesis import strategies as st

View = placement.RunnerView
PACKED, DISTRIBUTED = pool_mod.Scheduling.PACKED, pool_mod.Scheduling.DISTRIBUTED


def view(name: str, *, capacity: int = 3, active: int = 0, ready: bool = True, draining: bool = False) -> View:
    return View(name=name, url=f"http://{name}", ready=ready, capacity=capacity, active=active, draining=draining)


def test_packed_fills_the_busiest_runner_first() -> None:
    runners = [view("a"), view("b")]
    assert placement.choose(runners, {"a": 1, "b": 2}, PACKED) == "b"
    assert placement.choose(runners, {"a": 1, "b": 3}, PACKED) == "a"  # b is full


def test_distributed_takes_the_least_busy() -> None:
    assert placement.choose([view("a"), view("b")], {"a": 1}, DISTRIBUTED) == "b"


def test_no_slot_on_unready_draining_or_full_runners() -> None:
    runners = [view("a", ready=False), view("b", draining=True), view("c", active=3), view("d")]
    assert placement.choose(runners, {"d": 3}, PACKED) is None
    # The runner's own count wins over the bookings: a task nobody booked holds a slot too.
    assert placement.free(view("c", active=2), 1) == 1


def test_the_slot_count() -> None:
    count = placement.count([view("a"), view("b", ready=False)], {"a": 2, "b": 1})
    assert (count.total, count.busy, count.free) == (3, 3, 1)


def test_scale_down_drains_the_idlest_and_never_a_busy_one_first() -> None:
    runners = [view("a", active=2), view("b"), view("c", active=1)]
    assert placement.to_drain(runners, {"a": 2, "c": 1}, 2) == ["b"]
    assert placement.to_drain(runners, {"a": 2, "c": 1}, 1) == ["b", "c"]
    drained = [view("a", active=2), view("b", draining=True), view("c", active=1, draining=True)]
    assert placement.to_remove(drained, {"a": 2, "c": 1}) == ["b"]  # c keeps its session
    assert placement.to_undrain(drained, 2) == ["b"]


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6), st.sampled_from([PACKED, DISTRIBUTED]))
def test_choose_never_overbooks(loads: list[int], scheduling: pool_mod.Scheduling) -> None:
    runners = [view(f"r{i}", capacity=4) for i in range(len(loads))]
    booked = {f"r{i}": n for i, n in enumerate(loads)}
    while (chosen := placement.choose(runners, booked, scheduling)) is not None:
        booked[chosen] += 1
        assert booked[chosen] <= 4
    assert all(n == 4 for n in booked.values())  # and it stops only when every slot is taken


def state(registry: pools.Pools, runners: list[View]) -> pools.PoolState:
    ref = names.PoolRef(name="warm", namespace="ns", uid="pool-uid")
    s = registry.open(ref, pool_mod.AvatarPoolSpec(model_path="/m.imx", sessions_per_runner=3), "token")
    s.runners = {r.name: r for r in runners}
    s.looked = True
    return s


def test_sessions_take_slots_in_creation_order() -> None:
    boxes = mailbox.Mailboxes()
    registry = pools.Pools(boxes)
    s = state(registry, [view("a", capacity=1)])
    assert registry.book(s, "u1", "2026-12-01T10:00:00Z", "one") == "a"
    # Full: the younger waits even when it asks first, then the older takes the freed slot.
    assert registry.book(s, "u3", "2026-12-01T10:00:02Z", "three") is None
    assert registry.book(s, "u2", "2026-12-01T10:00:01Z", "two") is None
    registry.release("ns", "warm", "u1", stopped=True)
    assert boxes.get("u2").is_set() and boxes.get("u3").is_set()  # the line is woken
    assert registry.book(s, "u3", "2026-12-01T10:00:02Z", "three") is None  # not first in line
    assert registry.book(s, "u2", "2026-12-01T10:00:01Z", "two") == "a"


def test_a_booking_on_a_lost_runner_is_not_reused() -> None:
    registry = pools.Pools()
    s = state(registry, [view("a"), view("b")])
    registry.hold(s, "u1", "gone", "task-1")
    assert registry.book(s, "u1", "2026-12-01T10:00:00Z", "one") in {"a", "b"}


def test_a_task_is_gone_only_when_read_after_the_launch() -> None:
    registry = pools.Pools()
    s = state(registry, [view("a")])
    registry.hold(s, "u1", "a", "task-1")
    s.tasks["a"] = (time.monotonic() - 10, frozenset())  # read before the launch
    assert not registry.task_gone(s, "u1")
    s.tasks["a"] = (time.monotonic() + 1, frozenset({"task-1"}))
    assert not registry.task_gone(s, "u1")
    s.tasks["a"] = (time.monotonic() + 2, frozenset())
    assert registry.task_gone(s, "u1")
