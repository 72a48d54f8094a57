"""The Kubernetes calls the gateway makes: the operator's client, plus a watch stream.

Each call names the one verb the chart's gateway ClusterRole grants for it.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from avatar_operator.api import names
from avatar_operator.clients import kube as kube_mod

# A watch stays open this long (the API server ends it then; the caller lists again or resumes).
WATCH_TIMEOUT_S = 290




def sessions_path(namespace: str, name: str | None = None) -> str:
    return kube_mod.path(names.PLURAL, namespace, name, group=names.GROUP, version=names.VERSION)


class GatewayKube(kube_mod.Kube):
    """The operator's Kube (its config loading, connection pool and 429 handling) with the gateway's calls."""

    async def list_tenant_secrets(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        """The labelled tenant Secrets of a namespace and the list's resourceVersion. (verb: list secrets)"""
        query = urllib.parse.urlencode({"labelSelector": f"{names.GATEWAY_TENANT_LABEL}=true"})
        _, body = await self.request("GET", kube_mod.path("secrets", namespace) + "?" + query)
        return [dict(i) for i in body.get("items") or []], str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) for each event of a watch on `path`. (verb: watch)"""
        query = urllib.parse.urlencode({**params, "watch": "1", "allowWatchBookmarks": "true"})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30)
        async with self._http().get(
            self._config.host + path + "?" + query, headers=self._headers("application/json"), timeout=timeout
        ) as resp:
            if resp.status >= 400:
                raise kube_mod.ApiError("GET", path, resp.status, await resp.text())
            # Split by hand: aiohttp's line iterator refuses lines over 64 KiB, and one
            # event is one line however large its object.
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield str(event.get("type")), dict(event.get("object") or {})

    def watch_tenant_secrets(self, namespace: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(verb: watch secrets)"""
        params = {
            "labelSelector": f"{names.GATEWAY_TENANT_LABEL}=true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        return self.watch(kube_mod.path("secrets", namespace), params)

    def watch_session(self, namespace: str, name: str, resource_version: str, timeout_s: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """One session's changes after `resource_version`. (verb: watch avatarsessions)"""
        params = {
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, timeout_s)),
        }
        return self.watch(sessions_path(namespace), params)

    async def create_session(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The created session; None when one by that name exists. (verb: create avatarsessions)"""
        status, body = await self.request("POST", sessions_path(obj["metadata"]["namespace"]), dict(obj), answers=(409,))
        return None if status == 409 else dict(body)

    async def read_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        """(verb: get avatarsessions)"""
        status, body = await self.request("GET", sessions_path(namespace, name), answers=(404,))
        return None if status == 404 else dict(body)

    async def delete_session(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Deletes the session (only that uid when given: a retry's new session stays); gone is fine.
        (verb: delete avatarsessions)"""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid else None
        await self.request("DELETE", sessions_path(namespace, name), body, answers=(404, 409))

    async def list_sessions(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """(verb: list avatarsessions)"""
        query = urllib.parse.urlencode({"labelSelector": selector})
        _, body = await self.request("GET", sessions_path(namespace) + "?" + query)
        return [dict(i) for i in body.get("items") or []]

    async def list_pools(self, namespace: str) -> list[dict[str, Any]]:
        """(verb: list avatarpools)"""
        p = kube_mod.path(names.POOL_PLURAL, namespace, group=names.GROUP, version=names.VERSION)
        _, body = await self.request("GET", p)
        return [dict(i) for i in body.get("items") or []]

    async def own_secret(self, namespace: str, name: str, owner: Mapping[str, Any]) -> None:
        """Puts the session's ownerReference on its image Secret. (verb: patch secrets)"""
        patch = {"metadata": {"ownerReferences": [dict(owner)]}}
        await self.request("PATCH", kube_mod.path("secrets", namespace, name), patch, answers=(404,), content_type=kube_mod.MERGE_PATCH)
