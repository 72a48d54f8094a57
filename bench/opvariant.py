"""`python -m bench.opvariant ARGS...`: `avatar-operator ARGS...` with candidate
optimisations patched in at start-up, to measure them before anyone edits the
operator (`python -m bench --variant NAMES`, run side by side with the
unchanged operator). BENCH_VARIANT is a comma-separated list of:

- `lean-diffbase`: kopf builds each event's "essence" (spec, labels,
  annotations) by deep-copying the whole object and then dropping metadata and
  status; copy only what is kept. Same result, less copying (managedFields and
  status are most of an AvatarSession).
- `lazy-jsonpatch`: kopf deep-copies the object before finding that a patch is
  empty; return first.
- `secret-cache`: `kube.read_secret` answers repeated reads of one Secret
  within 2 s from memory (concurrent reads share one GET). A burst in one
  namespace then costs a few GETs instead of two per session.
- `async-kube`: kube.py's calls over aiohttp on the event loop instead of the
  official client in a thread pool.
- `coalesce-status`: the worker's status writes that only record progress
  (Accepted, CredentialsReady) wait and ride on the next write, and the
  first WaitingForAvatar is folded into the write that sets Starting: 3 writes
  to Starting instead of 5 (cloud), 2 instead of 4 (local). Writes that must
  precede an action (the idempotency key before the POST, the runner pod name
  after creating it) still go out at once.

Nothing in the operator package changes; these are experiments.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import time
from typing import Any


def lean_diffbase() -> None:
    from kopf._cogs.configs import diffbase
    from kopf._cogs.structs import dicts

    def build(self: Any, *, body: Any, extra_fields: Any = None) -> Any:
        essence: dict[Any, Any] = {
            k: copy.deepcopy(v) for k, v in dict(body).items() if k not in ("apiVersion", "kind", "metadata", "status")
        }
        dicts.cherrypick(src=body, dst=essence, fields=["metadata.labels", "metadata.annotations"], picker=copy.deepcopy)
        annotations = essence.get("metadata", {}).get("annotations", {})
        ignored_prefixes = self._detect_marked_prefixes(annotations)
        for annotation in list(annotations):
            if any(annotation.startswith(f"{prefix}/") for prefix in ignored_prefixes):
                del annotations[annotation]
            elif annotation == "kubectl.kubernetes.io/last-applied-configuration":
                del annotations[annotation]
        dicts.cherrypick(src=body, dst=essence, fields=extra_fields, picker=copy.deepcopy)
        self.remove_empty_stanzas(essence)
        for ignored_field in self.ignored_fields:
            try:
                dicts.remove(essence, ignored_field)
            except TypeError:
                pass
        return essence

    diffbase.DiffBaseStorage.build = build  # type: ignore[method-assign]


def lazy_jsonpatch() -> None:
    from kopf._cogs.structs import patches

    original = patches.Patch.as_json_patch

    def as_json_patch(self: Any, body: Any = None) -> Any:
        if not self:
            return []
        return original(self, body)

    patches.Patch.as_json_patch = as_json_patch  # type: ignore[method-assign]


def secret_cache(ttl: float = 2.0) -> None:
    from avatar_operator import kube

    original = kube.read_secret
    cache: dict[tuple[str, str], tuple[float, Any]] = {}
    inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def read_secret(namespace: str, name: str) -> Any:
        key = (namespace, name)
        hit = cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        if key in inflight:
            return await asyncio.shield(inflight[key])
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        inflight[key] = fut
        try:
            value = await original(namespace, name)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            inflight.pop(key, None)
        cache[key] = (time.monotonic(), value)
        fut.set_result(value)
        return value

    kube.read_secret = read_secret  # type: ignore[assignment]


def coalesce_status() -> None:
    from avatar_operator import session, status as status_mod

    Phase, Cond, Reason = status_mod.Phase, status_mod.ConditionType, status_mod.Reason
    original = session.Worker.record

    async def record(self: Any, *, phase: Any = None, conditions: Any = (), event: Any = None, warning: bool = False, **fields: Any) -> None:
        pending = getattr(self, "_pending", None)
        types = {c[0] for c in conditions}
        progress_only = (
            phase in (None, Phase.PENDING) and not fields.keys() - {"mode", "avatarIdentity", "startTime"}
            and types <= {Cond.ACCEPTED, Cond.CREDENTIALS_READY} and not warning
        )
        if progress_only and self.status.get("phase") in (None, Phase.PENDING.value):
            # Hold it: the next write carries it.
            merged = pending or {"phase": None, "conditions": (), "events": [], "fields": {}}
            merged["phase"] = phase or merged["phase"]
            merged["conditions"] = (*merged["conditions"], *conditions)
            merged["fields"].update(fields)
            if event is not None:
                merged["events"].append(event)
            self._pending = merged
            return
        held_events = []
        if pending is not None:
            self._pending = None
            conditions = (*pending["conditions"], *conditions)
            fields = {**pending["fields"], **fields}
            phase = phase or pending["phase"]
            held_events = pending["events"]
        if phase == Phase.STARTING and not self.is_true(Cond.READY):
            identity = self.status.get("avatarIdentity") or fields.get("avatarIdentity") or "bithuman-avatar-agent"
            conditions = (*conditions, (Cond.READY, False, Reason.WAITING_FOR_AVATAR, f"avatar {identity!r} not in the room yet"))
        await original(self, phase=phase, conditions=conditions, event=event, warning=warning, **fields)
        for ev in held_events:  # after the write: status unchanged, so Events only
            await original(self, event=ev)

    session.Worker.record = record  # type: ignore[method-assign]


def async_kube() -> None:
    """kube.py's calls over aiohttp on the event loop instead of the official
    client in a 32-thread pool: no thread hops, no model (de)serialisation, no
    GIL contention between the pool and kopf's loop."""
    import base64

    from avatar_operator import kube, manifests
    from bench.kubeapi import ApiError, Kube, path_for

    client: dict[str, Kube] = {}

    async def api() -> Kube:
        if "k" not in client:
            client["k"] = await Kube(os.environ["KUBECONFIG"], pool=64).__aenter__()
        return client["k"]

    def secret_path(ns: str, name: str) -> str:
        return f"/api/v1/namespaces/{ns}/secrets/{name}"

    async def read_secret(namespace: str, name: str) -> Any:
        s = await (await api()).get(secret_path(namespace, name))
        if s is None:
            return None
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.get("data") or {}).items()}

    async def create(obj: Any) -> bool:
        try:
            await (await api()).create(obj)
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def read_pod(namespace: str, name: str) -> Any:
        return await (await api()).get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def delete(kind: str, namespace: str, name: str) -> None:
        await (await api()).delete({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}})

    async def patch_status(namespace: str, name: str, status: Any) -> None:
        path = f"/apis/{manifests.GROUP}/{manifests.VERSION}/namespaces/{namespace}/avatarsessions/{name}/status"
        await (await api()).merge_patch(path, {"status": dict(status)})

    kube.read_secret = read_secret  # type: ignore[assignment]
    kube.create = create  # type: ignore[assignment]
    kube.read_pod = read_pod  # type: ignore[assignment]
    kube.delete = delete  # type: ignore[assignment]
    kube.patch_status = patch_status  # type: ignore[assignment]
    del path_for


VARIANTS = {
    "async-kube": async_kube,
    "lean-diffbase": lean_diffbase,
    "lazy-jsonpatch": lazy_jsonpatch,
    "secret-cache": secret_cache,
    "coalesce-status": coalesce_status,
}


def apply(names: str) -> None:
    """Applies the named patches, in this module's order (async-kube under secret-cache)."""
    wanted = set(filter(None, names.split(",")))
    unknown = wanted - VARIANTS.keys()
    if unknown:
        raise SystemExit(f"unknown BENCH_VARIANT: {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    for name, patch in VARIANTS.items():
        if name in wanted:
            patch()


def main() -> int:
    apply(os.environ.get("BENCH_VARIANT", ""))
    from avatar_operator import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
