"""Scenario 2: the control plane and the media plane fail under the operator.

kube-apiserver is stopped mid-churn and started again: the operator resumes its
watches and finishes the work. livekit-server is restarted under a running
session (a real runner, started by the operator's process launcher, in the room
with an agent): the session says what happened, and the runner reconnects or
exits with a reason that the session shows.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import os
import pathlib
import random
import threading
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from livekit import api, rtc

from tests.conftest import Stack
from tests.reliability.support import (
    BITHUMAN_SECRET,
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    StackControl,
    StandInCloudWorker,
    condition,
    phase,
    room_participants,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

CLOUD_CONN = {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}
OUTAGE_S = 20


def _spec(ns: str, name: str, i: int) -> dict[str, Any]:
    base = {"room": f"{ns}-{name}", "agentIdentity": f"agent-{i}"}
    if i % 2 == 0:
        return {**base, "model": "essence", "modelPath": "/models/avatar.imx"}
    return {**base, "avatarId": f"C{i:05d}", "connection": dict(CLOUD_CONN)}


def _retrying(fn: Any, what: str, timeout: float = 60.0) -> Any:
    """Calls fn until the API server answers (it may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ApiException as e:
            if e.status and e.status < 500 and e.status != 429:
                raise
            err: Exception = e
        except Exception as e:  # noqa: BLE001 - connection refused while it is down
            err = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: the API server did not answer in {timeout:.0f}s: {err}")
        time.sleep(0.5)


@pytest.mark.scenario("apiserver_restart", description="kube-apiserver stopped for 20 s and started again in the middle of a churn of local and cloud sessions (creates and deletes before, during the outage's aftermath and after)")
def test_apiserver_restart_mid_churn(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, stackctl: StackControl, scenario: Scenario) -> None:
    sc = scenario
    spaces = Namespaces(stack, kube, evidence, "cp")
    ns = spaces.create("a")
    log = artifacts / "operator-apiserver.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob])
    rng = random.Random()
    names = [f"k{i:02d}" for i in range(40)]
    specs = {n: _spec(ns, n, i) for i, n in enumerate(names)}
    deleted: set[str] = set()
    try:
        with timed(sc):
            op.start()
            wait_until("operator up", lambda: "Initial authentication has finished" in op.logs(), 60)
            for n in names[:15]:
                kube.create_session(ns, n, specs[n])
                evidence.session(specs[n])
                sc.op("create_before_outage")
                time.sleep(0.15)
            # Stop the API server while the first sessions are being worked on.
            stackctl.stop("kube-apiserver")
            sc.fault("kube_apiserver_stopped")
            t_down = time.monotonic()
            time.sleep(OUTAGE_S)
            stackctl.start_apiserver()
            t_up = time.monotonic()
            sc.note("outage_seconds", round(t_up - t_down, 1))
            sc.check("operator_survives_outage", op.alive(), "the operator process exited during the API server outage")
            # Work that only a resumed watch can see: new sessions and deletions.
            for n in names[15:]:
                _retrying(lambda n=n: kube.create_session(ns, n, specs[n]), f"create {n}")
                evidence.session(specs[n])
                sc.op("create_after_outage")
                time.sleep(0.1)
            for n in rng.sample(names[:15], 4) + rng.sample(names[15:], 4):
                _retrying(lambda n=n: kube.delete_session(ns, n), f"delete {n}")
                deleted.add(n)
                sc.op("delete_after_outage")

            def problems() -> list[str]:
                out = []
                live = {o["metadata"]["name"]: o for o in kube.sessions(ns)}
                pods = collections.Counter(p["metadata"]["name"] for p in kube.pods(ns))
                accepted = collections.Counter(s["room_name"] for s in fake.sessions())
                for i, n in enumerate(names):
                    if n in deleted:
                        if n in live:
                            out.append(f"{n}: deleted but still there (finalizers {live[n]['metadata'].get('finalizers')})")
                        if pods.get(f"{n}-runner"):
                            out.append(f"{n}: deleted, runner pod left")
                        continue
                    obj = live.get(n)
                    if phase(obj) != "Starting":
                        out.append(f"{n}: phase {phase(obj)}")
                    elif i % 2 == 0 and (pods.get(f"{n}-runner") != 1 or condition(obj, "RunnerScheduled").get("status") != "True"):
                        out.append(f"{n}: runner pod {pods.get(f'{n}-runner')}, RunnerScheduled {condition(obj, 'RunnerScheduled')}")
                    elif i % 2 == 1 and accepted.get(specs[n]["room"], 0) != 1:
                        out.append(f"{n}: {accepted.get(specs[n]['room'], 0)} accepted cloud requests")
                return out

            last: list[str] = []

            def finished() -> bool:
                last[:] = problems()
                return not last

            try:
                wait_until("all work finished after the restart", finished, 150, 2.0)
            except AssertionError:
                pass
            sc.note("seconds_from_restart_to_converged", round(time.monotonic() - t_up, 1))
            sc.check("operator_finishes_the_work_after_restart", not last, "; ".join(last[:15]))
            for n in names:
                sc.check("session_in_right_state", not any(p.startswith(f"{n}:") for p in last), next((p for p in last if p.startswith(f"{n}:")), ""))
            sc.check("operator_alive_at_end", op.alive())
            log_text = op.logs()
            sc.note("operator_log_tracebacks", collections.Counter(tracebacks(log_text)).most_common(8))
            sc.note("operator_log_errors", sum("[ERROR" in ln for ln in log_text.splitlines()))
            evidence.fake_requests(fake.requests())
            spaces.teardown(operator_running=True)
    finally:
        if not stackctl.running("kube-apiserver"):
            stackctl.start_apiserver()
        op.stop()
        spaces.teardown(operator_running=False)
    sc.assert_clean()


class StandInAgent:
    """The agent participant, in a thread: joins the room and stays, subscribing to the avatar."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.stop = threading.Event()
        self.events: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="stand-in-agent", daemon=True)

    async def _run(self) -> None:
        room = rtc.Room()
        room.on("disconnected", lambda reason: self.events.append((time.time(), f"disconnected {reason}")))
        room.on("reconnecting", lambda: self.events.append((time.time(), "reconnecting")))
        room.on("reconnected", lambda: self.events.append((time.time(), "reconnected")))
        await room.connect(self.url, self.token)
        self.events.append((time.time(), "connected"))
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
        await room.disconnect()


def _runner_pids(agent_identity: str) -> list[int]:
    """Runner processes (python -m avatar_runner) of this session, found by their environment."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if b"avatar_runner" not in cmd:
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"AGENT_IDENTITY={agent_identity}".encode() in env:
            pids.append(int(d.name))
    return pids


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


@pytest.mark.scenario("livekit_restart", description="livekit-server restarted under a running local session (a real runner via the process launcher, portrait renderer, with an agent in the room); the operator is configured as `make demo` runs it")
def test_livekit_restart_under_running_session(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, stackctl: StackControl, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    spaces = Namespaces(stack, kube, evidence, "lk")
    ns = spaces.create("a")
    log = artifacts / "operator-livekit.log"
    runners = artifacts / "runners"
    evidence.file("operator log", log)
    # As hack/demo.py runs it: process launcher, portrait renderer, and the
    # stack's environment (which holds operator-wide LiveKit credentials).
    op = OperatorProc(stack, fake, log, [spaces.glob], env={
        "AVATAR_RUNNER_LAUNCHER": "process",
        "AVATAR_RUNNER_RENDERER": "portrait",
        "AVATAR_PROCESS_WORKDIR": str(runners),
        "LIVEKIT_API_KEY": stack.livekit_api_key,
        "LIVEKIT_API_SECRET": stack.livekit_api_secret,
    })
    name, agent = "live", f"agent-{os.urandom(3).hex()}"
    spec = {"room": f"{ns}-{name}", "agentIdentity": agent, "modelPath": "/models/avatar.imx"}
    agent_token = (
        api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret).with_identity(agent).with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room=spec["room"])).with_ttl(datetime.timedelta(minutes=20)).to_jwt()
    )
    stand_in = StandInAgent(stack.livekit_url, agent_token)
    timeline: list[tuple[float, str, str, str]] = []
    watching = threading.Event()

    def watch() -> None:
        seen = None
        while not watching.is_set():
            try:
                obj = kube.session(ns, name)
            except Exception:  # noqa: BLE001
                obj = None
            ready = condition(obj, "Ready")
            now = (phase(obj) or "-", ready.get("reason", "-"), ready.get("message", "-"))
            if now != seen:
                timeline.append((round(time.time(), 2), *now))
                seen = now
            time.sleep(0.4)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with timed(sc):
            op.start()
            stand_in.thread.start()
            kube.create_session(ns, name, spec)
            evidence.session(spec)
            sc.op("create_local_process_runner")
            watcher.start()
            wait_until("the session Ready (avatar publishing video)", lambda: condition(kube.session(ns, name), "Ready").get("status") == "True", 120, 1.0)
            participants = room_participants(stack, spec["room"])
            evidence.text("participant attributes (LiveKit)", json.dumps(participants))
            avatar = [p for p in participants if p["identity"] != agent]
            sc.check("avatar_attributes_name_the_agent", bool(avatar) and all(p["attributes"].get("lk.publish_on_behalf") == agent for p in avatar), str(participants))
            pids = _runner_pids(agent)
            sc.check("one_runner_process", len(pids) == 1, f"runner processes: {pids}")
            env = _environ(pids[0]) if pids else {}
            for key, value in (("LIVEKIT_API_SECRET", stack.livekit_api_secret), ("BITHUMAN account secret", BITHUMAN_SECRET)):
                leaked = [k for k, v in env.items() if value and value in v]
                sc.check("runner_environment_holds_no_account_secret", not leaked, f"the runner process (pid {pids[0] if pids else '-'}) has the {key} in its environment: {leaked}")
            evidence.text("runner environment", "\n".join(f"{k}={v}" for k, v in env.items() if k.startswith(("AVATAR", "LIVEKIT_URL", "AGENT"))))
            time.sleep(3)

            stackctl.stop("livekit-server")
            sc.fault("livekit_server_stopped")
            t_down = time.time()
            time.sleep(8)  # longer than the operator's 5 s poll of a Ready session
            stackctl.start_livekit()
            sc.fault("livekit_server_started")
            t_up = time.time()

            def settled() -> Any:
                obj = kube.session(ns, name)
                alive = bool(_runner_pids(agent))
                ready = condition(obj, "Ready")
                if phase(obj) in ("Succeeded", "Failed") and not alive:
                    return ("ended", obj)
                if phase(obj) == "Running" and ready.get("status") == "True" and ready.get("lastTransitionTime", "") >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_up - 1)) and alive:
                    return ("reconnected", obj)
                return None

            try:
                outcome, obj = wait_until("the session to settle after the LiveKit restart", settled, 90, 1.0)
            except AssertionError:
                outcome, obj = "unsettled", kube.session(ns, name)
            time.sleep(6)  # one more poll: the state must hold
            final = kube.session(ns, name)
            alive = bool(_runner_pids(agent))
            watching.set()
            ready = condition(final, "Ready")
            sc.note("outcome", outcome)
            sc.note("final", {"phase": phase(final), "ready": {k: ready.get(k) for k in ("status", "reason", "message")}, "runner_alive": alive})
            sc.note("status_timeline", [{"t": round(t - t_down, 1), "phase": p, "reason": r, "message": m[:200]} for t, p, r, m in timeline])
            sc.note("agent_events", [(round(t - t_down, 1), e) for t, e in stand_in.events])
            sc.note("livekit_down_seconds", round(t_up - t_down, 1))
            term = [f.read_text().strip() for f in runners.glob("*.termination-log")]
            sc.note("runner_termination_message", term)
            saw_outage = any(r == "LiveKitUnreachable" and t_down <= t <= t_up + 6 for t, _, r, _ in timeline)
            msg = (ready or condition(final, "Reconciling")).get("message", "")  # Succeeded: no Ready
            names_livekit = "livekit" in msg.lower()
            sc.check("session_says_livekit_went_away", saw_outage or (phase(final) in ("Succeeded", "Failed") and names_livekit),
                     f"the session never said LiveKit was unreachable and ended with {phase(final)}/{ready.get('reason')}: {msg!r}; timeline {[(round(t - t_down, 1), p, r) for t, p, r, _ in timeline]}")
            sc.check("session_settles_after_restart", outcome != "unsettled", f"phase {phase(final)}, Ready {ready}, runner alive {alive}")
            consistent = (phase(final) in ("Succeeded", "Failed") and not alive) or (phase(final) == "Running" and ready.get("status") == "True" and alive)
            sc.check("status_matches_the_runner", consistent, f"phase {phase(final)} Ready {ready.get('status')}/{ready.get('reason')} but runner process alive={alive}")
            sc.check("runner_reconnects_or_exits_naming_livekit", outcome == "reconnected" or any("livekit" in t.lower() for t in term),
                     f"the runner ended with {term!r} (session: {msg!r}) although the agent "
                     f"{'reconnected' if any(e == 'reconnected' for _, e in stand_in.events) else 'did not leave'}: LiveKit events of the agent {[(round(t - t_down, 1), e) for t, e in stand_in.events]}")
            # The runner's own words, for the report.
            for f in sorted(runners.glob("*.stderr")) + sorted(runners.glob("*.termination-log")):
                evidence.file("runner log", f)
            for f in sorted(runners.glob("*.stdout")):
                evidence.file("runner log", f)
            sc.check("operator_alive_at_end", op.alive())
            spaces.teardown(operator_running=True)
    finally:
        watching.set()
        stand_in.stop.set()
        if not stackctl.running("livekit-server"):
            stackctl.start_livekit()
        op.stop()
        spaces.teardown(operator_running=False)
    sc.assert_clean(since)


