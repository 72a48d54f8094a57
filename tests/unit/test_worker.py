"""A session's whole lifecycle (`controller.worker.run`) against in-memory fakes, in simulated time.

Each test scripts the world on the fake clock (the runner's pod, the room,
Secrets, a user's edit), runs the worker to its end and asserts on the
statuses the API server received, with the simulated time of each write.
See `worker_fakes` for the fakes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
from typing import Any

import aiohttp
import pytest
from avatar_operator.controller import claims, context, decisions, local_mode, worker
from avatar_runner import contract

from tests.fakes.bithuman_api import FakeBithumanAPI
from tests.unit.worker_fakes import (
    AVATAR,
    BITHUMAN_DATA,
    BITHUMAN_SECRET,
    EPOCH,
    LIVEKIT_DATA,
    LIVEKIT_SECRET,
    LIVEKIT_URL,
    NAME,
    NAMESPACE,
    ROOM,
    UID,
    Harness,
    Write,
    cloud_spec,
    edit_spec,
    local_spec,
    ref,
)

GRACE = 20.0
T0 = "2025-01-01T00:00:00Z"  # the fake clock's start
EPS = 0.01


def stamp(t: float) -> str:
    """The status time of simulated second `t` (whole seconds, as metav1.Time)."""
    return (EPOCH + datetime.timedelta(seconds=int(t))).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(w: Write, ctype: str) -> dict[str, Any]:
    c = w.cond(ctype)
    assert c is not None, f"no {ctype} condition in {w.status}"
    return c


def succeeded(w: Write) -> dict[str, Any]:
    """How a Succeeded session ended: on Reconciling=False, with Ready gone (kstatus reads it Current)."""
    assert w.phase == "Succeeded" and w.cond("Ready") is None, w.status
    assert cond(w, "Reconciling")["status"] == "False" and cond(w, "Stalled")["status"] == "False", w.status
    return cond(w, "Reconciling")


def ended(h: Harness) -> Write:
    end = h.kube.terminal()
    assert end is not None, f"the session never ended; phases {h.kube.phases()}"
    assert end is h.kube.last, "a status was written after the terminal one"
    return end


def local(**spec: Any) -> Harness:
    return Harness.make(local_spec(**spec), env={"AVATAR_ABSENCE_GRACE": str(GRACE)})


def ready(h: Harness, *, node_at: float = 1, publish_at: float = 2) -> Harness:
    """Scripts the runner onto node n1 and the avatar publishing (Running by t≈3.6)."""
    h.clock.at(node_at, lambda: h.launcher.scheduled("n1"))
    h.clock.at(publish_at, h.room.publish)
    return h


def prior(phase: str, *conds: tuple[str, str, str], **fields: Any) -> dict[str, Any]:
    """A status as a previous operator left it."""
    return {
        "phase": phase,
        "startTime": T0,
        "observedGeneration": 1,
        "avatarIdentity": AVATAR,
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": "", "lastTransitionTime": T0, "observedGeneration": 1}
            for t, s, r in conds
        ],
        **fields,
    }


# --- the local session's path -------------------------------------------------


async def test_local_session_pending_starting_running() -> None:
    """A scheduler slower than SCHEDULED_WRITE_DELAY_S: Pending is written while it waits."""
    h = local()
    h.clock.at(5, lambda: h.launcher.scheduled("n1"))
    h.clock.at(7, h.room.publish)
    await h.run(until=20)

    assert h.kube.phases() == ["Pending", "Starting", "Running"]
    first = h.kube.writes[0]
    assert first.t == local_mode.SCHEDULED_WRITE_DELAY_S and first.phase == "Pending"
    assert cond(first, "Accepted")["status"] == "True"
    assert cond(first, "CredentialsReady")["status"] == "True"
    # The runner, as the launcher got it.
    [(started_ref, pod, token)] = h.launcher.started
    assert started_ref == ref()
    assert pod["metadata"]["name"] == "s1-runner" and pod["metadata"]["namespace"] == NAMESPACE
    assert pod["metadata"]["ownerReferences"][0]["uid"] == UID
    [container] = pod["spec"]["containers"]
    assert {"name": contract.Env.LIVEKIT_URL.value, "value": LIVEKIT_URL} in container["env"]
    [token_secret] = [o for o in h.kube.created if o["kind"] == "Secret"]
    assert token_secret["metadata"]["name"] == "s1-token"
    assert token_secret["stringData"] == {contract.TOKEN_KEY: token}
    assert first.status["runnerPod"] == "s1-runner"
    # Scheduled at t=5.
    starting = h.kube.first("Starting")
    assert starting.t == 5
    assert cond(starting, "RunnerScheduled")["status"] == "True" and "n1" in cond(starting, "RunnerScheduled")["message"]
    assert cond(starting, "Ready")["reason"] == "WaitingForAvatar"
    # Ready within a poll of the avatar publishing at t=7.
    running = h.kube.first("Running")
    assert 7 <= running.t <= 7 + decisions.SLOW_POLL_S
    assert cond(running, "Ready")["status"] == "True" and cond(running, "Ready")["reason"] == "AvatarPublishing"
    assert running.status["readyTime"] == stamp(running.t)
    assert h.events.reasons() == ["PodCreated", "Scheduled", "AvatarPublishing"]
    assert not h.events.warnings()


async def test_a_runner_placed_at_once_is_written_once_as_starting() -> None:
    """No Pending write before the scheduler's word: with it, runnerPod and the node go in one write."""
    h = local()
    h.clock.at(1, lambda: h.launcher.scheduled("n1"))
    await h.run(until=10)

    assert h.kube.phases() == ["Starting"]
    [first] = h.kube.writes
    assert first.t == 1 and first.status["runnerPod"] == "s1-runner"
    assert cond(first, "RunnerScheduled")["reason"] == "Scheduled" and cond(first, "Accepted")["status"] == "True"
    # One Event says both steps; a slower scheduler gets PodCreated first (above).
    assert h.events.reasons() == ["Scheduled"]
    assert [e.message for e in h.events.posted] == ["runner pod s1-runner scheduled on n1"]


