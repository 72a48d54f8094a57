"""What a session's status tells a waiting gateway request."""

from __future__ import annotations

from avatar_operator.gateway import session_state


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_what_a_session_status_says() -> None:
    S = session_state.State
    assert session_state.seen({"metadata": {}}).state is S.WAITING
    waiting = {"metadata": {}, "status": {"phase": "Pending", "conditions": [cond("RunnerScheduled", "False", "PoolExhausted")]}}
    assert session_state.seen(waiting).state is S.WAITING
    scheduled = {"metadata": {}, "status": {"phase": "Starting", "conditions": [cond("RunnerScheduled", "True")]}}
    assert session_state.seen(scheduled).state is S.SCHEDULED
    failed = {"metadata": {}, "status": {"phase": "Failed", "conditions": [cond("Accepted", "False", "InvalidSpec", "spec.x: bad")]}}
    seen = session_state.seen(failed)
    assert (seen.state, seen.reason, seen.message, seen.caller_at_fault) == (S.FAILED, "InvalidSpec", "spec.x: bad", True)
    assert session_state.seen({"metadata": {}, "status": {"phase": "Succeeded"}}).state is S.FINISHED
    assert session_state.seen({"metadata": {"deletionTimestamp": "t"}, "status": scheduled["status"]}).state is S.DELETING
