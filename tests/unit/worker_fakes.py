"""In-memory fakes of everything a session's worker talks to (`controller.ports.Clients`).

With these a test drives `worker.run(ctx)` through a whole session lifecycle
in simulated time: the `FakeClock` moves only when the worker waits, and runs
what the test scheduled for that moment ("at t=3 s the runner pod is Running
on node n1", "at t=12 s the avatar leaves"). `FakeKube` records every status
the worker writes, stamped with the simulated time, so a test asserts on the
sequence of statuses as the API server would have seen them.

    h = Harness.make(local_spec(), env={"AVATAR_ABSENCE_GRACE": "20"})
    h.clock.at(3, lambda: h.launcher.scheduled("n1"))
    h.clock.at(5, h.room.publish)
    await h.run(until=60)
    assert h.kube.phases() == ["Pending", "Starting", "Running"]
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import heapq
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import aiohttp
import kopf
from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.clients import livekit
from avatar_operator.controller import context, mailbox, ports, worker
from avatar_runner import contract

NAMESPACE = "ns1"
NAME = "s1"
UID = "uid-s1"
ROOM = "room-1"
AGENT = "agent-1"
AVATAR = "bithuman-avatar-agent"  # the default avatar identity
LIVEKIT_URL = "ws://livekit.test:7880"
LIVEKIT_SECRET = "livekit-credentials"  # the operator's default Secret names
BITHUMAN_SECRET = "bithuman-credentials"
EPOCH = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


INSTANCE = "operator-m"  # this operator, as status.operator names it


class SimulationLimit(AssertionError):
    """The simulated session ran past its bound: the worker never ended."""


# --- the clock ----------------------------------------------------------------


class FakeClock:
    """`ports.Clock` in simulated time, which moves only when the worker waits.

    `t` is seconds since the start (EPOCH, a whole second, as status times
    are). A wait on a set flag returns at once; otherwise time jumps to the
    next scheduled callback within the timeout (running it) or to the
    timeout, and the wait ends early when a callback set the flag.
    """

    def __init__(self, *, limit_s: float = 3600.0, max_waits: int = 100_000) -> None:
        self.t = 0.0
        self.limit_s = limit_s
        self.max_waits = max_waits
        self.waits: list[tuple[float, float]] = []  # (when, timeout) of every wait
        self._queue: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime.datetime:
        return EPOCH + datetime.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return 1000.0 + self.t

    def at(self, t: float, callback: Callable[[], object]) -> None:
        """Runs `callback` when simulated time reaches `t` (during a wait of the worker)."""
        heapq.heappush(self._queue, (t, next(self._seq), callback))

    async def wait(self, flag: ports.Flag, timeout: float) -> bool:
        self.waits.append((self.t, timeout))
        if len(self.waits) > self.max_waits:
            raise SimulationLimit(f"{self.max_waits} waits without the session ending (t={self.t:.3f}s)")
        if flag.is_set():
            return await _take(flag)
        end = self.t + max(0.0, timeout)
        while self._queue and self._queue[0][0] <= end:
            due, _, callback = heapq.heappop(self._queue)
            self.t = max(self.t, due)
            self._check_limit()
            callback()
            await asyncio.sleep(0)
            if flag.is_set():
                return await _take(flag)
        self.t = end
        self._check_limit()
        await asyncio.sleep(0)
        return await _take(flag) if flag.is_set() else False

    def _check_limit(self) -> None:
        if self.t > self.limit_s:
            raise SimulationLimit(f"simulated time passed {self.limit_s}s without the session ending")


async def _take(flag: ports.Flag) -> bool:
    # As RealClock: the flag's own wait answers (a mailbox clears itself). It
    # is set, so this returns without sleeping. (A timeout of 0 would not do:
    # on Python 3.11 asyncio.wait_for(..., 0) times out before the wait runs.)
    return bool(await flag.wait(1.0))


class FakeStopped:
    """kopf's DaemonStopped: set when the session is deleted or the operator exits."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float) -> bool:
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


# --- the API server -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Write:
    """One status patch, as the API server received it."""

    t: float
    status: dict[str, Any]

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    def cond(self, ctype: str) -> dict[str, Any] | None:
        return next((c for c in self.status.get("conditions") or () if c["type"] == ctype), None)


