"""What a runner pod's status means for its session (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from avatar_runner import contract


@dataclasses.dataclass(frozen=True)
class PodState:
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    node: str | None
    unschedulable: str | None  # the scheduler's message while it can't place the pod
    exit_reason: str | None  # why the runner ended, from its termination message


def _runner_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == contract.CONTAINER_NAME:
            return dict(cs)
    return {}


def read(pod: Mapping[str, Any]) -> PodState:
    status = pod.get("status") or {}
    unschedulable = None
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            unschedulable = str(c.get("message") or "no node fits the runner pod")
    exit_reason = None
    terminated = (_runner_status(pod).get("state") or {}).get("terminated")
    if terminated:
        # The runner writes a one-line reason to its termination log; the
        # kubelet puts it in `message` (or the log tail, FallbackToLogsOnError).
        message = str(terminated.get("message") or "").strip().splitlines()
        reason = terminated.get("reason") or "Terminated"
        code = terminated.get("exitCode")
        exit_reason = f"{reason} (exit code {code})" + (f": {message[-1]}" if message else "")
    elif status.get("phase") in ("Failed", "Succeeded"):
        exit_reason = str(status.get("message") or status.get("reason") or status["phase"])
    return PodState(
        phase=str(status.get("phase") or "Pending"),
        node=(pod.get("spec") or {}).get("nodeName") or None,
        unschedulable=unschedulable,
        exit_reason=exit_reason,
    )
