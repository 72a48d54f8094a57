"""Scenario 8: two operators, both --standalone, on the same namespaces (a misconfigured install).

Each records its name in a session's status.operator with every write; one
that sees the other's writes after its own steps back (the one with the
higher name), with a log line saying why. Invariants: one runner pod per
local session, one accepted cloud session at the API per session, no phase
going backwards, every session ends up held by one operator.
"""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import pytest

from tests.conftest import Stack
from tests.reliability.support import (
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    phase,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

ORDER = {None: 0, "Pending": 0, "Starting": 1, "Running": 2, "Succeeded": 3, "Failed": 3}
STEP_BACK_LINE = "acts on this session too"


class PhaseWatch(threading.Thread):
    """Samples every session's phase; the sequence of each must not go backwards."""

    def __init__(self, kube: Kube, ns: str) -> None:
        super().__init__(daemon=True)
        self.kube, self.ns = kube, ns
        self.seen: dict[str, list[str | None]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                for obj in self.kube.sessions(self.ns):
                    trail = self.seen.setdefault(obj["metadata"]["name"], [])
                    p = phase(obj)
                    if not trail or trail[-1] != p:
                        trail.append(p)
            except Exception:  # noqa: BLE001 - a sample lost is not a fault
                pass
            time.sleep(0.3)

    def backwards(self) -> dict[str, list[str | None]]:
        return {n: t for n, t in self.seen.items() if any(ORDER[b] < ORDER[a] for a, b in zip(t, t[1:]))}


@pytest.mark.scenario(
    "two_standalone_operators",
    description="two operators, both --standalone, on one namespace: one steps back per session; one runner pod and "
    "one accepted cloud session each, no phase backwards",
)
def test_two_standalone_operators_on_one_namespace(
    stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario
) -> None:
    sc = scenario
    spaces = Namespaces(stack, kube, evidence, "twoop")
    ns = spaces.create("a")
    logs = {name: artifacts / f"operator-two-{name}.log" for name in ("op-a", "op-b")}
    ops = {name: OperatorProc(stack, fake, log, [spaces.glob], identity=name) for name, log in logs.items()}
    for log in logs.values():
        evidence.file("operator log", log)
    watch = PhaseWatch(kube, ns)
    locals_ = [f"local-{i}" for i in range(3)]
    clouds = [f"cloud-{i}" for i in range(2)]
    try:
        with timed(sc):
            fake.reset()
            for op in ops.values():
                op.start()
            for op in ops.values():
                wait_until("operator up", lambda op=op: "Initial authentication has finished" in op.logs(), 60)
            sc.fault("second_standalone_operator")
            watch.start()
            for name in locals_:
                kube.create_session(ns, name, {"room": f"{ns}-{name}", "agentIdentity": "agent-1", "model": "essence", "modelPath": "/models/avatar.imx"})
                sc.op("create_local_session")
            for name in clouds:
                kube.create_session(ns, name, {"room": f"{ns}-{name}", "agentIdentity": "agent-1", "avatarId": f"A-{name}", "connection": {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}})
                sc.op("create_cloud_session")

            def settled() -> dict[str, Any] | None:
                objs = {o["metadata"]["name"]: o for o in kube.sessions(ns)}
                started = all(phase(objs.get(n)) in ("Starting", "Running") for n in locals_ + clouds)
                return objs if started else None

            wait_until("every session started", settled, 60, 0.5)

            def holders_now() -> dict[str, Any]:
                objs = {o["metadata"]["name"]: o for o in kube.sessions(ns)}
                return {n: (objs[n].get("status") or {}).get("operator") for n in locals_ + clouds}

            # Each worker looks at the live status once per turn (up to 5 s), past the watch's lag (3 s).
            t0 = time.monotonic()
            try:
                wait_until("one operator per session", lambda: all(h == "op-a" for h in holders_now().values()), 40, 1.0)
            except AssertionError:
                pass
            holders = holders_now()
            sc.note("converged_after_s", round(time.monotonic() - t0, 1))
            sc.note("holders", holders)
            sc.check("each_session_held_by_the_lower_named_operator", all(h == "op-a" for h in holders.values()), str(holders))
            pods = kube.pods(ns)
            per_session = {n: sum(p["metadata"]["name"] == f"{n}-runner" for p in pods) for n in locals_}
            sc.check("one_runner_pod_per_local_session", all(c == 1 for c in per_session.values()), str(per_session))
            accepted = {n: sum(s["room_name"] == f"{ns}-{n}" for s in fake.sessions()) for n in clouds}
            sc.check("one_accepted_cloud_session_each", all(c == 1 for c in accepted.values()), str(accepted))
            sc.check("no_phase_backwards", not watch.backwards(), str(watch.backwards()))
            said = STEP_BACK_LINE in ops["op-b"].logs()
            sc.check("the_stepping_back_operator_says_why", said or all(h == "op-a" for h in holders.values()), "no log line from op-b")
            sc.note("op_b_said_why", said)
            sc.check("op_a_never_steps_back", STEP_BACK_LINE not in ops["op-a"].logs())
            for name, op in ops.items():
                sc.check("operator_alive_at_end", op.alive(), name)
                tb = tracebacks(op.logs())
                sc.check("no_traceback_in_operator_log", not tb, f"{name}: {tb[:3]}")
            evidence.fake_requests(fake.requests())
            fake.reset()
            spaces.teardown(operator_running=True)
    finally:
        watch.halt.set()
        for op in ops.values():
            op.stop()
        spaces.teardown(operator_running=False)
    sc.assert_clean()
