"""The viewer's LiveKit token: subscribe-only, one room, minutes, no secret inside."""

from __future__ import annotations

import base64
import datetime

import jwt
import pytest
from avatar_operator.build import viewer_token
from livekit import api

API_KEY = "APIkey123"
API_SECRET = "lk-secret-0123456789abcdef0123456789abcdef"


def _mint(**overrides: object) -> str:
    kwargs: dict[str, object] = {"api_key": API_KEY, "api_secret": API_SECRET, "room": "room-a", "identity": "viewer-1"}
    kwargs.update(overrides)
    return viewer_token.viewer_token(**kwargs)  # type: ignore[arg-type]


def test_grants_join_and_subscribe_to_one_room_and_nothing_else() -> None:
    token = _mint()

    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)

    assert claims.identity == "viewer-1"
    assert claims.kind in ("", "standard")  # a person watching, not an agent
    raw_video = jwt.decode(token, options={"verify_signature": False})["video"]
    assert raw_video == {
        "roomJoin": True,
        "room": "room-a",
        "canSubscribe": True,
        "canPublish": False,
        "canPublishData": False,
        "canUpdateOwnMetadata": False,
    }


def test_lives_minutes() -> None:
    payload = jwt.decode(_mint(), options={"verify_signature": False})

    assert payload["exp"] - payload["nbf"] == viewer_token.VIEWER_TTL.total_seconds() == 300


def test_secret_is_nowhere_in_the_token_text() -> None:
    token = _mint()

    decoded = b"".join(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.split(".")[:2])

    assert API_SECRET.encode() not in decoded
    assert API_SECRET not in token


@pytest.mark.parametrize("ttl", [datetime.timedelta(0), datetime.timedelta(seconds=-1), datetime.timedelta(hours=1)])
def test_refuses_a_ttl_that_is_not_minutes(ttl: datetime.timedelta) -> None:
    with pytest.raises(ValueError, match="ttl must be positive and at most 0:30:00"):
        _mint(ttl=ttl)


@pytest.mark.parametrize("field", ["api_key", "api_secret", "room", "identity"])
def test_refuses_empty_fields(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must not be empty"):
        _mint(**{field: ""})


def test_identity_has_the_viewer_prefix() -> None:
    assert viewer_token.viewer_identity("ab12") == "viewer-ab12"
    with pytest.raises(ValueError, match="suffix"):
        viewer_token.viewer_identity("")
