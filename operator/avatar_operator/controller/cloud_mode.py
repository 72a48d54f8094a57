"""Cloud mode: the request that asks bitHuman's cloud to send the avatar.

Functions of a session's context (`context.SessionContext`), the one writer of status.
A start goes through the credential's line first (`cloud_wait`), and a 403
CONCURRENCY_LIMIT_REACHED sends it back there instead of failing it; the
start's answer (session_id, task_id, model) is recorded, so `cloud_end` can
end the session at bitHuman the moment it ends here.
"""

from __future__ import annotations

from avatar_operator import metrics
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import cloud_answer, cloud_request
from avatar_operator.clients import bithuman
from avatar_operator.controller import (
    avatar_image,
    cloud_attempts,
    cloud_end,
    cloud_wait,
    context,
    credentials,
    late_avatar,
    ports,
)

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

# The participant attribute bitHuman's cloud worker reads its credential from.
# The plugin puts the account secret there, readable by every participant; we
# put a scoped runtime token minted for this agent, room and server instead.
RUNTIME_TOKEN_ATTRIBUTE = "api_secret"


async def start(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
) -> None:
    """Asks bitHuman's cloud for the avatar, with retry; Starting once accepted."""
    sent = ctx.status.cloud_request
    if sent is not None and sent.accepted_time is not None:
        return
    ctx.clients.flights.take_up(ctx.ref.uid)
    # The first key is the session's uid, so its record may ride on the answer's write
    # (`cloud_attempts`), unless the record is the slot it holds of a credential's budget
    # (`cloud_queue`): then it is written before the POST, as every later key is.
    written_first = True
    if sent is None:
        written_first = await cloud_wait.wait_in_line(ctx, spec, bh)
        sent = status_mod.CloudRequest(idempotency_key=ctx.ref.uid, sent_time=ctx.now())
        await ctx.record(cloud_request=sent, flush=False)
    room = ctx.clients.rooms.get(lk.url, lk.api_key, lk.api_secret)
    refusals = 0
    while True:
        request = await _request(ctx, spec, lk, bh, sent.idempotency_key)
        limited = await _send(ctx, room, request, sent, context.identity(spec)[0], write_first=written_first)
        if limited is None:
            return
        refusals += 1
        written_first = True
        sent = await cloud_wait.after_limit(ctx, sent, limited, refusals)


def retry_policy(ctx: context.SessionContext) -> bithuman.RetryPolicy:
    """The spec's `connection` as it is now: an edit counts from the next attempt."""
    c = ctx.live_spec().connection
    return bithuman.RetryPolicy(max_retry=c.max_retry, retry_interval=c.retry_interval, timeout=c.timeout)


def is_default_api(ctx: context.SessionContext, api_url: str) -> bool:
    # The plugin tells bitHuman's API from a custom endpoint by hostname;
    # the operator's configured API URL (a proxy, or the tests' fake) counts too.
    return cloud_request.is_default_api(api_url, ctx.settings.bithuman.api_url)


