"""What the LiveKit server says about a session's room (media-plane readiness), and removing the avatar.

`Ready` means the avatar is in the room publishing video, so the operator asks
LiveKit (RoomService) rather than trusting a pod's phase.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Callable, Sequence

import aiohttp
from livekit import api
from livekit.api import room_service
from livekit.protocol import models

from avatar_operator.api import names


@dataclasses.dataclass(frozen=True)
class RoomView:
    avatar_present: bool
    avatar_publishing_video: bool


def http_url(livekit_url: str) -> str:
    """RoomService speaks HTTP on the same port as the ws:// signalling URL."""
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if livekit_url.startswith(ws):
            return http + livekit_url[len(ws) :]
    return livekit_url


def is_ours(participant: models.ParticipantInfo, session_uid: str) -> bool:
    """The participant joined with this session's token (its attribute names the session).

    One without the attribute counts as ours: a token minted before it existed."""
    owner = participant.attributes.get(names.SESSION_ATTRIBUTE)
    return not owner or owner == session_uid


def is_credentials_refused(error: BaseException) -> bool:
    """LiveKit refused the API key or its signature (HTTP 401/403), as opposed to not answering."""
    return isinstance(error, api.TwirpError) and (
        error.code in (api.TwirpErrorCode.UNAUTHENTICATED, api.TwirpErrorCode.PERMISSION_DENIED)
        or error.status in (401, 403)
    )


def view(participants: Sequence[models.ParticipantInfo], avatar_identity: str, session_uid: str) -> RoomView:
    """What the room says of this session's avatar: another session's avatar of the same identity is not it."""
    avatar = next((p for p in participants if p.identity == avatar_identity and is_ours(p, session_uid)), None)
    publishing = avatar is not None and any(
        t.type == models.TrackType.VIDEO and not t.muted for t in avatar.tracks
    )
    return RoomView(avatar_present=avatar is not None, avatar_publishing_video=publishing)


# A RoomService token signed for one room, reused until half its life is gone:
# livekit-api signs a fresh JWT for every call, which cost the operator more
# CPU than the call itself when a thousand sessions poll.
TOKEN_TTL = datetime.timedelta(hours=1)
# Expired rooms' tokens are dropped once this many are held (then at twice the live count), so an
# operator that has seen a million rooms holds only those of the last half hour.
PRUNE_AT = 256


class _RoomService(room_service.RoomService):
    """RoomService sending the room's held token instead of signing one per call.

    One per server and key: a LiveKitAPI per room held six Twirp clients per session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token_for: Callable[[str], str]) -> None:
        super().__init__(session, url, "", "")
        self._token_for = token_for

    # livekit-api's hook for a call's credentials (its own pre-signed-token mode uses it too);
    # every RoomService call passes the room it is about in its grants.
    def _auth_header(self, grants: api.VideoGrants | None, sip: api.SIPGrants | None = None) -> dict[str, str]:
        room = grants.room if grants is not None else ""
        return {"authorization": f"Bearer {self._token_for(room)}"}


class Client:
    """A RoomService client for one LiveKit server and key pair."""

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        session: aiohttp.ClientSession,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = api_key
        self._secret = api_secret
        self._timeout_s = timeout_s
        self._clock = clock
        self._tokens: dict[str, tuple[float, str]] = {}
        self._prune_at = PRUNE_AT
        self._service = _RoomService(session, http_url(url), self._token)

    def _token(self, room: str) -> str:
        """A room-admin token for `room` only."""
        now = self._clock()
        hit = self._tokens.get(room)
        if hit is not None and now < hit[0]:
            return hit[1]
        if len(self._tokens) >= self._prune_at:
            self._tokens = {r: held for r, held in self._tokens.items() if now < held[0]}
            self._prune_at = max(PRUNE_AT, 2 * len(self._tokens))
        token = (
            api.AccessToken(self._key, self._secret)
            .with_grants(api.VideoGrants(room_admin=True, room=room))
            .with_ttl(TOKEN_TTL)
            .to_jwt()
        )
        self._tokens[room] = (now + TOKEN_TTL.total_seconds() / 2, token)
        return token

    async def observe(self, room: str, avatar_identity: str, session_uid: str) -> RoomView:
        # The RoomService has no timeout of its own (only the shared session's): bound the call here.
        try:
            listed = await asyncio.wait_for(
                self._service.list_participants(api.ListParticipantsRequest(room=room)), self._timeout_s
            )
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return RoomView(False, False)
            raise
        return view(listed.participants, avatar_identity, session_uid)

    async def remove(self, room: str, identity: str, session_uid: str) -> bool:
        """Removes this session's avatar; False when it (or the room) is gone, or the participant by that
        identity is another session's. The caller bounds the wait."""
        who = api.RoomParticipantIdentity(room=room, identity=identity)
        try:
            participant = await self._service.get_participant(who)
            if not is_ours(participant, session_uid):
                return False
            await self._service.remove_participant(who)
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return False
            raise
        return True


class Rooms:
    """One Client per LiveKit server and key, shared by every session that uses them (held in kopf's memo)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._clients: dict[tuple[str, str, str], Client] = {}

    def get(self, url: str, api_key: str, api_secret: str) -> Client:
        key = (url, api_key, api_secret)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) > 256:  # rotated keys: drop the old clients, not the sessions
                self._clients.clear()
            client = self._clients[key] = Client(url, api_key, api_secret, self._session)
        return client
