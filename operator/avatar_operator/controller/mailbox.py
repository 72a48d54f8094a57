"""Hands what a session's worker waits on (its runner's newest state) to that worker.

One writer of a session's status (its worker) keeps the conditions
consistent; the pod event handler and the process launcher only leave the
newest pod snapshot here and wake the worker, instead of each session
polling its pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


class Mailbox:
    """The newest runner snapshot for one session, and a wake-up flag."""

    def __init__(self) -> None:
        self.pod: Mapping[str, Any] | None = None
        self.pod_deleted = False
        self.changed = asyncio.Event()

    def is_set(self) -> bool:
        return self.changed.is_set()

    async def wait(self, timeout: float) -> bool:
        """True when something changed within timeout; clears the flag."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        self.changed.clear()
        return True

    def poke(self) -> None:
        """Something the worker follows changed (its pool's slots, its runner): look again."""
        self.changed.set()

    def post_pod(self, pod: Mapping[str, Any] | None) -> None:
        self.pod = pod
        self.pod_deleted = pod is None
        self.changed.set()


class Mailboxes:
    """One mailbox per session uid (held in kopf's memo)."""

    def __init__(self) -> None:
        self._boxes: dict[str, Mailbox] = {}

    def __len__(self) -> int:
        return len(self._boxes)

    def get(self, session_uid: str) -> Mailbox:
        box = self._boxes.get(session_uid)
        if box is None:
            box = self._boxes[session_uid] = Mailbox()
        return box

    def post_pod(self, session_uid: str, pod: Mapping[str, Any] | None) -> None:
        self.get(session_uid).post_pod(pod)

    def forget(self, session_uid: str) -> None:
        self._boxes.pop(session_uid, None)
