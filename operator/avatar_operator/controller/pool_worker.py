"""One AvatarPool's worker (a kopf daemon): its runners, their slots, its status.

Every second it looks at the runners (the launcher's view, each runner's
`/health`, `/ready` and `/tasks`), replaces the lost ones, starts or drains
runners towards spec.replicas, and writes the status when it changed. The
slots themselves are booked by the sessions' workers (`pool_mode`); this
worker only says which runners can take them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from avatar_runner import contract

from avatar_operator import settings as settings_mod
from avatar_operator.api import names, validation
from avatar_operator.api import pool as pool_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import pod as pod_mod
from avatar_operator.build import pool_pod
from avatar_operator.clients import kube as kube_mod
from avatar_operator.clients import pool_runner
from avatar_operator.controller import context, placement, pool_status, ports, pools
from avatar_operator.launchers import base as launcher_base

Reason = status_mod.Reason

LOOK_S = 1.0
# A runner that answered and then stops answering this long is lost (its sessions move).
LOST_AFTER_S = 5.0
# One that never answers this long (a model that never loads) is replaced.
START_TIMEOUT_S = 300.0
# A runner that dies before it was ever ready: the next one waits, doubling up to the cap.
FAILURE_BACKOFF_S = (2.0, 60.0)

# A session's placement as the bookings index keeps it: (uid, runner, task id).
IndexedBooking = tuple[str, str, str | None]
ENDED = {phase.value for phase in context.TERMINAL}


def indexed_booking(body: Mapping[str, Any]) -> dict[tuple[str, str], IndexedBooking]:
    """A live pool session's placement (its status.runner) under (namespace, pool), for kopf's index.

    A session being deleted has none: its finalizer releases the slot, and the index must not
    hand the booking back (`seed`) in the moment before the object is gone. Until the runner's
    task stops, the runner's own count of tasks still keeps the slot (`placement.free`)."""
    status = body.get("status") or {}
    placed = status.get("runner") or {}
    metadata = body.get("metadata") or {}
    if status.get("phase") in ENDED or metadata.get("deletionTimestamp") or not placed.get("pool") or not placed.get("pod"):
        return {}
    key = (str(metadata.get("namespace")), str(placed["pool"]))
    return {key: (str(metadata.get("uid")), str(placed["pod"]), placed.get("taskId"))}


@dataclasses.dataclass
class _Seen:
    first: float
    last_ok: float | None = None


