"""The gateway's token checks, on tokens minted by livekit-api (as the plugin and livekit-agents mint them)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from avatar_operator.gateway import errors, livekit_tokens, tenants
from livekit import api

TENANT = tenants.Tenant(namespace="team-a", name="acme", livekit_api_key="lk-key", livekit_api_secret="lk-secret-" + "x" * 24)


def plugin_token(
    *,
    key: str = TENANT.livekit_api_key,
    secret: str = TENANT.livekit_api_secret,
    room: str = "room-1",
    kind: str = "agent",
    ttl: datetime.timedelta = datetime.timedelta(minutes=10),
    attributes: dict[str, str] | None = None,
) -> str:
    """What the plugin's _start_cloud mints."""
    return (
        api.AccessToken(api_key=key, api_secret=secret)
        .with_kind(kind)  # type: ignore[arg-type]
        .with_identity("bithuman-avatar-agent")
        .with_name("bitHuman Avatar")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_attributes({"lk.publish_on_behalf": "agent-7", "api_secret": "leaked"} if attributes is None else attributes)
        .with_ttl(ttl)
        .to_jwt()
    )


def test_the_plugins_token_gives_the_avatar_and_agent() -> None:
    grant = livekit_tokens.verify_avatar_token(plugin_token(), TENANT, "room-1")
    assert grant == livekit_tokens.AvatarGrant(identity="bithuman-avatar-agent", name="bitHuman Avatar", agent_identity="agent-7")


def refusal(token: str, room: str = "room-1") -> errors.Refusal:
    with pytest.raises(errors.Refusal) as caught:
        livekit_tokens.verify_avatar_token(token, TENANT, room)
    return caught.value


def test_a_token_signed_by_another_secret_is_401() -> None:
    r = refusal(plugin_token(secret="someone-elses-secret-" + "y" * 20))
    assert (r.status, r.field) == (401, "livekit_token") and "not signed by the tenant" in r.message


def test_a_token_of_another_key_is_401() -> None:
    r = refusal(plugin_token(key="other-key"))
    assert r.status == 401 and "not issued by the tenant" in r.message


def test_a_token_for_another_room_is_400() -> None:
    r = refusal(plugin_token(room="room-2"))
    assert (r.status, r.field) == (400, "livekit_token") and "'room-2', not room_name 'room-1'" in r.message


def test_an_expired_token_is_401() -> None:
    r = refusal(plugin_token(ttl=datetime.timedelta(seconds=-60)))
    assert r.status == 401 and "expired" in r.message


def test_a_token_not_of_kind_agent_is_400() -> None:
    r = refusal(plugin_token(kind="standard"))
    assert (r.status, r.field) == (400, "livekit_token") and "kind 'standard'" in r.message


def test_a_token_without_publish_on_behalf_is_400() -> None:
    r = refusal(plugin_token(attributes={}))
    assert r.status == 400 and "lk.publish_on_behalf" in r.message


def test_not_a_jwt_is_401_and_says_nothing_of_it() -> None:
    r = refusal("not-a-jwt")
    assert r.status == 401 and "not-a-jwt" not in r.message


def inference_token(key: str = TENANT.livekit_api_key, secret: str = TENANT.livekit_api_secret, ttl: float = 600, perform: bool = True) -> str:
    """What livekit.agents.inference._utils.create_access_token mints."""
    return (
        api.AccessToken(key, secret)
        .with_identity("agent")
        .with_inference_grants(api.access_token.InferenceGrants(perform=perform))
        .with_ttl(datetime.timedelta(seconds=ttl))
        .to_jwt()
    )


def test_the_inference_token_names_its_issuer_and_verifies() -> None:
    token = inference_token()
    assert livekit_tokens.issuer(token) == "lk-key"
    assert livekit_tokens.verify_inference_token(token, TENANT).identity == "agent"


def test_livekit_agents_own_minting_verifies() -> None:
    from livekit.agents.inference import _utils

    token = _utils.create_access_token(TENANT.livekit_api_key, TENANT.livekit_api_secret)
    assert livekit_tokens.verify_inference_token(token, TENANT).inference is not None


# Minted in the test, not at collection: a suite longer than the 600 s ttl would see them all expired.
@pytest.mark.parametrize(
    ("minted", "message"),
    [
        ({"ttl": -60}, "expired"),
        ({"secret": "other-secret-" + "z" * 24}, "not signed by the tenant"),
        ({"perform": False}, "no inference grant"),
    ],
)
def test_bad_inference_tokens_are_401(minted: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.Refusal) as caught:
        livekit_tokens.verify_inference_token(inference_token(**minted), TENANT)
    assert caught.value.status == 401 and message in caught.value.message


def test_no_issuer_is_401() -> None:
    with pytest.raises(errors.Refusal) as caught:
        livekit_tokens.issuer("garbage")
    assert caught.value.status == 401
