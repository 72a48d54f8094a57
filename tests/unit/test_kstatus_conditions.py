"""The conditions kstatus reads (Reconciling, Stalled, Ready), derived from the phase.

kstatus's rules, as sigs.k8s.io/cli-utils v0.37 applies them to a custom
resource: Reconciling=True is InProgress, Stalled=True is Failed, then
Ready=True is Current and Ready=False InProgress; no Ready is Current.
`kstatus_of` restates them here to check each phase's shape without Go;
tests/integration/test_kstatus.py asks the real library about live objects.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from avatar_operator.api import conditions, status
from avatar_operator.api import pool as pool_mod
from avatar_operator.controller import placement, pool_status

from tests.unit.test_worker import cond, ended, local, ready
from tests.unit.worker_fakes import Write

Phase = status.Phase
Type = status.ConditionType
Reason = status.Reason
NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def kstatus_of(conds: list[dict[str, Any]]) -> str:
    by_type = {c["type"]: c["status"] for c in conds}
    if by_type.get("Reconciling") == "True":
        return "InProgress"
    if by_type.get("Stalled") == "True":
        return "Failed"
    return "InProgress" if by_type.get("Ready", "True") != "True" else "Current"


def wire(conds: tuple[status.Condition, ...]) -> list[dict[str, Any]]:
    return status.to_wire(status.AvatarSessionStatus(conditions=conds))["conditions"]


def settled(phase: Phase | None, *changes: conditions.Change) -> list[dict[str, Any]]:
    conds: tuple[status.Condition, ...] = ()
    for change in changes:
        conds = conditions.set_condition(conds, change, 1, NOW)
    return wire(conditions.settle_session(phase, conds, 1, NOW))


def by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


ACCEPTED = conditions.Change(Type.ACCEPTED, True, Reason.VALID, "local mode session accepted")
NO_SECRET = conditions.Change(Type.CREDENTIALS_READY, False, Reason.SECRET_NOT_FOUND, "create Secret x")
PUBLISHING = conditions.Change(Type.READY, True, Reason.AVATAR_PUBLISHING, "avatar publishing video")
LEFT = conditions.Change(Type.READY, False, Reason.AVATAR_LEFT, "avatar left")
FAILED = conditions.Change(Type.READY, False, Reason.RUNNER_FAILED, "runner failed: Error")


def test_the_first_write_has_ready_and_reads_in_progress() -> None:
    conds = by_type(settled(None, ACCEPTED))
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "WaitingForAvatar"
    assert conds["Reconciling"]["status"] == "True" and conds["Stalled"]["status"] == "False"
    assert kstatus_of(list(conds.values())) == "InProgress"


def test_reconciling_names_the_step_a_pending_session_waits_on() -> None:
    conds = by_type(settled(Phase.PENDING, ACCEPTED, NO_SECRET))
    assert (conds["Reconciling"]["reason"], conds["Reconciling"]["message"]) == ("SecretNotFound", "create Secret x")


@pytest.mark.parametrize(
    ("phase", "changes", "expected", "ready"),
    [
        (Phase.PENDING, (ACCEPTED, NO_SECRET), "InProgress", "False"),
        (Phase.STARTING, (ACCEPTED,), "InProgress", "False"),
        (Phase.RUNNING, (ACCEPTED, PUBLISHING), "Current", "True"),
        (Phase.SUCCEEDED, (ACCEPTED, PUBLISHING, LEFT), "Current", None),
        (Phase.FAILED, (ACCEPTED, FAILED), "Failed", "False"),
    ],
)
def test_each_phase_reads_as_the_readme_says(
    phase: Phase, changes: tuple[conditions.Change, ...], expected: str, ready: str | None
) -> None:
    conds = settled(phase, *changes)
    assert kstatus_of(conds) == expected
    assert by_type(conds).get("Ready", {}).get("status") == ready
    assert by_type(conds)["Stalled"]["status"] == ("True" if phase == Phase.FAILED else "False")


def test_a_succeeded_session_keeps_how_it_ended_on_reconciling() -> None:
    conds = by_type(settled(Phase.SUCCEEDED, ACCEPTED, PUBLISHING, LEFT))
    assert "Ready" not in conds
    assert (conds["Reconciling"]["status"], conds["Reconciling"]["reason"]) == ("False", "AvatarLeft")


def test_settling_twice_changes_nothing() -> None:
    once = conditions.settle_session(Phase.SUCCEEDED, conditions.set_condition((), LEFT, 1, NOW), 1, NOW)
    later = NOW + datetime.timedelta(seconds=30)
    assert conditions.settle_session(Phase.SUCCEEDED, once, 1, later) == once


def test_a_failed_session_is_stalled_with_the_failure() -> None:
    conds = by_type(settled(Phase.FAILED, ACCEPTED, FAILED))
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "RunnerFailed")
    assert conds["Reconciling"]["status"] == "False"


def consistent(w: Write) -> None:
    conds = w.status["conditions"]
    expected = {"Pending": "InProgress", "Starting": "InProgress", "Failed": "Failed", "Succeeded": "Current"}
    if w.phase == "Running":
        want = "Current" if cond(w, "Ready")["status"] == "True" else "InProgress"
    else:
        want = expected[str(w.phase)]
    assert kstatus_of(conds) == want, w.status
    assert w.status["observedGeneration"] == 1


async def test_every_write_of_a_session_reads_as_its_phase() -> None:
    h = ready(local(maxDuration=20))
    await h.run(until=60)
    assert ended(h).phase == "Succeeded"
    assert h.kube.phases() == ["Starting", "Running", "Succeeded"]  # placed at once: no Pending write
    for w in h.kube.writes:
        consistent(w)


async def test_every_write_of_a_failing_session_reads_as_its_phase() -> None:
    h = local()
    h.clock.at(3, lambda: h.launcher.terminated("Failed", reason="Error", exit_code=3, message="bad key"))
    await h.run(until=60)
    assert ended(h).phase == "Failed"
    for w in h.kube.writes:
        consistent(w)


def pool(views: list[placement.RunnerView], failure: str | None = None, replicas: int = 1) -> list[dict[str, Any]]:
    st = pool_status.build(
        pool_mod.AvatarPoolStatus(), name="p", generation=1, replicas=replicas, views=views, booked={}, failure=failure, now=NOW
    )
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in st.conditions or ()]


def runner(ready_: bool) -> placement.RunnerView:
    return placement.RunnerView(name="r1", url=None, ready=ready_, capacity=4, active=0)


@pytest.mark.parametrize(
    ("views", "failure", "expected", "reconciling"),
    [
        ([runner(False)], None, "InProgress", "True"),
        ([runner(True)], None, "Current", "False"),
        ([runner(False)], "runner r1 exited before it was ready", "Failed", "False"),
    ],
)
def test_a_pool_reads_as_its_runners(
    views: list[placement.RunnerView], failure: str | None, expected: str, reconciling: str
) -> None:
    conds = pool(views, failure)
    assert kstatus_of(conds) == expected
    assert by_type(conds)["Reconciling"]["status"] == reconciling
    assert by_type(conds)["Stalled"]["status"] == ("True" if failure else "False")
    assert by_type(conds)["Reconciling"]["message"] == by_type(conds)["Ready"]["message"]


def test_describe_lists_the_steps_in_order_then_what_kstatus_reads() -> None:
    scheduled = conditions.Change(Type.RUNNER_SCHEDULED, True, Reason.SCHEDULED, "on n1")
    conds = settled(Phase.RUNNING, PUBLISHING, ACCEPTED, scheduled)
    assert [c["type"] for c in conds] == ["Accepted", "RunnerScheduled", "Ready", "Reconciling", "Stalled"]
