"""A real livekit-agents job: tests/agents/avatar_agent.py as a worker registered with
the stack's livekit-server, dispatched into rooms through AgentDispatchService.

    worker = AgentWorker(stack.process_env(), tmp / "agent.log", api_secret=key)
    worker.start(); worker.wait_registered()
    job = await worker.dispatch(room, {"avatar": "plugin", "api_url": ..., "model": "expression", ...})
    await job.wait_for("avatar_joined", 60)
    ...
    worker.stop()

The worker's output goes to `log`; a failed wait says its last lines. The
speech the job says is a WAV the harness writes (write_speech_wav): no binary
fixture in the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Mapping
from typing import Any

from livekit import api

from tests.harness import processes
from tests.harness.stack import ROOT

AGENT_PROGRAM = ROOT / "tests" / "agents" / "avatar_agent.py"
TOPIC = "avatar-test"  # the data topic the job takes commands on (avatar_agent.TOPIC)
LOG_TAIL = 6000


def write_speech_wav(path: pathlib.Path, seconds: float) -> pathlib.Path:
    """`seconds` of speech-like sound with pauses (the demo agent's synthetic
    speech: voiced harmonics, 4 syllables a second, a pause every 2 s), 16-bit mono."""
    from avatar_runner import demo_agent

    samples = demo_agent.synthetic_speech(seconds, demo_agent.SYNTHETIC_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(demo_agent.SYNTHETIC_RATE)
        out.writeframes(samples.tobytes())
    return path


def tail(path: pathlib.Path, chars: int = LOG_TAIL) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


class Job:
    """One dispatch of the worker into a room; its steps as the job wrote them."""

    def __init__(self, worker: AgentWorker, room: str, events: pathlib.Path) -> None:
        self.worker, self.room, self.events_file = worker, room, events

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.events_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def find(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"] == event), None)

    async def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The first `event` the job wrote; AssertionError (with the job's steps and the
        worker's log) on timeout, on a `failed` step, or when the worker exits."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(event)
            if found is not None:
                return found
            failed = self.find("failed")
            problem = (
                f"the job failed: {failed['error']}" if failed
                else "the worker exited" if not self.worker.alive()
                else f"no {event!r} in {timeout:g} s" if time.monotonic() > deadline
                else None
            )
            if problem:
                raise AssertionError(f"{problem}; job steps: {self.events()}\n--- worker log ---\n{self.worker.logs()}")
            await asyncio.sleep(0.1)


class AgentWorker:
    """`python tests/agents/avatar_agent.py start` in its own process group (its job
    processes with it), registered under a fresh agent name. `api_secret` is the
    caller's key the plugin sends: in the worker's environment, never on its
    command line or in a dispatch's metadata."""

    def __init__(self, env: Mapping[str, str], log: pathlib.Path, *, api_secret: str = "", stop_grace: float = 20.0) -> None:
        self.env = dict(env)
        self.log = log
        self.agent_name = f"avatar-test-{uuid.uuid4().hex[:8]}"
        self.api_secret = api_secret
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.dispatches = 0

    @property
    def livekit_url(self) -> str:
        return self.env["LIVEKIT_URL"]

    def start(self) -> None:
        env = {**self.env, "AVATAR_AGENT_NAME": self.agent_name}
        if self.api_secret:
            env["AVATAR_AGENT_API_SECRET"] = self.api_secret
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(AGENT_PROGRAM), "start"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return tail(self.log)

    def wait_registered(self, timeout: float = 90.0) -> None:
        """Until the worker's log says livekit-server registered it."""
        deadline = time.monotonic() + timeout
        while "registered worker" not in tail(self.log, 10**7):
            if not self.alive():
                raise AssertionError(f"the agent worker exited before registering:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent worker did not register in {timeout:g} s:\n{self.logs()}")
            time.sleep(0.2)

    async def dispatch(self, room: str, config: Mapping[str, Any], events_dir: pathlib.Path) -> Job:
        """A dispatch of this worker's agent into `room` (created if absent), the job
        told `config` (avatar_agent.JobConfig's fields but `events`) in its metadata."""
        self.dispatches += 1
        events = events_dir / f"job-{self.dispatches}-{room}.jsonl"
        metadata = json.dumps({**config, "events": str(events)})
        async with api.LiveKitAPI(self.livekit_url, self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"]) as lk:
            await lk.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=self.agent_name, room=room, metadata=metadata)
            )
        return Job(self, room, events)

    def stop(self) -> None:
        """SIGTERM to the process group (the worker drains its jobs), SIGKILL after the grace."""
        if self.proc is None:
            return
        processes.stop_group(self.proc, self.stop_grace)
        # Job processes outlive a drained worker only by a bug: take them too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


# -- what a test checks of the job's room ----------------------------------------

MOUTH_OPEN = 0.05  # share of dark pixels in the mouth region of an open mouth (as test_runner_livekit)
SETTLE_S = 1.0  # a viewer's first second of video can be a burst: speech starts after it


async def participants(env: Mapping[str, str], room: str) -> dict[str, api.ParticipantInfo]:
    """The room's participants as livekit-server lists them (RoomService), by identity."""
    async with api.LiveKitAPI(env["LIVEKIT_URL"], env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"]) as lk:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity: p for p in listed.participants}


def mouth_figures(video: list[tuple[float, int, float]], speaking: float, spoke: float) -> dict[str, float]:
    """The mouth on a viewer's frames (tests.harness.viewer.Viewer.video): before the
    speech (idle) and while it played, and the frame rate while it played."""
    idle = [m for t, _, m in video if t < speaking and not math.isnan(m)]
    spoken = [(t, m) for t, _, m in video if speaking <= t <= spoke]
    opened = [m for _, m in spoken if not math.isnan(m)]
    return {
        "idle_max": max(idle, default=float("nan")),
        "speech_max": max(opened, default=float("nan")),
        "open_share": sum(m > MOUTH_OPEN for m in opened) / len(opened) if opened else 0.0,
        "fps": len(spoken) / (spoke - speaking) if spoke > speaking else 0.0,
    }