async def _request(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
    key: str,
) -> cloud_request.CloudRequest:
    """The session request, with the avatar's room token in it; fails the session when it can't be made."""
    default_api = is_default_api(ctx, bh.api_url)
    attributes, request_secret = await _room_credential(ctx, spec, lk, bh, default_api)
    token = ctx.avatar_token(spec, lk.api_key, lk.api_secret, attributes)
    image = await avatar_image.from_cluster(ctx, spec, Cond.CLOUD_REQUEST_ACCEPTED)
    try:
        return cloud_request.build_request(
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
    except cloud_request.CloudRequestError as e:
        await ctx.fail(Reason.REQUEST_REJECTED, str(e), Cond.CLOUD_REQUEST_ACCEPTED)


async def _room_credential(
    ctx: context.SessionContext,
    spec: spec_mod.AvatarSessionSpec,
    lk: credentials.LiveKitCredentials,
    bh: credentials.BithumanCredentials,
    default_api: bool,
) -> tuple[dict[str, str], str | None]:
    """The avatar's participant attributes, and the secret the request authenticates with."""
    attributes: dict[str, str] = {}
    if spec.avatar_id:
        attributes["agent_id"] = spec.avatar_id
    if not (default_api and bh.api_secret and spec.avatar_id):
        # bitHuman scopes runtime tokens to an agent code, so only sessions
        # by avatarId get one; image sessions carry no credential in the room.
        return attributes, bh.api_secret
    try:
        runtime_token = await bithuman.mint_runtime_token(
            ctx.clients.http,
            mint_url=ctx.settings.bithuman.mint_url,
            api_secret=bh.api_secret,
            agent_code=spec.avatar_id,
            room_name=spec.room,
            livekit_url=lk.url,
            policy=lambda: retry_policy(ctx),
        )
    except bithuman.MintError as e:
        await ctx.fail(Reason.REQUEST_REJECTED, f"minting a bitHuman runtime token failed: {e}", Cond.CLOUD_REQUEST_ACCEPTED)
    # From here on the scoped token stands in for the account secret:
    # the account secret goes to the mint endpoint and nowhere else.
    attributes[RUNTIME_TOKEN_ATTRIBUTE] = runtime_token
    return attributes, runtime_token


async def _send(
    ctx: context.SessionContext,
    room: ports.RoomApi,
    request: cloud_request.CloudRequest,
    sent: status_mod.CloudRequest,
    identity: str,
    *,
    write_first: bool = True,
) -> bithuman.Rejected | None:
    """Sends with retry and records the outcome: Starting, or Failed with the server's reason.

    Without `write_first`, attempt 1 is written only if it is slow (`cloud_attempts`).
    Returns bitHuman's concurrency-limit refusal, which fails nothing: the caller waits and sends again."""
    before = ctx.status.attempts or 0
    attempts = cloud_attempts.Attempts(ctx, before=before, write_first=write_first, max_retry=lambda: retry_policy(ctx).max_retry)

    async def sleep(seconds: float) -> None:
        await ctx.flush()  # a retry is a wait: a quiet first attempt is written before it
        left = ctx.seconds_left()
        if await ctx.clients.clock.wait(ctx.stopped, seconds if left is None else max(0.0, min(seconds, left))):
            raise context.Ended  # deleted between two attempts: send no more
        # A Retry-After longer than what is left of maxDuration: the session ends unsent.
        await ctx.end_if_past_deadline("before the bitHuman API accepted the request")

    flights = ctx.clients.flights
    flights.start(ctx.ref.uid)
    result: bithuman.CloudResult | None = None
    try:
        result = await attempts.answer(bithuman.send(ctx.clients.http, request, lambda: retry_policy(ctx), sleep=sleep, on_attempt=attempts.on_attempt))
    finally:  # a cancelled request (the session deleted mid-flight) may have reached bitHuman
        flights.settle(ctx.ref.uid, may_have_started=_may_have_started(None if result is None else result.outcome))
    outcome = result.outcome
    if isinstance(outcome, bithuman.Accepted):
        metrics.CLOUD_REQUESTS.labels(outcome="accepted").inc()
        await _accepted(ctx, outcome, sent, before + result.attempts, identity)
        return None
    if isinstance(outcome, bithuman.Rejected):
        refusal = cloud_answer.refusal(outcome.status, outcome.code)
        if refusal.waits:
            return outcome
        metrics.CLOUD_REQUESTS.labels(outcome="refused").inc()
        said = f"{outcome.code}: {outcome.detail}" if outcome.code and outcome.detail else outcome.message
        message = f"bitHuman API refused the request: HTTP {outcome.status}: {said}"
        await ctx.fail(refusal.reason, message if refusal.reason == Reason.REQUEST_REJECTED else f"{message}; {refusal.fix}", Cond.CLOUD_REQUEST_ACCEPTED)
    metrics.CLOUD_REQUESTS.labels(outcome="exhausted").inc()
    if outcome.uncertain:
        await _exhausted_uncertain(ctx, room, result.attempts, outcome.message, identity)
    await ctx.fail(Reason.RETRIES_EXHAUSTED, f"bitHuman API unreachable after {result.attempts} attempt(s): {outcome.message}", Cond.CLOUD_REQUEST_ACCEPTED)


async def _accepted(ctx: context.SessionContext, outcome: bithuman.Accepted, sent: status_mod.CloudRequest, attempts: int, identity: str) -> None:
    """Starting, with what the start answered; a session deleted while its start was in flight is ended at once."""
    answer = cloud_answer.start_answer(outcome.body)
    started = sent.model_copy(
        update={"accepted_time": ctx.now(), "session_id": answer.session_id, "task_id": answer.task_id, "model": answer.model}
    )
    what = "".join(
        (f": session {answer.session_id}" if answer.session_id else f": task {answer.task_id}" if answer.task_id else "",
         f" as model {answer.model}" if answer.model else "")
    )
    try:
        await ctx.record(
            phase=Phase.STARTING,
            changes=(
                Change(Cond.CLOUD_REQUEST_ACCEPTED, True, Reason.REQUEST_ACCEPTED, f"bitHuman accepted the request (HTTP {outcome.status}) after {attempts} attempt(s){what}"),
                ctx.waiting(identity),
            ),
            event=(Reason.REQUEST_ACCEPTED, f"bitHuman accepted the request after {attempts} attempt(s){what}"),
            attempts=attempts,
            cloud_request=started,
        )
    finally:  # also when the session is gone and the write raised Ended
        if ctx.body.metadata.get("deletionTimestamp") and cloud_end.is_due(started):
            # The finalizer may have read the status before this answer came: end it here too (a repeat is harmless).
            result = await cloud_end.end(ctx.clients, ctx.settings, ctx.ref.namespace, ctx.live_spec(), started)
            if result is not None:
                reason, message = cloud_end.describe(started, result)
                ctx.clients.events(ctx.body, reason=reason.value, message=message, warning=not result.ended)


def _may_have_started(outcome: bithuman.Outcome | None) -> bool:
    if isinstance(outcome, bithuman.Rejected):
        return False
    return not (isinstance(outcome, bithuman.RetriesExhausted) and not outcome.uncertain)


async def _exhausted_uncertain(ctx: context.SessionContext, room: ports.RoomApi, attempts: int, last: str, identity: str) -> None:
    """Failed; but bitHuman may have started the avatar all the same: watch the room and remove it if it comes."""
    guard_s = ctx.settings.timing.late_avatar_guard_s
    spec = ctx.live_spec()
    message = (
        f"bitHuman API unreachable after {attempts} attempt(s): {last}; an attempt may have reached it, so the "
        f"operator watches room {spec.room!r} for {guard_s:g}s and removes the avatar if it comes"
    )
    changes = (Change(Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.RETRIES_EXHAUSTED, message), Change(Cond.READY, False, Reason.RETRIES_EXHAUSTED, message))
    await ctx.record(phase=Phase.FAILED, changes=changes, event=(Reason.RETRIES_EXHAUSTED, message), warning=True, end_time=ctx.now())
    if await late_avatar.remove_when_it_comes(
        room, ctx.clients.clock, ctx.stopped, room_name=spec.room, identity=identity, uid=ctx.ref.uid, for_s=guard_s
    ):
        removed = f"the avatar bitHuman started after the request failed joined room {spec.room!r}; removed it"
        await ctx.record(event=(Reason.LATE_AVATAR_REMOVED, removed), warning=True)
    raise context.Ended

