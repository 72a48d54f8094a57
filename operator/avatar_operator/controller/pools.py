"""Each pool's runners and bookings, in this operator's memory (held in `ports.Clients`).

The pool's worker (`pool_worker`) writes what it sees of the runners; the
sessions' workers (`pool_mode`) book, hold and release slots. Bookings are
made again from the sessions' status after a restart (the `pool_bookings`
index), so they are a cache of what status says, never the only record.
Sessions waiting for a slot stand in line by creation time; whoever frees a
slot or adds one wakes the line through the sessions' mailboxes.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable

from avatar_operator.api import names
from avatar_operator.api import pool as pool_mod
from avatar_operator.controller import mailbox, placement


@dataclasses.dataclass
class Booking:
    runner: str
    task_id: str | None = None
    since: float = dataclasses.field(default_factory=time.monotonic)  # when it was booked or launched


@dataclasses.dataclass
class PoolState:
    ref: names.PoolRef
    spec: pool_mod.AvatarPoolSpec
    token: str
    runners: dict[str, placement.RunnerView] = dataclasses.field(default_factory=dict)
    # Each runner's active task ids, and when they were read (None: not read yet).
    tasks: dict[str, tuple[float, frozenset[str]]] = dataclasses.field(default_factory=dict)
    bookings: dict[str, Booking] = dataclasses.field(default_factory=dict)  # by session uid
    line: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # uid -> (created, name)
    draining: set[str] = dataclasses.field(default_factory=set)
    looked: bool = False  # the pool's worker has looked at its runners once

    def booked(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter(b.runner for b in self.bookings.values())
        return dict(counts)

    def slots(self) -> placement.SlotCount:
        return placement.count(list(self.runners.values()), self.booked())

    def first_in_line(self, uid: str) -> bool:
        return min(self.line.items(), key=lambda kv: kv[1], default=(uid, ("", "")))[0] == uid


class Pools:
    def __init__(self, mailboxes: mailbox.Mailboxes | None = None) -> None:
        self._pools: dict[tuple[str, str], PoolState] = {}
        self._mailboxes = mailboxes if mailboxes is not None else mailbox.Mailboxes()

    def get(self, namespace: str, name: str) -> PoolState | None:
        return self._pools.get((namespace, name))

    def open(self, ref: names.PoolRef, spec: pool_mod.AvatarPoolSpec, token: str) -> PoolState:
        """The pool's state, made when its worker starts (kept across its worker's restarts)."""
        state = self._pools.get((ref.namespace, ref.name))
        if state is None or state.ref.uid != ref.uid:
            state = self._pools[(ref.namespace, ref.name)] = PoolState(ref=ref, spec=spec, token=token)
        state.spec, state.token = spec, token
        self.wake(state)
        return state

    def close(self, namespace: str, name: str) -> None:
        """The pool is gone: its sessions are woken to see so."""
        state = self._pools.pop((namespace, name), None)
        if state is not None:
            self._poke([*state.bookings, *state.line])

    def book(self, state: PoolState, uid: str, created: str, name: str) -> str | None:
        """A runner for the session, in creation order; None (and in line) when no slot is free."""
        booking = state.bookings.get(uid)
        if booking is not None and booking.runner in state.runners:
            return booking.runner
        state.bookings.pop(uid, None)  # on a runner that is gone
        state.line[uid] = (created, name)
        if not state.first_in_line(uid):
            return None
        runner = placement.choose(list(state.runners.values()), state.booked(), state.spec.scheduling)
        if runner is None:
            return None
        del state.line[uid]
        state.bookings[uid] = Booking(runner)
        self.wake(state)  # the next in line may fit too
        return runner

    def hold(self, state: PoolState, uid: str, runner: str, task_id: str | None) -> None:
        """A placement status already records (a resumed session, or the index after a restart)."""
        booking = state.bookings.get(uid)
        if booking is None or booking.runner != runner:
            state.bookings[uid] = Booking(runner, task_id)
        elif task_id is not None and booking.task_id != task_id:
            booking.task_id, booking.since = task_id, time.monotonic()
        state.line.pop(uid, None)

    def release(self, namespace: str, pool: str, uid: str, *, stopped: bool = False) -> None:
        """The session let go of its slot (ended, deleted, or its runner was lost)."""
        state = self.get(namespace, pool)
        if state is None:
            return
        state.line.pop(uid, None)
        booking = state.bookings.pop(uid, None)
        runner = state.runners.get(booking.runner) if booking else None
        if stopped and runner is not None:
            # Its task is stopped: the runner's count drops now, not at the next look.
            state.runners[runner.name] = dataclasses.replace(runner, active=max(0, runner.active - 1))
        self.wake(state)

    def leave_line(self, namespace: str, pool: str, uid: str) -> None:
        state = self.get(namespace, pool)
        if state is not None and state.line.pop(uid, None) is not None:
            self.wake(state)

    def task_gone(self, state: PoolState, uid: str) -> bool:
        """The session's task is no longer among its runner's active tasks (read after the launch)."""
        booking = state.bookings.get(uid)
        if booking is None or booking.task_id is None:
            return False
        seen = state.tasks.get(booking.runner)
        return seen is not None and seen[0] > booking.since and booking.task_id not in seen[1]

    def wake(self, state: PoolState) -> None:
        """Everyone in line looks again (the first one with a slot takes it)."""
        self._poke(state.line)

    def poke_runner(self, state: PoolState, runner: str) -> None:
        self._poke(uid for uid, b in state.bookings.items() if b.runner == runner)

    def _poke(self, uids: Iterable[str]) -> None:
        for uid in list(uids):
            self._mailboxes.get(uid).poke()
