"""The line cloud sessions wait in for a bitHuman credential's concurrency budget.

bitHuman allows each plan a fixed number of concurrent sessions and refuses
one more at start (403 CONCURRENCY_LIMIT_REACHED). With a budget set (the
operator's AVATAR_BITHUMAN_CONCURRENCY, or the credential Secret's
BITHUMAN_CONCURRENCY key), the operator starts at most that many sessions per
credential at once and queues the rest in creation order, so bitHuman never
has to refuse them.

Who holds a slot is read from the sessions' status through kopf's index
(`handlers.cloud_slots`): a session holds one from the write that records its
request (before the POST) until it ends. So a restarted operator counts the
same slots as the one before it; the in-memory `Admissions` only cover the
moment between deciding to send and the index seeing that write, when two
sessions deciding at once could both take the last slot.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import pydantic

from avatar_operator import settings as settings_mod
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.controller import credentials

Key = tuple[str, str]  # the session's namespace, its bitHuman credential Secret
_TERMINAL = {status_mod.Phase.SUCCEEDED.value, status_mod.Phase.FAILED.value}


class State(enum.Enum):
    BEFORE = "before"  # not at the line yet (credentials, identity) or not sending
    WAITING = "waiting"  # in line: CloudRequestAccepted=False, ConcurrencyLimited, nothing sent
    HOLDING = "holding"  # its request is recorded (sent, in flight, accepted) and it has not ended
    DONE = "done"  # ended


@dataclasses.dataclass(frozen=True)
class Slot:
    uid: str
    namespace: str
    name: str
    created: str  # metadata.creationTimestamp: RFC 3339, so it sorts as time
    state: State

    @property
    def order(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


class Index(Protocol):
    """Every cloud session's slot by credential (kopf's index, or a fake)."""

    def slots(self, key: Key) -> Iterable[Slot]: ...


class NoSlots:
    def slots(self, key: Key) -> Iterable[Slot]:
        return ()


@dataclasses.dataclass(frozen=True)
class MappingIndex:
    """An Index over kopf's index (a mapping of each key to its sessions' slots)."""

    mapping: Mapping[Key, Iterable[Slot]]

    def slots(self, key: Key) -> Iterable[Slot]:
        return list(self.mapping.get(key, ()))


def credential_key(namespace: str, spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings) -> Key:
    named = spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None
    return (namespace, named or settings.bithuman.secret_name)


def entry(body: Mapping[str, Any], settings: settings_mod.Settings) -> dict[Key, Slot]:
    """The index entry of one session: its credential and slot (none unless it is a cloud session)."""
    try:
        spec = spec_mod.parse_spec(body)
    except pydantic.ValidationError:
        return {}
    if spec.mode != spec_mod.Mode.CLOUD or spec.pool_ref is not None:
        return {}
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace"))
    slot = Slot(str(meta.get("uid")), namespace, str(meta.get("name")), str(meta.get("creationTimestamp") or ""), state_of(body))
    return {credential_key(namespace, spec, settings): slot}


def state_of(body: Mapping[str, Any]) -> State:
    status = body.get("status") or {}
    if status.get("phase") in _TERMINAL:
        return State.DONE
    if status.get("cloudRequest"):
        return State.HOLDING
    step = status_mod.ConditionType.CLOUD_REQUEST_ACCEPTED.value
    accepted: Mapping[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == step), {})
    deleting = bool((body.get("metadata") or {}).get("deletionTimestamp"))
    if accepted.get("reason") == status_mod.Reason.CONCURRENCY_LIMITED.value and not deleting:
        return State.WAITING
    return State.BEFORE


def budget(settings: settings_mod.Settings, raw: str | None, secret_name: str | None) -> int:
    """The credential's budget from its Secret's value `raw` (0: none); ValueError naming the Secret key and the fix."""
    if raw is None or not raw.strip():
        return settings.bithuman.concurrency
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"Secret {secret_name!r} key {credentials.BITHUMAN_CONCURRENCY} is {raw.strip()[:20]!r}: write the number of concurrent "
            "sessions the bitHuman plan allows (a whole number; 0 for no budget)"
        )
    return value


@dataclasses.dataclass
class Admissions:
    """This operator's own view: who it let send and who stands in line (held in kopf's memo)."""

    admitted: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    line: dict[Key, dict[str, tuple[str, str, str]]] = dataclasses.field(default_factory=dict)

    def release(self, key: Key, uid: str) -> None:
        self.admitted.get(key, set()).discard(uid)
        self.line.get(key, {}).pop(uid, None)


@dataclasses.dataclass
class Queue:
    index: Index = dataclasses.field(default_factory=NoSlots)
    admissions: Admissions = dataclasses.field(default_factory=Admissions)

    def try_admit(self, key: Key, me: Slot, limit: int) -> int | None:
        """None when `me` may send now (and it is counted as holding from here on); else its place in line (1 = next)."""
        slots = {s.uid: s for s in self.index.slots(key)}
        admitted = self.admissions.admitted.setdefault(key, set())
        line = self.admissions.line.setdefault(key, {})
        position = place(slots, admitted, line, me, limit)
        if position is None:
            admitted.add(me.uid)
            line.pop(me.uid, None)
        else:
            line[me.uid] = me.order
        return position

    def release(self, uid: str) -> None:
        """The session's worker stopped: from here on the index alone says whether it holds a slot."""
        for key in list(self.admissions.admitted) + list(self.admissions.line):
            self.admissions.release(key, uid)


def place(slots: Mapping[str, Slot], admitted: set[str], line: Mapping[str, tuple[str, str, str]], me: Slot, limit: int) -> int | None:
    """Pure: None when a slot is free for `me` after everyone ahead of it in line; else its place in line.

    Holding: what the index says holds, and what this operator admitted that the
    index has not yet seen end (a uid gone from the index is deleted). Ahead:
    sessions in line, by the index or in memory, created before `me`."""
    holding = {uid for uid, s in slots.items() if s.state is State.HOLDING}
    holding |= {uid for uid in admitted if uid in slots and slots[uid].state is not State.DONE}
    holding.discard(me.uid)
    waiting = {uid: s.order for uid, s in slots.items() if s.state is State.WAITING}
    waiting.update({uid: order for uid, order in line.items() if uid in slots and slots[uid].state is not State.DONE})
    ahead = sum(1 for uid, order in waiting.items() if uid != me.uid and uid not in holding and order < me.order)
    if len(holding) + ahead < limit:
        return None
    return ahead + 1
