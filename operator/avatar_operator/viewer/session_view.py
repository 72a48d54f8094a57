"""What the page shows of a session: pure functions of the AvatarSession object.

Only status fields a viewer needs, so nothing else of the object (its spec's
Secret names, annotations) reaches the browser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONDITION_FIELDS = ("type", "status", "reason", "message", "lastTransitionTime")


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def summary(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the session list: name, room, phase, mode, and whether it is Ready."""
    status = _status(obj)
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return {
        "name": obj["metadata"]["name"],
        "room": _spec(obj).get("room"),
        "phase": status.get("phase") or "Pending",
        "mode": status.get("mode"),
        "ready": ready == "True",
    }


def detail(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The status panel: the summary plus the conditions and times."""
    status = _status(obj)
    conditions = [
        {field: c.get(field) for field in CONDITION_FIELDS} for c in status.get("conditions") or [] if isinstance(c, Mapping)
    ]
    return {
        **summary(obj),
        "namespace": obj["metadata"].get("namespace"),
        "avatarIdentity": status.get("avatarIdentity"),
        "startTime": status.get("startTime"),
        "readyTime": status.get("readyTime"),
        "endTime": status.get("endTime"),
        "conditions": conditions,
    }
