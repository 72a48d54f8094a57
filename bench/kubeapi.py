"""The bench's own Kubernetes traffic, on the operator's client.

Every request goes through avatar_operator.clients.kube.Kube, the client the
operator itself uses (JSON over one aiohttp pool, the wait on a 429 with
Retry-After), so the load generator costs what the operator's calls cost and
no second client has to be kept in step. This layer adds only what the
operator never asks for: any object by its manifest (cluster-scoped ones
too), query parameters, 404 answered as None, and a watch stream.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from avatar_operator.clients import kube, kube_login
from avatar_operator.clients.kube import ApiError

__all__ = ["ApiError", "BenchKube", "path_for"]

PLURALS = {"Pod": "pods", "Secret": "secrets", "Namespace": "namespaces", "Node": "nodes", "Event": "events"}
CLUSTER_SCOPED = ("Namespace", "Node")
WATCH_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)


def path_for(obj: Mapping[str, Any], *, name: str | None = None) -> str:
    """The REST path of an object's collection (or of `name` in it)."""
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    kind = str(obj["kind"])
    plural = PLURALS.get(kind, kind.lower() + "s")
    ns = (obj.get("metadata") or {}).get("namespace")
    if ns and kind not in CLUSTER_SCOPED:
        return kube.path(plural, ns, name, group=group, version=version)
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{prefix}/{plural}" + (f"/{name}" if name else "")


class BenchKube:
    """The operator's `Kube` on a kubeconfig, plus the bench's manifests, queries and watches."""

    def __init__(self, kubeconfig: str, *, pool: int = 64) -> None:
        self.config, self.tls = kube.load_config(kubeconfig)
        self._bearer = kube_login.bearer(self.config)
        self.kube = kube.Kube(self.config, self.tls, pool=pool)
        self._watches: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BenchKube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.kube.close()
        if self._watches is not None:
            await self._watches.close()
            self._watches = None

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", ok404: bool = False, **params: Any
    ) -> Any:
        """The decoded answer; None for a 404 when `ok404`; ApiError for any other error."""
        if params:
            path += "?" + urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        status, obj = await self.kube.request(method, path, body, answers=(404,) if ok404 else (), content_type=content_type)
        return None if status == 404 else obj

    async def create(self, obj: Mapping[str, Any]) -> Any:
        return await self.request("POST", path_for(obj), obj)

    async def delete(self, obj: Mapping[str, Any]) -> Any:
        return await self.request("DELETE", path_for(obj, name=obj["metadata"]["name"]), ok404=True)

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, ok404=True, **params)

    async def merge_patch(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, patch, content_type=kube.MERGE_PATCH)

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events from resource_version on, until the server ends the stream.

        On a connection of its own, with no time limit on the stream (the
        operator's client bounds every request and reads each answer whole)."""
        if self._watches is None or self._watches.closed:
            self._watches = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls), timeout=WATCH_TIMEOUT)
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
        headers = {"Accept": "application/json"}
        authorization = self._bearer()
        if authorization:
            headers["Authorization"] = authorization
        async with self._watches.get(self.config.host + path, params=params, headers=headers) as r:
            if r.status >= 400:
                raise ApiError("GET", path, r.status, await r.text())
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
