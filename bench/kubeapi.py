"""A small async Kubernetes REST client for the benchmark's own traffic.

The benchmark's load generator must cost as little as possible on a shared
2-core box, so it speaks JSON over one aiohttp connection pool instead of the
official client's model (de)serialisation. Only what the bench needs.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import kubernetes


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def _config(kubeconfig: str) -> kubernetes.client.Configuration:
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return cfg


def path_for(obj: Mapping[str, Any], *, name: str | None = None, sub: str = "") -> str:
    """The REST path of an object's collection (or of `name` in it)."""
    api_version = str(obj["apiVersion"])
    kind = str(obj["kind"])
    plural = {"Pod": "pods", "Secret": "secrets", "Namespace": "namespaces", "Node": "nodes", "Event": "events"}.get(
        kind, kind.lower() + "s"
    )
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = (obj.get("metadata") or {}).get("namespace")
    p = f"{base}/namespaces/{ns}/{plural}" if ns and kind not in ("Namespace", "Node") else f"{base}/{plural}"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


class Kube:
    def __init__(self, kubeconfig: str, *, pool: int = 64) -> None:
        cfg = _config(kubeconfig)
        self.host = cfg.host.rstrip("/")
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self._ssl = ctx
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Kube:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._pool),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", ok404: bool = False, **params: Any
    ) -> Any:
        data = None if body is None else json.dumps(body)
        for _ in range(10):
            async with self.session.request(
                method, self.host + path, data=data, params={k: str(v) for k, v in params.items()} or None,
                headers={"Content-Type": content_type, "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=120),
            ) as r:
                text = await r.text()
            # A fresh stack answers 429 "storage is (re)initializing" for a
            # moment after a CRD appears: wait as told, as client-go does.
            if r.status != 429 or "Retry-After" not in r.headers:
                break
            await asyncio.sleep(min(float(r.headers["Retry-After"]), 10.0))
        if r.status == 404 and ok404:
            return None
        if r.status >= 400:
            raise ApiError(r.status, text)
        return json.loads(text) if text else None

    async def create(self, obj: Mapping[str, Any]) -> Any:
        return await self.request("POST", path_for(obj), obj)

    async def delete(self, obj: Mapping[str, Any], **params: Any) -> Any:
        return await self.request("DELETE", path_for(obj, name=obj["metadata"]["name"]), ok404=True, **params)

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, ok404=True, **params)

    async def merge_patch(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def json_patch(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, patch, content_type="application/json-patch+json")

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events from resource_version on, until the server ends the stream."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true", "timeoutSeconds": "1800"}
        async with self.session.get(
            self.host + path, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        ) as r:
            if r.status >= 400:
                raise ApiError(r.status, await r.text())
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