async def test_an_unschedulable_runner_is_written_as_soon_as_the_scheduler_says_so() -> None:
    h = local()
    h.clock.at(1, lambda: h.launcher.unschedulable("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."))
    await h.run(until=2)

    [first] = h.kube.writes
    assert first.t == 1 and first.phase == "Pending" and first.status["runnerPod"] == "s1-runner"
    assert cond(first, "RunnerScheduled")["reason"] == "Unschedulable"


# --- the grace period ---------------------------------------------------------


async def test_avatar_leaving_ends_the_session_only_after_the_grace() -> None:
    h = ready(local())
    h.clock.at(12, h.room.leave)
    await h.run(until=200)

    end = ended(h)
    assert end.phase == "Succeeded" and succeeded(end)["reason"] == "AvatarLeft"
    # Not before the grace has run from the departure; within two polls after it.
    assert 12 + GRACE <= end.t <= 12 + GRACE + decisions.SLOW_POLL_S + decisions.MISSING_POLL_S
    assert [w.phase for w in h.kube.writes if w.t < end.t][-1] == "Running"
    assert h.room.observed[-1] == end.t


async def test_avatar_back_within_the_grace_keeps_the_session_running() -> None:
    h = ready(local())
    h.clock.at(12, h.room.leave)
    h.clock.at(25, h.room.publish)
    await h.run(until=90)

    assert h.kube.terminal() is None
    assert h.kube.last.phase == "Running" and cond(h.kube.last, "Ready")["status"] == "True"
    assert any(12 < t < 25 for t in h.room.observed)  # the absence was seen
    assert h.events.reasons().count("AvatarPublishing") == 1


async def test_the_grace_starts_again_at_each_departure() -> None:
    h = ready(local())
    h.clock.at(12, h.room.leave)
    h.clock.at(25, h.room.publish)
    h.clock.at(40, h.room.leave)
    await h.run(until=200)

    end = ended(h)
    assert succeeded(end)["reason"] == "AvatarLeft"
    assert end.t >= 40 + GRACE  # the first absence does not count against the second


# --- maxDuration --------------------------------------------------------------


async def test_max_duration_ends_the_session_and_stops_the_avatar() -> None:
    h = ready(local(maxDuration=30))
    await h.run(until=200)

    end = ended(h)
    assert end.phase == "Succeeded" and succeeded(end)["reason"] == "MaxDurationReached"
    assert 30 <= end.t < 30 + EPS
    assert end.status["endTime"] == stamp(30)
    assert h.launcher.stopped == [ref()]
    assert h.room.removed == [(ROOM, AVATAR)]
    assert ("Secret", NAMESPACE, "s1-token") in h.kube.deleted


