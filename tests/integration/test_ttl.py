"""spec.ttlSecondsAfterFinished on the real stack: an ended session is deleted that long after
status.endTime, and what it owns (its token Secret, an image Secret owned as the gateway owns one)
goes with it by the garbage collector; a restarted operator deletes at the same due time (read
from status, not memory); an edit on an ended session counts.

The sessions are local-mode runners on kwok nodes that never join a room: spec.maxDuration ends
them (Succeeded, MaxDurationReached).
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest
from avatar_operator.api import names
from avatar_operator.controller import ttl

from tests.conftest import Stack
from tests.integration.conftest import Operator, get_json, wait_for
from tests.integration.test_operator import LOCAL_GPU, session, status

pytestmark = pytest.mark.stack

END_TIMEOUT_S = 60.0


def _exists(stack: Stack, ns: str, kind: str, name: str) -> bool:
    return stack.kubectl("get", kind, name, "-n", ns, "-o", "name", check=False).returncode == 0


def _ended(stack: Stack, ns: str, name: str) -> datetime.datetime:
    st = wait_for(f"{name} ended", lambda: (s := status(stack, ns, name)).get("endTime") and s, timeout=END_TIMEOUT_S)
    assert st["phase"] == "Succeeded", st
    return datetime.datetime.fromisoformat(st["endTime"])


def _gone_at(stack: Stack, ns: str, name: str, timeout: float) -> datetime.datetime:
    wait_for(f"{name} deleted", lambda: not _exists(stack, ns, "avatarsession", name), timeout=timeout, interval=0.2)
    return datetime.datetime.now(datetime.UTC)


def _owned_image_secret(stack: Stack, ns: str, name: str) -> str:
    """An image Secret owned by the session, as the gateway makes one for an uploaded file."""
    uid = get_json(stack, "avatarsession", name, "-n", ns)["metadata"]["uid"]
    secret = names.gateway_image_secret_name(name)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "ownerReferences": [names.owner_reference(names.KIND, name, uid)]},
        "data": {names.GATEWAY_IMAGE_KEY: "aW1hZ2U="},
    }
    stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    return secret


def test_an_ended_session_goes_after_its_ttl_with_what_it_owns(stack: Stack, operator: Operator, model_claim: str) -> None:
    ns, name, ttl_s = model_claim, "ttl-owned", 4
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session(name, maxDuration=2, ttlSecondsAfterFinished=ttl_s, **LOCAL_GPU))
    token = names.token_secret_name(name)
    wait_for("the token Secret", lambda: _exists(stack, ns, "secret", token))
    image = _owned_image_secret(stack, ns, name)
    end = _ended(stack, ns, name)
    assert _exists(stack, ns, "avatarsession", name)  # kept for its TTL
    gone = _gone_at(stack, ns, name, timeout=ttl_s + 30)
    # endTime has whole seconds (up to 1 s early), so the deletion is at least ttl - 1 s after it.
    assert (gone - end).total_seconds() >= ttl_s - 1, (end, gone)
    for secret in (token, image):
        wait_for(f"Secret {secret} collected with its session", lambda s=secret: not _exists(stack, ns, "secret", s), timeout=30)


def test_a_restarted_operator_deletes_at_the_due_time_it_reads_from_status(stack: Stack, operator: Operator, model_claim: str) -> None:
    ns, name, ttl_s = model_claim, "ttl-restart", 15
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session(name, maxDuration=2, ttlSecondsAfterFinished=ttl_s, **LOCAL_GPU))
    end = _ended(stack, ns, name)
    operator.kill()  # between the end and the due time: the new process knows only what status says
    operator.start()
    due = end + datetime.timedelta(seconds=ttl_s)
    assert datetime.datetime.now(datetime.UTC) < due - datetime.timedelta(seconds=2), "the restart took past the due time"
    assert _exists(stack, ns, "avatarsession", name)
    gone = _gone_at(stack, ns, name, timeout=ttl_s + 60)
    assert (gone - end).total_seconds() >= ttl_s - 1, (end, gone)


def test_a_ttl_edited_on_an_ended_session_counts(stack: Stack, operator: Operator, model_claim: str) -> None:
    ns, name = model_claim, "ttl-edit"
    stack.kubectl("apply", "-n", ns, "-f", "-", input=session(name, maxDuration=2, ttlSecondsAfterFinished=3600, **LOCAL_GPU))
    _ended(stack, ns, name)
    patch: dict[str, Any] = {"spec": {"ttlSecondsAfterFinished": 0}}
    stack.kubectl("patch", "avatarsession", name, "-n", ns, "--type", "merge", "-p", json.dumps(patch))
    edited = time.monotonic()
    _gone_at(stack, ns, name, timeout=ttl.RECHECK_S + 30)
    print(f"deleted {time.monotonic() - edited:.1f} s after the edit (recheck {ttl.RECHECK_S:g} s)")
