"""The one seam between a local-mode session and whatever runs its runner.

A launcher is handed the runner Pod the builders made (and its room token)
and starts it somehow: as that Pod (`launchers.pod`), as a local process
(`launchers.process`, development), or, next, as a slot in a warm pool.
Whatever it is, the runner's state reaches the session's worker as a
pod-shaped snapshot in its mailbox, so one code path turns "runner
scheduled", "runner ended" into status.
"""

from __future__ import annotations

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