@pytest.mark.parametrize("new, ends_at", [(60, 60), (15, 15)], ids=["lengthened", "shortened"])
async def test_an_edit_of_max_duration_moves_the_deadline(new: float, ends_at: float) -> None:
    h = ready(local(maxDuration=30))
    h.clock.at(10, lambda: edit_spec(h.raw, maxDuration=new))
    await h.run(until=200)

    end = ended(h)
    assert succeeded(end)["reason"] == "MaxDurationReached"
    assert ends_at <= end.t < ends_at + EPS
    assert end.status["observedGeneration"] == 2
    assert h.launcher.stopped == [ref()]


async def test_session_deleted_while_running_ends_the_worker_without_error() -> None:
    h = local()
    h.clock.at(2, lambda: h.kube.delete_session(NAMESPACE, NAME))
    h.clock.at(3, lambda: h.launcher.scheduled("n1"))  # its write (the first: placed at once) finds the session gone
    await h.run(until=60)

    assert [w.t for w in h.kube.writes] == []
    assert h.clock.t == 3  # the worker ended there, not at kopf's stop
    assert len(h.boxes) == 0  # its mailbox is forgotten


# --- the runner's pod ---------------------------------------------------------


async def test_failed_runner_fails_the_session_with_its_termination_message() -> None:
    h = local()
    h.clock.at(3, lambda: h.launcher.terminated("Failed", reason="Error", exit_code=3, message="renderer refused: NotAuthorised: bad key\n"))
    await h.run(until=60)

    end = ended(h)
    assert end.phase == "Failed" and end.t == 3
    ready_cond = cond(end, "Ready")
    assert ready_cond["reason"] == "RunnerFailed"
    assert ready_cond["message"] == "runner failed: Error (exit code 3): renderer refused: NotAuthorised: bad key"
    assert [e.reason for e in h.events.warnings()] == ["RunnerFailed"]


async def test_runner_that_exits_ends_the_session_succeeded() -> None:
    h = ready(local())
    h.clock.at(8, lambda: h.launcher.terminated("Succeeded", reason="Completed", exit_code=0, message="the agent left"))
    await h.run(until=60)

    end = ended(h)
    assert end.phase == "Succeeded" and end.t == 8
    assert succeeded(end)["reason"] == "RunnerExited" and "the agent left" in succeeded(end)["message"]


async def test_unschedulable_runner_is_pending_with_the_schedulers_message_warned_once() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    h = local()
    for t in (2, 4, 6):  # the scheduler retries; the pod watch reports each
        h.clock.at(t, lambda: h.launcher.unschedulable(message))
    h.clock.at(8, lambda: h.launcher.scheduled("n1"))
    await h.run(until=12)

    pending = [w for w in h.kube.writes if w.phase == "Pending" and cond(w, "RunnerScheduled")["reason"] == "Unschedulable"]
    assert pending and pending[0].t == 2
    assert cond(pending[0], "RunnerScheduled") | {"lastTransitionTime": None} == {
        "type": "RunnerScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    assert len(pending) == 1  # the same state again is not written again
    assert [(e.reason, e.message) for e in h.events.warnings()] == [("Unschedulable", message)]
    assert h.kube.phases() == ["Pending", "Starting"]  # then a node freed up
    assert h.kube.first("Starting").t == 8


async def test_deleted_runner_pod_fails_the_session() -> None:
    h = local()
    h.clock.at(3, lambda: h.launcher.scheduled("n1"))
    h.clock.at(5, h.launcher.deleted)
    await h.run(until=60)

    end = ended(h)
    assert end.phase == "Failed" and end.t == 5
    scheduled = cond(end, "RunnerScheduled")
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == ("False", "RunnerFailed", "the runner pod was deleted")


# --- credentials --------------------------------------------------------------


async def test_missing_secret_waits_warned_once_then_proceeds() -> None:
    h = Harness.make(local_spec(), secrets=False)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)] = dict(BITHUMAN_DATA)
    h.clock.at(200, h.secret(LIVEKIT_SECRET, LIVEKIT_DATA))
    await h.run(until=260)

    first = h.kube.writes[0]
    assert first.t == 0 and first.phase == "Pending"
    creds = cond(first, "CredentialsReady")
    assert creds["status"] == "False" and creds["reason"] == "SecretNotFound" and LIVEKIT_SECRET in creds["message"]
    assert [e.reason for e in h.events.warnings()] == ["SecretNotFound"]
    # Found at the first read after t=200, and on it goes.
    found = next(w for w in h.kube.writes if cond(w, "CredentialsReady")["status"] == "True")
    assert 200 <= found.t <= 200 + worker.CREDENTIALS_MAX_WAIT_S
    # Its Event at once; its write with the runner's node, at most SCHEDULED_WRITE_DELAY_S later.
    [event_t] = [e.t for e in h.events.posted if e.reason == "CredentialsFound"]
    assert event_t <= found.t <= event_t + local_mode.SCHEDULED_WRITE_DELAY_S
    assert len(h.launcher.started) == 1
    assert [w.t for w in h.kube.writes if w.t < found.t] == [0]  # waiting is not rewritten on every read