@pytest.mark.scenario("livekit_restart")
def test_livekit_restart_under_cloud_session(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, stackctl: StackControl, scenario: Scenario) -> None:
    """The avatar is a stand-in for bitHuman's cloud worker. It loses the server with
    everyone else and is back 6 s after the server (an SDK reconnect backs off; LiveKit
    itself holds a departed participant for 20 s): the operator must not end the
    session in between."""
    sc = scenario
    since = sc.checkpoint()
    spaces = Namespaces(stack, kube, evidence, "lkc")
    ns = spaces.create("a")
    log = artifacts / "operator-livekit-cloud.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob])
    name = "cloud-live"
    spec = {"room": f"{ns}-{name}", "agentIdentity": "agent-c", "avatarId": "A-live", "connection": dict(CLOUD_CONN)}
    worker: StandInCloudWorker | None = None
    try:
        with timed(sc):
            op.start()
            kube.create_session(ns, name, spec)
            evidence.session(spec)
            sc.op("create_cloud_session")
            wait_until("the cloud request accepted", lambda: condition(kube.session(ns, name), "CloudRequestAccepted").get("status") == "True", 60)
            token = next((r.get("json") or {}).get("livekit_token") for r in reversed(fake.requests()) if r["route"] == "session" and (r.get("json") or {}).get("room_name") == spec["room"])
            worker = StandInCloudWorker(stack.livekit_url, token)
            worker.thread.start()
            wait_until("the session Ready", lambda: condition(kube.session(ns, name), "Ready").get("status") == "True", 60, 0.5)
            evidence.text("participant attributes (LiveKit)", json.dumps(room_participants(stack, spec["room"])))
            stackctl.stop("livekit-server")
            sc.fault("livekit_server_stopped")
            t_down = time.time()
            worker.leave.set()
            seen: list[tuple[float, str, str]] = []
            end = time.time() + 8
            while time.time() < end:
                obj = kube.session(ns, name)
                seen.append((round(time.time() - t_down, 1), phase(obj) or "-", condition(obj, "Ready").get("reason", "-")))
                time.sleep(0.5)
            stackctl.start_livekit()
            sc.fault("livekit_server_started")
            t_up = time.time()
            end = t_up + 30
            rejoin_at, rejoined = t_up + 6, False
            while time.time() < end:
                if time.time() >= rejoin_at and not rejoined:
                    worker.rejoin.set()
                    rejoined = True
                    sc.fault("avatar_away_until_6s_after_restart")
                obj = kube.session(ns, name)
                seen.append((round(time.time() - t_down, 1), phase(obj) or "-", condition(obj, "Ready").get("reason", "-")))
                time.sleep(0.5)
            final = kube.session(ns, name)
            ready = condition(final, "Ready")
            timeline = [x for i, x in enumerate(seen) if i == 0 or x[1:] != seen[i - 1][1:]]
            sc.note("cloud_status_timeline", timeline)
            sc.note("cloud_worker_events", [(round(t - t_down, 1), e) for t, e in worker.events])
            sc.note("cloud_final", {"phase": phase(final), "ready": {k: ready.get(k) for k in ("status", "reason", "message")}, "worker_connected": worker.connected})
            sc.check("session_says_livekit_went_away", any(r == "LiveKitUnreachable" for _, _, r in seen), f"timeline {timeline}")
            ended = phase(final) in ("Succeeded", "Failed")
            sc.check(
                "session_not_ended_while_avatar_rides_out_restart",
                not (ended and worker.connected),
                f"the session ended ({phase(final)}/{ready.get('reason')}: {ready.get('message')!r}) while the avatar reconnected and is in the room; timeline {timeline}; worker {[(round(t - t_down, 1), e) for t, e in worker.events]}",
            )
            if not ended:
                sc.check("session_ready_again_after_restart", phase(final) == "Running" and ready.get("status") == "True", f"final {phase(final)} {ready}")
            sc.check("operator_alive_at_end", op.alive())
            evidence.fake_requests(fake.requests())
            spaces.teardown(operator_running=True)
    finally:
        if worker is not None:
            worker.stop.set()
        if not stackctl.running("livekit-server"):
            stackctl.start_livekit()
        op.stop()
        spaces.teardown(operator_running=False)
    sc.assert_clean(since)