class FakeKube:
    """`ports.KubeApi` in memory. Times of reads and writes come from the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, bytes]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.sessions: dict[tuple[str, str], dict[str, Any]] = {}  # the stored AvatarSession objects
        self.gone: set[tuple[str, str]] = set()  # sessions deleted: patch_status answers 404
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.secret_reads: list[tuple[float, str]] = []  # (when, name)
        self.pod_reads: list[str] = []
        self.writes: list[Write] = []
        self.echo = True  # False: the worker's body never shows its own writes (a watch that lags)
        self.closed = False

    # reads
    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.secret_reads.append((self.clock.t, name))
        data = self.secrets.get((namespace, name))
        return None if data is None else dict(data)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        value = (self.secrets.get((namespace, name)) or {}).get(key)
        return None if value is None else value.encode()

    async def read_config_map_key(self, namespace: str, name: str, key: str) -> bytes | None:
        return (self.config_maps.get((namespace, name)) or {}).get(key)

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.pod_reads.append(name)
        pod = self.pods.get((namespace, name))
        return None if pod is None else copy.deepcopy(pod)

    # writes
    async def create(self, manifest: Mapping[str, Any]) -> bool:
        obj = copy.deepcopy(dict(manifest))
        self.created.append(obj)
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if obj["kind"] == "Secret":
            if key in self.secrets:
                return False
            self.secrets[key] = dict(obj.get("stringData") or {})
        elif obj["kind"] == "Pod":
            if key in self.pods:
                return False
            self.pods[key] = obj
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.deleted.append((kind, namespace, name))
        {"Secret": self.secrets, "Pod": self.pods}.get(kind, {}).pop((namespace, name), None)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        key = (namespace, name)
        if key in self.gone:
            return False
        snapshot = copy.deepcopy(dict(status))
        self.writes.append(Write(self.clock.t, snapshot))
        stored = self.sessions.get(key)
        if stored is not None and self.echo:  # a merge patch: top-level keys replaced, none removed
            stored.setdefault("status", {}).update(copy.deepcopy(snapshot))
        return True

    async def close(self) -> None:
        self.closed = True

    async def delete_session_by_uid(self, namespace: str, name: str, uid: str) -> bool:
        stored = self.sessions.get((namespace, name))
        if (namespace, name) in self.gone or (stored is not None and stored["metadata"].get("uid") != uid):
            return False
        self.deleted.append(("AvatarSession", namespace, name))
        self.delete_session(namespace, name)
        return True

    def delete_session(self, namespace: str, name: str) -> None:
        """The session is deleted: its status can no longer be written."""
        self.gone.add((namespace, name))
        self.sessions.pop((namespace, name), None)

    # what tests read
    def phases(self) -> list[str | None]:
        """The phases written, repeats collapsed."""
        out: list[str | None] = []
        for w in self.writes:
            if not out or out[-1] != w.phase:
                out.append(w.phase)
        return out

    def first(self, phase: str) -> Write:
        """The first write of `phase`."""
        found = next((w for w in self.writes if w.phase == phase), None)
        assert found is not None, f"no {phase} status written; phases: {self.phases()}"
        return found

    @property
    def last(self) -> Write:
        assert self.writes, "no status written"
        return self.writes[-1]

    def terminal(self) -> Write | None:
        return next((w for w in self.writes if w.phase in ("Succeeded", "Failed")), None)


# --- LiveKit ------------------------------------------------------------------


class FakeRoom:
    """`ports.RoomApi`: a scripted view of the room, which the test changes."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.avatar_present = False
        self.avatar_publishing_video = False
        self.down: Exception | None = None  # raised by observe (LiveKit unreachable)
        self.observed: list[float] = []  # when each observe came
        self.removed: list[tuple[str, str]] = []

    # the scripts tests schedule
    def publish(self) -> None:
        self.avatar_present = self.avatar_publishing_video = True

    def leave(self) -> None:
        self.avatar_present = self.avatar_publishing_video = False

    def fail(self, error: Exception | None = None) -> None:
        self.down = error or ConnectionError("livekit unreachable")

    def recover(self) -> None:
        self.down = None

    async def observe(self, room: str, avatar_identity: str, session_uid: str) -> livekit.RoomView:
        self.observed.append(self.clock.t)
        if self.down is not None:
            raise self.down
        return livekit.RoomView(avatar_present=self.avatar_present, avatar_publishing_video=self.avatar_publishing_video)

    async def remove(self, room: str, identity: str, session_uid: str) -> bool:
        self.removed.append((room, identity))
        was = self.avatar_present
        self.leave()
        return was