async def test_the_credentials_wait_backs_off_to_thirty_seconds() -> None:
    h = Harness.make(local_spec(), secrets=False)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)] = dict(BITHUMAN_DATA)
    await h.run(until=300)

    reads = [t for t, name in h.kube.secret_reads if name == LIVEKIT_SECRET]
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert gaps[0] == worker.CREDENTIALS_FIRST_WAIT_S
    assert gaps == sorted(gaps)  # they thin out
    assert max(gaps) == worker.CREDENTIALS_MAX_WAIT_S == 30 and gaps[-3:] == [30, 30, 30]
    assert len(reads) <= 16  # in five minutes
    assert [e.reason for e in h.events.warnings()] == ["SecretNotFound"]
    assert h.kube.last.phase == "Pending" and not h.launcher.started


# --- resuming after an operator restart ------------------------------------------


async def test_restart_with_a_runner_recorded_starts_no_second_runner() -> None:
    status = prior(
        "Starting",
        ("Accepted", "True", "Valid"),
        ("CredentialsReady", "True", "CredentialsFound"),
        ("RunnerScheduled", "True", "Scheduled"),
        ("Ready", "False", "WaitingForAvatar"),
        mode="local",
        runnerPod="s1-runner",
    )
    h = Harness.make(local_spec(), status=status)
    h.kube.pods[(NAMESPACE, "s1-runner")] = {"metadata": {"name": "s1-runner"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    h.kube.secrets[(NAMESPACE, "s1-token")] = {contract.TOKEN_KEY: "jwt"}
    h.room.publish()
    await h.run(until=30)

    assert h.launcher.started == [] and h.kube.created == []
    assert h.kube.pod_reads == ["s1-runner"]
    assert h.kube.phases() == ["Running"]
    assert cond(h.kube.last, "Ready")["status"] == "True"
    assert h.kube.last.status["startTime"] == T0  # kept, not restarted
    assert h.events.reasons() == ["AvatarPublishing"]  # resumed: only what happened since


def cloud(api: FakeBithumanAPI, http: aiohttp.ClientSession, *, spec: dict[str, Any] | None = None, **kwargs: Any) -> Harness:
    env = {"AVATAR_BITHUMAN_API_URL": api.url, "AVATAR_BITHUMAN_MINT_URL": api.mint_url, "AVATAR_ABSENCE_GRACE": str(GRACE)}
    return Harness.make(cloud_spec(**(spec or {})), env=env, http=http, **kwargs)


async def test_cloud_session_sends_once_then_runs(bithuman_api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    h = cloud(bithuman_api, http)
    h.clock.at(4, h.room.publish)
    await h.run(until=20)

    assert h.kube.phases() == ["Starting", "Running"]  # a quick answer: the first write is Starting (test_cloud_attempts)
    starting = h.kube.first("Starting")
    assert cond(starting, "CloudRequestAccepted")["status"] == "True"
    assert starting.status["cloudRequest"]["idempotencyKey"] == UID and "acceptedTime" in starting.status["cloudRequest"]
    assert [s["idempotency_key"] for s in bithuman_api.sessions] == [UID]
    assert not h.launcher.started


async def test_restarted_cloud_session_already_accepted_is_not_sent_again(
    bithuman_api: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    status = prior(
        "Starting",
        ("Accepted", "True", "Valid"),
        ("CredentialsReady", "True", "CredentialsFound"),
        ("CloudRequestAccepted", "True", "RequestAccepted"),
        ("Ready", "False", "WaitingForAvatar"),
        mode="cloud",
        attempts=1,
        cloudRequest={"idempotencyKey": UID, "sentTime": T0, "acceptedTime": T0},
    )
    h = cloud(bithuman_api, http, status=status)
    h.clock.at(4, h.room.publish)
    await h.run(until=20)

    assert bithuman_api.requests == []
    assert h.kube.phases() == ["Starting", "Running"]  # never Pending again
    assert h.kube.last.status["cloudRequest"] == status["cloudRequest"] and h.kube.last.status["attempts"] == 1


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
async def test_ended_session_returns_at_once_writing_nothing(phase: str) -> None:
    h = Harness.make(local_spec(), status=prior(phase, ("Ready", "False", "AvatarLeft"), endTime=T0))
    await h.run()

    assert h.kube.writes == [] and h.kube.secret_reads == [] and h.events.posted == []
    assert h.launcher.started == [] and h.rooms.asked == [] and h.clock.waits == []


# --- an invalid spec ----------------------------------------------------------


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"room": ROOM, "agentIdentity": "a"}, "spec.modelPath"),
        (local_spec(maxDuration=-5.0), "spec.maxDuration"),
        (local_spec(room=7), "spec.room"),
    ],
    ids=["no-model-path", "negative-max-duration", "room-not-a-string"],
)
async def test_invalid_spec_fails_naming_the_field_and_starts_nothing(spec: dict[str, Any], field: str) -> None:
    h = Harness.make(spec)
    await h.run()

    [end] = h.kube.writes
    assert end.phase == "Failed" and "endTime" in end.status
    for ctype in ("Accepted", "Ready"):
        assert cond(end, ctype)["reason"] == "InvalidSpec" and field in cond(end, ctype)["message"]
    assert [e.reason for e in h.events.warnings()] == ["InvalidSpec"]
    assert h.launcher.started == [] and h.kube.created == [] and h.kube.secret_reads == [] and h.rooms.asked == []


