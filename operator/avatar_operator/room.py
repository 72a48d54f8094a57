"""What the LiveKit server says about a session's room: media-plane readiness.

`Ready` means the avatar is in the room publishing video, so the operator asks
LiveKit (RoomService) rather than trusting a pod's phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import aiohttp
from livekit import api
from livekit.protocol import models


@dataclasses.dataclass(frozen=True)
class RoomView:
    room_exists: bool
    avatar_present: bool
    avatar_publishing_video: bool
    agent_present: bool


def http_url(livekit_url: str) -> str:
    """RoomService speaks HTTP on the same port as the ws:// signalling URL."""
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if livekit_url.startswith(ws):
            return http + livekit_url[len(ws) :]
    return livekit_url


def view(participants: Sequence[models.ParticipantInfo], avatar_identity: str, agent_identity: str) -> RoomView:
    by_identity = {p.identity: p for p in participants}
    avatar = by_identity.get(avatar_identity)
    publishing = avatar is not None and any(
        t.type == models.TrackType.VIDEO and not t.muted for t in avatar.tracks
    )
    return RoomView(
        room_exists=True,
        avatar_present=avatar is not None,
        avatar_publishing_video=publishing,
        agent_present=agent_identity in by_identity,
    )


class Client:
    """A RoomService client for one LiveKit server and key pair."""

    def __init__(self, url: str, api_key: str, api_secret: str, session: aiohttp.ClientSession, timeout_s: float = 5.0) -> None:
        self._api = api.LiveKitAPI(
            http_url(url), api_key, api_secret, session=session, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def observe(self, room: str, avatar_identity: str, agent_identity: str) -> RoomView:
        try:
            listed = await self._api.room.list_participants(api.ListParticipantsRequest(room=room))
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return RoomView(False, False, False, False)
            raise
        return view(listed.participants, avatar_identity, agent_identity)

    async def remove(self, room: str, identity: str) -> bool:
        """Removes a participant; False when it (or the room) was already gone."""
        try:
            await self._api.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return False
            raise
        return True
