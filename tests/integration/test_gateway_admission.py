"""Admission at the gateway, on the real stack: retries make no second session, and a
burst bigger than the pool gets exactly the pool's slots, the rest 503 + Retry-After.

The bed (tests/harness/gateway_bed.py): an operator, a warm pool of 2 portrait
runners x 5 slots (as tests/e2e/test_pool.py runs one), a tenant, the gateway.
The requests are the real clients' shapes (tests/harness/gateway_calls.py).
The figures are printed (-s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from avatar_operator.api import names

from tests.conftest import Stack
from tests.harness import gateway_bed
from tests.harness import gateway_calls as calls
from tests.harness.gateway_bed import BedConfig, GatewayBed
from tests.harness.polling import wait_until

RUNNERS, SLOTS = 2, 5
BURST = 20
TTL_S = "120"
# Longer than the operator takes to place ten sessions on a loaded machine: the ten
# that can have a slot get it within the wait, the ten that cannot wait it out.
ADMISSION_WAIT_S = "10"


@pytest.fixture(scope="module")
def bed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayBed]:
    bed = GatewayBed(
        stack, tmp_path_factory.mktemp("gateway-admission"),
        BedConfig(
            runners=RUNNERS, slots=SLOTS, tenant_extra={"TTL_SECONDS_AFTER_FINISHED": TTL_S},
            gateway_env={"AVATAR_GATEWAY_ADMISSION_WAIT_S": ADMISSION_WAIT_S},
        ),
    )
    try:
        bed.up()
        yield bed
    finally:
        bed.down()


def busy(bed: GatewayBed) -> int | None:
    return ((bed.pool().get("status") or {}).get("slots") or {}).get("busy")


def room() -> str:
    return f"adm-{uuid.uuid4().hex[:8]}"


def session_name(task_or_psid: str) -> str:
    return task_or_psid.rpartition("/")[2] if "/" in task_or_psid else task_or_psid.partition(".")[2]


async def delete_all(bed: GatewayBed) -> None:
    for s in bed.sessions():
        bed.kubectl("delete", "avs", s["metadata"]["name"], "-n", bed.namespace, "--wait=false", check=False)
    await asyncio.to_thread(bed.wait_idle, 60)


@pytest.mark.stack
async def test_a_retried_plugin_request_makes_no_second_session(bed: GatewayBed) -> None:
    call = calls.plugin_json(bed, room())
    # Twice at once (a retry racing the first), then once more after.
    first, second = await asyncio.gather(calls.send(bed, call), calls.send(bed, call))
    third = await calls.send(bed, call)
    answers = [first, second, third]
    assert [a[0] for a in answers] == [200, 200, 200], answers
    assert len({a[2]["task_id"] for a in answers}) == 1, answers
    sessions = bed.sessions()
    assert [s["metadata"]["name"] for s in sessions] == [session_name(first[2]["task_id"])]
    assert sessions[0]["spec"]["ttlSecondsAfterFinished"] == int(TTL_S)  # the gateway sets the tenant's TTL
    await asyncio.to_thread(wait_until, "the pool to count one slot busy", lambda: busy(bed) == 1, 30)
    await delete_all(bed)


@pytest.mark.stack
async def test_a_repeated_idempotency_key_gets_the_first_answer_and_no_second_session(bed: GatewayBed) -> None:
    call = calls.inference_create(bed, room())
    first, second = await asyncio.gather(calls.send(bed, call), calls.send(bed, call))
    third = await calls.send(bed, call)
    answers = [first, second, third]
    assert [a[0] for a in answers] == [200, 200, 200], answers
    assert first[2] == second[2] == third[2], answers  # session_id, provider_session_id, terminate_token, sample_rate
    sessions = bed.sessions()
    assert [s["metadata"]["name"] for s in sessions] == [session_name(first[2]["provider_session_id"])]
    assert first[2]["session_id"] == sessions[0]["metadata"]["uid"]
    assert sessions[0]["spec"]["ttlSecondsAfterFinished"] == int(TTL_S)
    # A new key is a new session.
    other = await calls.send(bed, calls.inference_create(bed, room()))
    assert other[0] == 200 and other[2]["provider_session_id"] != first[2]["provider_session_id"]
    assert len(bed.sessions()) == 2
    await delete_all(bed)


async def runner_health(bed: GatewayBed) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        out = {}
        for name, url in bed.runner_urls().items():
            async with http.get(f"{url}/health") as r:
                out[name] = await r.json()
        return out


@pytest.mark.stack
async def test_twenty_requests_for_ten_slots(bed: GatewayBed) -> None:
    await asyncio.to_thread(bed.wait_idle, 60)
    # Half of each protocol, interleaved, one room each.
    burst = [
        calls.plugin_json(bed, room()) if i % 2 == 0 else calls.inference_create(bed, room()) for i in range(BURST)
    ]

    async def timed(call: calls.Call) -> tuple[float, tuple[int, dict[str, str], Any]]:
        t0 = time.monotonic()
        answer = await calls.send(bed, call)
        return time.monotonic() - t0, answer

    results = await asyncio.gather(*(timed(c) for c in burst))
    ok = [(t, a) for t, a in results if a[0] == 200]
    refused = [(t, a) for t, a in results if a[0] != 200]
    print(
        f"\n{BURST} requests at once for {RUNNERS * SLOTS} slots: {len(ok)} x 200 in"
        f" {min(t for t, _ in ok):.2f}-{max(t for t, _ in ok):.2f} s,"
        f" {len(refused)} x {sorted({a[0] for _, a in refused})} in"
        f" {min((t for t, _ in refused), default=0):.2f}-{max((t for t, _ in refused), default=0):.2f} s"
    )
    assert len(ok) == RUNNERS * SLOTS, [a for _, a in results]
    assert all(a[0] == 503 for _, a in refused), [a for _, a in refused]
    assert all(int(a[1]["Retry-After"]) >= 1 for _, a in refused), [a[1] for _, a in refused]
    assert all(a[2]["error"]["code"] for _, a in refused)

    # -- exactly the admitted sessions exist: the 503'd were deleted ------------
    admitted = {session_name(a[2].get("task_id") or a[2]["provider_session_id"]) for _, a in ok}
    # A refused one is already being deleted when its 503 comes (the operator's finalizer then releases it).
    lingering = [s["metadata"] for s in bed.sessions() if s["metadata"]["name"] not in admitted]
    assert all(m.get("deletionTimestamp") for m in lingering), lingering
    await asyncio.to_thread(
        wait_until, "only the admitted sessions left", lambda: {s["metadata"]["name"] for s in bed.sessions()} == admitted, 30, 0.3
    )
    sessions = bed.sessions()
    protocols = sorted(s["metadata"]["labels"][names.GATEWAY_PROTOCOL_LABEL] for s in sessions)
    print(f"admitted by protocol: {protocols.count('plugin')} plugin, {protocols.count('inference')} inference")

    # -- no slot double-booked -----------------------------------------------------
    placed = [(s["status"]["runner"]["pod"], s["status"]["runner"]["taskId"]) for s in sessions]
    assert len(set(placed)) == len(placed), placed  # one task each
    per_runner = {pod: sum(p == pod for p, _ in placed) for pod, _ in placed}
    assert sorted(per_runner.values()) == [SLOTS] * RUNNERS, per_runner
    slots = bed.pool()["status"]["slots"]
    assert slots == {"total": RUNNERS * SLOTS, "busy": RUNNERS * SLOTS, "free": 0}, slots
    health = await runner_health(bed)
    assert sorted(h["active_sessions"] for h in health.values()) == [SLOTS] * RUNNERS, health
    assert all(h["max_sessions"] == SLOTS for h in health.values()), health
    for s in sessions:
        assert gateway_bed.condition(s, "RunnerScheduled").get("status") == "True", s["status"]
        assert s["spec"]["ttlSecondsAfterFinished"] == int(TTL_S)
    await delete_all(bed)