# --- bugs found while writing these, fixed: each test failed before its fix ------


async def test_max_duration_ends_a_session_still_waiting_for_credentials() -> None:
    h = Harness.make(local_spec(maxDuration=30), secrets=False)
    h.kube.secrets[(NAMESPACE, BITHUMAN_SECRET)] = dict(BITHUMAN_DATA)
    h.clock.at(60, h.secret(LIVEKIT_SECRET, LIVEKIT_DATA))
    await h.run(until=200)

    end = ended(h)
    assert succeeded(end)["reason"] == "MaxDurationReached"
    assert end.t <= 30 + worker.CREDENTIALS_MAX_WAIT_S
    assert h.launcher.started == []


async def test_restart_finding_the_recorded_runner_pod_gone_does_not_wait_forever() -> None:
    status = prior(
        "Starting",
        ("Accepted", "True", "Valid"),
        ("CredentialsReady", "True", "CredentialsFound"),
        ("RunnerScheduled", "True", "Scheduled"),
        ("Ready", "False", "WaitingForAvatar"),
        mode="local",
        runnerPod="s1-runner",
    )
    h = Harness.make(local_spec(), status=status)  # no pod in the API server
    await h.run(until=300)

    assert h.kube.terminal() is not None or h.launcher.started


async def test_a_livekit_outage_keeps_the_first_ready_time() -> None:
    h = ready(local())
    h.clock.at(20, h.room.fail)
    h.clock.at(30, h.room.recover)
    await h.run(until=60)

    first_ready = h.kube.first("Running").status["readyTime"]
    assert any(cond(w, "Ready")["reason"] == "LiveKitUnreachable" for w in h.kube.writes)
    assert h.kube.last.status["readyTime"] == first_ready
    assert h.events.reasons().count("AvatarPublishing") == 1


