"""Checking the LiveKit tokens callers send, with livekit-api's own TokenVerifier.

The plugin's `livekit_token` (the token it minted for the avatar) must be signed
by the tenant's LiveKit key, for the room the request names, of kind agent and
unexpired: a plugin key read out of a room's attributes then launches nothing.
The inference JWT must be signed by a tenant's key (its issuer names which) and
carry the inference grant.
"""

from __future__ import annotations

import dataclasses

import jwt
from livekit import api as lk_api

from avatar_operator.gateway import errors
from avatar_operator.gateway import tenants as tenants_mod

PUBLISH_ON_BEHALF = "lk.publish_on_behalf"


@dataclasses.dataclass(frozen=True)
class AvatarGrant:
    """What the plugin's livekit_token says about the avatar it wants."""

    identity: str
    name: str
    agent_identity: str


def _claims(token: str, api_key: str, api_secret: str, field: str) -> lk_api.access_token.Claims:
    try:
        return lk_api.TokenVerifier(api_key, api_secret).verify(token)
    except jwt.ExpiredSignatureError:
        raise errors.unauthorized(f"{field} has expired: mint a fresh one", field) from None
    except jwt.ImmatureSignatureError:
        raise errors.unauthorized(f"{field} is not valid yet (nbf in the future): check the caller's clock", field) from None
    except jwt.InvalidIssuerError:
        raise errors.unauthorized(f"{field} was not issued by the tenant's LiveKit API key", field) from None
    except jwt.InvalidSignatureError:
        raise errors.unauthorized(f"{field} is not signed by the tenant's LiveKit API secret", field) from None
    except jwt.MissingRequiredClaimError as e:
        raise errors.unauthorized(f"{field} has no {e.claim!r} claim: mint it with an expiry", field) from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise errors.unauthorized(f"{field} is not a LiveKit access token (a JWT signed with HS256)", field) from None


def verify_avatar_token(token: str, tenant: tenants_mod.Tenant, room: str) -> AvatarGrant:
    """The plugin's livekit_token, checked against the tenant and the request's room_name."""
    field = "livekit_token"
    claims = _claims(token, tenant.livekit_api_key, tenant.livekit_api_secret, field)
    video = claims.video
    if video is None or not video.room_join:
        raise errors.bad_request(field, "livekit_token has no roomJoin grant: mint it with VideoGrants(room_join=True, room=room_name)")
    if video.room != room:
        raise errors.bad_request(field, f"livekit_token is for room {video.room!r}, not room_name {room!r}")
    if claims.kind != "agent":
        raise errors.bad_request(field, f"livekit_token is of kind {claims.kind or 'standard'!r}: mint it with .with_kind('agent')")
    if not claims.identity:
        raise errors.bad_request(field, "livekit_token has no identity (the avatar's participant identity)")
    agent = (claims.attributes or {}).get(PUBLISH_ON_BEHALF, "")
    if not agent:
        raise errors.bad_request(field, f"livekit_token has no {PUBLISH_ON_BEHALF} attribute naming the agent the avatar speaks for")
    return AvatarGrant(identity=claims.identity, name=claims.name or claims.identity, agent_identity=agent)


def issuer(token: str) -> str:
    """The JWT's issuer before it is verified: it names the tenant whose key then verifies it."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        raise errors.unauthorized("the Authorization Bearer token is not a LiveKit access token (a JWT)") from None
    if not isinstance(iss, str) or not iss:
        raise errors.unauthorized("the Authorization Bearer token has no issuer (iss: the LiveKit API key that signed it)")
    return iss


def verify_inference_token(token: str, tenant: tenants_mod.Tenant) -> lk_api.access_token.Claims:
    """The inference protocol's Bearer JWT: signed by the tenant's key, with the inference grant."""
    claims = _claims(token, tenant.livekit_api_key, tenant.livekit_api_secret, "Authorization")
    if claims.inference is None or not claims.inference.perform:
        raise errors.unauthorized("the Authorization token has no inference grant: mint it with InferenceGrants(perform=True)")
    return claims
