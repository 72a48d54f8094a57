"""The avatar participant's LiveKit token.

The token mirrors the one `livekit-plugins-bithuman` mints in `_start_cloud`:
kind `agent`, the avatar's identity and name, a join grant for one room and the
`lk.publish_on_behalf` attribute naming the agent whose audio it renders. It
differs from the plugin in two ways, both for design.md §3: its lifetime is
bounded by the session (the plugin keeps livekit-api's 6 h default), and a
secret can never ride along as an attribute (the plugin adds `api_secret`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from livekit import api

from avatar_operator.api import rules

# Same value as livekit.agents.types.ATTRIBUTE_PUBLISH_ON_BEHALF. Defined in
# rules (which refuses it in spec.avatarParticipant.attributes) because the
# operator image carries livekit-api only, not livekit-agents; a unit test
# keeps the two equal.
ATTRIBUTE_PUBLISH_ON_BEHALF = rules.ATTRIBUTE_PUBLISH_ON_BEHALF


def token_ttl(
    max_duration_s: float | None, margin_s: float, default_s: float
) -> datetime.timedelta:
    """How long the avatar's token may be used to join.

    With `maxDuration` set the token expires `margin_s` after the session would
    have ended, so a leaked token cannot join a room once the session is over;
    the margin covers the wait for the runner pod or the cloud worker to
    connect. Without it, `default_s`. A participant already in the room stays
    past expiry: LiveKit refreshes tokens of connected participants itself.
    """
    if margin_s < 0:
        raise ValueError(f"margin_s must be >= 0, got {margin_s}")
    if default_s <= 0:
        raise ValueError(f"default_s must be > 0, got {default_s}")
    if max_duration_s is None:
        return datetime.timedelta(seconds=default_s)
    if max_duration_s <= 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    return datetime.timedelta(seconds=max_duration_s + margin_s)


def avatar_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    name: str,
    agent_identity: str,
    ttl: datetime.timedelta,
    extra_attributes: Mapping[str, str] | None = None,
    spec_attributes: Mapping[str, str] | None = None,
) -> str:
    """A signed JWT letting the avatar join `room` and publish for `agent_identity`.

    `extra_attributes` (the operator's, e.g. `agent_id`) and `spec_attributes`
    (spec.avatarParticipant.attributes, e.g. `lk.avatar_provider`) become
    participant attributes, which every participant in the room can read: one
    that contains the LiveKit API secret is refused, and so is one that would
    replace `lk.publish_on_behalf`. The operator's win over the spec's: they
    are what cleanup and the cloud worker read.
    """
    for field, value in (
        ("api_key", api_key),
        ("api_secret", api_secret),
        ("room", room),
        ("identity", identity),
        ("agent_identity", agent_identity),
    ):
        if not value:
            raise ValueError(f"{field} must not be empty")
    if ttl <= datetime.timedelta(0):
        raise ValueError(f"ttl must be positive, got {ttl}")

    attributes = {ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity}
    for key, value in {**(spec_attributes or {}), **(extra_attributes or {})}.items():
        if key == ATTRIBUTE_PUBLISH_ON_BEHALF:
            raise ValueError(
                f"extra attribute {key!r} would replace the agent identity; "
                "pass agent_identity instead"
            )
        # The message names the attribute, never its value: the value is the secret.
        if api_secret in value:
            raise ValueError(
                f"extra attribute {key!r} contains the LiveKit API secret; "
                "participant attributes are readable by everyone in the room"
            )
        attributes[key] = value

    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(name)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_attributes(attributes)
        .with_ttl(ttl)
        .to_jwt()
    )
