"""The AvatarSession status: its model (the CRD's status schema) and condition helpers.

Conditions use the Kubernetes shape (metav1.Condition), so `kubectl wait
--for=condition=Ready` and every tool that reads conditions understand them.
`set_condition` is pure: the operator builds the new list and patches it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from avatar_operator.api.spec import Int, KubeModel, Mode, Text

# metav1.Condition's bounds, so a condition the apiserver takes for a built-in
# type is taken here too.
CONDITION_TYPE_MAX = 316
REASON_MAX = 1024
MESSAGE_MAX = 32768
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # RFC 3339 in UTC, to the second, like metav1.Time


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


class ConditionStatus(StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Why a condition has its status: one CamelCase word, as Kubernetes expects."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
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
    LIVEKIT_UNREACHABLE = "LiveKitUnreachable"
    WAITING_FOR_AVATAR = "WaitingForAvatar"
    AVATAR_JOINED = "AvatarJoined"
    AVATAR_PUBLISHING = "AvatarPublishing"
    AVATAR_LEFT = "AvatarLeft"
    AGENT_LEFT = "AgentLeft"
    ROOM_CLOSED = "RoomClosed"
    MAX_DURATION_REACHED = "MaxDurationReached"


class Condition(KubeModel):
    """One aspect of the session's state (the Kubernetes condition shape)."""

    type: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=CONDITION_TYPE_MAX)] = Field(
        description="The aspect: Accepted, CredentialsReady, RunnerScheduled, CloudRequestAccepted or Ready."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str, StringConstraints(strict=True, min_length=1, max_length=REASON_MAX, pattern=REASON_PATTERN)
    ] = Field(description="Why, in one CamelCase word.")
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


class AvatarSessionStatus(KubeModel):
    """What the operator observed. Written by the operator only."""

    phase: Phase | None = Field(default=None, description="Pending, Starting, Running, Succeeded or Failed.")
    mode: Mode | None = Field(default=None, description="local (a runner pod renders the avatar) or cloud (bitHuman sends it).")
    conditions: Annotated[list[Condition], Field(max_length=16)] | None = Field(
        default=None,
        description="Accepted, CredentialsReady, RunnerScheduled (local), CloudRequestAccepted (cloud) and Ready "
        "(the avatar is in the room publishing video).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: Int | None = Field(default=None, description="The spec's metadata.generation last acted on.")
    runner_pod: Annotated[Text, StringConstraints(max_length=253)] | None = Field(
        default=None, description="The runner pod's name (local mode)."
    )
    avatar_identity: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The avatar participant's identity in the room."
    )
    attempts: Int | None = Field(default=None, description="Cloud session requests sent so far.")
    start_time: datetime.datetime | None = Field(default=None, description="When the operator accepted the session.")
    ready_time: datetime.datetime | None = Field(default=None, description="When the avatar first published video.")
    end_time: datetime.datetime | None = Field(default=None, description="When the session ended.")
    cloud_request: CloudRequest | None = Field(default=None, description="The cloud session request (cloud mode).")


def now() -> datetime.datetime:
    """The clock status times are read from."""
    return datetime.datetime.now(datetime.timezone.utc)


def timestamp(now: datetime.datetime) -> str:
    """`now` as Kubernetes writes times: RFC 3339, UTC, whole seconds."""
    return now.astimezone(datetime.timezone.utc).strftime(TIME_FORMAT)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type: ConditionType,
    status: ConditionStatus | bool,
    reason: Reason,
    message: str,
    generation: int | None,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """`conditions` with the condition of `type` set, as apimachinery's
    meta.SetStatusCondition does: lastTransitionTime moves only when the
    status changes. The input is not modified."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    new: dict[str, Any] = {
        "type": type.value,
        "status": status.value,
        "reason": reason.value,
        # A message past the schema's bound would make the whole status patch fail.
        "message": message[:MESSAGE_MAX],
        "lastTransitionTime": timestamp(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    result: list[dict[str, Any]] = []
    found = False
    for old in conditions:
        if old.get("type") != type.value:
            result.append(dict(old))
            continue
        found = True
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            new["lastTransitionTime"] = old["lastTransitionTime"]
        result.append(new)
    if not found:
        result.append(new)
    return result

