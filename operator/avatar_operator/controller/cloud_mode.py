"""Cloud mode: the request that asks bitHuman's cloud to send the avatar.

Functions of a session's worker (`session.Worker`), which stays the one
writer of status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import cloud_request as cloud
from avatar_operator.build import token as tokens
from avatar_operator.clients import bithuman_mint, kube
from avatar_operator.controller import credentials

if TYPE_CHECKING:
    from avatar_operator.controller import worker as session

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason


# The participant attribute bitHuman's cloud worker reads its credential from.
# The plugin puts the account secret there, readable by every participant; we
# put a scoped runtime token minted for this agent, room and server instead.
RUNTIME_TOKEN_ATTRIBUTE = "api_secret"


async def start(
    w: session.Worker,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
) -> None:
    """Asks bitHuman's cloud for the avatar, with retry; Starting once accepted."""
    request_state = dict(w.status.get("cloudRequest") or {})
    if request_state.get("acceptedTime"):
        return
    identity, name = w.identity(spec)
    # The key is recorded before the first send (it rides on the write of
    # attempt 1, which precedes the POST): a restarted operator sends the
    # same key, and the API answers a repeat as it did the first time.
    key = request_state.get("idempotencyKey") or w.ref.uid
    if not request_state.get("idempotencyKey"):
        await w.record(cloudRequest={"idempotencyKey": key, "sentTime": status_mod.timestamp(status_mod.now())}, flush=False)

    attributes: dict[str, str] = {}
    if spec.avatar_id:
        attributes["agent_id"] = spec.avatar_id
    # The plugin tells bitHuman's API from a custom endpoint by hostname;
    # the operator's configured API URL (a proxy, or the tests' fake) counts too.
    default_api = cloud.is_default_api_url(bh.api_url) or bh.api_url == w.settings.bithuman_api_url
    if default_api and bh.api_secret and spec.avatar_id:
        # bitHuman scopes runtime tokens to an agent code, so only sessions
        # by avatarId get one; image sessions carry no credential in the room.
        try:
            runtime_token = await bithuman_mint.mint_runtime_token(
                w.http,
                mint_url=w.settings.bithuman_mint_url,
                api_secret=bh.api_secret,
                agent_code=spec.avatar_id,
                room_name=spec.room,
                livekit_url=lk.url,
            )
        except bithuman_mint.MintError as e:
            await w.fail(Reason.REQUEST_REJECTED, f"minting a bitHuman runtime token failed: {e}", Cond.CLOUD_REQUEST_ACCEPTED)
        attributes[RUNTIME_TOKEN_ATTRIBUTE] = runtime_token
        # From here on the scoped token stands in for the account secret:
        # the account secret goes to the mint endpoint and nowhere else.
        request_secret: str | None = runtime_token
    else:
        request_secret = bh.api_secret
    token = tokens.avatar_token(
        api_key=lk.api_key,
        api_secret=lk.api_secret,
        room=spec.room,
        identity=identity,
        name=name,
        agent_identity=spec.agent_identity,
        ttl=w.token_ttl(spec),
        extra_attributes=attributes,
    )
    image = await image_bytes(w, spec)
    try:
        request = cloud.build_request(
            api_url=bh.api_url,
            api_secret=request_secret,
            api_token=bh.api_token,
            livekit_url=lk.url,
            livekit_token=token,
            room=spec.room,
            model=spec.model.value if spec.model else None,
            avatar_id=spec.avatar_id,
            avatar_image=spec.avatar_image,
            avatar_image_bytes=image,
            idempotency_key=key,
            default_api=default_api,
        )
    except cloud.CloudRequestError as e:
        await w.fail(Reason.REQUEST_REJECTED, str(e), Cond.CLOUD_REQUEST_ACCEPTED)
    conn = spec.connection
    policy = cloud.RetryPolicy(max_retry=conn.max_retry, retry_interval=conn.retry_interval, timeout=conn.timeout)

    async def on_attempt(n: int) -> None:
        await w.record(
            phase=Phase.PENDING,
            conditions=((Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.REQUEST_SENT, f"attempt {n} of {policy.max_retry} sent to the bitHuman API"),),
            attempts=n,
        )

    result = await cloud.send(w.http, request, policy, on_attempt=on_attempt)
    outcome = result.outcome
    if isinstance(outcome, cloud.Accepted):
        await w.record(
            phase=Phase.STARTING,
            conditions=(
                (Cond.CLOUD_REQUEST_ACCEPTED, True, Reason.REQUEST_ACCEPTED, f"bitHuman accepted the request (HTTP {outcome.status}) after {result.attempts} attempt(s)"),
                w.waiting(identity),
            ),
            event=(Reason.REQUEST_ACCEPTED.value, f"bitHuman accepted the request after {result.attempts} attempt(s)"),
            attempts=result.attempts,
            cloudRequest={"idempotencyKey": key, "sentTime": w.status.get("cloudRequest", {}).get("sentTime"), "acceptedTime": status_mod.timestamp(status_mod.now())},
        )
    elif isinstance(outcome, cloud.Rejected):
        await w.fail(Reason.REQUEST_REJECTED, f"bitHuman API refused the request: HTTP {outcome.status}: {outcome.message}", Cond.CLOUD_REQUEST_ACCEPTED)
    else:
        await w.fail(Reason.RETRIES_EXHAUSTED, f"bitHuman API unreachable after {result.attempts} attempt(s): {outcome.message}", Cond.CLOUD_REQUEST_ACCEPTED)


async def image_bytes(w: session.Worker, spec: spec_mod.AvatarSessionSpec) -> bytes | None:
    """The image from spec.avatarImageFrom (None without one); fails the session when it is missing."""
    src = spec.avatar_image_from
    if src is None:
        return None
    if src.config_map_key_ref is not None:
        ref = src.config_map_key_ref
        data = await kube.read_config_map_key(w.ref.namespace, ref.name, ref.key)
        where = f"ConfigMap {ref.name!r} key {ref.key!r}"
    else:
        assert src.secret_key_ref is not None
        ref2 = src.secret_key_ref
        data = await kube.read_secret_key(w.ref.namespace, ref2.name, ref2.key)
        where = f"Secret {ref2.name!r} key {ref2.key!r}"
    if data is None:
        await w.fail(Reason.IMAGE_NOT_FOUND, f"spec.avatarImageFrom: {where} not found", Cond.CLOUD_REQUEST_ACCEPTED)
    return data

