"""A warm pool on the real stack: the operator (process launcher, portrait renderer) keeps
two `python -m avatar_runner serve` runners with three slots each, and sessions take slots.

Each room has an agent and a viewer subscribed to the avatar (an AvatarRunner
publishes video only once someone listens), so Ready is what LiveKit lists.
Six sessions fill the pool, three per runner; a seventh waits PoolExhausted
and takes the slot the first deletion frees; a runner killed with SIGKILL
brings its sessions back on a replacement (restarts: 1); `kubectl scale`
adds a runner. The figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.conftest import ROOT, Stack
from tests.harness import viewer as harness_viewer
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.viewer import Viewer

POOL = "warm"
RUNNERS, SLOTS = 2, 3


def kget(stack: Stack, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout))


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def apply(stack: Stack, obj: dict[str, Any]) -> None:
    stack.kubectl("apply", "-f", "-", input=json.dumps(obj))


async def until(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def operator(stack: Stack, namespace: str, tmp_path: pathlib.Path) -> Iterator[tuple[OperatorProcess, pathlib.Path]]:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    work = tmp_path / "runners"
    env = operator_env(
        stack.process_env(),
        livekit_url=stack.livekit_url,
        fake_urls={"url": "http://127.0.0.1:9/unused", "mint_url": "http://127.0.0.1:9/unused"},
        runner_image="registry.invalid/avatar-runner:test",
        extra={
            "AVATAR_RUNNER_LAUNCHER": "process",
            "AVATAR_RUNNER_RENDERER": "portrait",
            "AVATAR_PROCESS_WORKDIR": str(work),
            "LIVEKIT_API_KEY": stack.livekit_api_key,
            "LIVEKIT_API_SECRET": stack.livekit_api_secret,
        },
    )
    op = OperatorProcess(env, tmp_path / "operator.log", [namespace], stop_grace=30.0)
    op.start()
    try:
        yield op, work / "pools"
    finally:
        for name in [s["metadata"]["name"] for s in json.loads(stack.kubectl("get", "avs", "-n", namespace, "-o", "json").stdout)["items"]]:
            stack.kubectl("delete", "avs", name, "-n", namespace, "--wait=false", check=False)
        stack.kubectl("delete", "avp", POOL, "-n", namespace, "--timeout=60s", check=False)
        op.stop()
        print((tmp_path / "operator.log").read_text()[-4000:])
    leftover = [r for r in (work / "pools").glob("*.json")] if (work / "pools").exists() else []
    assert not leftover, f"runner records left after the pool's deletion: {leftover}"


def runner_pids(records: pathlib.Path) -> dict[str, int]:
    return {(d := json.loads(p.read_text()))["name"]: int(d["pid"]) for p in records.glob("*.json")}


class Room:
    """An agent and an audio-subscribing viewer in one room."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.agent, self.viewer = rtc.Room(), Viewer(watch_video=False)

    async def join(self) -> None:
        key, secret = self.stack.livekit_api_key, self.stack.livekit_api_secret
        token = harness_viewer.participant_token(key, secret, self.name, "agent", agent=True)
        await self.agent.connect(self.stack.livekit_url, token, rtc.RoomOptions(auto_subscribe=False))
        await self.viewer.join(self.stack.livekit_url, harness_viewer.participant_token(key, secret, self.name, "viewer"))

    async def leave(self) -> None:
        await self.viewer.leave()
        await self.agent.disconnect()


def session(name: str, room: str) -> dict[str, Any]:
    return {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": name},
        "spec": {"room": room, "agentIdentity": "agent", "poolRef": {"name": POOL}, "maxDuration": 600},
    }


