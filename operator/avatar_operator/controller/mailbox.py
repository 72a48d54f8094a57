"""Hands a runner pod's latest state from the pod watch to its session's worker.

One writer of a session's status (its worker) keeps the conditions
consistent; the pod event handler only leaves the newest pod here and wakes
the worker, instead of each session polling its pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


class Mailbox:
    """The newest pod snapshot for one session, and a wake-up flag."""

    def __init__(self) -> None:
        self.pod: Mapping[str, Any] | None = None
        self.pod_deleted = False
        self.changed = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True when something changed within timeout; clears the flag."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self.changed.clear()
        return True


_boxes: dict[str, Mailbox] = {}


def mailbox(session_uid: str) -> Mailbox:
    box = _boxes.get(session_uid)
    if box is None:
        box = _boxes[session_uid] = Mailbox()
    return box


def post_pod(session_uid: str, pod: Mapping[str, Any] | None) -> None:
    box = mailbox(session_uid)
    box.pod = pod
    box.pod_deleted = pod is None
    box.changed.set()


def forget(session_uid: str) -> None:
    _boxes.pop(session_uid, None)
