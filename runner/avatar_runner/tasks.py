"""A pool runner's sessions: tasks, their slots and their states.

A task is one room session (`avatar_runner.room_task` runs it; tests inject a
fake). It holds a slot from its launch until it ends: `pending` (preparing
its image, joining the room), `running` (in the room), then `completed` (its
session ended normally: the agent left, the room closed), `failed` (with the
exit reason a one-session runner would give) or `stopped` (asked to). A
task's end frees its slot at once. Ended tasks are kept, the newest
`history` of them, so a caller can read how they ended.

Nothing here knows HTTP: `avatar_runner.serve` maps these onto the launch API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .exits import ExitCode, Outcome, RunnerFailure
from .session import StopRequest

log = logging.getLogger(__name__)

HISTORY = 1000  # ended tasks kept for GET /tasks/{id}
STOP_TIMEOUT_S = 10.0  # a task not ended this long after its stop is cancelled


class TaskState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


ACTIVE = frozenset({TaskState.PENDING, TaskState.RUNNING})


@dataclasses.dataclass(frozen=True)
class TaskRequest:
    """What a launch asks for: the room, the token, whose speech, and an optional picture."""

    livekit_url: str
    livekit_token: str
    room_name: str
    agent_identity: str  # the token's lk.publish_on_behalf
    image: bytes | None = None  # an uploaded avatar_image
    image_url: str | None = None  # or where to fetch it

    def __repr__(self) -> str:
        image = f"{len(self.image)} bytes" if self.image is not None else None
        return (
            f"TaskRequest(livekit_url={self.livekit_url!r}, livekit_token=***, room_name={self.room_name!r},"
            f" agent_identity={self.agent_identity!r}, image={image}, image_url={self.image_url!r})"
        )


@dataclasses.dataclass(frozen=True)
class TaskControl:
    """What a running task gets from the pool: its stop, its start time, and two calls to report progress."""

    stop: StopRequest
    started_at: float  # time.monotonic() at the launch
    joined: Callable[[], None]  # the session is in the room
    first_frame: Callable[[], None]  # its first video frame went to LiveKit


RunTask = Callable[[TaskRequest, TaskControl], Awaitable[Outcome]]


class AtCapacity(Exception):
    """Every slot is taken."""


class NotAccepting(Exception):
    """The runner is stopping (or not ready): no new task."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Task:
    def __init__(self, request: TaskRequest, idempotency_key: str | None) -> None:
        self.id = uuid.uuid4().hex
        self.request = request
        self.idempotency_key = idempotency_key
        self.state = TaskState.PENDING
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.started_at = _now()
        self.joined_at: str | None = None
        self.first_frame_at: str | None = None
        self.ended_at: str | None = None
        self.stop = StopRequest()
        self.stop_requested = False
        self.settled = asyncio.Event()  # joined the room, or ended
        self.ended = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def mark_joined(self) -> None:
        if self.state is TaskState.PENDING:
            self.state = TaskState.RUNNING
            self.joined_at = _now()
            log.info("task %s: in room %r", self.id, self.request.room_name)
        self.settled.set()

    def mark_first_frame(self) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = _now()

    def finish(self, outcome: Outcome) -> None:
        if not self.active:
            return
        if outcome.code is not ExitCode.OK:
            self.state = TaskState.FAILED
        else:
            self.state = TaskState.STOPPED if self.stop_requested else TaskState.COMPLETED
        self.exit_code = int(outcome.code)
        self.reason = outcome.reason
        self.ended_at = _now()
        self.settled.set()
        self.ended.set()
        log.info("task %s %s (exit %d): %s", self.id, self.state, outcome.code, outcome.reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "status": self.state.value,
            "room_name": self.request.room_name,
            "agent_identity": self.request.agent_identity,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "started_at": self.started_at,
            "joined_at": self.joined_at,
            "first_frame_at": self.first_frame_at,
            "ended_at": self.ended_at,
        }


class TaskPool:
    """At most `max_sessions` tasks at once, each run by `run`."""

    def __init__(
        self, run: RunTask, max_sessions: int, *, history: int = HISTORY, stop_timeout: float = STOP_TIMEOUT_S
    ) -> None:
        self._run = run
        self.max_sessions = max_sessions
        self._history = history
        self._stop_timeout = stop_timeout
        self._tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self._by_key: dict[str, str] = {}
        self.accepting = True

    @property
    def active(self) -> int:
        return sum(task.active for task in self._tasks.values())

    @property
    def full(self) -> bool:
        return self.active >= self.max_sessions

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def active_tasks(self) -> list[Task]:
        return [task for task in self._tasks.values() if task.active]

    def launch(self, request: TaskRequest, idempotency_key: str | None = None) -> tuple[Task, bool]:
        """The task for this launch, and whether it is new: a launch repeated
        with the same `idempotency_key` gets the first one's task, slot and all.
        Raises NotAccepting, AtCapacity."""
        if idempotency_key is not None:
            known = self._tasks.get(self._by_key.get(idempotency_key, ""))
            if known is not None:
                return known, False
        if not self.accepting:
            raise NotAccepting
        if self.full:
            raise AtCapacity
        task = Task(request, idempotency_key)
        self._tasks[task.id] = task
        if idempotency_key is not None:
            self._by_key[idempotency_key] = task.id
        task.runner = asyncio.create_task(self._run_task(task), name=f"task-{task.id}")
        log.info("task %s: launched for room %r, agent %r", task.id, request.room_name, request.agent_identity)
        return task, True

    async def stop(self, task_id: str, reason: str) -> Task | None:
        """Stops the task and waits (at most the stop timeout, then cancels it) for its end."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if task.active:
            task.stop_requested = True
            task.stop.request(reason)
            try:
                await asyncio.wait_for(asyncio.shield(task.ended.wait()), self._stop_timeout)
            except asyncio.TimeoutError:
                log.warning("task %s did not stop in %g s: cancelled", task.id, self._stop_timeout)
                if task.runner is not None:
                    task.runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task.runner
                task.finish(Outcome(ExitCode.OK, f"{reason} (cancelled after {self._stop_timeout:g} s)"))
        return task

    async def stop_all(self, reason: str) -> None:
        """No more launches; every task stopped."""
        self.accepting = False
        await asyncio.gather(*(self.stop(task.id, reason) for task in self.active_tasks()))

    async def _run_task(self, task: Task) -> None:
        control = TaskControl(
            stop=task.stop, started_at=time.monotonic(), joined=task.mark_joined, first_frame=task.mark_first_frame
        )
        try:
            outcome = await self._run(task.request, control)
        except RunnerFailure as failure:
            outcome = failure.outcome
        except asyncio.CancelledError:
            outcome = Outcome(ExitCode.OK, task.stop.reason or "cancelled")
        except Exception as err:
            log.exception("task %s failed", task.id)
            outcome = Outcome(ExitCode.INTERNAL, f"unexpected error: {type(err).__name__}: {err}")
        task.finish(outcome)
        self._forget_old()

    def _forget_old(self) -> None:
        ended = [task for task in self._tasks.values() if not task.active]
        for task in ended[: max(0, len(ended) - self._history)]:
            del self._tasks[task.id]
            if task.idempotency_key is not None:
                self._by_key.pop(task.idempotency_key, None)