async def test_a_warm_pool_serves_sessions(stack: Stack, namespace: str, operator: tuple[OperatorProcess, pathlib.Path]) -> None:
    _, records = operator
    ns = namespace
    names = [f"s{i}" for i in range(RUNNERS * SLOTS + 1)]
    rooms = {n: Room(stack, f"{ns}-{n}") for n in names}
    await asyncio.gather(*(r.join() for r in rooms.values()))
    try:
        pool = {
            "apiVersion": "avatar-operator.dev/v1alpha1",
            "kind": "AvatarPool",
            "metadata": {"name": POOL, "namespace": ns},
            "spec": {"replicas": RUNNERS, "sessionsPerRunner": SLOTS, "modelPath": "/models/demo.imx"},
        }
        t0 = time.monotonic()
        apply(stack, pool)
        await until("the pool Ready", lambda: condition(kget(stack, ns, "avp", POOL), "Ready").get("status") == "True", 90)
        print(f"pool of {RUNNERS} runners Ready in {time.monotonic() - t0:.1f} s")
        pool_obj = kget(stack, ns, "avp", POOL)
        assert pool_obj["status"]["slots"] == {"total": RUNNERS * SLOTS, "busy": 0, "free": RUNNERS * SLOTS}
        assert pool_obj["status"]["selector"] == f"avatar-operator.dev/pool={POOL}"

        # One request for the burst, one list per look: the figures are the operator's, not kubectl's.
        burst = {"apiVersion": "v1", "kind": "List", "items": [
            {**session(n, rooms[n].name), "metadata": {"name": n, "namespace": ns}} for n in names[:-1]
        ]}
        t_burst = time.monotonic()
        apply(stack, burst)
        ready_at: dict[str, float] = {}

        def all_ready() -> bool:
            for obj in json.loads(stack.kubectl("get", "avs", "-n", ns, "-o", "json").stdout)["items"]:
                if condition(obj, "Ready").get("status") == "True":
                    ready_at.setdefault(obj["metadata"]["name"], time.monotonic())
            return len(ready_at) == len(names) - 1

        await until("6 sessions Ready", all_ready, 90, interval=0.05)
        spreads = sorted(t - t_burst for t in ready_at.values())
        print(f"6 sessions in one burst: Ready {spreads[0]:.2f}-{spreads[-1]:.2f} s after the create was sent (list every 0.05 s)")

        def ready(n: str) -> bool:
            return condition(kget(stack, ns, "avs", n), "Ready").get("status") == "True"

        placed = {n: kget(stack, ns, "avs", n)["status"]["runner"] for n in names[:-1]}
        per_runner: dict[str, int] = {}
        for p in placed.values():
            assert p["pool"] == POOL and p["taskId"]
            per_runner[p["pod"]] = per_runner.get(p["pod"], 0) + 1
        assert sorted(per_runner.values()) == [SLOTS] * RUNNERS, per_runner

        # -- a seventh waits, then takes the freed slot -------------------------
        last = names[-1]
        apply(stack, {**session(last, rooms[last].name), "metadata": {"name": last, "namespace": ns}})
        exhausted = await until(
            "PoolExhausted", lambda: condition(kget(stack, ns, "avs", last), "RunnerScheduled").get("reason") == "PoolExhausted" and kget(stack, ns, "avs", last), 30
        )
        message = condition(exhausted, "RunnerScheduled")["message"]
        assert "6 busy of 6" in message, message
        assert exhausted["status"]["phase"] == "Pending"
        t_delete = time.monotonic()
        stack.kubectl("delete", "avs", names[0], "-n", ns, "--wait=false")
        await until(f"session {last} Ready", lambda: ready(last), 30, interval=0.1)
        print(f"7th session Ready {time.monotonic() - t_delete:.2f} s after a deletion freed a slot")
        freed = placed[names[0]]["pod"]
        assert kget(stack, ns, "avs", last)["status"]["runner"]["pod"] == freed

        # -- a runner killed: its sessions come back on a replacement ----------
        live = names[1:]
        pids = runner_pids(records)
        victim = next(p for p in pids if p != freed)
        moved = [n for n in live if kget(stack, ns, "avs", n)["status"]["runner"]["pod"] == victim]
        assert len(moved) == SLOTS
        t_kill = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)

        def back(n: str) -> bool:
            obj = kget(stack, ns, "avs", n)
            return obj["status"].get("restarts") == 1 and obj["status"]["runner"]["pod"] != victim and condition(obj, "Ready").get("status") == "True"

        for n in moved:
            await until(f"session {n} back on another runner", lambda n=n: back(n), 60)
        print(f"{len(moved)} sessions of the killed runner Ready again in {time.monotonic() - t_kill:.1f} s")
        assert all(not kget(stack, ns, "avs", n)["status"].get("restarts") for n in live if n not in moved)
        assert victim not in runner_pids(records)

        # -- kubectl scale adds a runner -----------------------------------------
        stack.kubectl("scale", "avp", POOL, "-n", ns, "--replicas=3")
        await until("3 ready runners", lambda: kget(stack, ns, "avp", POOL)["status"].get("readyReplicas") == 3, 60)
        status = kget(stack, ns, "avp", POOL)["status"]
        assert status["slots"]["total"] == 9 and status["slots"]["busy"] == 6, status["slots"]
    finally:
        await asyncio.gather(*(r.leave() for r in rooms.values()), return_exceptions=True)
