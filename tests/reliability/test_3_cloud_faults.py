"""Scenario 3: the bitHuman API misbehaves; the operator retries by the rules.

Per case a cloud session with its own `connection`, a script for the fake API,
and what must follow: how many attempts reach the server, how far apart (the
fake stamps each request's arrival), the final phase and reason, and the
server's own message in the status condition. design.md §3: connection errors,
timeouts, 429 and 5xx are retried (429 no sooner than its Retry-After); any
other 4xx fails at once with the server's reason.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
import uuid
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
    condition,
    free_port,
    phase,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

TOTAL_TIMEOUT_FACTOR = 3.0  # cloud.py: total=3*timeout, sock_connect=timeout
SLACK_S = 1.5  # a loaded 2-core machine: patching status, scheduling, connecting


@dataclasses.dataclass
class Case:
    name: str
    script: list[dict[str, Any]]
    connection: dict[str, Any]
    outcome: str  # "accepted", "RetriesExhausted", "RequestRejected"
    attempts: int
    gaps: list[float]  # expected seconds between request arrivals (lower bounds)
    message: str | None = None  # must appear in the condition's message
    route: str = "session"
    api_url: str | None = None  # None: the operator's default API (the fake)
    accepted_sessions: int | None = None  # sessions the fake counts for the room


def _marker() -> str:
    return f"srv-{uuid.uuid4().hex[:8]}"


def cases() -> list[Case]:
    out: list[Case] = []
    for status in (500, 503):
        m = _marker()
        out.append(Case(f"{status}-then-ok", [{"status": status, "body": {"error": {"message": f"{m} overloaded"}}}, {}], {"maxRetry": 3, "retryInterval": 1.0, "timeout": 5}, "accepted", 2, [1.0], accepted_sessions=1))
    m = _marker()
    out.append(Case("503-exhausted", [{"status": 503, "body": {"error": {"message": f"{m} capacity exhausted"}}}] * 3, {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}, "RetriesExhausted", 3, [0.5, 0.5], message=m, accepted_sessions=0))
    m = _marker()
    out.append(Case("429-retry-after", [{"status": 429, "headers": {"Retry-After": "3"}, "body": {"error": {"message": f"{m} slow down"}}}, {}], {"maxRetry": 3, "retryInterval": 0.2, "timeout": 5}, "accepted", 2, [3.0], accepted_sessions=1))
    m = _marker()
    out.append(Case("429-exhausted", [{"status": 429, "headers": {"Retry-After": "1"}, "body": f"{m} rate limited"}] * 2, {"maxRetry": 2, "retryInterval": 0.2, "timeout": 5}, "RetriesExhausted", 2, [1.0], message=m, accepted_sessions=0))
    out.append(Case("drop-then-ok", [{"drop": True}, {}], {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}, "accepted", 2, [0.5], accepted_sessions=1))
    out.append(Case("drop-exhausted", [{"drop": True}] * 2, {"maxRetry": 2, "retryInterval": 0.5, "timeout": 5}, "RetriesExhausted", 2, [0.5], message="Disconnected", accepted_sessions=0))
    # The first answer is lost (it comes after the client's limit); the retry is
    # answered, and the API sees one session: the Idempotency-Key at work.
    out.append(Case("timeout-then-ok", [{"delay": 2.5}, {}], {"maxRetry": 3, "retryInterval": 0.5, "timeout": 0.5}, "accepted", 2, [0.5 * TOTAL_TIMEOUT_FACTOR + 0.5], accepted_sessions=1))
    out.append(Case("timeout-exhausted", [{"delay": 2.5}] * 2, {"maxRetry": 2, "retryInterval": 0.3, "timeout": 0.5}, "RetriesExhausted", 2, [0.5 * TOTAL_TIMEOUT_FACTOR + 0.3], message="no answer in time"))
    for status in (400, 401, 403, 422):
        m = _marker()
        out.append(Case(f"{status}-at-once", [{"status": status, "body": {"error": {"code": "X", "message": f"{m} refused by the server"}}}], {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}, "RequestRejected", 1, [], message=m, accepted_sessions=0))
    m = _marker()
    out.append(Case("mint-403", [{"status": 403, "body": {"error": {"message": f"{m} account suspended"}}}], {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}, "RequestRejected", 0, [], message=m, route="mint", accepted_sessions=0))
    # Nothing listens there: connection refused, retried, then given up.
    out.append(Case("connection-refused", [], {"maxRetry": 3, "retryInterval": 0.7, "timeout": 2}, "RetriesExhausted", 3, [0.7, 0.7], message="Cannot connect", api_url=f"http://127.0.0.1:{free_port()}/v1/runtime-tokens/request"))
    return out


def fault_label(case: Case) -> str:
    first = case.script[0] if case.script else {}
    if case.api_url:
        return "connection_refused"
    if first.get("drop"):
        return "dropped_connection"
    if first.get("delay"):
        return "timeout"
    return f"{case.route}_http_{first.get('status')}" if case.route != "session" else f"http_{first.get('status')}"


class AttemptWatch(threading.Thread):
    """Polls a session's status.attempts: when each attempt began, as the operator records it."""

    def __init__(self, kube: Kube, ns: str, name: str) -> None:
        super().__init__(daemon=True)
        self.kube, self.ns, self.name = kube, ns, name
        self.times: dict[int, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                obj = self.kube.session(self.ns, self.name)
            except Exception:  # noqa: BLE001
                obj = None
            n = ((obj or {}).get("status") or {}).get("attempts")
            if isinstance(n, int) and n not in self.times:
                self.times[n] = time.time()
            time.sleep(0.1)


@pytest.mark.scenario("cloud_api_faults", description="the fake bitHuman API refuses connections, times out, answers 429 with Retry-After, 500/503, drops connections and answers 400/401/403/422 (and a 403 from the runtime-token mint)")
def test_cloud_api_faults(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    spaces = Namespaces(stack, kube, evidence, "cloud")
    ns = spaces.create("a")
    log = artifacts / "operator-cloud.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob])
    results: dict[str, Any] = {}
    try:
        with timed(sc):
            op.start()
            wait_until("operator up", lambda: "Initial authentication has finished" in op.logs(), 60)
            for case in cases():
                evidence.fake_requests(fake.requests())
                fake.reset()
                if case.script:
                    fake.script(case.script, route=case.route)
                name = f"c-{case.name}"
                spec: dict[str, Any] = {"room": f"{ns}-{name}", "agentIdentity": "agent-1", "avatarId": f"A-{case.name}", "connection": case.connection}
                if case.api_url:
                    spec["bithuman"] = {"apiUrl": case.api_url}
                watch = AttemptWatch(kube, ns, name)
                watch.start()
                t0 = time.time()
                kube.create_session(ns, name, spec)
                evidence.session(spec)
                sc.op("create_cloud_session")
                faulty = [e for e in case.script if e]
                sc.fault(fault_label(case), len(faulty) if faulty else case.attempts)

                def done() -> dict[str, Any] | None:
                    obj = kube.session(ns, name)
                    if phase(obj) in ("Failed", "Succeeded") or condition(obj, "CloudRequestAccepted").get("status") == "True":
                        return obj
                    return None

                obj = wait_until(f"case {case.name} to finish", done, 60, 0.3)
                time.sleep(0.3)
                watch.halt.set()
                st = obj.get("status") or {}
                reqs = [r for r in fake.requests() if r["route"] == "session" and (r.get("json") or {}).get("room_name") == spec["room"]]
                times = [r["t"] for r in reqs]
                gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
                if case.api_url:  # nothing reaches a server: the operator's own record of attempts
                    att = watch.times
                    gaps = [round(att[i + 1] - att[i], 2) for i in range(1, case.attempts) if i in att and i + 1 in att]
                c = condition(obj, "CloudRequestAccepted")
                res = {"phase": st.get("phase"), "attempts": st.get("attempts"), "requests": len(reqs), "gaps_s": gaps, "reason": c.get("reason"), "message": c.get("message", "")[:300], "seconds": round(time.time() - t0, 1)}
                results[case.name] = res
                tag = f"case {case.name}: {res}"
                if case.outcome == "accepted":
                    sc.check("final_status_matches_rules", st.get("phase") == "Starting" and c.get("status") == "True" and c.get("reason") == "RequestAccepted", tag)
                else:
                    sc.check("final_status_matches_rules", st.get("phase") == "Failed" and c.get("reason") == case.outcome, tag)
                if case.route == "session" and not case.api_url:
                    sc.check("attempts_reaching_the_server", len(reqs) == case.attempts, tag)
                if case.route == "session":
                    sc.check("attempts_in_status", st.get("attempts") == case.attempts, tag)
                else:
                    sc.check("no_session_request_after_mint_refusal", not reqs, tag)
                if case.gaps:
                    # Arrival times at the fake are exact; the operator's own record
                    # (connection refused) is read by polling, 0.1 s apart plus an API round trip.
                    early = 0.3 if case.api_url else 0.05
                    ok = len(gaps) == len(case.gaps) and all(want - early <= got <= want + SLACK_S for got, want in zip(gaps, case.gaps))
                    sc.check("retry_spacing_matches_connection", ok, f"{tag}; want gaps {case.gaps} (-{early}s/+{SLACK_S}s)")
                if case.message:
                    sc.check("server_message_in_status", case.message in c.get("message", ""), tag)
                    ready = condition(obj, "Ready")
                    sc.check("server_message_in_ready_condition", case.message in ready.get("message", ""), f"{tag}; Ready: {ready}")
                if case.outcome != "accepted":
                    evs = [e for e in kube.events(ns) if (e.get("involvedObject") or {}).get("name") == name and e.get("type") == "Warning"]
                    sc.check("warning_event_with_reason", any(e.get("reason") == case.outcome for e in evs), f"{tag}; events {[(e.get('reason'), e.get('message')) for e in evs]}")
                if case.accepted_sessions is not None:
                    n = sum(s["room_name"] == spec["room"] for s in fake.sessions())
                    sc.check("accepted_sessions_at_the_api", n == case.accepted_sessions, f"{tag}; the API accepted {n}")
                kube.delete_session(ns, name)
                sc.op("delete")
            sc.note("cases", results)
            sc.check("operator_alive_at_end", op.alive())
            tb = tracebacks(op.logs())
            sc.check("no_traceback_in_operator_log", not tb, str(tb[:5]))
            evidence.fake_requests(fake.requests())
            fake.reset()
            spaces.teardown(operator_running=True)
    finally:
        op.stop()
        spaces.teardown(operator_running=False)
    sc.assert_clean()
