"""A cloud session's worker against the fake bitHuman API: the end at bitHuman, the 403 line, the budget, the refusals.

The clock is simulated (tests/unit/worker_fakes.py); the HTTP to the fake is real.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from avatar_operator.controller import cloud_queue

from tests.fakes.bithuman_api import FakeBithumanAPI
from tests.unit.worker_fakes import (
    BITHUMAN_DATA,
    BITHUMAN_SECRET,
    NAMESPACE,
    UID,
    Harness,
    Write,
    cloud_spec,
)

LIMITED = {"status": 403, "body": {"error": {"code": "CONCURRENCY_LIMIT_REACHED", "message": "plan full"}}}


@pytest.fixture
def api(bithuman_api: FakeBithumanAPI) -> FakeBithumanAPI:
    return bithuman_api  # tests/unit/conftest.py's, under this module's name


def cloud(api: FakeBithumanAPI, http: aiohttp.ClientSession, **spec: Any) -> Harness:
    env = {"AVATAR_BITHUMAN_API_URL": api.url, "AVATAR_BITHUMAN_MINT_URL": api.mint_url, "AVATAR_ABSENCE_GRACE": "5"}
    return Harness.make(cloud_spec(**spec), env=env, http=http)


def reason(w: Write, ctype: str = "CloudRequestAccepted") -> str | None:
    c = w.cond(ctype)
    return None if c is None else str(c["reason"])


async def test_max_duration_ends_the_bithuman_session_and_records_it(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(api, http, maxDuration=10)
    h.clock.at(3, h.room.publish)
    await h.run(until=60)

    [billed] = api.sessions
    assert billed["ended_at"] is not None and billed["end_calls"] == 1
    sent = h.kube.last.status["cloudRequest"]
    assert sent["sessionId"] == billed["session_id"] and sent["endedTime"] and h.kube.last.phase == "Succeeded"
    assert "CloudSessionEnded" in h.events.reasons() and not h.events.warnings()
    assert [r["path"] for r in api.requests if r["route"] == "end"] == [f"/v1/runtime-sessions/{billed['session_id']}/end"]
    assert api.requests[-1]["headers"]["api-secret"] == BITHUMAN_DATA["BITHUMAN_API_SECRET"]


async def test_an_end_that_cannot_be_done_warns_and_a_restart_ends_it(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(api, http, maxDuration=10)
    h.clock.at(3, h.room.publish)
    api.script([{"status": 500}] * 5, route="end")  # every attempt (5 by default)
    await h.run(until=60)

    assert api.sessions[0]["ended_at"] is None
    [warned] = [e for e in h.events.warnings() if e.reason == "CloudSessionEndFailed"]
    assert "HTTP 500" in warned.message and "within about 2 minutes" in warned.message
    assert "endedTime" not in h.kube.last.status["cloudRequest"]
    h.restart()
    await h.run()
    assert api.sessions[0]["ended_at"] is not None and h.kube.last.status["cloudRequest"]["endedTime"]


async def test_a_concurrency_limit_waits_without_using_up_max_retry(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    api.script([LIMITED, LIMITED, LIMITED, {}])
    h = cloud(api, http, connection={"maxRetry": 1, "retryInterval": 0, "timeout": 2})
    h.clock.at(30, h.room.publish)
    await h.run(until=40)

    assert h.kube.phases() == ["Pending", "Starting", "Running"]
    limited = [w for w in h.kube.writes if reason(w) == "ConcurrencyLimited"]
    assert limited and "CONCURRENCY_LIMIT_REACHED: plan full" in limited[0].cond("CloudRequestAccepted")["message"]  # type: ignore[index]
    keys = [r["idempotency_key"] for r in api.requests if r["route"] == "session"]
    assert keys == [UID, f"{UID}-1", f"{UID}-2", f"{UID}-3"]  # a refused request started nothing: a new key each round
    assert h.kube.last.status["attempts"] == 4 and len(api.sessions) == 1
    assert h.events.reasons().count("ConcurrencyLimited") == 1  # one Event for the wait, not one per round


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [(402, "INSUFFICIENT_BALANCE", "InsufficientBalance"), (403, "PLAN_REQUIRED", "PlanRequired"), (404, "NOT_FOUND", "AgentNotFound"), (409, "CONFLICT", "ModelConflict")],
)
async def test_the_documented_refusals_fail_at_once_with_their_reason(api: FakeBithumanAPI, http: aiohttp.ClientSession, status: int, code: str, want: str) -> None:
    api.script([{"status": status, "body": {"error": {"code": code, "message": "from the server"}}}])
    h = cloud(api, http)
    await h.run(until=30)

    end = h.kube.last
    assert end.phase == "Failed" and reason(end) == want and reason(end, "Ready") == want
    message = end.cond("CloudRequestAccepted")["message"]  # type: ignore[index]
    assert f"HTTP {status}: {code}: from the server" in message
    assert len([r for r in api.requests if r["route"] == "session"]) == 1


async def test_the_budget_queues_until_a_slot_frees(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(api, http)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)]["BITHUMAN_CONCURRENCY"] = "1"
    key = (NAMESPACE, BITHUMAN_SECRET)
    other = cloud_queue.Slot("other", NAMESPACE, "older", "2024-12-31T00:00:00Z", cloud_queue.State.HOLDING)
    index: dict[cloud_queue.Key, list[cloud_queue.Slot]] = {key: [other]}
    h.ctx.cloud_queue = cloud_queue.Queue(cloud_queue.MappingIndex(index))
    h.clock.at(8, lambda: index.__setitem__(key, [cloud_queue.Slot("other", NAMESPACE, "older", other.created, cloud_queue.State.DONE)]))
    h.clock.at(15, h.room.publish)
    await h.run(until=25)

    waiting = [w for w in h.kube.writes if reason(w) == "ConcurrencyLimited"]
    assert waiting and "number 1 in line" in waiting[0].cond("CloudRequestAccepted")["message"]  # type: ignore[index]
    assert len([r for r in api.requests if r["route"] == "session"]) == 1  # sent once, after the slot freed
    assert h.kube.first("Starting").t >= 8 and h.kube.phases() == ["Pending", "Starting", "Running"]
    assert all(w.t < 8 for w in waiting)


async def test_a_bad_budget_in_the_secret_names_the_key(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(api, http)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)]["BITHUMAN_CONCURRENCY"] = "lots"
    await h.run(until=10)

    assert h.kube.last.phase == "Failed" and reason(h.kube.last, "CredentialsReady") == "SecretValueInvalid"
    assert "BITHUMAN_CONCURRENCY" in h.kube.last.cond("CredentialsReady")["message"]  # type: ignore[index]
    assert api.requests == []
