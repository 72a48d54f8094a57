"""What kopf keeps on each AvatarSession between events.

kopf stores a "last-handled configuration" to turn events into create/update
causes. The operator has no create, update or resume handlers (one daemon per
session reads the live spec, and only deletion is a cause), so that record
would cost one extra write per session and a deep copy of the object on every
event for nothing. This storage has no diff base: every event compares equal,
deletion is still detected from the deletion timestamp and the finalizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """Every object's essence is empty, before and after: no diff, nothing to store."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return {}

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass
