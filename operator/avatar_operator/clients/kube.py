"""The Kubernetes API calls the operator makes, on one client object.

The requests are plain JSON over aiohttp on kopf's event loop. The official
client is synchronous: in a thread pool its calls contended with kopf's loop
for the GIL, building its model objects cost more CPU than the requests, and
its API modules alone held 21 MB. Where to connect and how to authenticate
come from clients.kube_login (in-cluster service account with token refresh,
or a kubeconfig), as kopf's login does. Each named call uses one verb the
RBAC in the chart grants. One `Kube` lives in kopf's memo; the benchmarks and
tests use the same class.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp

from avatar_operator.api import names
from avatar_operator.clients import http, kube_login

TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
# A burst of sessions: enough connections that status writes do not queue
# behind each other, few enough that the API server's priority and fairness
# sees one well-behaved client.
POOL = 32

RETRIES_AFTER_429 = 10
RETRY_AFTER_CAP_S = 10.0
MERGE_PATCH = "application/merge-patch+json"
PLURALS = {"Secret": "secrets", "Pod": "pods", "ConfigMap": "configmaps"}
# A burst of sessions in one namespace reads the same Secrets: within this many
# seconds, a read is answered by the last one (or shares the one in flight).
SECRET_READ_TTL_S = 2.0
_SECRET_CACHE_MAX = 1024


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


def load_config(kubeconfig: str | None = None) -> tuple[kube_login.Login, ssl.SSLContext | bool]:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG); raises kube_login.ConfigError."""
    login = kube_login.load(kubeconfig)
    return login, kube_login.ssl_context(login)


def path(plural: str, namespace: str, name: str | None = None, *, group: str = "", version: str = "v1") -> str:
    """The REST path of a namespaced collection or object."""
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


class Kube:
    """One API server, one connection pool."""

    def __init__(self, config: kube_login.Login, tls: ssl.SSLContext | bool, *, pool: int = POOL) -> None:
        self._config = config
        self._bearer = kube_login.bearer(config)
        self._tls = tls
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._secret_reads: dict[tuple[str, str], tuple[float, asyncio.Task[dict[str, Any] | None]]] = {}

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, *, pool: int = POOL) -> Kube:
        return cls(*load_config(kubeconfig), pool=pool)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls, limit=self._pool), timeout=TIMEOUT
            )
        return self._session

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # Asked on every request: a token file (the service account's) is
        # re-read as the kubelet rotates it.
        authorization = self._bearer()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, *, answers: tuple[int, ...] = (), content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One request; (status, decoded body). Errors other than `answers` raise ApiError."""
        data = None if body is None else json.dumps(body)
        headers = self._headers(content_type)
        for _ in range(RETRIES_AFTER_429):
            async with self._http().request(method, self._config.host + path, data=data, headers=headers) as resp:
                text = await resp.text()
            # As client-go does: a 429 with Retry-After (priority and fairness, or
            # "storage is (re)initializing" after a restart) is a request to wait.
            wait = http.retry_after_s(resp.headers.get("Retry-After")) if resp.status == 429 else None
            if wait is None:
                break
            await asyncio.sleep(min(wait, RETRY_AFTER_CAP_S))
        if resp.status >= 400 and resp.status not in answers:
            raise ApiError(method, path, resp.status, text)
        return resp.status, json.loads(text) if text else None

    async def _read(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """GET one object; None when it does not exist."""
        status, obj = await self.request("GET", path(plural, namespace, name), answers=(404,))
        return None if status == 404 else dict(obj)

    def _get_secret(self, namespace: str, name: str) -> Awaitable[dict[str, Any] | None]:
        """(verb: get secrets)"""
        t = time.monotonic()
        hit = self._secret_reads.get((namespace, name))
        if (
            hit is not None
            and t - hit[0] < SECRET_READ_TTL_S
            and hit[1].get_loop() is asyncio.get_running_loop()
            and not (hit[1].done() and (hit[1].cancelled() or hit[1].exception() is not None))
        ):
            return asyncio.shield(hit[1])
        if len(self._secret_reads) > _SECRET_CACHE_MAX:  # drop the stale entries of other namespaces
            for k in [k for k, (at, _) in self._secret_reads.items() if t - at >= SECRET_READ_TTL_S]:
                del self._secret_reads[k]
        task = asyncio.ensure_future(self._read("secrets", namespace, name))
        self._secret_reads[(namespace, name)] = (t, task)
        return asyncio.shield(task)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None when it does not exist. (verb: get secrets)"""
        secret = await self._get_secret(namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """One Secret key as bytes (an image may be binary). (verb: get secrets)"""
        secret = await self._get_secret(namespace, name)
        value = None if secret is None else (secret.get("data") or {}).get(key)
        return None if value is None else base64.b64decode(value)

    async def read_config_map_key(self, namespace: str, name: str, key: str) -> bytes | None:
        """A ConfigMap key as bytes (binaryData or data), None when absent. (verb: get configmaps)"""
        cm = await self._read("configmaps", namespace, name)
        if cm is None:
            return None
        binary, data = cm.get("binaryData") or {}, cm.get("data") or {}
        if key in binary:
            return base64.b64decode(binary[key])
        if key in data:
            return str(data[key]).encode()
        return None

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Creates a Secret or Pod; False when one by that name already exists. (verb: create)"""
        status, _ = await self.request(
            "POST", path(PLURALS[str(obj["kind"])], obj["metadata"]["namespace"]), dict(obj), answers=(409,)
        )
        return status != 409

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """(verb: get pods)"""
        return await self._read("pods", namespace, name)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes a Secret or Pod; gone already is fine. (verb: delete)"""
        await self.request("DELETE", path(PLURALS[kind], namespace, name), answers=(404,))

    async def delete_session_by_uid(self, namespace: str, name: str, uid: str) -> bool:
        """Deletes this AvatarSession (a newer one of its name is left alone: the uid is a precondition); its
        owned objects follow by the garbage collector. False when it is gone or another. (verb: delete
        avatarsessions)"""
        p = path(names.PLURAL, namespace, name, group=names.GROUP, version=names.VERSION)
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        code, _ = await self.request("DELETE", p, options, answers=(404, 409))
        return code not in (404, 409)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patches the session's status subresource; False when the session is gone.
        (verb: patch avatarsessions/status)"""
        p = path(names.PLURAL, namespace, name, group=names.GROUP, version=names.VERSION) + "/status"
        code, _ = await self.request("PATCH", p, {"status": dict(status)}, answers=(404,), content_type=MERGE_PATCH)
        return code != 404

    async def patch_pool_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patches an AvatarPool's status; False when the pool is gone. (verb: patch avatarpools/status)"""
        p = path(names.POOL_PLURAL, namespace, name, group=names.GROUP, version=names.VERSION) + "/status"
        code, _ = await self.request("PATCH", p, {"status": dict(status)}, answers=(404,), content_type=MERGE_PATCH)
        return code != 404

    async def read_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        """An AvatarPool; None when it does not exist. (verb: get avatarpools)"""
        status, obj = await self.request(
            "GET", path(names.POOL_PLURAL, namespace, name, group=names.GROUP, version=names.VERSION), answers=(404,)
        )
        return None if status == 404 else dict(obj)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The namespace's pods with these labels. (verb: list pods)"""
        _, body = await self.request("GET", path("pods", namespace) + "?" + urllib.parse.urlencode({"labelSelector": selector}))
        return [dict(item) for item in (body or {}).get("items") or []]
