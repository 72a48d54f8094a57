"""What bitHuman's answers say, read purely: an error's code, and what a start started.

bitHuman's errors are `{"error": {"code", "message", "httpStatus"}, ...}`; a
200 to a start carries the `session_id` (its end call's handle) and the
`model` it launched as; bitHuman's self-hosted container answers a launch
with a `task_id` (its stop call's handle). Anything else is read as absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from avatar_operator.api import status as status_mod

# The codes the operator acts on (bitHuman's documented errors).
CONCURRENCY_LIMIT_REACHED = "CONCURRENCY_LIMIT_REACHED"
PLAN_REQUIRED = "PLAN_REQUIRED"
INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
NOT_FOUND = "NOT_FOUND"


def error_fields(body: bytes) -> tuple[str | None, str | None]:
    """bitHuman's error code and message from an error body, (None, None) when it has none."""
    error = _json_object(body).get("error")
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        " ".join(code.split()) if isinstance(code, str) and code.strip() else None,
        " ".join(message.split()) if isinstance(message, str) and message.strip() else None,
    )


@dataclass(frozen=True)
class StartAnswer:
    """What an accepted start says about the session it started (None: not said)."""

    session_id: str | None = None  # bitHuman's API: ends with POST /v1/runtime-sessions/{id}/end
    task_id: str | None = None  # a self-hosted container: ends with POST /tasks/{id}/stop
    model: str | None = None  # the model bitHuman launched it as


def start_answer(body: bytes) -> StartAnswer:
    """The session's ids and model from a 2xx answer; a value that is no short printable word is ignored."""
    fields = _json_object(body)
    return StartAnswer(
        session_id=_word(fields.get("session_id")),
        task_id=_word(fields.get("task_id")),
        model=_word(fields.get("model")),
    )


def _json_object(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _word(value: object) -> str | None:
    # It goes into the session's status and a URL path: an id, not free text.
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        return None
    return value if all(c.isascii() and (c.isalnum() or c in "-_.:") for c in value) else None




@dataclass(frozen=True)
class Refusal:
    """What a refused start means for the session: its reason, and what to do about it."""

    reason: status_mod.Reason
    fix: str
    waits: bool = False  # the session queues and asks again instead of failing


def refusal(status: int, code: str | None) -> Refusal:
    """bitHuman's documented refusals, each its own reason; any other 4xx is RequestRejected."""
    if status == 403 and code == CONCURRENCY_LIMIT_REACHED:
        return Refusal(status_mod.Reason.CONCURRENCY_LIMITED, "it waits until the plan has a free slot", waits=True)
    if status == 402:
        return Refusal(status_mod.Reason.INSUFFICIENT_BALANCE, "add credits to the bitHuman account, then create the session again")
    if status == 403 and code == PLAN_REQUIRED:
        return Refusal(status_mod.Reason.PLAN_REQUIRED, "this needs a paid bitHuman plan: upgrade it, then create the session again")
    if status == 404:
        return Refusal(status_mod.Reason.AGENT_NOT_FOUND, "check spec.avatarId (no such agent on this account) and bithuman.apiUrl")
    if status == 409:
        return Refusal(
            status_mod.Reason.MODEL_CONFLICT, "the agent can't be served as that model: set spec.model to the one it was made for, or unset it"
        )
    return Refusal(status_mod.Reason.REQUEST_REJECTED, "fix what the server names and create the session again")
