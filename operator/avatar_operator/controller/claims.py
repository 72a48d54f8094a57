"""One avatar per identity per room: which session holds it (pure).

LiveKit lets one participant identity into a room at a time: a second join
kicks the first. So two sessions that would put the same avatar identity in
the same room on the same server are not both started: the oldest active one
holds the identity, the other waits (`AvatarIdentityInUse` on the step it waits at)
and starts when it ends. kopf keeps every session's claim in an in-memory
index (`handlers.avatar_claims`), so the check costs no API call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import pydantic

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod

Key = tuple[str, str, str]  # LiveKit URL, room, avatar identity
_TERMINAL = {status_mod.Phase.SUCCEEDED.value, status_mod.Phase.FAILED.value}


@dataclasses.dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    uid: str
    created: str  # metadata.creationTimestamp: RFC 3339, so it sorts as time
    active: bool  # neither ended nor being deleted

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Index(Protocol):
    """Every session's claim by key (kopf's index, or a fake)."""

    def claims(self, key: Key) -> Iterable[Claim]: ...


class NoClaims:
    def claims(self, key: Key) -> Iterable[Claim]:
        return ()


def key(spec: spec_mod.AvatarSessionSpec, default_livekit_url: str) -> Key:
    url = (spec.livekit.url if spec.livekit and spec.livekit.url else None) or default_livekit_url
    return (url, spec.room, spec.avatar_participant.identity)


def entry(body: Mapping[str, Any], default_livekit_url: str) -> dict[Key, Claim]:
    """The index entry of one session: its key and claim (none for a spec that doesn't parse)."""
    try:
        spec = spec_mod.parse_spec(body)
    except pydantic.ValidationError:
        return {}
    meta = body.get("metadata") or {}
    phase = (body.get("status") or {}).get("phase")
    active = phase not in _TERMINAL and not meta.get("deletionTimestamp")
    claim = Claim(str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")), str(meta.get("creationTimestamp") or ""), active)
    return {key(spec, default_livekit_url): claim}


def holder(claims: Iterable[Claim], uid: str) -> Claim | None:
    """The session holding the identity when it is not the one with `uid`: the oldest active claim."""
    active = sorted((c for c in claims if c.active), key=lambda c: (c.created, c.namespace, c.name))
    if not active or active[0].uid == uid:
        return None
    return active[0]


def in_use_message(other: Claim, identity: str, room: str) -> str:
    return (
        f"avatar {identity!r} in room {room!r} is already served by session {other}: set "
        "spec.avatarParticipant.identity to tell them apart; this session starts when that one ends"
    )

