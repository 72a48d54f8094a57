"""The few Kubernetes API calls the operator makes, as async functions.

The official client is synchronous; calls run in a thread pool sized for a
burst of sessions (the default pool of cpu+4 threads throttles it). Reads take
the raw JSON (`_preload_content=False`): building the client's model objects
cost more CPU than the request. Each call names one verb the RBAC in the chart
grants.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from avatar_operator import manifests

T = TypeVar("T")

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="kube")
_client: ApiClient | None = None


def configure(kubeconfig: str | None = None) -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    global _client
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig)
    cfg = kubernetes.client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    _client = ApiClient(cfg)


def _api() -> ApiClient:
    if _client is None:
        configure()
    assert _client is not None
    return _client


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(fn, *args, **kwargs))


async def _read(method: str, name: str, namespace: str) -> dict[str, Any] | None:
    """GET one object as JSON; None when it does not exist."""
    fn = getattr(CoreV1Api(_api()), method)
    try:
        resp = await _call(fn, name, namespace, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    obj: dict[str, Any] = json.loads(resp.data)
    return obj


# A burst of sessions in one namespace reads the same Secrets: within this many
# seconds, a read is answered by the last one (or shares the one in flight).
SECRET_READ_TTL_S = 2.0
_secret_reads: dict[tuple[str, str], tuple[float, asyncio.Task[dict[str, Any] | None]]] = {}


def _get_secret(namespace: str, name: str) -> Awaitable[dict[str, Any] | None]:
    """(verb: get secrets)"""
    t = time.monotonic()
    hit = _secret_reads.get((namespace, name))
    if (
        hit is not None
        and t - hit[0] < SECRET_READ_TTL_S
        and hit[1].get_loop() is asyncio.get_running_loop()
        and not (hit[1].done() and (hit[1].cancelled() or hit[1].exception() is not None))
    ):
        return asyncio.shield(hit[1])
    if len(_secret_reads) > 1024:  # drop the stale entries of other namespaces
        for k in [k for k, (at, _) in _secret_reads.items() if t - at >= SECRET_READ_TTL_S]:
            del _secret_reads[k]
    task = asyncio.ensure_future(_read("read_namespaced_secret", name, namespace))
    _secret_reads[(namespace, name)] = (t, task)
    return asyncio.shield(task)


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's decoded data, or None when it does not exist. (verb: get secrets)"""
    secret = await _get_secret(namespace, name)
    if secret is None:
        return None
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


async def read_secret_key(namespace: str, name: str, key: str) -> bytes | None:
    """One Secret key as bytes (an image may be binary). (verb: get secrets)"""
    secret = await _get_secret(namespace, name)
    value = None if secret is None else (secret.get("data") or {}).get(key)
    return None if value is None else base64.b64decode(value)


async def read_config_map_key(namespace: str, name: str, key: str) -> bytes | None:
    """A ConfigMap key as bytes (binaryData or data), None when absent. (verb: get configmaps)"""
    cm = await _read("read_namespaced_config_map", name, namespace)
    if cm is None:
        return None
    binary, data = cm.get("binaryData") or {}, cm.get("data") or {}
    if key in binary:
        return base64.b64decode(binary[key])
    if key in data:
        return str(data[key]).encode()
    return None


async def create(obj: Mapping[str, Any]) -> bool:
    """Creates a Secret or Pod; False when one by that name already exists. (verb: create)"""
    core = CoreV1Api(_api())
    fn: Callable[..., Any] = getattr(core, f"create_namespaced_{str(obj['kind']).lower()}")
    try:
        await _call(fn, obj["metadata"]["namespace"], obj)
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True


async def read_pod(namespace: str, name: str) -> dict[str, Any] | None:
    """(verb: get pods)"""
    return await _read("read_namespaced_pod", name, namespace)


async def delete(kind: str, namespace: str, name: str) -> None:
    """Deletes a Secret or Pod; gone already is fine. (verb: delete)"""
    core = CoreV1Api(_api())
    fn: Callable[..., Any] = getattr(core, f"delete_namespaced_{kind.lower()}")
    try:
        await _call(fn, name, namespace)
    except ApiException as e:
        if e.status != 404:
            raise


async def patch_status(namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    """Merge-patches the session's status subresource; False when the session is gone.
    (verb: patch avatarsessions/status)"""
    try:
        await _call(
            CustomObjectsApi(_api()).patch_namespaced_custom_object_status,
            manifests.GROUP,
            manifests.VERSION,
            namespace,
            "avatarsessions",
            name,
            {"status": dict(status)},
        )
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True
