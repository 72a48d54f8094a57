"""The AvatarSession status: the CRD's status schema and the value the worker builds.

Conditions use the Kubernetes shape (metav1.Condition), so `kubectl wait
--for=condition=Ready` and every tool that reads conditions understand them.
The worker keeps an `AvatarSessionStatus` and replaces it (the models are
frozen); `api.conditions` sets a condition on it, purely.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints, WithJsonSchema

from avatar_operator.api.spec import Int, KubeModel, Mode, Text

# metav1.Condition's bounds, so a condition the apiserver takes for a built-in
# type is taken here too.
CONDITION_TYPE_MAX = 316
REASON_MAX = 1024
MESSAGE_MAX = 32768
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Phase(StrEnum):
    """Where the session is in its life."""

    PENDING = "Pending"  # accepted, waiting for credentials, a node or the cloud
    STARTING = "Starting"  # the runner is scheduled or the cloud accepted the request
    RUNNING = "Running"  # the avatar is in the room publishing video
    SUCCEEDED = "Succeeded"  # ended normally (agent left, time up, avatar left)
    FAILED = "Failed"  # ended by an error; see the conditions


class ConditionType(StrEnum):
    """The conditions a session reports."""

    ACCEPTED = "Accepted"  # the spec passed validation
    CREDENTIALS_READY = "CredentialsReady"  # LiveKit and bitHuman credentials were found
    RUNNER_SCHEDULED = "RunnerScheduled"  # local mode: the runner pod is on a node
    CLOUD_REQUEST_ACCEPTED = "CloudRequestAccepted"  # cloud mode: bitHuman accepted the request
    READY = "Ready"  # the avatar is in the room publishing video
    # kstatus's two (sigs.k8s.io/cli-utils: Flux, Helm's watcher), derived from the phase by api.conditions
    RECONCILING = "Reconciling"  # True while the session is on its way (Pending, Starting)
    STALLED = "Stalled"  # True when it has failed for good (Failed)


class ConditionStatus(StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Why a condition has its status: one CamelCase word, as Kubernetes expects."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    AVATAR_IDENTITY_IN_USE = "AvatarIdentityInUse"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_VALUE_INVALID = "SecretValueInvalid"
    LIVEKIT_NOT_CONFIGURED = "LiveKitNotConfigured"
    CREDENTIALS_FOUND = "CredentialsFound"
    POD_CREATED = "PodCreated"
    SCHEDULED = "Scheduled"
    UNSCHEDULABLE = "Unschedulable"
    RUNNER_FAILED = "RunnerFailed"
    RUNNER_EXITED = "RunnerExited"
    IMAGE_NOT_FOUND = "ImageNotFound"
    REQUEST_SENT = "RequestSent"
    REQUEST_ACCEPTED = "RequestAccepted"
    REQUEST_REJECTED = "RequestRejected"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    LATE_AVATAR_REMOVED = "LateAvatarRemoved"
    LIVEKIT_UNREACHABLE = "LiveKitUnreachable"
    LIVEKIT_CREDENTIALS_REFUSED = "LiveKitCredentialsRefused"
    WAITING_FOR_AVATAR = "WaitingForAvatar"
    AVATAR_PUBLISHING = "AvatarPublishing"
    AVATAR_LEFT = "AvatarLeft"
    MAX_DURATION_REACHED = "MaxDurationReached"
    OPERATOR_ERROR = "OperatorError"
    # cloud sessions: bitHuman's documented refusals, the queue, the end
    CONCURRENCY_LIMITED = "ConcurrencyLimited"
    INSUFFICIENT_BALANCE = "InsufficientBalance"
    PLAN_REQUIRED = "PlanRequired"
    AGENT_NOT_FOUND = "AgentNotFound"
    MODEL_CONFLICT = "ModelConflict"
    CLOUD_SESSION_ENDED = "CloudSessionEnded"
    CLOUD_SESSION_END_FAILED = "CloudSessionEndFailed"
    # pools
    POOL_NOT_FOUND = "PoolNotFound"
    POOL_EXHAUSTED = "PoolExhausted"
    SLOT_CLAIMED = "SlotClaimed"
    LAUNCH_REFUSED = "LaunchRefused"
    RUNNER_LOST = "RunnerLost"
    RUNNERS_READY = "RunnersReady"
    RUNNERS_STARTING = "RunnersStarting"
    RUNNER_REPLACED = "RunnerReplaced"


# The schema's view of a type and a reason is metav1.Condition's (any
# well-formed string), so the CRD doesn't change with the enums; the operator
# itself only writes the enums' values.
TypeString = WithJsonSchema({"type": "string", "minLength": 1, "maxLength": CONDITION_TYPE_MAX})
ReasonString = WithJsonSchema({"type": "string", "minLength": 1, "maxLength": REASON_MAX, "pattern": REASON_PATTERN})


class Condition(KubeModel):
    """One aspect of the session's state (the Kubernetes condition shape)."""

    type: Annotated[ConditionType, TypeString] = Field(
        description="The aspect (the resource's status.conditions lists them)."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[Reason, ReasonString] = Field(description="Why, in one CamelCase word.")
    message: Annotated[str, StringConstraints(strict=True, max_length=MESSAGE_MAX)] = Field(
        description="Why, for a human."
    )
    last_transition_time: datetime.datetime = Field(description="When the status last changed.")
    observed_generation: Int | None = Field(
        default=None, description="The spec's metadata.generation the condition was set from."
    )


class CloudRequest(KubeModel):
    """The cloud session request, recorded before it is sent so that an operator
    restart never sends it twice."""

    idempotency_key: Annotated[str, StringConstraints(strict=True, max_length=256)] = Field(
        description="A key unique to this session's request, sent with it."
    )
    sent_time: datetime.datetime | None = Field(default=None, description="When the request was first sent.")
    accepted_time: datetime.datetime | None = Field(default=None, description="When bitHuman accepted it.")
    session_id: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The session_id bitHuman's API answered (ended with POST /v1/runtime-sessions/{id}/end)."
    )
    task_id: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The task_id a custom endpoint answered (ended with POST /tasks/{id}/stop)."
    )
    model: Annotated[Text, StringConstraints(max_length=64)] | None = Field(
        default=None, description="The model bitHuman says the session launched as."
    )
    ended_time: datetime.datetime | None = Field(
        default=None, description="When bitHuman confirmed the session's end (billing stopped)."
    )


