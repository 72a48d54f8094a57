"""Cloud create-to-Ready with the operator's LiveKit webhooks and with polling only, side by side.

Two operators run at once, each watching a namespace of its own: one with its
webhook receiver on (the stack's livekit-server posts to it), one with it off
(AVATAR_WEBHOOK_PORT=0: LiveKit polled first at once, then every 0.5 s growing
x1.5 up to 5 s). Both send to the fake bitHuman API (tests.fakes), which
answers at once. Each burst is N cloud sessions created at once in one
namespace; as the fake records each request, the bench plays bitHuman's cloud
worker (as the reliability suite's stand-in does): it joins the room with the
token the operator sent and publishes video. The modes alternate, first one
then the other, for `repeats` rounds.

Measured per session, on the bench's monotonic clock:
- create-to-Ready: from just before the create request to the first Ready=True
  seen by a watch in a process of its own (bench.pool's);
- published-to-Ready: from the stand-in's video track published to that Ready,
  the operator's lag behind the media plane, which webhooks should shrink.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import math
import os
import pathlib
import sys
import time
from typing import Any

from avatar_operator.api import names

from bench import stats
from bench.kubeapi import BenchKube
from bench.pool import GROUP_PATH, ReadyWatch, _median
from bench.procs import BITHUMAN_SECRET, FakeAPI
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.stack import Stack

MODES = ("webhooks", "polling")
AGENT = "agent"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


class StandIn:
    """bitHuman's cloud worker in one room: joins with the operator's token, publishes video."""

    def __init__(self) -> None:
        from livekit import rtc

        self.room = rtc.Room()
        self.published: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def join(self, url: str, token: str) -> None:
        from livekit import rtc

        await self.room.connect(url, token)
        source = rtc.VideoSource(32, 32)
        track = rtc.LocalVideoTrack.create_video_track("avatar", source)
        await self.room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        self.published = time.monotonic()
        frame = rtc.VideoFrame(32, 32, rtc.VideoBufferType.RGBA, bytes(32 * 32 * 4))

        async def frames() -> None:
            while True:
                source.capture_frame(frame)
                await asyncio.sleep(0.1)

        self._task = asyncio.create_task(frames())

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.room.disconnect()


class CloudReadyBench:
    def __init__(self, stack: Stack, artifacts: pathlib.Path, n: int = 8, repeats: int = 3) -> None:
        from bench.control_plane import RUN_ID

        self.stack, self.artifacts, self.n, self.repeats = stack, artifacts, n, repeats
        self.env = dict(stack.env)
        self.ns = {m: f"bench-{RUN_ID}-ready-{m}" for m in MODES}
        self.ops: dict[str, OperatorProcess] = {}
        self.watches = {m: ReadyWatch() for m in MODES}
        self.kube: BenchKube | None = None
        self.fake: FakeAPI | None = None

    async def setup(self) -> None:
        self.kube = BenchKube(self.env["KUBECONFIG"], pool=self.n + 8)
        self.fake = FakeAPI(self.artifacts / "ready-fake-bithuman.log")
        for mode in MODES:
            ns = self.ns[mode]
            await self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"avatar-operator.dev/bench": "true"}}})
            await self.kube.create(secret(ns, "livekit-credentials", {"LIVEKIT_API_KEY": self.env["LIVEKIT_API_KEY"], "LIVEKIT_API_SECRET": self.env["LIVEKIT_API_SECRET"]}))
            await self.kube.create(secret(ns, "bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
            env = operator_env(
                self.stack.process_env(), livekit_url=self.stack.livekit_url, fake_urls=self.fake.urls,
                runner_image="registry.invalid/avatar-runner:bench",
                extra={} if mode == "webhooks" else {"AVATAR_WEBHOOK_PORT": "0"},
            )
            if mode == "webhooks" and not env.get("AVATAR_WEBHOOK_PORT"):
                raise RuntimeError("the stack sends no webhooks (no AVATAR_STACK_WEBHOOK_PORTS in .stack/env): run `make stack-up`")
            self.ops[mode] = OperatorProcess(env, self.artifacts / f"ready-operator-{mode}.log", [ns], stop_grace=30.0)
            self.ops[mode].start()
            await self.watches[mode].start(self.env["KUBECONFIG"], ns)
        await asyncio.sleep(3.0)  # both operators past their start (the receiver listening)

    async def teardown(self) -> None:
        kube = self.kube
        for mode in MODES:
            if kube is not None:
                await self.delete_sessions(mode)
            await self.watches[mode].stop()
            if mode in self.ops:
                await asyncio.to_thread(self.ops[mode].stop)
            if kube is not None:
                await kube.request("DELETE", f"/api/v1/namespaces/{self.ns[mode]}", ok404=True)
        if self.fake is not None:
            self.fake.stop()
        if kube is not None:
            await kube.close()

    def path(self, mode: str) -> str:
        return f"{GROUP_PATH}/namespaces/{self.ns[mode]}/{names.PLURAL}"

    async def delete_sessions(self, mode: str, timeout: float = 60.0) -> None:
        assert self.kube is not None
        await self.kube.request("DELETE", self.path(mode), ok404=True)
        deadline = time.monotonic() + timeout
        while (listed := await self.kube.get(self.path(mode), limit=1)) and listed.get("items") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def token_for(self, room: str, timeout: float = 60.0) -> str:
        """The LiveKit token the operator sent bitHuman for `room` (the fake's record of the request)."""
        assert self.fake is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in await asyncio.to_thread(self.fake.requests):
                fields = r.get("json") or r.get("form") or {}
                if r.get("route") == "session" and fields.get("room_name") == room:
                    return str(fields["livekit_token"])
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no bitHuman request for room {room} in {timeout:.0f} s")

    async def burst(self, mode: str, rep: int) -> dict[str, Any]:
        assert self.kube is not None
        watch, ns = self.watches[mode], self.ns[mode]
        names_ = [f"{mode[0]}{rep}-{i}" for i in range(self.n)]
        rooms = {x: f"{ns}-{x}" for x in names_}
        created: dict[str, float] = {}
        standins = {x: StandIn() for x in names_}

        async def one(x: str) -> None:
            created[x] = time.monotonic()
            await self.kube.create({  # type: ignore[union-attr]
                "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND, "metadata": {"name": x, "namespace": ns},
                "spec": {"room": rooms[x], "agentIdentity": AGENT, "avatarId": f"A-{x}", "maxDuration": 300},
            })
            await standins[x].join(self.env["LIVEKIT_URL"], await self.token_for(rooms[x]))

        result: dict[str, Any] = {"mode": mode, "rep": rep, "n": self.n, "loadavg": [round(v, 2) for v in os.getloadavg()]}
        try:
            await asyncio.gather(*(one(x) for x in names_))
            missing = await watch.wait(names_, "Ready", 60.0)
            ready = {x: t for x in names_ if (t := watch.seen(x, "Ready")) is not None}
            lag = [t - p for x, t in ready.items() if (p := standins[x].published) is not None]
            result |= {
                "ready": stats.summary_ms(t - created[x] for x, t in ready.items()),
                "published_to_ready": stats.summary_ms(lag),
                "incomplete": len(missing),
            }
            log(f"ready {mode} burst {rep}: create->Ready p50 {result['ready']['p50_ms']} ms p99 {result['ready']['p99_ms']} ms; "
                f"published->Ready p50 {result['published_to_ready']['p50_ms']} ms p99 {result['published_to_ready']['p99_ms']} ms")
        finally:
            await self.delete_sessions(mode)
            await asyncio.gather(*(s.leave() for s in standins.values()), return_exceptions=True)
        return result

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "n": self.n, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "method": "cloud sessions, fake bitHuman answering at once, a stand-in joining with the sent token and publishing video; "
                      "Ready from a watch in its own process",
        }
        runs: list[dict[str, Any]] = []
        try:
            await self.setup()
            for rep in range(self.repeats):
                for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                    runs.append(await self.burst(mode, rep))
        except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
            out["error"] = f"{type(e).__name__}: {e}"
            log(f"ready part failed: {out['error']}")
        finally:
            if "webhooks" in self.ops:
                out["webhook_receiver"] = "webhook receiver on" in self.ops["webhooks"].logs()
            await self.teardown()
        for mode in MODES:
            rs = [r for r in runs if r["mode"] == mode and "ready" in r]
            out[mode] = {
                "repeats": len(rs),
                "ready_p50_ms": _median([r["ready"]["p50_ms"] for r in rs]),
                "ready_p99_ms": _median([r["ready"]["p99_ms"] for r in rs]),
                "published_to_ready_p50_ms": _median([r["published_to_ready"]["p50_ms"] for r in rs]),
                "published_to_ready_p99_ms": _median([r["published_to_ready"]["p99_ms"] for r in rs]),
                "incomplete": sum(r.get("incomplete", 0) for r in rs),
            }
        out["runs"] = runs
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        out["duration_s"] = round(time.monotonic() - started, 1)
        return out


def table(p: dict[str, Any]) -> list[str]:
    def f(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"

    lines = [f"cloud create-to-Ready, bursts of N={p.get('n')} (stand-in cloud worker), medians of repeats:"]
    for mode in MODES:
        k = p.get(mode) or {}
        lines.append(f"  {mode:8}: create -> Ready p50 {f(k.get('ready_p50_ms'))} ms, p99 {f(k.get('ready_p99_ms'))} ms; "
                     f"video published -> Ready p50 {f(k.get('published_to_ready_p50_ms'))} ms, p99 {f(k.get('published_to_ready_p99_ms'))} ms; repeats {k.get('repeats')}")
    if p.get("error"):
        lines.append(f"  error: {p['error']}")
    return lines
