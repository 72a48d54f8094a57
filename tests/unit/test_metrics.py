"""The operator's metrics: the pure helpers, and what a session's worker observes in simulated time."""

from __future__ import annotations

import datetime

import prometheus_client as prom
import pytest
from avatar_operator import metrics
from avatar_operator.api import status as status_mod

from tests.unit.worker_fakes import (
    BITHUMAN_DATA,
    BITHUMAN_SECRET,
    EPOCH,
    LIVEKIT_DATA,
    LIVEKIT_SECRET,
    NAMESPACE,
    Harness,
    local_spec,
)

Phase = status_mod.Phase
CREATED = EPOCH.strftime("%Y-%m-%dT%H:%M:%SZ")


def sample(name: str, **labels: str) -> float:
    return prom.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("before", "after", "milestones"),
    [
        (None, Phase.PENDING, ()),
        (Phase.PENDING, Phase.STARTING, (Phase.STARTING,)),
        (Phase.STARTING, Phase.RUNNING, (Phase.RUNNING,)),
        (Phase.PENDING, Phase.RUNNING, (Phase.STARTING, Phase.RUNNING)),
        (Phase.RUNNING, Phase.RUNNING, ()),  # a restarted operator reading Running passes nothing
        (Phase.STARTING, Phase.FAILED, ()),
        (Phase.PENDING, Phase.SUCCEEDED, ()),
    ],
)
def test_reached_names_each_start_milestone_once(before: Phase | None, after: Phase, milestones: tuple[Phase, ...]) -> None:
    assert metrics.reached(before, after) == milestones


def test_since_creation_reads_the_timestamp_and_refuses_what_it_cannot_read() -> None:
    at = EPOCH + datetime.timedelta(seconds=2.5)
    assert metrics.since_creation({"metadata": {"creationTimestamp": CREATED}}, at) == 2.5
    assert metrics.since_creation({"metadata": {}}, at) is None
    assert metrics.since_creation({"metadata": {"creationTimestamp": "yesterday"}}, at) is None
    assert metrics.since_creation({"metadata": {"creationTimestamp": "2025-01-01T00:00:00"}}, at) is None  # no zone


def test_start_mode_puts_pool_sessions_apart_by_pool_name() -> None:
    local = status_mod.AvatarSessionStatus(mode=status_mod.Mode.LOCAL)
    assert metrics.start_mode({"spec": {"poolRef": {"name": "warm"}}}, local) == ("pool", "warm")
    assert metrics.start_mode({"spec": {}}, local) == ("local", "")
    assert metrics.start_mode({"spec": {}}, status_mod.AvatarSessionStatus(mode=status_mod.Mode.CLOUD)) == ("cloud", "")


async def test_a_local_session_observes_create_to_starting_and_to_ready() -> None:
    h = Harness.make(local_spec())
    h.raw["metadata"]["creationTimestamp"] = CREATED
    labels = {"mode": "local", "pool": ""}
    starting_n = sample("avatar_operator_session_create_to_starting_seconds_count", **labels)
    starting_s = sample("avatar_operator_session_create_to_starting_seconds_sum", **labels)
    ready_n = sample("avatar_operator_session_create_to_ready_seconds_count", **labels)
    ready_s = sample("avatar_operator_session_create_to_ready_seconds_sum", **labels)
    h.clock.at(5, lambda: h.launcher.scheduled("n1"))
    h.clock.at(7, h.room.publish)
    await h.run(until=20)

    assert h.kube.phases() == ["Pending", "Starting", "Running"]
    assert sample("avatar_operator_session_create_to_starting_seconds_count", **labels) == starting_n + 1
    assert sample("avatar_operator_session_create_to_starting_seconds_sum", **labels) - starting_s == pytest.approx(h.kube.first("Starting").t, abs=0.01)
    assert sample("avatar_operator_session_create_to_ready_seconds_count", **labels) == ready_n + 1
    assert sample("avatar_operator_session_create_to_ready_seconds_sum", **labels) - ready_s == pytest.approx(h.kube.first("Running").t, abs=0.01)


async def test_a_credentials_wait_is_counted_once_by_its_reason() -> None:
    h = Harness.make(local_spec(), secrets=False)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)] = dict(BITHUMAN_DATA)
    h.clock.at(200, h.secret(LIVEKIT_SECRET, LIVEKIT_DATA))
    before = sample("avatar_operator_credential_waits_total", reason="SecretNotFound")
    await h.run(until=260)
    # Read again and again with backoff, counted as one wait.
    assert sample("avatar_operator_credential_waits_total", reason="SecretNotFound") == before + 1


def test_sessions_by_phase_counts_the_index_and_every_phase() -> None:
    phases = metrics.PhaseCounts()
    assert phases.counts() == dict.fromkeys(Phase, 0)  # before kopf's index is handed over
    index: dict[str, list[None]] = {"Running": [None, None], "": [None], "Starting": [], "Bogus": [None]}
    phases.follow(index)
    # No phase yet, or one this operator does not know: Pending.
    assert phases.counts() == {Phase.PENDING: 2, Phase.STARTING: 0, Phase.RUNNING: 2, Phase.SUCCEEDED: 0, Phase.FAILED: 0}
    index["Running"].pop()
    assert phases.counts()[Phase.RUNNING] == 1  # a live view, read at each scrape


def test_every_known_label_value_has_a_series_from_the_first_scrape() -> None:
    scrape = prom.generate_latest(prom.REGISTRY).decode()
    for phase in Phase:
        assert f'avatar_operator_sessions{{phase="{phase.value}"}}' in scrape
    for reason in metrics.CREDENTIAL_REASONS:
        assert f'avatar_operator_credential_waits_total{{reason="{reason.value}"}}' in scrape
    for name in metrics.CLEANUP_REASONS:
        assert f'avatar_operator_cleanup_warnings_total{{reason="{name}"}}' in scrape
    for phase in ("Succeeded", "Failed"):
        assert f'avatar_operator_sessions_ended_total{{phase="{phase}"}}' in scrape
    for kind in metrics.RETRY_KINDS:
        assert f'avatar_operator_retries_total{{kind="{kind}"}}' in scrape
