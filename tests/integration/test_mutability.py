"""The mutability contract on the real stack: every field marked MUTABLE, edited under a running session, takes effect.

spec.maxDuration (lengthened and shortened, local and cloud) counts within a
poll interval; spec.connection counts from the next attempt.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from avatar_operator.api import rules

from tests.conftest import Stack
from tests.integration.conftest import FakeAPI, Operator, get_json, wait_for
from tests.integration.test_operator import LOCAL_GPU, condition, session, status

pytestmark = pytest.mark.stack

# The worker asks LiveKit at most every 5 s once a session is up, and reads
# the live spec on every turn: an edit counts within that, plus a write.
EFFECT_S = 8.0


def _patch(stack: Stack, ns: str, name: str, spec: dict[str, Any]) -> float:
    stack.kubectl("patch", "avatarsession", name, "-n", ns, "--type", "merge", "-p", json.dumps({"spec": spec}))
    return time.monotonic()


def _ended(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    st = status(stack, ns, name)
    return st if st.get("phase") in ("Succeeded", "Failed") else None


def test_every_mutable_field_has_a_test_here() -> None:
    # A field newly marked MUTABLE needs a scenario in this file.
    # (spec.ttlSecondsAfterFinished, edited on a finished session: tests/integration/test_ttl.py.)
    assert set(rules.MUTABLE_FIELDS) == {"spec.connection", "spec.maxDuration", "spec.ttlSecondsAfterFinished"}


@pytest.mark.parametrize("mode", ["local", "cloud"])
def test_max_duration_lengthened_then_shortened_under_a_running_session(
    stack: Stack, operator: Operator, fake_api: FakeAPI, model_claim: str, mode: str
) -> None:
    ns, name = model_claim, f"edit-{mode}"
    spec: dict[str, Any] = dict(LOCAL_GPU) if mode == "local" else {"avatarId": f"A-{name}"}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session(name, maxDuration=6, **spec))
    started = "RunnerScheduled" if mode == "local" else "CloudRequestAccepted"
    wait_for(started, lambda: (c := condition(status(stack, ns, name), started)) and c["status"] == "True")
    if mode == "local":
        pod = get_json(stack, "pod", f"{name}-runner", "-n", ns)
        # The runner has no deadline of its own: the operator enforces the live one.
        assert "AVATAR_MAX_DURATION" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}

    _patch(stack, ns, name, {"maxDuration": 600})
    time.sleep(10)  # past the first maxDuration of 6 s
    st = status(stack, ns, name)
    assert st["phase"] in ("Starting", "Running"), st
    assert st["observedGeneration"] == 2

    patched = _patch(stack, ns, name, {"maxDuration": 3})  # already past: ends now
    st = wait_for("the shortened session to end", lambda: _ended(stack, ns, name), timeout=30)
    took = time.monotonic() - patched
    assert st["phase"] == "Succeeded" and condition(st, "Reconciling")["reason"] == "MaxDurationReached", st  # type: ignore[index]
    assert took < EFFECT_S, f"the shortened maxDuration took {took:.1f}s to count"
    if mode == "local":
        wait_for("the runner pod gone", lambda: not get_json(stack, "pods", "-n", ns, "-l", "app.kubernetes.io/component=runner")["items"])


def test_connection_edit_counts_from_the_next_attempt(stack: Stack, operator: Operator, fake_api: FakeAPI, credentials: str) -> None:
    ns, name = credentials, "edit-connection"
    fake_api.script([{"status": 503}] * 40)
    try:
        stack.kubectl(
            "apply", "-n", ns, "-f", "-",
            input=session(name, avatarId="A-edit", connection={"maxRetry": 30, "retryInterval": 1.0, "timeout": 2}),
        )
        wait_for("a second attempt", lambda: (status(stack, ns, name).get("attempts") or 0) >= 2)
        patched = _patch(stack, ns, name, {"connection": {"maxRetry": 4, "retryInterval": 0.2}})
        st = wait_for("the lowered maxRetry to end the retries", lambda: _ended(stack, ns, name), timeout=30)
        took = time.monotonic() - patched
    finally:
        fake_api.reset()  # the unused 503s must not reach the next test
    assert st["phase"] == "Failed" and condition(st, "CloudRequestAccepted")["reason"] == "RetriesExhausted", st  # type: ignore[index]
    assert st["attempts"] == 4, st
    # 4 attempts at 0.2 s apart after the edit, not 30 at 1 s.
    assert took < 6, f"{took:.1f}s"
