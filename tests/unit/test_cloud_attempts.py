"""A cloud session's writes on its way to Starting (controller/cloud_attempts.py), and what deletion
makes of a status that holds no request (controller/teardown.py), on the worker's fakes and a fake bitHuman API."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from avatar_operator.api import status as status_mod
from avatar_operator.controller import cloud_attempts, flights, teardown

from tests.fakes.bithuman_api import FakeBithumanAPI
from tests.unit.worker_fakes import UID, Harness, Write, cloud_spec


@pytest.fixture
def api(bithuman_api: FakeBithumanAPI) -> FakeBithumanAPI:
    return bithuman_api  # tests/unit/conftest.py's, under this module's name


def cloud(api: FakeBithumanAPI, http: aiohttp.ClientSession, **env: str) -> Harness:
    settings = {"AVATAR_BITHUMAN_API_URL": api.url, "AVATAR_BITHUMAN_MINT_URL": api.mint_url, **env}
    return Harness.make(cloud_spec(), env=settings, http=http)


def sent(w: Write) -> dict[str, Any]:
    return next(c for c in w.status["conditions"] if c["type"] == "CloudRequestAccepted")


async def test_a_quick_answer_is_the_one_write_to_starting(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(api, http)
    await h.run(until=3)

    [starting, *_] = h.kube.writes
    assert starting.phase == "Starting" and sent(starting)["status"] == "True"
    # What was decided before the POST rides on this write: the key, the attempt, Accepted, CredentialsReady.
    assert starting.status["cloudRequest"]["idempotencyKey"] == UID and starting.status["attempts"] == 1
    assert {c["type"] for c in starting.status["conditions"]} >= {"Accepted", "CredentialsReady"}
    assert [s["idempotency_key"] for s in api.sessions] == [UID]


async def test_a_slow_first_answer_is_written_while_it_waits(
    api: FakeBithumanAPI, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud_attempts, "SENT_WRITE_DELAY_S", 0.05)
    api.script([{"delay": 0.5}])
    h = cloud(api, http)
    await h.run(until=3)

    pending, starting = h.kube.writes[:2]
    assert pending.phase == "Pending" and sent(pending)["reason"] == "RequestSent" and "attempt 1 of" in sent(pending)["message"]
    assert pending.status["cloudRequest"]["idempotencyKey"] == UID and "acceptedTime" not in pending.status["cloudRequest"]
    assert starting.phase == "Starting" and starting.status["cloudRequest"]["acceptedTime"]


async def test_with_a_concurrency_budget_the_request_is_written_before_it_is_sent(
    api: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    api.script([{"delay": 0.2}])  # shorter than SENT_WRITE_DELAY_S: only the write before the POST can be first
    h = cloud(api, http, AVATAR_BITHUMAN_CONCURRENCY="2")
    await h.run(until=3)

    first = h.kube.writes[0]
    assert first.phase == "Pending" and sent(first)["reason"] == "RequestSent"
    assert first.status["cloudRequest"]["idempotencyKey"] == UID  # the slot it holds, for a restarted operator's count
    assert h.kube.writes[1].phase == "Starting"


async def test_a_failed_first_attempt_is_written_before_the_retry_waits(api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    api.script([{"status": 503}, {}])
    h = cloud(api, http)
    await h.run(until=5)

    first, second, starting = h.kube.writes[:3]
    assert first.status["attempts"] == 1 and "attempt 1 of" in sent(first)["message"]
    assert second.status["attempts"] == 2 and "attempt 2 of" in sent(second)["message"] and second.t > first.t  # after the wait
    assert starting.phase == "Starting" and starting.status["attempts"] == 2


def status_of(*conds: tuple[str, str, str], **fields: Any) -> status_mod.AvatarSessionStatus:
    raw = [{"type": t, "status": s, "reason": r, "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"} for t, s, r in conds]
    return status_mod.from_wire({"conditions": raw, **fields})


def known(*, took_up: bool) -> flights.Flights:
    f = flights.Flights()
    if took_up:
        f.take_up(UID)
    return f


@pytest.mark.parametrize(
    "status, took_up, watched",
    [
        (status_of(), False, True),  # another operator's session, nothing written: a first request may have been in flight
        (status_of(("Accepted", "True", "Valid"), ("CredentialsReady", "True", "CredentialsFound")), False, True),
        (status_of(), True, False),  # this operator's own: nothing in flight, nothing recorded, nothing sent
        (status_of(("CredentialsReady", "False", "SecretNotFound")), False, False),
        (status_of(("CloudRequestAccepted", "False", "ConcurrencyLimited")), False, False),
        (status_of(("Ready", "False", "InvalidSpec"), phase="Failed"), False, False),
    ],
    ids=["empty", "taken-up-elsewhere", "taken-up-here", "no-credentials", "in-line", "ended"],
)
def test_deletion_watches_for_an_avatar_a_dead_operator_may_have_asked_for(
    status: status_mod.AvatarSessionStatus, took_up: bool, watched: bool
) -> None:
    assert teardown.may_have_an_avatar_coming(known(took_up=took_up), UID, status) is watched


@pytest.mark.parametrize(
    "settled, may_have_started, watched",
    [(False, True, True), (True, True, True), (True, False, False)],
    ids=["in-flight", "cancelled-mid-flight", "refused"],
)
def test_deletion_asks_this_operators_flight_when_the_record_was_never_written(settled: bool, may_have_started: bool, watched: bool) -> None:
    """kopf cancels a deleted session's worker at once: a request it had in flight leaves no record in status."""
    f = known(took_up=True)
    f.start(UID)
    if settled:
        f.settle(UID, may_have_started=may_have_started)
    assert teardown.may_have_an_avatar_coming(f, UID, status_of()) is watched
    f.forget(UID)
    assert f.get(UID) is None and not f.took_up(UID)

