"""Ending cloud sessions and queueing at the concurrency limit: the pure parts, the client and the fake.

The end request and the answers are pure; `end_session` and `send` run
against the fake bitHuman API (tests/fakes), which bills by the second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from avatar_operator import settings as settings_mod
from avatar_operator.api import spec
from avatar_operator.api import status as status_mod
from avatar_operator.build import cloud_answer, cloud_end, cloud_request
from avatar_operator.clients import bithuman, bithuman_end
from avatar_operator.controller import cloud_queue, cloud_wait, credentials

from tests.fakes.bithuman_api import FakeBithumanAPI

SECRET = "acct-secret-xyz"
TOKEN = "bearer-token-xyz"
Reason = status_mod.Reason
State = cloud_queue.State
FAST = bithuman.RetryPolicy(max_retry=5, retry_interval=0.3, timeout=2.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBithumanAPI]:
    async with FakeBithumanAPI(api_secret=SECRET, api_token=TOKEN) as api:
        yield api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- the end request -------------------------------------------------------------


def test_the_default_api_ends_by_session_id_beside_the_start_path() -> None:
    req = cloud_end.end_request(
        api_url="https://auth.api.bithuman.ai/v1/runtime-tokens/request", default_api=True,
        api_secret=SECRET, api_token=None, session_id="sess_1", task_id=None,
    )
    assert req is not None and req.url == "https://auth.api.bithuman.ai/v1/runtime-sessions/sess_1/end"
    assert dict(req.headers) == {"api-secret": SECRET} and req.json is None and req.form is None
    assert SECRET not in repr(req)


def test_a_proxy_prefix_is_kept_and_the_id_cannot_leave_its_segment() -> None:
    url = cloud_end.runtime_session_end_url("http://proxy:8080/bh/v1/runtime-tokens/request?x=1", "a/../b")
    assert url == "http://proxy:8080/bh/v1/runtime-sessions/a%2F..%2Fb/end"
    assert cloud_end.runtime_session_end_url("https://api.example/other", "s") == "https://api.example/v1/runtime-sessions/s/end"


def test_a_custom_endpoint_stops_its_task_with_the_bearer_credential() -> None:
    req = cloud_end.end_request(
        api_url="http://gpu:8089/launch?async=true", default_api=False,
        api_secret=SECRET, api_token=TOKEN, session_id=None, task_id="task_9",
    )
    assert req is not None and req.url == "http://gpu:8089/tasks/task_9/stop"
    assert dict(req.headers) == {"Authorization": f"Bearer {TOKEN}"}
    assert req.sensitive_values() == (f"Bearer {TOKEN}", TOKEN)


def test_nothing_to_end_without_an_id_for_the_endpoint() -> None:
    kwargs: dict[str, Any] = {"api_url": "http://x/launch", "api_secret": SECRET, "api_token": None}
    assert cloud_end.end_request(default_api=False, session_id="sess_1", task_id=None, **kwargs) is None
    assert cloud_end.end_request(default_api=True, session_id=None, task_id="t", **kwargs) is None


def test_a_due_end_without_its_credential_names_the_key() -> None:
    with pytest.raises(cloud_request.MissingInputError, match="BITHUMAN_API_SECRET"):
        cloud_end.end_request(api_url="http://x/v1/runtime-tokens/request", default_api=True, api_secret=None, api_token=TOKEN, session_id="s", task_id=None)


# --- what the answers say ---------------------------------------------------------


def test_the_start_answer_gives_ids_and_model_and_ignores_junk() -> None:
    answer = cloud_answer.start_answer(b'{"session_id": "sess_a1", "model": "essence-2", "task_id": 7}')
    assert answer == cloud_answer.StartAnswer(session_id="sess_a1", task_id=None, model="essence-2")
    assert cloud_answer.start_answer(b'{"session_id": "../../x y"}').session_id is None
    assert cloud_answer.start_answer(b"not json") == cloud_answer.StartAnswer()


@pytest.mark.parametrize(
    ("status", "code", "reason", "waits"),
    [
        (403, "CONCURRENCY_LIMIT_REACHED", Reason.CONCURRENCY_LIMITED, True),
        (402, "INSUFFICIENT_BALANCE", Reason.INSUFFICIENT_BALANCE, False),
        (403, "PLAN_REQUIRED", Reason.PLAN_REQUIRED, False),
        (404, "NOT_FOUND", Reason.AGENT_NOT_FOUND, False),
        (409, None, Reason.MODEL_CONFLICT, False),
        (403, "X", Reason.REQUEST_REJECTED, False),
        (400, "VALIDATION_ERROR", Reason.REQUEST_REJECTED, False),
    ],
)
def test_each_documented_refusal_has_its_reason(status: int, code: str | None, reason: Reason, waits: bool) -> None:
    refusal = cloud_answer.refusal(status, code)
    assert (refusal.reason, refusal.waits) == (reason, waits) and refusal.fix


def test_error_fields_read_bithumans_error_body() -> None:
    body = b'{"error": {"code": "INSUFFICIENT_BALANCE", "message": "top up\\nnow", "httpStatus": 402}, "status": "error"}'
    assert cloud_answer.error_fields(body) == ("INSUFFICIENT_BALANCE", "top up now")
    assert cloud_answer.error_fields(b'{"error": "plain"}') == (None, None)


# --- the line ---------------------------------------------------------------------


def _slot(uid: str, created: str, state: State) -> cloud_queue.Slot:
    return cloud_queue.Slot(uid, "ns", uid, created, state)


def test_the_line_admits_up_to_the_budget_in_creation_order() -> None:
    slots = {s.uid: s for s in (_slot("a", "1", State.HOLDING), _slot("b", "2", State.HOLDING), _slot("c", "3", State.WAITING), _slot("d", "4", State.WAITING))}
    assert cloud_queue.place(slots, set(), {}, slots["c"], 3) is None
    assert cloud_queue.place(slots, set(), {}, slots["d"], 3) == 2  # c is ahead of it
    assert cloud_queue.place(slots, {"c"}, {}, slots["d"], 3) == 1  # c admitted in memory: holds, the index lags
    assert cloud_queue.place(slots, {"c"}, {}, slots["d"], 4) is None
    slots["a"] = _slot("a", "1", State.DONE)  # a ended: one slot for c, then one for d
    assert cloud_queue.place(slots, set(), {}, slots["d"], 3) is None
    assert cloud_queue.place(slots, set(), {"x": ("0", "ns", "x")}, slots["d"], 3) is None  # x: not in the index (deleted)


def test_an_admitted_session_the_index_shows_ended_or_gone_frees_its_slot() -> None:
    slots = {s.uid: s for s in (_slot("a", "1", State.DONE), _slot("d", "4", State.BEFORE))}
    assert cloud_queue.place(slots, {"a", "gone"}, {}, slots["d"], 1) is None


def test_try_admit_counts_the_admitted_at_once() -> None:
    index = {("ns", "bh"): [_slot("a", "1", State.BEFORE), _slot("b", "2", State.BEFORE)]}
    q = cloud_queue.Queue(cloud_queue.MappingIndex(index))
    assert q.try_admit(("ns", "bh"), index[("ns", "bh")][0], 1) is None
    assert q.try_admit(("ns", "bh"), index[("ns", "bh")][1], 1) == 1  # before the index sees a's write
    q.release("a")
    assert q.try_admit(("ns", "bh"), index[("ns", "bh")][1], 1) is None


def test_the_budget_comes_from_the_secret_over_the_setting() -> None:
    settings = settings_mod.Settings.from_env({"AVATAR_BITHUMAN_CONCURRENCY": "10"})
    assert cloud_queue.budget(settings, None, None) == 10
    assert cloud_queue.budget(settings, " 3\n", "bh") == 3
    with pytest.raises(ValueError, match="Secret 'bh' key BITHUMAN_CONCURRENCY is 'three'"):
        cloud_queue.budget(settings, "three", "bh")
    # Read with the credentials, from the same Secret read: no second read for the budget.
    spec_ = spec.parse_spec({"spec": {"room": "r", "agentIdentity": "a", "avatarId": "A1", "bithuman": {"secretRef": {"name": "bh"}}}})
    secrets = {"bh": {"BITHUMAN_API_SECRET": "s", "BITHUMAN_CONCURRENCY": "3"}}
    bh = credentials.bithuman(spec_, settings, secrets.get)
    assert cloud_queue.budget(settings, bh.concurrency, bh.secret_name) == 3


def test_the_index_entry_follows_the_status() -> None:
    settings = settings_mod.Settings()
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "s", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"room": "r", "agentIdentity": "a", "avatarId": "A1"},
    }
    key = ("ns", settings.bithuman.secret_name)
    assert cloud_queue.entry(body, settings)[key].state is State.BEFORE
    limited = {"type": "CloudRequestAccepted", "status": "False", "reason": "ConcurrencyLimited"}
    assert cloud_queue.entry({**body, "status": {"conditions": [limited]}}, settings)[key].state is State.WAITING
    assert cloud_queue.entry({**body, "status": {"cloudRequest": {"idempotencyKey": "u"}}}, settings)[key].state is State.HOLDING
    assert cloud_queue.entry({**body, "status": {"phase": "Succeeded", "cloudRequest": {"idempotencyKey": "u"}}}, settings)[key].state is State.DONE
    local = {**body, "spec": {"room": "r", "agentIdentity": "a", "modelPath": "/m.imx"}}
    assert cloud_queue.entry(local, settings) == {}


def test_the_wait_after_a_limit_honours_retry_after_and_backs_off() -> None:
    assert [cloud_wait.limited_wait_s(n, None) for n in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert cloud_wait.limited_wait_s(4, 1.5) == 1.5 and cloud_wait.limited_wait_s(1, 600) == 60.0
    assert cloud_wait.next_key("uid", 2) == "uid-2"


# --- the client against the fake ----------------------------------------------------


def _start(fake: FakeBithumanAPI, room: str, key: str) -> cloud_request.CloudRequest:
    return cloud_request.build_request(
        api_url=fake.url, api_secret=SECRET, api_token=None, livekit_url="ws://lk", livekit_token="lk.jwt",
        room=room, model="essence", avatar_id="A1", avatar_image=None, avatar_image_bytes=None,
        idempotency_key=key, default_api=True,
    )


def _end(fake: FakeBithumanAPI, session_id: str) -> cloud_request.CloudRequest:
    req = cloud_end.end_request(api_url=fake.url, default_api=True, api_secret=SECRET, api_token=None, session_id=session_id, task_id=None)
    assert req is not None
    return req


async def test_ending_stops_billing_and_a_repeat_is_harmless(fake: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    started = await bithuman.send(http, _start(fake, "r1", "k1"), FAST)
    assert isinstance(started.outcome, bithuman.Accepted)
    answer = cloud_answer.start_answer(started.outcome.body)
    assert answer.session_id and answer.model == "essence"
    result = await bithuman_end.end_session(http, _end(fake, answer.session_id), FAST)
    assert result.ended and result.attempts == 1
    billed = fake.sessions[0]["billed_seconds"]
    await asyncio.sleep(0.3)
    assert fake.sessions[0]["billed_seconds"] == billed and fake.sessions[0]["ended_at"] is not None
    again = await bithuman_end.end_session(http, _end(fake, answer.session_id), FAST)
    assert again.ended and fake.sessions[0]["end_calls"] == 2
    unknown = await bithuman_end.end_session(http, _end(fake, "sess_nope"), FAST)
    assert unknown.ended and "404" in unknown.message


async def test_ending_is_retried_while_the_api_is_down_and_fails_when_it_stays_down(fake: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    started = await bithuman.send(http, _start(fake, "r1", "k1"), FAST)
    assert isinstance(started.outcome, bithuman.Accepted)
    session_id = cloud_answer.start_answer(started.outcome.body).session_id
    assert session_id
    fake.configure({"down_for": 0.7})
    t0 = time.monotonic()
    result = await bithuman_end.end_session(http, _end(fake, session_id), FAST)
    assert result.ended and result.attempts >= 2 and time.monotonic() - t0 >= 0.6
    fake.configure({"down_for": 60})
    failed = await bithuman_end.end_session(http, _end(fake, "sess_x"), bithuman.RetryPolicy(3, 0.05, 1.0))
    assert not failed.ended and failed.attempts == 3 and "503" in failed.message and SECRET not in failed.message


async def test_the_plan_limit_refuses_the_next_start_until_one_ends(fake: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    fake.configure({"plan_limit": 2, "retry_after": 1.5})
    ids = []
    for i in range(2):
        started = await bithuman.send(http, _start(fake, f"r{i}", f"k{i}"), FAST)
        assert isinstance(started.outcome, bithuman.Accepted)
        ids.append(cloud_answer.start_answer(started.outcome.body).session_id)
    refused = (await bithuman.send(http, _start(fake, "r2", "k2"), FAST)).outcome
    assert isinstance(refused, bithuman.Rejected) and refused.status == 403
    assert (refused.code, refused.retry_after) == ("CONCURRENCY_LIMIT_REACHED", 1.5)
    assert cloud_answer.refusal(refused.status, refused.code).waits
    assert ids[0] is not None
    assert (await bithuman_end.end_session(http, _end(fake, ids[0]), FAST)).ended
    assert isinstance((await bithuman.send(http, _start(fake, "r2", "k2"), FAST)).outcome, bithuman.Accepted)
    assert fake.stats == {"peak_live": 2, "live": 2, "concurrency_refusals": 1}


async def test_a_custom_launch_answers_a_task_and_its_stop_ends_it(fake: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    req = cloud_request.build_request(
        api_url=fake.custom_url + "?async=true", api_secret=None, api_token=TOKEN, livekit_url="ws://lk", livekit_token="lk.jwt",
        room="r", model="expression", avatar_id="A1", avatar_image=None, avatar_image_bytes=None, idempotency_key="k",
    )
    started = await bithuman.send(http, req, FAST)
    assert isinstance(started.outcome, bithuman.Accepted)
    task = cloud_answer.start_answer(started.outcome.body).task_id
    assert task
    stop = cloud_end.end_request(api_url=fake.custom_url + "?async=true", default_api=False, api_secret=None, api_token=TOKEN, session_id=None, task_id=task)
    assert stop is not None
    assert (await bithuman_end.end_session(http, stop, FAST)).ended
    assert fake.sessions[0]["ended_at"] is not None