@dataclasses.dataclass
class PoolWorker:
    body: kopf.Body
    settings: settings_mod.Settings
    clients: ports.Clients
    logger: logging.Logger | kopf.Logger
    stopped: ports.Flag
    ref: names.PoolRef = dataclasses.field(init=False)
    seen: dict[str, _Seen] = dataclasses.field(default_factory=dict)
    failures: int = 0
    failure: str | None = None
    retry_at: float = 0.0
    written: pool_mod.AvatarPoolStatus | None = None

    def __post_init__(self) -> None:
        meta = self.body.metadata
        self.ref = names.PoolRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))

    @property
    def launcher(self) -> launcher_base.PoolLauncher:
        if self.clients.pool_launcher is None:
            raise RuntimeError("the operator has no pool launcher")
        return self.clients.pool_launcher

    def now(self) -> float:
        return self.clients.clock.monotonic()

    async def token(self) -> str:
        """The pool's Bearer token, from its Secret (made the first time)."""
        kube, ns, name = self.clients.kube, self.ref.namespace, names.pool_token_secret_name(self.ref.name)
        found = await kube.read_secret(ns, name)
        if found and found.get(contract.POOL_TOKEN_KEY):
            return found[contract.POOL_TOKEN_KEY]
        token = pool_pod.new_token()
        if await kube.create(pool_pod.token_secret(self.ref, token)):
            return token
        # Made meanwhile by someone else (an earlier worker of this pool): theirs, once past the read cache.
        await asyncio.sleep(kube_mod.SECRET_READ_TTL_S + 0.5)
        found = await kube.read_secret(ns, name)
        if found and found.get(contract.POOL_TOKEN_KEY):
            return found[contract.POOL_TOKEN_KEY]
        raise RuntimeError(f"the pool's token Secret {name} has no {contract.POOL_TOKEN_KEY} key")

    async def look(self, state: pools.PoolState) -> list[tuple[str, str]]:
        """The runners' views into the state; returns the lost ones (name, why)."""
        handles = await self.launcher.runners(self.ref)
        lost: list[tuple[str, str]] = []
        alive = [h for h in handles if h.alive]
        lost += [(h.name, h.reason or "gone") for h in handles if not h.alive]
        client = pool_runner.RunnerClient(self.clients.http)
        healths = await asyncio.gather(*(client.health(h.url) if h.url else _none() for h in alive))
        views: dict[str, placement.RunnerView] = {}
        for h, health in zip(alive, healths):
            seen = self.seen.setdefault(h.name, _Seen(first=self.now()))
            if health is not None:
                seen.last_ok = self.now()
            elif (seen.last_ok is not None and self.now() - seen.last_ok > LOST_AFTER_S) or (
                seen.last_ok is None and self.now() - seen.first > START_TIMEOUT_S
            ):
                lost.append((h.name, "stopped answering its launch API" if seen.last_ok else "never became ready"))
                continue
            capacity = min(state.spec.sessions_per_runner, health.max_sessions) if health else state.spec.sessions_per_runner
            views[h.name] = placement.RunnerView(
                name=h.name,
                url=h.url,
                ready=health is not None and health.loaded,
                capacity=capacity,
                active=health.active if health else 0,
                draining=h.name in state.draining,
            )
        await self._read_tasks(state, client, views.values())
        state.runners = views
        state.looked = True
        return lost

    async def _read_tasks(self, state: pools.PoolState, client: pool_runner.RunnerClient, views: Iterable[placement.RunnerView]) -> None:
        ready = [v for v in views if v.ready and v.url]
        found = await asyncio.gather(*(client.active_tasks(str(v.url), state.token) for v in ready))
        for view, tasks in zip(ready, found):
            if tasks is not None:
                state.tasks[view.name] = (self.now(), frozenset(tasks))
                if any(b.runner == view.name and b.task_id and b.task_id not in tasks for b in state.bookings.values()):
                    self.clients.pools.poke_runner(state, view.name)

    async def replace_lost(self, state: pools.PoolState, lost: list[tuple[str, str]]) -> None:
        """Stops what is left of each lost runner; its sessions are woken to be placed again."""
        for name, why in lost:
            seen = self.seen.pop(name, None)
            await self.launcher.stop_runner(self.ref, name)
            state.tasks.pop(name, None)
            state.draining.discard(name)
            state.runners.pop(name, None)
            if seen is None or seen.last_ok is None:
                self._failed(f"runner {name} {why} before it was ready")  # e.g. a bad model: back off
            self.logger.warning("runner %s lost (%s); replacing it", name, why)
            self.clients.events(self.body, reason=Reason.RUNNER_REPLACED.value, message=f"runner {name} lost ({why}); replacing it", warning=True)
            self.clients.pools.poke_runner(state, name)

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.failure = why
        first, cap = FAILURE_BACKOFF_S
        self.retry_at = self.now() + min(cap, first * 2 ** (self.failures - 1))

    async def scale(self, state: pools.PoolState) -> None:
        """Towards spec.replicas: keep draining runners back first, start new ones, drain the extra."""
        views = list(state.runners.values())
        replicas = state.spec.replicas
        state.draining.difference_update(placement.to_undrain(views, replicas))
        serving = sum(1 for v in views if v.name not in state.draining)
        if serving < replicas and self.now() >= self.retry_at:
            for _ in range(replicas - serving):
                await self.start_runner(state)
        booked = state.booked()
        state.draining.update(placement.to_drain(list(state.runners.values()), booked, replicas))
        state.runners = {n: dataclasses.replace(v, draining=n in state.draining) for n, v in state.runners.items()}
        for name in placement.to_remove(list(state.runners.values()), booked):
            await self.launcher.stop_runner(self.ref, name)
            del state.runners[name]
            state.draining.discard(name)
            self.seen.pop(name, None)
            self.logger.info("runner %s scaled away", name)

    async def start_runner(self, state: pools.PoolState) -> None:
        spec, runner = state.spec, self.settings.runner
        name = names.pool_runner_name(self.ref.name, secrets.token_hex(3))
        bh_secret = spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else self.settings.bithuman.secret_name
        defaults = pod_mod.RunnerDefaults(image=runner.image, renderer=runner.renderer, cpu=runner.cpu, memory=runner.memory)
        pod = pool_pod.runner_pod(self.ref, spec, name, bithuman_secret=bh_secret, defaults=defaults)
        await self.launcher.start_runner(self.ref, pod, state.token)
        self.seen[name] = _Seen(first=self.now())
        state.runners[name] = placement.RunnerView(name=name, url=None, ready=False, capacity=spec.sessions_per_runner, active=0)
        self.logger.info("started runner %s", name)

    def note_ready(self, state: pools.PoolState) -> None:
        if any(v.ready for v in state.runners.values()):
            self.failures, self.failure = 0, None

    async def write_status(self, state: pools.PoolState) -> None:
        previous = self.written or _stored(self.body)
        new = pool_status.build(
            previous,
            name=self.ref.name,
            generation=int(self.body.metadata.get("generation") or 0),
            replicas=state.spec.replicas,
            views=list(state.runners.values()),
            booked=state.booked(),
            failure=self.failure,
            now=self.clients.clock.now(),
        )
        if new != self.written:
            await self.clients.kube.patch_pool_status(self.ref.namespace, self.ref.name, pool_mod.to_wire(new))
            self.written = new

    def seed(self, state: pools.PoolState, indexed: Iterable[IndexedBooking]) -> None:
        """Bookings from the sessions' status: after a restart, and against drift (see `pools`)."""
        current = {uid: (runner, task) for uid, runner, task in indexed}
        for uid, (runner, task) in current.items():
            if uid not in state.bookings and uid not in state.line:
                self.clients.pools.hold(state, uid, runner, task)
        stale = [u for u, b in state.bookings.items() if u not in current and self.now() - b.since > STALE_BOOKING_S]
        for uid in stale:
            self.clients.pools.release(self.ref.namespace, self.ref.name, uid)