class RunnerPlacement(KubeModel):
    """Where a pool session runs: recorded before the launch is sent, so a restarted
    operator finds the same slot (and the runner the same task, by its idempotency key)."""

    pool: Annotated[Text, StringConstraints(max_length=253)] = Field(description="The AvatarPool.")
    pod: Annotated[Text, StringConstraints(max_length=253)] = Field(description="The pool runner holding the slot.")
    task_id: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The runner's task for this session (GET /tasks/{id} on the runner)."
    )


class AvatarSessionStatus(KubeModel):
    """What the operator observed. Written by the operator only."""

    phase: Phase | None = Field(default=None, description="Pending, Starting, Running, Succeeded or Failed.")
    mode: Mode | None = Field(default=None, description="local (a runner pod renders the avatar) or cloud (bitHuman sends it).")
    conditions: Annotated[tuple[Condition, ...], Field(max_length=16)] | None = Field(
        default=None,
        description="Accepted, CredentialsReady, RunnerScheduled (local), CloudRequestAccepted (cloud), Ready "
        "(the avatar is in the room publishing video; dropped once Succeeded), and kstatus's Reconciling (True while "
        "Pending or Starting) and Stalled (True once Failed).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: Int | None = Field(default=None, description="The spec's metadata.generation last acted on.")
    runner_pod: Annotated[Text, StringConstraints(max_length=253)] | None = Field(
        default=None, description="The runner pod's name (local mode)."
    )
    runner: RunnerPlacement | None = Field(
        default=None, description="The pool, runner and task serving the session (spec.poolRef)."
    )
    restarts: Int | None = Field(
        default=None, description="Times the session was placed again after its runner was lost (spec.poolRef)."
    )
    avatar_identity: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The avatar participant's identity in the room."
    )
    attempts: Int | None = Field(default=None, description="Cloud session requests sent so far.")
    start_time: datetime.datetime | None = Field(default=None, description="When the operator accepted the session.")
    ready_time: datetime.datetime | None = Field(default=None, description="When the avatar first published video.")
    end_time: datetime.datetime | None = Field(default=None, description="When the session ended.")
    cloud_request: CloudRequest | None = Field(default=None, description="The cloud session request (cloud mode).")
    operator: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None,
        description="The operator instance acting on the session (its pod name, or host and process). A second "
        "operator that finds another's writes stops acting: one operator per session.",
    )
    worker_errors: Int | None = Field(
        default=None,
        description="Unexpected errors of the operator's worker for this session (kopf retries it); at 3 the "
        "session fails, so no error turns into a loop of paid requests.",
    )


def to_wire(status: AvatarSessionStatus) -> dict[str, Any]:
    """The status as the API server stores it (camelCase, RFC 3339 times, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def from_wire(raw: Mapping[str, Any] | None) -> AvatarSessionStatus:
    """The stored status; raises pydantic.ValidationError for one this operator did not write."""
    return AvatarSessionStatus.model_validate(dict(raw or {}))


def whole_seconds(t: datetime.datetime) -> datetime.datetime:
    """`t` in UTC to the second, as metav1.Time stores it."""
    return t.astimezone(datetime.timezone.utc).replace(microsecond=0)
