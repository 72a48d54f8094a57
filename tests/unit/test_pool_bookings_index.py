"""What kopf's bookings index keeps of a session (controller/pool_worker.indexed_booking): a live pool
session's placement, and nothing for one that ended, has no placement yet, or is being deleted."""

from __future__ import annotations

from typing import Any

import pytest

from avatar_operator.controller import pool_worker


def session(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "s0", "namespace": "ns", "uid": "uid-0", **meta},
        "status": {"phase": "Running", "runner": {"pool": "warm", "pod": "warm-runner-1", "taskId": "t-1"}},
    }


def test_a_live_pool_session_is_indexed_under_its_pool() -> None:
    assert pool_worker.indexed_booking(session()) == {("ns", "warm"): ("uid-0", "warm-runner-1", "t-1")}


def test_a_session_being_deleted_hands_no_booking_back() -> None:
    """Its finalizer released the slot; were it indexed until the object is gone, the pool's seed
    would book the slot again and count it busy for STALE_BOOKING_S (tests/e2e/test_pool.py saw 7 of 6)."""
    assert pool_worker.indexed_booking(session(deletionTimestamp="2026-12-02T18:05:18Z")) == {}


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_an_ended_session_holds_no_slot(phase: str) -> None:
    body = session()
    body["status"]["phase"] = phase
    assert pool_worker.indexed_booking(body) == {}


@pytest.mark.parametrize("runner", [None, {}, {"pool": "warm"}, {"pod": "warm-runner-1"}])
def test_a_session_not_placed_yet_holds_no_slot(runner: dict[str, str] | None) -> None:
    body = session()
    body["status"]["runner"] = runner
    assert pool_worker.indexed_booking(body) == {}
