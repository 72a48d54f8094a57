"""spec.ttlSecondsAfterFinished: when an ended session is due (pure), and the daemon that deletes it, in
simulated time: it counts from status.endTime, reads the live spec, and a fresh daemon (a restarted
operator) deletes at the same moment."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

import pytest
from avatar_operator import metrics
from avatar_operator.controller import decisions, ttl

from tests.unit.worker_fakes import EPOCH, FakeClock, FakeKube, FakeStopped

END = EPOCH + datetime.timedelta(seconds=30)
NS, NAME, UID = "ns", "s1", "uid-1"


def test_due_is_the_end_plus_the_ttl() -> None:
    assert decisions.deletion_due(END, 60) == END + datetime.timedelta(seconds=60)
    assert decisions.deletion_due(END, 0) == END
    assert decisions.deletion_due(None, 60) is None  # not ended
    assert decisions.deletion_due(END, None) is None  # no TTL: kept
    assert decisions.deletion_due(END, 2**63 - 1) is None  # past datetime's calendar: kept, no crash


def session(ttl_s: Any = 60, phase: str = "Succeeded", end: str | None = "2025-01-01T00:00:30Z") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if end is not None:
        status["endTime"] = end
    spec: dict[str, Any] = {"room": "r", "agentIdentity": "a"}
    if ttl_s is not None:
        spec["ttlSecondsAfterFinished"] = ttl_s
    return {"metadata": {"namespace": NS, "name": NAME, "uid": UID}, "spec": spec, "status": status}


@pytest.mark.parametrize(
    ("obj", "applies"),
    [
        (session(), True),
        (session(phase="Failed"), True),
        (session(ttl_s=0), True),
        (session(ttl_s=None), False),
        (session(phase="Running", end=None), False),
        (session(end=None), False),
    ],
)
def test_the_daemon_runs_only_for_ended_sessions_with_a_ttl(obj: dict[str, Any], applies: bool) -> None:
    assert ttl.applies(spec=obj["spec"], status=obj["status"]) is applies


def test_due_from_the_object() -> None:
    obj = session()
    assert ttl.due(obj["spec"], obj["status"]) == END + datetime.timedelta(seconds=60)
    assert ttl.due(obj["spec"], {**obj["status"], "endTime": "not a time"}) is None
    assert ttl.due({**obj["spec"], "ttlSecondsAfterFinished": True}, obj["status"]) is None


@dataclasses.dataclass
class Clients:
    kube: FakeKube
    clock: FakeClock


def setup(obj: dict[str, Any], start_s: float = 0.0) -> tuple[Clients, FakeStopped]:
    clock = FakeClock()
    clock.t = start_s
    kube = FakeKube(clock)
    kube.sessions[(NS, NAME)] = obj
    return Clients(kube=kube, clock=clock), FakeStopped()


async def test_deleted_when_due_and_counted() -> None:
    clients, stopped = setup(session(ttl_s=60))
    before = metrics.TTL_DELETIONS._value.get()
    await ttl.run(clients, clients.kube.sessions[(NS, NAME)], stopped, logging.getLogger("t"))  # type: ignore[arg-type]
    assert clients.kube.deleted == [("AvatarSession", NS, NAME)]
    assert clients.clock.t == pytest.approx(90.0)  # endTime (30 s) + 60 s
    assert metrics.TTL_DELETIONS._value.get() == before + 1


async def test_a_restarted_operator_past_the_due_time_deletes_at_once() -> None:
    clients, stopped = setup(session(ttl_s=60), start_s=500.0)
    await ttl.run(clients, clients.kube.sessions[(NS, NAME)], stopped, logging.getLogger("t"))  # type: ignore[arg-type]
    assert clients.kube.deleted == [("AvatarSession", NS, NAME)]
    assert clients.clock.t == 500.0


async def test_a_ttl_edit_counts_within_the_recheck() -> None:
    obj = session(ttl_s=3600)
    clients, stopped = setup(obj)
    clients.clock.at(100.0, lambda: obj["spec"].update(ttlSecondsAfterFinished=10))
    await ttl.run(clients, obj, stopped, logging.getLogger("t"))  # type: ignore[arg-type]
    assert clients.kube.deleted == [("AvatarSession", NS, NAME)]
    assert 100.0 <= clients.clock.t <= 100.0 + ttl.RECHECK_S


async def test_stopped_deletes_nothing_and_another_session_of_the_name_is_left_alone() -> None:
    obj = session(ttl_s=60)
    clients, stopped = setup(obj)
    clients.clock.at(50.0, stopped.set)
    await ttl.run(clients, obj, stopped, logging.getLogger("t"))  # type: ignore[arg-type]
    assert clients.kube.deleted == []

    clients, stopped = setup(obj)
    clients.kube.sessions[(NS, NAME)] = {**obj, "metadata": {**obj["metadata"], "uid": "a-newer-one"}}
    await ttl.run(clients, obj, stopped, logging.getLogger("t"))  # type: ignore[arg-type]
    assert clients.kube.deleted == [] and (NS, NAME) in clients.kube.sessions