class FakeRooms:
    """`ports.RoomApis`: one FakeRoom, whatever the server; remembers who asked for it."""

    def __init__(self, room: FakeRoom) -> None:
        self.room = room
        self.asked: list[tuple[str, str, str]] = []

    def get(self, url: str, api_key: str, api_secret: str) -> FakeRoom:
        self.asked.append((url, api_key, api_secret))
        return self.room


# --- the launcher -------------------------------------------------------------


class FakeLauncher:
    """`launchers.base.Launcher`: records start/stop; posts pod-shaped snapshots as the pod watch would."""

    def __init__(self, boxes: mailbox.Mailboxes) -> None:
        self.boxes = boxes
        self.started: list[tuple[names.SessionRef, dict[str, Any], str]] = []
        self.stopped: list[names.SessionRef] = []
        self.released: list[names.SessionRef] = []
        self.closed = False

    async def start(self, ref: names.SessionRef, pod: Mapping[str, Any], token: str) -> None:
        self.started.append((ref, copy.deepcopy(dict(pod)), token))

    async def stop(self, ref: names.SessionRef) -> None:
        self.stopped.append(ref)

    async def release(self, ref: names.SessionRef) -> None:
        self.released.append(ref)

    async def close(self) -> None:
        self.closed = True

    # snapshots (the pod the last start got, with a status)
    def post(self, status: Mapping[str, Any], node: str | None = None) -> None:
        assert self.started, "no runner started to post a snapshot of"
        ref, pod, _ = self.started[-1]
        self.boxes.post_pod(ref.uid, pod_snapshot(pod, status, node))

    def scheduled(self, node: str = "n1", phase: str = "Running") -> None:
        self.post({"phase": phase}, node)

    def unschedulable(self, message: str) -> None:
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        self.post({"phase": "Pending", "conditions": [cond]})

    def terminated(self, phase: str, *, reason: str, exit_code: int, message: str = "", node: str = "n1") -> None:
        terminated = {"reason": reason, "exitCode": exit_code, "message": message}
        cs = {"name": contract.CONTAINER_NAME, "state": {"terminated": terminated}}
        self.post({"phase": phase, "containerStatuses": [cs]}, node)

    def deleted(self) -> None:
        assert self.started
        self.boxes.post_pod(self.started[-1][0].uid, None)


def pod_snapshot(pod: Mapping[str, Any], status: Mapping[str, Any], node: str | None = None) -> dict[str, Any]:
    snap = copy.deepcopy(dict(pod))
    if node:
        snap.setdefault("spec", {})["nodeName"] = node
    snap["status"] = copy.deepcopy(dict(status))
    return snap


# --- Events -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    t: float
    reason: str
    message: str
    warning: bool


class FakeEvents:
    """`ports.Events`: the Kubernetes Events the worker posts."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.posted: list[Event] = []

    def __call__(self, body: Any, *, reason: str, message: str, warning: bool) -> None:
        self.posted.append(Event(self.clock.t, reason, message, warning))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.posted]

    def warnings(self) -> list[Event]:
        return [e for e in self.posted if e.warning]


# --- sessions -----------------------------------------------------------------


def session_raw(spec: Mapping[str, Any], status: Mapping[str, Any] | None = None, *, generation: int = 1) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": UID, "generation": generation},
        "spec": copy.deepcopy(dict(spec)),
    }
    if status is not None:
        raw["status"] = copy.deepcopy(dict(status))
    return raw


def body_of(raw: dict[str, Any]) -> kopf.Body:
    """A live view over `raw`: edit raw["spec"] and bump raw["metadata"]["generation"] to simulate a user's edit."""
    return kopf.Body(cast(kopf.RawBody, raw))


def edit_spec(raw: dict[str, Any], **changes: Any) -> None:
    """A user's edit of the spec (None removes a field): the API server bumps the generation."""
    for key, value in changes.items():
        if value is None:
            raw["spec"].pop(key, None)
        else:
            raw["spec"][key] = value
    raw["metadata"]["generation"] = int(raw["metadata"].get("generation") or 1) + 1


