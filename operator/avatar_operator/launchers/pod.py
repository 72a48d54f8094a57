"""The production launcher: the runner as the Pod itself, owned by its session.

The pod watch (`controller.handlers.runner_pod_event`) brings its state back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from avatar_operator.api import names


class Kube(Protocol):
    async def create(self, obj: Mapping[str, Any]) -> bool: ...
    async def delete(self, kind: str, namespace: str, name: str) -> None: ...


class PodLauncher:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def start(self, ref: names.SessionRef, pod: Mapping[str, Any], token: str) -> None:
        # The token is already in the session's token Secret, which the pod mounts.
        await self._kube.create(pod)  # False (409) after a restart: made already

    async def stop(self, ref: names.SessionRef) -> None:
        await self._kube.delete("Pod", ref.namespace, names.runner_pod_name(ref.name))

    async def release(self, ref: names.SessionRef) -> None:
        pass  # the Pod is the cluster's, and the other operator's now

    async def close(self) -> None:
        pass
