"""The operator's Prometheus metrics (served by `avatar-operator run --metrics-port`).

Label sets are bounded: a phase, a mode, an Event reason, a kind of retry, and
a pool's name (pools are few and made by whoever runs the cluster, like a
Deployment's name); a session's name or uid is never a label. Counters whose
label values are known are created at 0 for each, so a query over them has a
series from the first scrape on.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any, Protocol

import prometheus_client as prom
from prometheus_client import core as prom_core
from prometheus_client import registry as prom_registry

from avatar_operator.api import status as status_mod

Phase = status_mod.Phase
Reason = status_mod.Reason

WORKERS = prom.Gauge("avatar_operator_session_workers", "Sessions with a running worker (not yet ended)")
ENDED = prom.Counter("avatar_operator_sessions_ended_total", "Sessions that reached a terminal phase", ["phase"])

# From a session's creation to Starting and to Ready: a warm pool's slot is
# under a second, a cold GPU pod pulling its image can take minutes.
# creationTimestamp has whole seconds, so a figure may read up to 1 s long.
START_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
START_LABELS = ["mode", "pool"]
TO_STARTING = prom.Histogram(
    "avatar_operator_session_create_to_starting_seconds",
    "From the session's creationTimestamp to phase Starting (runner scheduled, slot claimed or cloud request accepted)",
    START_LABELS,
    buckets=START_BUCKETS,
)
TO_READY = prom.Histogram(
    "avatar_operator_session_create_to_ready_seconds",
    "From the session's creationTimestamp to Ready (the avatar in the room publishing video)",
    START_LABELS,
    buckets=START_BUCKETS,
)
CREDENTIAL_REASONS = (Reason.SECRET_NOT_FOUND, Reason.SECRET_KEY_MISSING, Reason.SECRET_VALUE_INVALID, Reason.LIVEKIT_NOT_CONFIGURED)
CREDENTIAL_WAITS = prom.Counter(
    "avatar_operator_credential_waits_total", "Sessions that began waiting for credentials, by what was missing", ["reason"]
)
# The finalizer's Event reason when LiveKit could not be told (handlers posts it; not a status reason).
CLEANUP_INCOMPLETE = "CleanupIncomplete"
CLEANUP_REASONS = (CLEANUP_INCOMPLETE, Reason.LATE_AVATAR_REMOVED.value)
CLEANUP_WARNINGS = prom.Counter(
    "avatar_operator_cleanup_warnings_total", "Warning Events about a session's cleanup, by Event reason", ["reason"]
)
TTL_DELETIONS = prom.Counter(
    "avatar_operator_ttl_deletions_total", "Ended sessions the operator deleted after their spec.ttlSecondsAfterFinished"
)
RETRY_KINDS = ("worker_error", "placement")
RETRIES = prom.Counter(
    "avatar_operator_retries_total",
    "Work done again: a session's worker that raised (kopf runs it again), a pool session placed again after its runner was lost",
    ["kind"],
)
WEBHOOK_OUTCOMES = ("woke", "ignored", "refused")
WEBHOOKS = prom.Counter(
    "avatar_operator_webhooks_total",
    "LiveKit webhooks received, by outcome: woke (a session watching that participant or room looks at once), "
    "ignored (no session waits on it), refused (a bad signature or body: answered 401)",
    ["outcome"],
)
for _phase in (Phase.SUCCEEDED, Phase.FAILED):
    ENDED.labels(phase=_phase.value)
for _name in WEBHOOK_OUTCOMES:
    WEBHOOKS.labels(outcome=_name)
for _reason in CREDENTIAL_REASONS:
    CREDENTIAL_WAITS.labels(reason=_reason.value)
for _name in CLEANUP_REASONS:
    CLEANUP_WARNINGS.labels(reason=_name)
for _name in RETRY_KINDS:
    RETRIES.labels(kind=_name)


class _HasStatus(Protocol):
    @property
    def status(self) -> status_mod.AvatarSessionStatus: ...


@contextlib.contextmanager
def track(worker: _HasStatus) -> Iterator[None]:
    WORKERS.inc()
    try:
        yield
    finally:
        WORKERS.dec()
        phase = worker.status.phase
        if phase in (status_mod.Phase.SUCCEEDED, status_mod.Phase.FAILED):
            ENDED.labels(phase=phase.value).inc()


def start_mode(body: Mapping[str, Any], status: status_mod.AvatarSessionStatus) -> tuple[str, str]:
    """The (mode, pool) labels of a session: pool sessions apart from the other local ones."""
    pool = str(((body.get("spec") or {}).get("poolRef") or {}).get("name") or "")
    if pool:
        return "pool", pool
    return (status.mode.value if status.mode else "unknown"), ""


def since_creation(body: Mapping[str, Any], at: datetime.datetime) -> float | None:
    """Seconds from metadata.creationTimestamp to `at` (None without a readable timestamp)."""
    raw = str((body.get("metadata") or {}).get("creationTimestamp") or "")
    try:
        created = datetime.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if created.tzinfo is None:
        return None
    return max(0.0, (at - created).total_seconds())


def reached(before: Phase | None, after: Phase | None) -> tuple[Phase, ...]:
    """The start milestones (Starting, Running) a phase change passes for the first time.

    A session that goes from Pending straight to Running has been Starting by
    then too; a restarted operator that reads Running from status passes none."""
    order = (None, Phase.PENDING, Phase.STARTING, Phase.RUNNING)
    if before not in order or after not in order:
        return ()
    return tuple(p for p in (Phase.STARTING, Phase.RUNNING) if order.index(before) < order.index(p) <= order.index(after))


def phase_changed(
    before: Phase | None, status: status_mod.AvatarSessionStatus, body: Mapping[str, Any], at: datetime.datetime
) -> None:
    """Observes the create-to-Starting and create-to-Ready latencies when a session reaches them."""
    milestones = reached(before, status.phase)
    seconds = since_creation(body, at) if milestones else None
    if seconds is None:
        return
    mode, pool = start_mode(body, status)
    for milestone in milestones:
        histogram = TO_STARTING if milestone is Phase.STARTING else TO_READY
        histogram.labels(mode=mode, pool=pool).observe(seconds)


def credential_wait(reason: Reason) -> None:
    CREDENTIAL_WAITS.labels(reason=reason.value).inc()


def cleanup_warning(reason: str) -> None:
    CLEANUP_WARNINGS.labels(reason=reason).inc()


def retried(kind: str) -> None:
    RETRIES.labels(kind=kind).inc()


def webhook_received(outcome: str) -> None:
    WEBHOOKS.labels(outcome=outcome).inc()


class PhaseCounts:
    """Sessions by phase, from kopf's index of AvatarSessions by status.phase.

    Counted from the objects themselves, not from what this process did: right
    after an operator restart, the first listing gives every session's phase,
    and a deleted one leaves the index. A session without a phase yet (or one
    this operator does not know) counts as Pending."""

    def __init__(self) -> None:
        self._index: Mapping[str, Sized] = {}

    def follow(self, index: Mapping[str, Sized]) -> None:
        self._index = index

    def counts(self) -> dict[Phase, int]:
        # Read from the scrape's thread while kopf's loop writes: a copy, again if it moved under us.
        for _ in range(10):
            try:
                groups = [(key, len(objects)) for key, objects in list(self._index.items())]
                break
            except RuntimeError:
                continue
        else:
            groups = []
        out = dict.fromkeys(Phase, 0)
        for key, n in groups:
            out[Phase(key) if key in {p.value for p in Phase} else Phase.PENDING] += n
        return out


class _PhaseCollector(prom_registry.Collector):
    def __init__(self, phases: PhaseCounts) -> None:
        self._phases = phases

    def collect(self) -> Iterable[prom_core.Metric]:
        family = prom_core.GaugeMetricFamily("avatar_operator_sessions", "AvatarSessions by phase", labels=["phase"])
        for phase, n in self._phases.counts().items():
            family.add_metric([phase.value], n)
        yield family


PHASES = PhaseCounts()
prom.REGISTRY.register(_PhaseCollector(PHASES))


def serve(port: int) -> None:
    if port:
        prom.start_http_server(port)


# Cloud sessions: how each start round ended, and whether ending a session at bitHuman worked.
CLOUD_REQUEST_OUTCOMES = ("accepted", "retried", "refused", "exhausted", "concurrency_limited")
CLOUD_REQUESTS = prom.Counter(
    "avatar_operator_cloud_requests_total",
    "Cloud session starts by outcome: accepted, retried (an attempt failed and another follows), refused (a 4xx), "
    "exhausted (no attempt got through), concurrency_limited (bitHuman's 403 or the operator's own budget: the session waits)",
    ["outcome"],
)
CLOUD_SESSION_ENDS = prom.Counter(
    "avatar_operator_cloud_session_ends_total",
    "Ends of started cloud sessions sent to bitHuman (runtime-sessions end, or a custom endpoint's task stop), by outcome: ended, failed",
    ["outcome"],
)