async def test_cloud_retries_wait_on_the_injected_clock(bithuman_api: FakeBithumanAPI, http: aiohttp.ClientSession) -> None:
    bithuman_api.script([{"status": 503}, {}])
    h = Harness.make(
        cloud_spec(connection={"retryInterval": 0.02}),
        env={"AVATAR_BITHUMAN_API_URL": bithuman_api.url, "AVATAR_BITHUMAN_MINT_URL": bithuman_api.mint_url},
        http=http,
    )
    await h.run(until=10)

    accepted = h.kube.first("Starting")
    assert accepted.status["attempts"] == 2
    assert accepted.t >= 0.02


async def test_restart_finding_the_token_secret_gone_makes_it_again() -> None:
    status = prior(
        "Starting",
        ("Accepted", "True", "Valid"),
        ("CredentialsReady", "True", "CredentialsFound"),
        ("RunnerScheduled", "True", "Scheduled"),
        mode="local",
        runnerPod="s1-runner",
    )
    h = Harness.make(local_spec(), status=status)
    h.kube.pods[(NAMESPACE, "s1-runner")] = {"metadata": {"name": "s1-runner"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}}
    await h.run(until=10)

    assert h.launcher.started == []  # the pod is there: no second runner
    (made,) = h.kube.created
    assert made["kind"] == "Secret" and made["metadata"]["name"] == "s1-token"
    assert made["metadata"]["ownerReferences"][0]["uid"] == UID


class Boom(RuntimeError):
    pass


async def test_a_worker_that_keeps_failing_fails_the_session_instead_of_looping() -> None:
    """kopf restarts a worker that raised; the third error ends the session, so no step repeats forever."""
    h = Harness.make(local_spec())

    async def explode(*_: Any) -> None:
        raise Boom("a bug")

    h.launcher.start = explode  # type: ignore[method-assign]
    for attempt in range(1, worker.MAX_WORKER_ERRORS + 1):
        ctx = h.restart()
        with pytest.raises(Boom):
            await asyncio.wait_for(worker.run(ctx), 5)
        assert h.kube.last.status["workerErrors"] == attempt
    ctx = h.restart()
    await asyncio.wait_for(worker.run(ctx), 5)

    end = ended(h)
    assert cond(end, "Ready")["reason"] == "OperatorError"
    assert "3 times" in cond(end, "Accepted")["message"]
    assert [e.reason for e in h.events.warnings()].count("OperatorError") == worker.MAX_WORKER_ERRORS + 1


class FakeClaims:
    """kopf's index of every session's (LiveKit URL, room, identity)."""

    def __init__(self, *found: claims.Claim) -> None:
        self.found = list(found)

    def claims(self, key: claims.Key) -> list[claims.Claim]:
        return list(self.found)


async def test_a_session_waits_while_an_older_one_holds_its_avatar_identity() -> None:
    h = Harness.make(local_spec())
    older = claims.Claim(NAMESPACE, "first", "uid-first", "2024-12-31T23:00:00Z", active=True)
    mine = claims.Claim(NAMESPACE, NAME, UID, "2025-01-01T00:00:00Z", active=True)
    index = FakeClaims(older, mine)
    h.ctx.claims = index

    def first_ends() -> None:
        index.found = [dataclasses.replace(older, active=False), mine]

    h.clock.at(10, first_ends)
    h.clock.at(12, h.launcher.scheduled)
    await h.run(until=20)

    waiting = h.kube.writes[0]
    assert waiting.phase == "Pending" and cond(waiting, "RunnerScheduled")["reason"] == "AvatarIdentityInUse"
    assert f"{NAMESPACE}/first" in cond(waiting, "RunnerScheduled")["message"]
    assert cond(waiting, "Accepted")["status"] == "True"  # the spec is fine: the step waits
    (started,) = h.launcher.started
    assert h.kube.first("Starting").t >= 12  # nothing started while the other held the identity
    assert cond(h.kube.last, "Accepted")["status"] == "True"


def test_the_oldest_active_claim_holds_the_identity() -> None:
    a = claims.Claim("n", "a", "ua", "2025-01-01T00:00:00Z", True)
    b = claims.Claim("n", "b", "ub", "2025-01-01T00:00:05Z", True)
    assert claims.holder([b, a], "ub") == a
    assert claims.holder([b, a], "ua") is None
    assert claims.holder([dataclasses.replace(a, active=False), b], "ub") is None
    assert claims.holder([], "ua") is None


async def test_the_phase_never_goes_backwards() -> None:
    h = ready(local())
    await h.run(until=10)
    await h.ctx.record(phase=context.Phase.STARTING)
    assert h.ctx.status.phase == "Running"