def local_spec(**extra: Any) -> dict[str, Any]:
    return {"room": ROOM, "agentIdentity": AGENT, "modelPath": "/models/avatar.imx", **extra}


def cloud_spec(**extra: Any) -> dict[str, Any]:
    return {"room": ROOM, "agentIdentity": AGENT, "avatarId": "A23WJF0199", **extra}


LIVEKIT_DATA = {"LIVEKIT_API_KEY": "lk-key", "LIVEKIT_API_SECRET": "lk-secret-0123456789abcdef0123456789"}
BITHUMAN_DATA = {"BITHUMAN_API_SECRET": "bh-account-secret-0123456789"}


@dataclasses.dataclass
class Harness:
    """One session and the fake world around it."""

    raw: dict[str, Any]
    clock: FakeClock
    kube: FakeKube
    room: FakeRoom
    rooms: FakeRooms
    launcher: FakeLauncher
    events: FakeEvents
    stopped: FakeStopped
    boxes: mailbox.Mailboxes
    ctx: context.SessionContext

    @classmethod
    def make(
        cls,
        spec: Mapping[str, Any],
        *,
        status: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        secrets: bool = True,
        http: aiohttp.ClientSession | None = None,
    ) -> Harness:
        clock = FakeClock()
        kube = FakeKube(clock)
        if secrets:
            kube.secrets[(NAMESPACE, LIVEKIT_SECRET)] = dict(LIVEKIT_DATA)
            kube.secrets[(NAMESPACE, BITHUMAN_SECRET)] = dict(BITHUMAN_DATA)
        raw = session_raw(spec, status)
        kube.sessions[(NAMESPACE, NAME)] = raw
        room = FakeRoom(clock)
        rooms = FakeRooms(room)
        boxes = mailbox.Mailboxes()
        launcher = FakeLauncher(boxes)
        events = FakeEvents(clock)
        stopped = FakeStopped()
        clients = ports.Clients(
            kube=kube,
            http=cast(aiohttp.ClientSession, http),  # local mode sends no HTTP
            rooms=rooms,
            launcher=launcher,
            mailboxes=boxes,
            clock=clock,
            events=events,
            instance=INSTANCE,
        )
        ctx = make_context(raw, clients, stopped, env)
        return cls(raw, clock, kube, room, rooms, launcher, events, stopped, boxes, ctx)

    def restart(self) -> context.SessionContext:
        """A new worker for the same session, as kopf makes after an error: it reads the stored status."""
        stored = self.kube.sessions[(NAMESPACE, NAME)]
        self.raw["status"] = copy.deepcopy(stored.get("status") or {})
        self.ctx = context.SessionContext(
            body=body_of(self.raw), settings=self.ctx.settings, clients=self.ctx.clients, logger=self.ctx.logger, stopped=self.stopped
        )
        return self.ctx

    async def run(self, *, until: float | None = None, timeout_s: float = 5.0) -> None:
        """Runs the worker to its end; with `until`, kopf stops it at that simulated time if it has not ended."""
        if until is not None:
            self.clock.at(until, self.stopped.set)
        await asyncio.wait_for(worker.run(self.ctx), timeout_s)

    def secret(self, name: str, data: Mapping[str, str]) -> Callable[[], None]:
        """A callback that creates Secret `name` in the session's namespace."""
        return lambda: self.kube.secrets.__setitem__((NAMESPACE, name), dict(data))


def make_settings(env: Mapping[str, str] | None = None) -> settings_mod.Settings:
    return settings_mod.Settings.from_env({"AVATAR_LIVEKIT_URL": LIVEKIT_URL, **(env or {})})


def make_context(
    raw: dict[str, Any], clients: ports.Clients, stopped: ports.Flag, env: Mapping[str, str] | None = None
) -> context.SessionContext:
    return context.SessionContext(
        body=body_of(raw),
        settings=make_settings(env),
        clients=clients,
        logger=logging.getLogger("tests.worker"),
        stopped=stopped,
    )


def ref() -> names.SessionRef:
    return names.SessionRef(name=NAME, namespace=NAMESPACE, uid=UID)
