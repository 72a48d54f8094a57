"""The avatar's LiveKit token: what it grants, whom it names, how long it lives."""

from __future__ import annotations

import base64
import datetime

import jwt
import pytest
from avatar_operator.build.token import ATTRIBUTE_PUBLISH_ON_BEHALF, avatar_token, token_ttl
from livekit import api

API_KEY = "APIkey123"
API_SECRET = "lk-secret-0123456789abcdef0123456789abcdef"


def _mint(**overrides: object) -> str:
    kwargs: dict[str, object] = dict(
        api_key=API_KEY,
        api_secret=API_SECRET,
        room="room-a",
        identity="bithuman-avatar-agent",
        name="Avatar",
        agent_identity="agent-xyz",
        ttl=datetime.timedelta(minutes=10),
    )
    kwargs.update(overrides)
    return avatar_token(**kwargs)  # type: ignore[arg-type]


def test_constant_matches_livekit_agents() -> None:
    from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF as agents_constant

    assert ATTRIBUTE_PUBLISH_ON_BEHALF == agents_constant


def test_token_is_an_agent_joining_one_room_on_behalf_of_the_agent() -> None:
    token = _mint(extra_attributes={"agent_id": "A23WJF0199"})

    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)

    assert claims.kind == "agent"
    assert claims.identity == "bithuman-avatar-agent"
    assert claims.name == "Avatar"
    assert claims.attributes == {
        ATTRIBUTE_PUBLISH_ON_BEHALF: "agent-xyz",
        "agent_id": "A23WJF0199",
    }
    assert claims.video is not None
    assert claims.video.room == "room-a"
    assert claims.video.room_join is True
    # Nothing beyond joining: no room admin, creation, listing or recording.
    raw_video = jwt.decode(token, options={"verify_signature": False})["video"]
    assert raw_video == {
        "roomJoin": True,
        "room": "room-a",
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
    }


def test_spec_attributes_ride_in_the_token_under_the_operators() -> None:
    token = _mint(
        spec_attributes={"lk.avatar_provider": "bithuman", "agent_id": "from-the-spec"},
        extra_attributes={"agent_id": "A23WJF0199"},
    )

    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)

    assert claims.attributes == {
        ATTRIBUTE_PUBLISH_ON_BEHALF: "agent-xyz",
        "lk.avatar_provider": "bithuman",
        "agent_id": "A23WJF0199",  # the operator's value wins
    }


@pytest.mark.parametrize(
    ("attributes", "words"),
    [
        ({ATTRIBUTE_PUBLISH_ON_BEHALF: "someone-else"}, "replace the agent identity"),
        ({"note": f"x{API_SECRET}x"}, "contains the LiveKit API secret"),
    ],
)
def test_spec_attributes_cannot_replace_the_agent_or_carry_the_secret(attributes: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words) as e:
        _mint(spec_attributes=attributes)
    assert API_SECRET not in str(e.value)


def test_token_does_not_verify_with_another_secret() -> None:
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(API_KEY, "some-other-secret-0123456789abcdef").verify(_mint())


def test_ttl_is_the_one_given() -> None:
    token = _mint(ttl=datetime.timedelta(seconds=1234))

    payload = jwt.decode(token, options={"verify_signature": False})

    assert payload["exp"] - payload["nbf"] == 1234


def test_secret_is_nowhere_in_the_token_text() -> None:
    token = _mint(extra_attributes={"agent_id": "A1"})

    decoded = b"".join(
        base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split(".")[:2]
    )

    assert API_SECRET not in token
    assert API_SECRET.encode() not in decoded


@pytest.mark.parametrize(
    "value", [API_SECRET, f"prefix-{API_SECRET}", f"{API_SECRET}-suffix"]
)
def test_refuses_an_attribute_carrying_the_secret(value: str) -> None:
    with pytest.raises(ValueError, match="api_secret") as err:
        _mint(extra_attributes={"api_secret": value})

    assert API_SECRET not in str(err.value)


def test_refuses_to_replace_publish_on_behalf() -> None:
    with pytest.raises(ValueError, match="lk.publish_on_behalf"):
        _mint(extra_attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: "someone-else"})


@pytest.mark.parametrize("field", ["api_key", "api_secret", "room", "identity", "agent_identity"])
def test_refuses_empty_required_fields(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _mint(**{field: ""})


@pytest.mark.parametrize("ttl", [datetime.timedelta(0), datetime.timedelta(seconds=-5)])
def test_refuses_non_positive_ttl(ttl: datetime.timedelta) -> None:
    with pytest.raises(ValueError, match="ttl"):
        _mint(ttl=ttl)


def test_ttl_without_max_duration_is_the_default() -> None:
    assert token_ttl(None, margin_s=300, default_s=3600) == datetime.timedelta(hours=1)


def test_ttl_with_max_duration_ends_a_margin_after_the_session() -> None:
    assert token_ttl(600, margin_s=120, default_s=3600) == datetime.timedelta(seconds=720)
    # Longer than the default too: the session may rejoin for as long as it runs.
    assert token_ttl(7200, margin_s=60, default_s=3600) == datetime.timedelta(seconds=7260)


@pytest.mark.parametrize(
    ("max_duration_s", "margin_s", "default_s"),
    [(0, 60, 3600), (-1, 60, 3600), (600, -1, 3600), (None, 60, 0)],
)
def test_ttl_refuses_nonsense(
    max_duration_s: float | None, margin_s: float, default_s: float
) -> None:
    with pytest.raises(ValueError):
        token_ttl(max_duration_s, margin_s, default_s)