async def test_an_uncertain_failure_removes_the_avatar_that_comes_after_it(
    bithuman_api: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    """Every attempt broke after it was sent: bitHuman may have started the avatar; it is removed when it joins."""
    bithuman_api.script([{"drop": True}, {"drop": True}])
    h = cloud(bithuman_api, http, spec={"connection": {"maxRetry": 2, "retryInterval": 0.01, "timeout": 2}})
    h.clock.at(30, h.room.publish)  # the avatar bitHuman started after all
    await h.run(until=200)

    end = ended(h)
    assert cond(end, "CloudRequestAccepted")["reason"] == "RetriesExhausted"
    assert "watches room" in cond(end, "CloudRequestAccepted")["message"]
    assert h.room.removed == [(ROOM, AVATAR)]
    assert "LateAvatarRemoved" in [e.reason for e in h.events.warnings()]


async def test_a_certain_failure_watches_nothing(http: aiohttp.ClientSession) -> None:
    """Connection refused: nothing was sent, so nothing can come."""
    h = Harness.make(
        cloud_spec(connection={"maxRetry": 2, "retryInterval": 0.01, "timeout": 2}),
        env={"AVATAR_BITHUMAN_API_URL": "http://127.0.0.1:9/v1/runtime-tokens/request", "AVATAR_BITHUMAN_MINT_URL": "http://127.0.0.1:9/mint"},
        http=http,
    )
    await h.run(until=200)

    end = ended(h)
    assert "watches room" not in cond(end, "Ready")["message"]
    assert h.room.observed == []


@pytest.mark.parametrize(("other", "steps_back"), [("operator-a", True), ("operator-z", False)])
async def test_of_two_operators_on_one_session_the_higher_named_steps_back(other: str, steps_back: bool) -> None:
    """Two installs both --standalone: the other's name shows up in status after this one wrote."""
    h = local()
    h.clock.at(1, h.launcher.scheduled)

    def the_other_writes() -> None:
        h.raw["status"] = {**h.raw.get("status", {}), "operator": other}

    h.clock.at(5, the_other_writes)
    await h.run(until=30)

    assert h.kube.writes[0].status["operator"] == "operator-m"
    if steps_back:
        assert h.launcher.released and not any(w.t > 5 for w in h.kube.writes)
    else:
        assert not h.launcher.released


async def test_the_operator_that_keeps_a_session_writes_its_name_back() -> None:
    """The other's write was the last: this one (the lower name) writes again, so the other sees it and steps back."""
    h = local()
    h.clock.at(1, h.launcher.scheduled)
    h.clock.at(5, lambda: h.raw.setdefault("status", {}).update(operator="operator-z"))
    await h.run(until=30)

    assert any(w.t >= 5 and w.status.get("operator") == "operator-m" for w in h.kube.writes)


async def test_restart_past_the_deadline_with_the_pod_gone_is_max_duration_not_a_failure() -> None:
    """The last operator stopped the runner at maxDuration and died before it wrote so."""
    status = prior(
        "Running",
        ("Accepted", "True", "Valid"),
        ("CredentialsReady", "True", "CredentialsFound"),
        ("RunnerScheduled", "True", "Scheduled"),
        ("Ready", "True", "AvatarPublishing"),
        mode="local",
        runnerPod="s1-runner",
    )
    h = Harness.make(local_spec(maxDuration=5), status={**status, "startTime": "2024-12-31T23:00:00Z"})
    await h.run(until=30)

    end = ended(h)
    assert end.phase == "Succeeded" and succeeded(end)["reason"] == "MaxDurationReached"


async def test_a_predecessors_name_in_a_body_that_lags_is_not_another_operator() -> None:
    """Restarted: the body still shows the dead predecessor's name until this operator's write comes back."""
    h = Harness.make(local_spec(), status={"operator": "operator-a"})
    h.kube.echo = False  # the watch lags for 2 s, then brings this operator's write back

    def caught_up() -> None:
        h.kube.echo = True
        h.raw["status"] = dict(h.kube.last.status)

    h.clock.at(2, caught_up)
    h.clock.at(1, h.launcher.scheduled)
    await h.run(until=30)

    assert h.launcher.started and not h.launcher.released
    assert h.kube.last.phase == "Starting"
