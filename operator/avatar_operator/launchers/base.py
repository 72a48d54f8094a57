"""The one seam between a local-mode session and whatever runs its runner.

A launcher is handed the runner Pod the builders made (and its room token)
and starts it somehow: as that Pod (`launchers.pod`), as a local process
(`launchers.process`, development). A pool's runners have a launcher of
their own (`PoolLauncher`): they serve many sessions and outlive each one.
Whatever it is, the runner's state reaches the session's worker as a
pod-shaped snapshot in its mailbox, so one code path turns "runner
scheduled", "runner ended" into status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from avatar_operator.api import names

# Hands a runner's newest pod-shaped state (None: gone) to the worker of the session with this uid.
PostPod = Callable[[str, Mapping[str, Any] | None], None]


class Launcher(Protocol):
    async def start(self, ref: names.SessionRef, pod: Mapping[str, Any], token: str) -> None:
        """Starts the session's runner; a second call for a running one does nothing."""
        ...

    async def stop(self, ref: names.SessionRef) -> None:
        """Stops the session's runner; one already gone is fine."""
        ...

    async def release(self, ref: names.SessionRef) -> None:
        """Another operator acts on the session: stop what only this operator runs for it, leave the rest."""
        ...

    async def close(self) -> None:
        """The operator is exiting."""
        ...


@dataclasses.dataclass(frozen=True)
class RunnerHandle:
    """A pool runner as its launcher last saw it."""

    name: str
    url: str | None  # its launch API, once it has an address
    alive: bool  # False: it exited, failed or was deleted; the pool replaces it
    reason: str | None = None  # why it is not alive


class PoolLauncher(Protocol):
    """Runs a pool's runners: as Pods (`launchers.pool_pod`) or local processes (`launchers.pool_process`)."""

    async def start_runner(self, pool: names.PoolRef, pod: Mapping[str, Any], token: str) -> None:
        """Starts the runner the Pod describes (its name is the Pod's)."""
        ...

    async def stop_runner(self, pool: names.PoolRef, name: str) -> None:
        """Stops it; one already gone is fine."""
        ...

    async def runners(self, pool: names.PoolRef) -> list[RunnerHandle]:
        """The pool's runners, including ones a previous operator started."""
        ...

    def forget(self, pool: names.PoolRef) -> None:
        """The pool is gone: drop its view."""
        ...

    async def close(self) -> None:
        """The operator is exiting."""
        ...
