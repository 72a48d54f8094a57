"""Scenario 9: warm runner pools (AvatarPool) under faults.

The operator runs with the process launcher and the portrait renderer, as in
tests/e2e/test_pool.py: each runner is a local `python -m avatar_runner serve`
with `sessionsPerRunner` slots, each session's room has an agent and a viewer
subscribed to the avatar's audio (so Ready is what LiveKit lists).

- pool_operator_sigkill_burst: six sessions created at once, the operator
  SIGKILLed in the middle of the claims and started again: every session
  Ready, no slot booked twice (each runner's own GET /tasks), one active task
  per session (the one status.runner.taskId names), the two runners adopted
  (the same processes, no third), restarts 0.
- pool_runner_sigkill: one of two full runners killed with SIGKILL: its
  sessions back Ready on another runner, restarts 1, each in its own room;
  the others untouched.
- pool_scale_down_under_load: three runners, four sessions packed on two,
  scaled to one: no live session cut, the idle runner goes at once, the busy
  one is kept (draining) until its session ends, then the pool is one runner.

Each scenario deletes its sessions and pool and stops its operator, and then
no `avatar_runner serve` process with its work directory in its environment
may be left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pathlib
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from livekit import rtc

from tests.conftest import Stack
from tests.harness import viewer as harness_viewer
from tests.harness.viewer import Viewer
from tests.reliability.support import (
    GROUP,
    PLURAL,
    VERSION,
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    condition,
    room_participants,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

POOLS = "avatarpools"
POOL = "warm"
AGENT = "agent"
AVATAR = "bithuman-avatar-agent"  # the avatar participant's default identity


# --- the rooms: an agent and an audio-subscribing viewer each, on one loop ---------------------


class Rooms:
    """Agents and viewers of the scenario's rooms, on an asyncio loop in a thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pool-rooms", daemon=True)
        self.thread.start()
        self.members: dict[str, tuple[rtc.Room, Viewer]] = {}

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _join(self, room: str) -> None:
        key, secret, url = self.stack.livekit_api_key, self.stack.livekit_api_secret, self.stack.livekit_url
        agent, viewer = rtc.Room(), Viewer(watch_video=False)
        self.members[room] = (agent, viewer)
        await agent.connect(url, harness_viewer.participant_token(key, secret, room, AGENT, agent=True), rtc.RoomOptions(auto_subscribe=False))
        await viewer.join(url, harness_viewer.participant_token(key, secret, room, "viewer"))

    def join(self, rooms: list[str]) -> None:
        async def all_() -> None:
            await asyncio.gather(*(self._join(r) for r in rooms))

        self._run(all_(), 90.0)

    def close(self) -> None:
        async def leave() -> None:
            for agent, viewer in self.members.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(viewer.leave(), 5)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.disconnect(), 5)

        with contextlib.suppress(Exception):
            self._run(leave(), 60.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def avatars(stack: Stack, room: str) -> list[dict[str, Any]]:
    """The room's avatar participants: when each joined, and its video tracks."""
    from livekit import api as lkapi

    url = stack.livekit_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    async def go() -> list[dict[str, Any]]:
        async with lkapi.LiveKitAPI(url, stack.livekit_api_key, stack.livekit_api_secret) as lk:
            res = await lk.room.list_participants(lkapi.ListParticipantsRequest(room=room))
            return [
                {"identity": p.identity, "sid": p.sid, "joined_ms": int(p.joined_at_ms or p.joined_at * 1000), "video": [t.sid for t in p.tracks if t.type == 1]}
                for p in res.participants
                if p.identity == AVATAR
            ]

    return asyncio.run(go())


# --- the pool, its runners, their processes -----------------------------------------------------


class PoolRig:
    """One scenario's namespace, operator (process launcher), pool and rooms."""

    def __init__(self, stack: Stack, kube: Kube, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, sc: Scenario, group: str) -> None:
        self.stack, self.kube, self.sc = stack, kube, sc
        self.spaces = Namespaces(stack, kube, evidence, group)
        self.ns = self.spaces.create("a", bithuman=False)
        self.work = artifacts / f"pool-work-{group}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = artifacts / f"operator-{group}.log"
        evidence.file("operator log", self.log)
        env = {
            "AVATAR_RUNNER_LAUNCHER": "process",
            "AVATAR_RUNNER_RENDERER": "portrait",
            "AVATAR_PROCESS_WORKDIR": str(self.work),
            "LIVEKIT_API_KEY": stack.livekit_api_key,
            "LIVEKIT_API_SECRET": stack.livekit_api_secret,
        }
        self.op = OperatorProc(stack, fake, self.log, [self.ns], env=env)
        self.rooms = Rooms(stack)
        self.sessions: list[str] = []
        self._token: str | None = None

    # the operator
    def start_operator(self) -> None:
        self.op.start()
        self.sc.op("operator_start")

    def kill_operator(self) -> None:
        self.op.kill()
        self.sc.fault("operator_sigkill")

    # the pool
    def create_pool(self, replicas: int, slots: int) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AvatarPool",
            "metadata": {"name": POOL},
            "spec": {"replicas": replicas, "sessionsPerRunner": slots, "modelPath": "/models/demo.imx"},
        }
        self.kube.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, POOLS, body, _request_timeout=30)
        self.sc.op("create_pool")

    def pool(self) -> dict[str, Any] | None:
        try:
            obj: Any = self.kube.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, POOLS, POOL, _request_timeout=30)
            return dict(obj)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def wait_pool_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        pool: dict[str, Any] = wait_until("the pool Ready", lambda: (p := self.pool()) and condition(p, "Ready").get("status") == "True" and p, timeout, 0.5)
        return pool

    def ready_pool(self, names: list[str], replicas: int, slots: int) -> dict[str, Any]:
        """Each room with its agent and viewer, the operator, and the pool Ready."""
        self.rooms.join([self.room(n) for n in names])
        self.start_operator()
        self.create_pool(replicas, slots)
        return self.wait_pool_ready()

    def scale(self, replicas: int) -> None:
        self.stack.kubectl("scale", "avp", POOL, "-n", self.ns, f"--replicas={replicas}")
        self.sc.op("scale_pool")

    def token(self) -> str:
        if self._token is None:
            sec = self.kube.core.read_namespaced_secret(f"{POOL}-pool-token", self.ns, _request_timeout=30)
            self._token = base64.b64decode((sec.data or {})["POOL_TOKEN"]).decode()
        return self._token

    # the runners
    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in (self.work / "pools").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                d = json.loads(p.read_text())
                out[str(d["name"])] = d
        return out

    def processes(self) -> list[int]:
        """Live `avatar_runner serve` processes whose environment names this scenario's work dir."""
        mark = str(self.work).encode()
        found = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                if b"avatar_runner" not in cmd or b"serve" not in cmd:
                    continue
                if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                    continue  # a zombie, not reaped yet: not running
                if mark in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
        return sorted(found)

    def tasks(self) -> dict[str, list[dict[str, Any]]]:
        """Each live runner's active tasks, from its own GET /tasks (the pool's Bearer token)."""
        out = {}
        for name, rec in self.records().items():
            req = urllib.request.Request(f"http://127.0.0.1:{rec['port']}/tasks", headers={"Authorization": f"Bearer {self.token()}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    out[name] = [t for t in json.loads(r.read())["tasks"] if t.get("status") in ("pending", "running")]
            except OSError:
                continue  # not answering (being killed or started)
        return out

    # the sessions
    def create_session(self, name: str) -> None:
        spec = {"room": self.room(name), "agentIdentity": AGENT, "poolRef": {"name": POOL}, "maxDuration": 600}
        self.kube.create_session(self.ns, name, spec)
        self.sessions.append(name)
        self.sc.op("create_session")

    def room(self, name: str) -> str:
        return f"{self.ns}-{name}"

    def objs(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.kube.sessions(self.ns)}

    @staticmethod
    def ready(obj: dict[str, Any] | None) -> bool:
        return condition(obj, "Ready").get("status") == "True"

    @staticmethod
    def placed(obj: dict[str, Any] | None) -> dict[str, Any]:
        return dict(((obj or {}).get("status") or {}).get("runner") or {})

    @staticmethod
    def restarts(obj: dict[str, Any] | None) -> int:
        return int(((obj or {}).get("status") or {}).get("restarts") or 0)

    def wait_all_ready(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def check() -> dict[str, dict[str, Any]] | None:
            objs = self.objs()
            return objs if all(self.ready(objs.get(n)) and self.placed(objs.get(n)).get("taskId") for n in names) else None

        objs: dict[str, dict[str, Any]] = wait_until(f"sessions {names} Ready", check, timeout, 0.5)
        return objs

    # shared checks
    def check_slots(self, slots: int, names: list[str]) -> None:
        """No runner over capacity; each session one active task in all, the one its status names, in its room."""
        sc, tasks, objs = self.sc, self.tasks(), self.objs()
        over = {r: len(t) for r, t in tasks.items() if len(t) > slots}
        sc.check("no_runner_slot_over_capacity", not over, f"active tasks per runner {over} > {slots}")
        by_room: dict[str, list[tuple[str, str]]] = {}
        for runner, ts in tasks.items():
            for t in ts:
                by_room.setdefault(str(t.get("room_name")), []).append((runner, str(t.get("task_id"))))
        for n in names:
            found = by_room.get(self.room(n), [])
            p = self.placed(objs.get(n))
            sc.check("one_active_task_per_session", len(found) == 1, f"{n}: active tasks {found}")
            sc.check(
                "the_active_task_is_status_runner_taskId",
                len(found) == 1 and found[0] == (p.get("pod"), p.get("taskId")),
                f"{n}: status.runner {p}, active {found}",
            )
        known = {self.room(n) for n in names}
        strays = {r: v for r, v in by_room.items() if r not in known}
        sc.check("no_task_for_an_unknown_room", not strays, str(strays))
        sc.note("active_tasks_per_runner", {r: len(t) for r, t in tasks.items()})

    def check_in_room(self, names: list[str], invariant: str) -> None:
        """The avatar participant listed in each session's own room."""
        for n in names:
            room = self.room(n)
            try:
                who = wait_until(f"the avatar in {room}", lambda room=room: [p["identity"] for p in room_participants(self.stack, room) if p["identity"] == AVATAR] or None, 20, 1.0)
            except AssertionError:
                who = []
            self.sc.check(invariant, who == [AVATAR], f"{n}: room {room} lists {who}")

    # the end
    def teardown(self) -> None:
        sc = self.sc
        with contextlib.suppress(Exception):
            for n in list(self.objs()):
                self.kube.delete_session(self.ns, n)
                sc.op("delete_session")
        if self.op.alive():
            with contextlib.suppress(AssertionError):
                wait_until("sessions gone", lambda: not self.kube.sessions(self.ns), 60, 1.0)
        with contextlib.suppress(ApiException):
            self.kube.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, POOLS, POOL, _request_timeout=30)
            sc.op("delete_pool")
        if self.op.alive():
            with contextlib.suppress(AssertionError):
                wait_until("the pool gone", lambda: self.pool() is None, 60, 1.0)
        alive_at_end = self.op.alive()
        log = self.op.logs()
        self.op.stop()
        self.rooms.close()
        sc.check("operator_alive_at_end", alive_at_end, "the operator had exited before the teardown")
        tb = tracebacks(log)
        sc.check("no_traceback_in_operator_log", not tb, str(tb[:3]))
        with contextlib.suppress(AssertionError):
            wait_until("no runner process left", lambda: not self.processes(), 20, 0.5)
        left = self.processes()
        sc.check("no_runner_process_left", not left, f"runner processes still alive: {left}")
        for pid in left:  # started by this scenario's operator: ended by id
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leftover = sorted(p.name for p in (self.work / "pools").glob("*.json")) if (self.work / "pools").exists() else []
        sc.check("no_runner_record_left", not leftover, str(leftover))
        if self.pool() is not None:  # the operator could not finalize it: let it go
            with contextlib.suppress(ApiException):
                self.kube.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, POOLS, POOL, {"metadata": {"finalizers": None}}, _request_timeout=30)
        self.spaces.teardown(operator_running=False)


@pytest.fixture
def rig_factory(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path) -> Iterator[Any]:
    made: list[PoolRig] = []

    def make(sc: Scenario, group: str) -> PoolRig:
        rig = PoolRig(stack, kube, fake, evidence, artifacts, sc, group)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.teardown()


# --- 1: the operator SIGKILLed in the middle of a burst of claims -------------------------------


@pytest.mark.scenario(
    "pool_operator_sigkill_burst",
    description="a pool of 2 runners x 3 slots, 6 sessions created at once, the operator SIGKILLed after the first "
    "placements and started again: every session Ready, no slot booked twice, one active task per session (its "
    "status.runner.taskId), the same 2 runner processes adopted, restarts 0",
)
def test_operator_sigkill_in_a_burst_of_claims(rig_factory: Any, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    runners, slots = 2, 3
    with timed(sc):
        rig: PoolRig = rig_factory(sc, "poolkill")
        names = [f"s{i}" for i in range(runners * slots)]
        rig.ready_pool(names, runners, slots)
        before = {n: int(r["pid"]) for n, r in rig.records().items()}
        sc.check("pool_starts_its_runners", len(before) == runners, str(before))

        # A watch of the sessions kills the operator the moment a second placement is written.
        killed = threading.Event()
        at_kill: list[str] = []

        def kill_after_two() -> None:
            placed: set[str] = set()
            w = kubernetes.watch.Watch()
            try:
                for ev in w.stream(rig.kube.custom.list_namespaced_custom_object, GROUP, VERSION, rig.ns, PLURAL, timeout_seconds=60):
                    obj = ev["object"]
                    if rig.placed(obj).get("pod"):
                        placed.add(obj["metadata"]["name"])
                    if len(placed) >= 2:
                        rig.kill_operator()
                        at_kill.extend(sorted(placed))
                        killed.set()
                        return
            finally:
                w.stop()

        killer = threading.Thread(target=kill_after_two, name="kill-after-two", daemon=True)
        killer.start()
        time.sleep(0.5)  # the watch is open
        for n in names:
            rig.create_session(n)
        killer.join(65)
        sc.check("operator_killed_mid_claims", killed.is_set(), "no two placements seen in 60 s")
        if not killed.is_set():
            rig.kill_operator()
        objs = rig.objs()
        sc.note("placed_seen_by_the_watch_at_kill", at_kill)
        sc.note("placed_at_kill", sum(1 for o in objs.values() if rig.placed(o).get("pod")))
        sc.note("launched_at_kill", sum(1 for o in objs.values() if rig.placed(o).get("taskId")))
        sc.note("ready_at_kill", sum(1 for o in objs.values() if rig.ready(o)))
        time.sleep(2.0)
        rig.start_operator()

        try:
            objs = rig.wait_all_ready(names, 120)
        except AssertionError:
            objs = rig.objs()
        for n in names:
            sc.check("every_session_ready", rig.ready(objs.get(n)), f"{n}: {(objs.get(n) or {}).get('status')}")
            sc.check("restarts_stay_0", rig.restarts(objs.get(n)) == 0, f"{n}: restarts {rig.restarts(objs.get(n))}")
        per_runner: dict[str, int] = {}
        for n in names:
            pod = rig.placed(objs.get(n)).get("pod")
            per_runner[str(pod)] = per_runner.get(str(pod), 0) + 1
        sc.check("no_runner_booked_over_capacity", all(c <= slots for c in per_runner.values()), str(per_runner))
        sc.note("sessions_per_runner", per_runner)
        rig.check_slots(slots, names)
        time.sleep(5.0)  # a few of the pool worker's looks later: still the same
        rig.check_slots(slots, names)

        after = {n: int(r["pid"]) for n, r in rig.records().items()}
        procs = rig.processes()
        sc.check("runners_adopted_not_started_again", after == before, f"records before {before}, after {after}")
        sc.check("exactly_the_pools_runner_processes_alive", sorted(before.values()) == procs, f"expected {sorted(before.values())}, alive {procs}")
        pool = rig.pool() or {}
        sc.check("pool_status_counts_the_sessions", ((pool.get("status") or {}).get("slots") or {}).get("busy") == len(names), str((pool.get("status") or {}).get("slots")))
        sc.note("operator_starts", rig.op.starts)
    sc.assert_clean(since)


# --- 2: a runner killed under six live sessions ------------------------------------------------


@pytest.mark.scenario(
    "pool_runner_sigkill",
    description="6 Ready sessions on 2 runners x 3 slots, one runner killed with SIGKILL: its 3 sessions Ready again "
    "on another runner with restarts 1 within 60 s, each in its own room; the others untouched (restarts 0, same "
    "taskId); one active task per session, no runner over capacity",
)
def test_runner_sigkill_moves_its_sessions(rig_factory: Any, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    runners, slots = 2, 3
    with timed(sc):
        rig: PoolRig = rig_factory(sc, "poolrunner")
        names = [f"s{i}" for i in range(runners * slots)]
        rig.ready_pool(names, runners, slots)
        for n in names:
            rig.create_session(n)
        objs = rig.wait_all_ready(names, 120)
        before = {n: rig.placed(objs[n]) for n in names}
        rig.check_slots(slots, names)

        records = rig.records()
        victim = min(records)
        moved = [n for n in names if before[n]["pod"] == victim]
        kept = [n for n in names if n not in moved]
        sc.check("victim_holds_a_full_runner", len(moved) == slots, f"{victim}: {moved}")
        t_kill, t_kill_wall = time.monotonic(), time.time()
        os.kill(int(records[victim]["pid"]), signal.SIGKILL)
        sc.fault("runner_sigkill")

        def back() -> dict[str, dict[str, Any]] | None:
            o = rig.objs()
            ok = all(rig.restarts(o.get(n)) == 1 and rig.placed(o.get(n)).get("pod") not in (None, victim) and rig.placed(o.get(n)).get("taskId") and rig.ready(o.get(n)) for n in moved)
            return o if ok else None

        try:
            objs = wait_until("the killed runner's sessions back", back, 60, 0.5)
            took = time.monotonic() - t_kill
        except AssertionError:
            objs, took = rig.objs(), None
        sc.note("moved_back_ready_s", round(took, 1) if took is not None else None)
        sc.check("moved_sessions_ready_within_60s", took is not None, str({n: (objs.get(n) or {}).get("status") for n in moved})[:1500])
        for n in moved:
            p = rig.placed(objs.get(n))
            sc.check("moved_session_restarts_1", rig.restarts(objs.get(n)) == 1, f"{n}: restarts {rig.restarts(objs.get(n))}")
            sc.check("moved_session_on_another_runner", p.get("pod") not in (None, victim), f"{n}: {p}")
            sc.check("moved_session_new_task", bool(p.get("taskId")) and p.get("taskId") != before[n].get("taskId"), f"{n}: {before[n]} -> {p}")
        for n in kept:
            o = objs.get(n)
            sc.check("untouched_session_restarts_0", rig.restarts(o) == 0, f"{n}: restarts {rig.restarts(o)}")
            sc.check("untouched_session_same_task", rig.placed(o) == before[n], f"{n}: {before[n]} -> {rig.placed(o)}")
            sc.check("untouched_session_ready", rig.ready(o), f"{n}: {(o or {}).get('status')}")
        rig.check_in_room(moved, "moved_avatar_in_its_own_room")
        rig.check_in_room(kept, "untouched_avatar_in_its_room")
        # The media plane: the avatar in each moved room is the new task's (joined after the kill) and
        # publishes video; the untouched rooms keep the avatar that joined before it.
        for n in names:
            try:
                found = wait_until(f"a publishing avatar in {rig.room(n)}", lambda n=n: [a for a in avatars(rig.stack, rig.room(n)) if a["video"]] or None, 20, 1.0)
            except AssertionError:
                found = avatars(rig.stack, rig.room(n))
            joined = [a["joined_ms"] / 1000 for a in found]
            if n in moved:
                ok = len(found) == 1 and bool(found[0]["video"]) and joined[0] > t_kill_wall
                sc.check("moved_avatar_rejoined_and_publishes", ok, f"{n}: {found} (killed at {t_kill_wall:.3f})")
            else:
                ok = len(found) == 1 and bool(found[0]["video"]) and joined[0] < t_kill_wall
                sc.check("untouched_avatar_kept_its_connection", ok, f"{n}: {found} (killed at {t_kill_wall:.3f})")
        rig.check_slots(slots, names)
        records = rig.records()
        sc.check("victim_runner_replaced", victim not in records and len(records) == runners, str(sorted(records)))
        sc.check("runner_processes_match_the_pool", sorted(int(r["pid"]) for r in records.values()) == rig.processes(), f"{records} vs {rig.processes()}")
    sc.assert_clean(since)


# --- 3: scaled down under load -----------------------------------------------------------------


@pytest.mark.scenario(
    "pool_scale_down_under_load",
    description="3 runners x 3 slots, 4 sessions packed on 2 runners, kubectl scale --replicas=1: no live session "
    "cut (Ready, same taskId, restarts 0), the idle runner goes at once, the second busy runner drains until its "
    "session ends, then the pool is 1 runner",
)
def test_scale_down_under_load_cuts_no_session(rig_factory: Any, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    runners, slots, live = 3, 3, 4
    with timed(sc):
        rig: PoolRig = rig_factory(sc, "poolscale")
        names = [f"s{i}" for i in range(live)]
        rig.ready_pool(names, runners, slots)
        for n in names:
            rig.create_session(n)
        objs = rig.wait_all_ready(names, 120)
        before = {n: rig.placed(objs[n]) for n in names}
        records = rig.records()
        load: dict[str, list[str]] = {r: [] for r in records}
        for n in names:
            load.setdefault(str(before[n]["pod"]), []).append(n)
        sc.note("packed", {r: len(v) for r, v in load.items()})
        sc.check("packed_on_two_runners", sorted(len(v) for v in load.values()) == [0, 1, 3], str(load))
        idle = [r for r, v in load.items() if not v]
        busy = sorted((r for r, v in load.items() if v), key=lambda r: len(load[r]))
        drainer = busy[0] if len(busy) == 2 else None
        keeper = busy[-1] if busy else None
        pids = {r: int(rec["pid"]) for r, rec in records.items()}

        t_scale = time.monotonic()
        rig.scale(1)

        def idle_gone() -> bool:
            return all(r not in rig.records() and pids[r] not in rig.processes() for r in idle)

        try:
            wait_until("the idle runner gone", idle_gone, 15, 0.25)
            gone_s = round(time.monotonic() - t_scale, 1)
        except AssertionError:
            gone_s = None
        sc.note("idle_runner_gone_s", gone_s)
        sc.check("idle_runner_goes_at_once", gone_s is not None, f"idle {idle}, records {sorted(rig.records())}")

        # A while under the scale-down: every session untouched, the busy runners kept.
        watch_until = time.monotonic() + 12.0
        while time.monotonic() < watch_until:
            objs = rig.objs()
            for n in names:
                o = objs.get(n)
                sc.check("no_live_session_cut", rig.ready(o) and rig.placed(o) == before[n] and rig.restarts(o) == 0, f"{n}: {before[n]} -> {(o or {}).get('status')}")
            procs = rig.processes()
            sc.check("busy_runners_kept", all(pids[r] in procs for r in busy), f"busy {busy} pids {[pids[r] for r in busy]}, alive {procs}")
            time.sleep(1.0)
        pool = rig.pool() or {}
        status_runners = {r["name"]: r for r in (pool.get("status") or {}).get("runners") or []}
        sc.note("pool_runners_while_draining", status_runners)
        if drainer is not None:
            sc.check("second_busy_runner_draining", bool((status_runners.get(drainer) or {}).get("draining")), str(status_runners))
        if keeper is not None:
            sc.check("busiest_runner_not_draining", not (status_runners.get(keeper) or {}).get("draining"), str(status_runners))
        rig.check_slots(slots, names)

        # The draining runner's session ends: the pool is one runner.
        ending = load.get(drainer, []) if drainer else []
        for n in ending:
            rig.kube.delete_session(rig.ns, n)
            sc.op("delete_session")
        t_end = time.monotonic()

        def one_runner() -> bool:
            p = rig.pool() or {}
            return len(rig.records()) == 1 and len(rig.processes()) == 1 and (p.get("status") or {}).get("replicas") == 1

        try:
            wait_until("the pool down to 1 runner", one_runner, 60, 0.5)
            down_s = round(time.monotonic() - t_end, 1)
        except AssertionError:
            down_s = None
        sc.note("down_to_one_runner_after_last_session_s", down_s)
        sc.check("pool_goes_down_to_one_runner", down_s is not None, f"records {sorted(rig.records())}, processes {rig.processes()}, status {(rig.pool() or {}).get('status')}")
        sc.check("the_busiest_runner_is_the_one_kept", keeper is not None and list(rig.records()) == [keeper], f"{keeper} vs {sorted(rig.records())}")
        rest = [n for n in names if n not in ending]
        objs = rig.objs()
        for n in rest:
            o = objs.get(n)
            sc.check("no_live_session_cut", rig.ready(o) and rig.placed(o) == before[n] and rig.restarts(o) == 0, f"{n}: {before[n]} -> {(o or {}).get('status')}")
        rig.check_slots(slots, rest)
    sc.assert_clean(since)
