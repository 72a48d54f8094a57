"""`python -m bench.opvariant ARGS...`: `avatar-operator ARGS...` with candidate
optimisations patched in at start-up, to measure them before anyone edits the
operator (`python -m bench --variant NAMES`, run side by side with the
unchanged operator). BENCH_VARIANT is a comma-separated list of:

- `lazy-jsonpatch`: kopf deep-copies the object before finding that a patch is
  empty; return first.
- `async-kube`: kube.py's calls over aiohttp on the event loop instead of the
  official client in a thread pool.
The operator has since taken up three earlier variants (no kopf diff base
instead of a lean one, the shared Secret read, status writes that ride on the
next one); see bench/PERFORMANCE.md.

Nothing in the operator package changes; these are experiments.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def lazy_jsonpatch() -> None:
    from kopf._cogs.structs import patches

    original = patches.Patch.as_json_patch

    def as_json_patch(self: Any, body: Any = None) -> Any:
        if not self:
            return []
        return original(self, body)

    patches.Patch.as_json_patch = as_json_patch  # type: ignore[method-assign]


def async_kube() -> None:
    """kube.py's calls over aiohttp on the event loop instead of the official
    client in a 32-thread pool: no thread hops, no model (de)serialisation, no
    GIL contention between the pool and kopf's loop."""
    from avatar_operator import kube, manifests
    from bench.kubeapi import ApiError, Kube, path_for

    client: dict[str, Kube] = {}

    async def api() -> Kube:
        if "k" not in client:
            client["k"] = await Kube(os.environ["KUBECONFIG"], pool=64).__aenter__()
        return client["k"]

    paths = {"read_namespaced_secret": "secrets", "read_namespaced_pod": "pods", "read_namespaced_config_map": "configmaps"}

    async def read(method: str, name: str, namespace: str) -> Any:
        # Under kube's shared Secret read, as the operator's own calls are.
        return await (await api()).get(f"/api/v1/namespaces/{namespace}/{paths[method]}/{name}")

    async def create(obj: Any) -> bool:
        try:
            await (await api()).create(obj)
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def delete(kind: str, namespace: str, name: str) -> None:
        await (await api()).delete({"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}})

    async def patch_status(namespace: str, name: str, status: Any) -> bool:
        path = f"/apis/{manifests.GROUP}/{manifests.VERSION}/namespaces/{namespace}/avatarsessions/{name}/status"
        try:
            await (await api()).merge_patch(path, {"status": dict(status)})
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    kube._read = read
    kube.create = create
    kube.delete = delete
    kube.patch_status = patch_status
    del path_for


VARIANTS = {
    "async-kube": async_kube,
    "lazy-jsonpatch": lazy_jsonpatch,
}


def apply(names: str) -> None:
    """Applies the named patches, in this module's order."""
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