# A booking no session's status shows this long is dropped (its status write lags at most a moment).
STALE_BOOKING_S = 10.0


async def _none() -> None:
    return None


def _stored(body: kopf.Body) -> pool_mod.AvatarPoolStatus:
    try:
        return pool_mod.AvatarPoolStatus.model_validate(dict(body.get("status") or {}))
    except ValueError:
        return pool_mod.AvatarPoolStatus()


async def run(worker: PoolWorker, indexed: Any) -> None:
    """The pool's loop, until the pool is deleted or the operator stops."""
    problems = validation.validate_pool(worker.body)
    if problems:
        message = "; ".join(str(p) for p in problems)
        worker.logger.error("invalid pool: %s", message)
        worker.failure = f"invalid spec: {message}"
    token = await worker.token()
    state = worker.clients.pools.open(worker.ref, pool_mod.parse_pool(worker.body), token)
    while True:
        state.spec = pool_mod.parse_pool(worker.body)  # kopf keeps the body current
        worker.seed(state, indexed(worker.ref))
        lost = await worker.look(state)
        await worker.replace_lost(state, lost)
        if not problems:
            await worker.scale(state)
        worker.note_ready(state)
        worker.clients.pools.wake(state)
        await worker.write_status(state)
        if await worker.clients.clock.wait(worker.stopped, LOOK_S):
            return


async def remove(clients: ports.Clients, ref: names.PoolRef) -> None:
    """The pool is being deleted: its runners go (Pods would go with it anyway; processes would not)."""
    if clients.pool_launcher is not None:
        for handle in await clients.pool_launcher.runners(ref):
            await clients.pool_launcher.stop_runner(ref, handle.name)
        clients.pool_launcher.forget(ref)
    clients.pools.close(ref.namespace, ref.name)
