"""Hands what a session's worker waits on (its runner's newest state) to that worker.

One writer of a session's status (its worker) keeps the conditions
consistent; the pod event handler and the process launcher only leave the
newest pod snapshot here and wake the worker, instead of each session
polling its pod. LiveKit's webhooks (`webhooks`) leave a note here that the
session's room changed, so the worker asks LiveKit at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any


class Mailbox:
    """The newest runner snapshot for one session, and a wake-up flag."""

    # An asyncio.Event would do, but each one allocates a 760-byte deque of waiters for
    # the session's life, where a session has one waiter at most: its worker.
    __slots__ = ("pod", "pod_deleted", "room_changed", "_changed", "_waiter")

    def __init__(self) -> None:
        self.pod: Mapping[str, Any] | None = None
        self.pod_deleted = False
        # A webhook said the room changed: the worker asks LiveKit on its next turn.
        self.room_changed = False
        self._changed = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._changed

    async def wait(self, timeout: float) -> bool:
        """True when something changed within timeout; clears the flag."""
        if self._waiter is not None:
            raise RuntimeError("a mailbox has one waiter, its session's worker")
        if not self._changed:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the wait in a task, one
            # more held for every session that sits waiting.
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                return False
            finally:
                self._waiter = None
        self._changed = False
        return True

    def _set(self) -> None:
        self._changed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def poke(self) -> None:
        """Something the worker follows changed (its pool's slots, its runner): look again."""
        self._set()

    def post_pod(self, pod: Mapping[str, Any] | None) -> None:
        self.pod = pod
        self.pod_deleted = pod is None
        self._set()

    def post_room_changed(self) -> None:
        self.room_changed = True
        self._set()

    def take_room_changed(self) -> bool:
        """Whether a webhook came since the last call; cleared before the worker asks LiveKit,
        so one that comes during the question makes it ask again."""
        changed, self.room_changed = self.room_changed, False
        return changed


# A room as webhooks name it, and the avatar identity a session waits for in it.
RoomKey = tuple[str, str]


class Mailboxes:
    """One mailbox per session uid (held in kopf's memo), and the rooms their workers watch."""

    def __init__(self) -> None:
        self._boxes: dict[str, Mailbox] = {}
        self._rooms: dict[RoomKey, set[str]] = {}
        self._watching: dict[str, RoomKey] = {}
        # True while a webhook receiver listens: workers may then poll LiveKit slowly.
        self.webhooks_live = False

    def __len__(self) -> int:
        return len(self._boxes)

    def get(self, session_uid: str) -> Mailbox:
        box = self._boxes.get(session_uid)
        if box is None:
            box = self._boxes[session_uid] = Mailbox()
        return box

    def post_pod(self, session_uid: str, pod: Mapping[str, Any] | None) -> None:
        self.get(session_uid).post_pod(pod)

    def watch_room(self, session_uid: str, room: str, identity: str) -> None:
        """Webhooks about `identity` in `room` (or the room's end) wake this session's worker."""
        self._unwatch(session_uid)
        self._watching[session_uid] = (room, identity)
        self._rooms.setdefault((room, identity), set()).add(session_uid)

    def room_changed(self, room: str, identity: str | None) -> int:
        """Wakes the workers watching `identity` in `room` (every one in the room for None); how many."""
        keys = [k for k in self._rooms if k[0] == room] if identity is None else [(room, identity)]
        uids = {uid for k in keys for uid in self._rooms.get(k, ())}
        for uid in uids:
            self.get(uid).post_room_changed()
        return len(uids)

    def forget(self, session_uid: str) -> None:
        self._boxes.pop(session_uid, None)
        self._unwatch(session_uid)

    def _unwatch(self, session_uid: str) -> None:
        key = self._watching.pop(session_uid, None)
        if key is None:
            return
        uids = self._rooms.get(key)
        if uids is not None:
            uids.discard(session_uid)
            if not uids:
                del self._rooms[key]
