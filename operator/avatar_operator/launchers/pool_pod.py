"""The production pool launcher: each runner is its Pod, owned by the pool.

The pod watch (`controller.handlers.pool_runner_event`) keeps the view of
each pool's runners current; the first look at a pool lists its pods, so a
restarted operator finds the runners the last one made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from avatar_runner import contract

from avatar_operator.api import names
from avatar_operator.launchers import base


class Kube(Protocol):
    async def create(self, obj: Mapping[str, Any]) -> bool: ...
    async def delete(self, kind: str, namespace: str, name: str) -> None: ...
    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...


def handle(pod: Mapping[str, Any]) -> base.RunnerHandle:
    """A runner pod's view: its address once it runs, dead once it ended or is going."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase, ip = status.get("phase"), status.get("podIP")
    ended = phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp") is not None
    url = f"http://{ip}:{contract.SERVE_PORT}" if ip and phase == "Running" else None
    return base.RunnerHandle(name=str(meta.get("name")), url=url, alive=not ended, reason=f"pod {phase}" if ended else None)


class PodPoolLauncher:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._pods: dict[tuple[str, str], dict[str, base.RunnerHandle]] = {}

    def _known(self, pool: names.PoolRef) -> dict[str, base.RunnerHandle] | None:
        return self._pods.get((pool.namespace, pool.name))

    def observe(self, namespace: str, pool: str, pod: Mapping[str, Any], deleted: bool) -> None:
        """A pod event: the newest state of one runner."""
        runners = self._pods.get((namespace, pool))
        if runners is None:
            return  # not looked at yet: the first look lists the pool's pods
        name = str((pod.get("metadata") or {}).get("name"))
        if deleted:
            runners.pop(name, None)
        else:
            runners[name] = handle(pod)

    async def start_runner(self, pool: names.PoolRef, pod: Mapping[str, Any], token: str) -> None:
        # The token is in the pool's token Secret, which the pod mounts.
        await self._kube.create(pod)
        name = str(pod["metadata"]["name"])
        runners = self._known(pool)
        if runners is not None:
            runners.setdefault(name, base.RunnerHandle(name=name, url=None, alive=True))

    async def stop_runner(self, pool: names.PoolRef, name: str) -> None:
        await self._kube.delete("Pod", pool.namespace, name)
        runners = self._known(pool)
        if runners is not None:
            runners.pop(name, None)

    async def runners(self, pool: names.PoolRef) -> list[base.RunnerHandle]:
        runners = self._known(pool)
        if runners is None:
            pods = await self._kube.list_pods(pool.namespace, names.pool_selector(pool.name))
            runners = self._pods[(pool.namespace, pool.name)] = {h.name: h for h in map(handle, pods)}
        return list(runners.values())

    def forget(self, pool: names.PoolRef) -> None:
        self._pods.pop((pool.namespace, pool.name), None)

    async def close(self) -> None:
        pass  # the Pods are the cluster's: the next operator finds them
