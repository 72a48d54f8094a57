"""Scenario 7: a cloud avatar that comes after its session gave up on it, or was deleted.

A stand-in for bitHuman's cloud worker joins the room with the token the
operator sent, after the fake API accepted the request late: (a) the session
was deleted while the request was in flight; (b) the API answered after the
client's time limit, so the session failed RetriesExhausted while an avatar
was started all the same. Either way the operator must remove that avatar
from the room, and say so in a Warning Event (and in status when there is one).
"""

from __future__ import annotations

import pathlib
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
    StandInCloudWorker,
    condition,
    phase,
    room_participants,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

AVATAR = "bithuman-avatar-agent"
REMOVED_WITHIN_S = 15.0


def _token(fake: FakeProc, room: str) -> str | None:
    return next(
        ((r.get("json") or {}).get("livekit_token") for r in fake.requests() if r["route"] == "session" and (r.get("json") or {}).get("room_name") == room),
        None,
    )


def _accepted(fake: FakeProc, room: str) -> bool:
    return any(s["room_name"] == room for s in fake.sessions())


def _in_room(stack: Stack, room: str) -> bool:
    return any(p["identity"] == AVATAR for p in room_participants(stack, room))


def _late_avatar_removed(stack: Stack, sc: Scenario, fake: FakeProc, room: str, case: str) -> float | None:
    """Joins as bitHuman's worker once the fake accepted; seconds until the operator removed it (None: never)."""
    wait_until(f"{case}: the fake API accepted the late request", lambda: _accepted(fake, room), 40, 0.3)
    token = _token(fake, room)
    assert token, f"{case}: no session request reached the fake"
    worker = StandInCloudWorker(stack.livekit_url, token)
    worker.thread.start()
    sc.fault(f"{case}_late_avatar_joins")
    try:
        wait_until(f"{case}: the late avatar in the room", lambda: worker.connected, 20, 0.2)
        joined = time.monotonic()
        deadline = joined + REMOVED_WITHIN_S
        while time.monotonic() < deadline:
            if not _in_room(stack, room):
                return round(time.monotonic() - joined, 1)
            time.sleep(0.5)
        return None
    finally:
        worker.stop.set()


def _warnings(kube: Kube, ns: str, name: str) -> list[tuple[str, str]]:
    return [
        (str(e.get("reason")), str(e.get("message")))
        for e in kube.events(ns)
        if (e.get("involvedObject") or {}).get("name") == name and e.get("type") == "Warning"
    ]


@pytest.mark.scenario(
    "late_cloud_avatar",
    description="a cloud avatar that joins after its session was deleted mid-request, or after the request timed out "
    "and the session failed: the operator removes it and says so",
)
def test_late_cloud_avatar_is_removed(
    stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario
) -> None:
    sc = scenario
    spaces = Namespaces(stack, kube, evidence, "late")
    ns = spaces.create("a")
    log = artifacts / "operator-late-avatar.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob], env={"AVATAR_LATE_AVATAR_GUARD": "45"})
    results: dict[str, Any] = {}
    try:
        with timed(sc):
            op.start()
            wait_until("operator up", lambda: "Initial authentication has finished" in op.logs(), 60)

            # (a) deleted while the API holds the request for 8 s
            fake.reset()
            fake.script([{"delay": 8}])
            name, room = "deleted-mid-request", f"{ns}-deleted"
            kube.create_session(ns, name, {"room": room, "agentIdentity": "agent-1", "avatarId": "A-late", "connection": {"maxRetry": 1, "retryInterval": 0.2, "timeout": 20}})
            sc.op("create_cloud_session")
            wait_until("(a) the request in flight", lambda: _token(fake, room) is not None, 30, 0.2)
            kube.delete_session(ns, name)
            sc.op("delete_mid_request")
            wait_until("(a) the session gone", lambda: kube.session(ns, name) is None, 40, 0.3)
            took = _late_avatar_removed(stack, sc, fake, room, "deleted")
            results["deleted_mid_request"] = {"removed_after_s": took}
            sc.check("late_avatar_of_a_deleted_session_removed", took is not None, f"the avatar stayed in room {room} for {REMOVED_WITHIN_S}s")
            warned = wait_until("(a) a Warning", lambda: [w for w in _warnings(kube, ns, name) if w[0] == "LateAvatarRemoved"], 10, 0.5) if took is not None else []
            sc.check("late_avatar_of_a_deleted_session_warned", bool(warned), f"warnings {_warnings(kube, ns, name)}")

            # (b) the API answers after 4 s, past the client's 1 s connect / 3 s total limit
            fake.reset()
            fake.script([{"delay": 4}])
            name, room = "accepted-too-late", f"{ns}-late"
            kube.create_session(ns, name, {"room": room, "agentIdentity": "agent-1", "avatarId": "A-late2", "connection": {"maxRetry": 1, "retryInterval": 0.2, "timeout": 1}})
            sc.op("create_cloud_session")
            failed = wait_until("(b) the session failed", lambda: obj if phase(obj := kube.session(ns, name)) == "Failed" else None, 40, 0.3)
            c = condition(failed, "CloudRequestAccepted")
            sc.check("uncertain_failure_says_it_watches_the_room", c.get("reason") == "RetriesExhausted" and "watches room" in c.get("message", ""), str(c))
            took = _late_avatar_removed(stack, sc, fake, room, "timed_out")
            results["accepted_after_the_timeout"] = {"removed_after_s": took, "condition": c.get("message", "")[:200]}
            sc.check("late_avatar_after_a_timeout_removed", took is not None, f"the avatar stayed in room {room} for {REMOVED_WITHIN_S}s")
            warned = wait_until("(b) a Warning", lambda: [w for w in _warnings(kube, ns, name) if w[0] == "LateAvatarRemoved"], 10, 0.5) if took is not None else []
            sc.check("late_avatar_after_a_timeout_warned", bool(warned), f"warnings {_warnings(kube, ns, name)}")
            sc.check("session_stays_failed", phase(kube.session(ns, name)) == "Failed")

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
