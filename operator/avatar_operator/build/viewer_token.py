"""A viewer's LiveKit token: watch one room, nothing else, for minutes.

design.md §3: "A viewer token can subscribe and nothing else, and lives
minutes." The page of `avatar-operator view` gets one of these, never the
API secret that signs it. A connected participant stays past the token's
expiry (LiveKit refreshes it), so a short TTL bounds only how long a copied
token can be used to join.
"""

from __future__ import annotations

import datetime

from livekit import api

VIEWER_TTL = datetime.timedelta(minutes=5)
VIEWER_TTL_MAX = datetime.timedelta(minutes=30)
IDENTITY_PREFIX = "viewer-"


def viewer_identity(suffix: str) -> str:
    """The identity a viewer joins as; `suffix` keeps two open pages apart."""
    if not suffix:
        raise ValueError("suffix must not be empty")
    return f"{IDENTITY_PREFIX}{suffix}"


def viewer_grants(room: str) -> api.VideoGrants:
    """Join `room` and subscribe; publishing media or data, and changing its own metadata, are refused."""
    return api.VideoGrants(
        room_join=True,
        room=room,
        can_subscribe=True,
        can_publish=False,
        can_publish_data=False,
        can_update_own_metadata=False,
    )


def viewer_token(
    *, api_key: str, api_secret: str, room: str, identity: str, ttl: datetime.timedelta = VIEWER_TTL
) -> str:
    """A signed JWT that lets `identity` watch and listen to `room`."""
    for field, value in (("api_key", api_key), ("api_secret", api_secret), ("room", room), ("identity", identity)):
        if not value:
            raise ValueError(f"{field} must not be empty")
    if not datetime.timedelta(0) < ttl <= VIEWER_TTL_MAX:
        raise ValueError(f"ttl must be positive and at most {VIEWER_TTL_MAX}, got {ttl}")
    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_identity(identity)
        .with_name("viewer")
        .with_grants(viewer_grants(room))
        .with_ttl(ttl)
        .to_jwt()
    )
