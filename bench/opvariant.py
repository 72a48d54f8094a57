"""`python -m bench.opvariant ARGS...`: `avatar-operator ARGS...` with candidate
optimisations patched in at start-up, to measure them before anyone edits the
operator (`python -m bench --variant NAMES`, run side by side with the
unchanged operator). BENCH_VARIANT is a comma-separated list of:

- `lazy-jsonpatch`: kopf deep-copies the object before finding that a patch is
  empty; return first.
- `malloc-trim`: glibc's malloc_trim(0) every 5 s, to tell memory the heap
  holds free (a burst's buffers, fragmentation) from memory still in use.
  How round 3 measured it (bench/PERFORMANCE.md); the operator now trims on
  its own (avatar_operator/heap.py), so against today's code it adds nothing.
- `kopf-finalizer`: nothing in the operator; the control plane leaves the
  chart's finalizer policy (templates/finalizer-policy.yaml) out of that run,
  so kopf patches the finalizer on as on a cluster without the API.

The operator has since taken up the earlier variants (no kopf diff base
instead of a lean one, the shared Secret read, status writes that ride on the
next one, its Kubernetes calls over aiohttp); see bench/PERFORMANCE.md.

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


def malloc_trim() -> None:
    import ctypes
    import threading
    import time

    libc = ctypes.CDLL("libc.so.6")

    def trim() -> None:
        while True:
            time.sleep(5)
            libc.malloc_trim(0)

    threading.Thread(target=trim, name="malloc-trim", daemon=True).start()


def kopf_finalizer() -> None:
    """The operator unchanged: this variant is the cluster's (bench.control_plane)."""


KOPF_FINALIZER = "kopf-finalizer"
VARIANTS = {
    "lazy-jsonpatch": lazy_jsonpatch,
    "malloc-trim": malloc_trim,
    KOPF_FINALIZER: kopf_finalizer,
}


def names_in(variant: str | None) -> set[str]:
    return set(filter(None, (variant or "").split(",")))


def apply(names: str) -> None:
    """Applies the named patches, in this module's order."""
    wanted = names_in(names)
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
