"""Drops `metadata.managedFields` from every object kopf lists or watches, and shares its
strings, before kopf keeps it.

kopf holds each watched session's whole body for as long as the session lives. Its
managedFields (server-side apply's record of who wrote which field) were 14.5 KB of the
25.9 KB of Python objects each idle session's body held (bench/PERFORMANCE.md, round 5).
Neither kopf nor the operator reads them, nor the copy of the manifest `kubectl apply`
keeps in an annotation. The API server keeps both: a write that leaves them out does
not change them.

kopf has no hook that drops fields from watched objects; controller-runtime's
TransformStripManagedFields is the Go equivalent. So this wraps the one function that
every listed and watched object passes through on its way in,
`kopf._cogs.clients.watching.infinite_watch`, which kopf's queueing calls through its
module. tests/unit/test_lean_bodies.py fails if a kopf upgrade moves it.

Each event is decoded on its own, so every body has its own copy of every key
and of the values most sessions share (a condition's type, reason and message,
the namespace, a second's timestamp). Interned, they are held once for all
sessions: an idle session's body went from 7.5 to 3.3 KB (bench/PERFORMANCE.md,
round 7).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from kopf._cogs.clients import watching

_MARK = "_avatar_operator_lean"
# `kubectl apply`'s copy of the whole manifest it applied, for its next apply's diff; kopf reads only its
# own annotations (its progress, under the operator's prefix), and the operator none.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Longer strings are rarely shared (a unique message, a token-length value) and cost more to hash.
INTERN_MAX = 256


def strip(raw_event: Any) -> Any:
    """The event with its object's managedFields and kubectl's last-applied copy dropped, and its
    strings interned (a bookmark passes as it came)."""
    if isinstance(raw_event, dict):
        obj = raw_event.get("object")
        metadata = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(metadata, dict):
            metadata.pop("managedFields", None)
            annotations = metadata.get("annotations")
            if isinstance(annotations, dict):
                annotations.pop(LAST_APPLIED, None)
            raw_event["object"] = shared(obj)
    return raw_event


def shared(value: Any) -> Any:
    """A decoded JSON value, equal to `value`, with its keys and short strings interned."""
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= INTERN_MAX else value
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared(v) for v in value]
    return value


def lean(watch: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """`watch`, with every event it yields stripped."""

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        async for raw_event in watch(**kwargs):
            yield strip(raw_event)

    setattr(infinite_watch, _MARK, True)
    return infinite_watch


def install() -> None:
    """Once per process, before kopf starts watching."""
    if not getattr(watching.infinite_watch, _MARK, False):
        watching.infinite_watch = lean(watching.infinite_watch)
