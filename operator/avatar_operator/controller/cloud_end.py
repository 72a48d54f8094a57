"""Ending a started cloud session at bitHuman, on every way a session ends.

The worker calls `after_end` once its session reached a terminal phase
(maxDuration, the avatar gone with the agent or the room, a failure after
the start); the finalizer calls `on_deletion` before it removes the avatar
participant. Both send the end call the start's answer allows
(build/cloud_end.py), bounded and retried by the operator's settings; a
Warning Event says when it could not be done. The worker records
`status.cloudRequest.endedTime`, so a restarted operator ends what the last
one could not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from avatar_operator import metrics
from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import cloud_end as cloud_end_build
from avatar_operator.build import cloud_request
from avatar_operator.clients import bithuman, bithuman_end
from avatar_operator.controller import context, credentials, ports

Reason = status_mod.Reason


def end_policy(settings: settings_mod.Settings) -> bithuman.RetryPolicy:
    b = settings.bithuman
    return bithuman.RetryPolicy(max_retry=b.end_attempts, retry_interval=b.end_retry_interval_s, timeout=b.end_timeout_s)


def is_due(sent: status_mod.CloudRequest | None) -> bool:
    """A start answered with something to end, not yet ended."""
    return sent is not None and sent.ended_time is None and bool(sent.session_id or sent.task_id)


async def end(
    clients: ports.Clients,
    settings: settings_mod.Settings,
    namespace: str,
    spec: spec_mod.AvatarSessionSpec,
    sent: status_mod.CloudRequest,
) -> bithuman_end.EndResult | None:
    """Sends the end call for `sent`; None when its answer left nothing to end."""
    try:
        bh = await _credentials(clients, settings, namespace, spec)
        req = cloud_end_build.end_request(
            api_url=bh.api_url,
            default_api=cloud_request.is_default_api(bh.api_url, settings.bithuman.api_url),
            api_secret=bh.api_secret,
            api_token=bh.api_token,
            session_id=sent.session_id,
            task_id=sent.task_id,
        )
    except (credentials.MissingCredentials, cloud_request.CloudRequestError) as e:
        metrics.CLOUD_SESSION_ENDS.labels(outcome="failed").inc()
        return bithuman_end.EndResult(False, 0, f"no credential to end it with: {e}")
    if req is None:
        return None
    result = await bithuman_end.end_session(clients.http, req, end_policy(settings))
    metrics.CLOUD_SESSION_ENDS.labels(outcome="ended" if result.ended else "failed").inc()
    return result


def describe(sent: status_mod.CloudRequest, result: bithuman_end.EndResult) -> tuple[Reason, str]:
    what = f"bitHuman session {sent.session_id}" if sent.session_id else f"task {sent.task_id} at the custom endpoint"
    if result.ended:
        return Reason.CLOUD_SESSION_ENDED, f"{what} ended (billing stopped): {result.message}"
    return Reason.CLOUD_SESSION_END_FAILED, (
        f"could not end {what}: {result.message}; bitHuman ends it itself within about 2 minutes of the avatar "
        "leaving the room, and bills until then"
    )


async def after_end(ctx: context.SessionContext) -> None:
    """The worker's part: ends the ended session's bitHuman session once, and records that it did."""
    sent = ctx.status.cloud_request
    if ctx.status.phase not in context.TERMINAL or not is_due(sent):
        return
    assert sent is not None
    result = await end(ctx.clients, ctx.settings, ctx.ref.namespace, ctx.live_spec(), sent)
    if result is None:
        return
    reason, message = describe(sent, result)
    ended = sent.model_copy(update={"ended_time": ctx.now()}) if result.ended else sent
    try:
        await ctx.record(event=(reason, message), warning=not result.ended, cloud_request=ended)
    except context.Ended:
        pass  # deleted meanwhile: the Event is posted, the status has no object to go to


async def on_deletion(
    clients: ports.Clients, settings: settings_mod.Settings, ref: names.SessionRef, spec: spec_mod.AvatarSessionSpec, body: Any
) -> None:
    """The finalizer's part: ends the deleted session's bitHuman session before the avatar is removed."""
    sent = _sent(body.get("status"))
    if sent is None or not is_due(sent):
        return
    result = await end(clients, settings, ref.namespace, spec, sent)
    if result is not None:
        reason, message = describe(sent, result)
        clients.events(body, reason=reason.value, message=message, warning=not result.ended)


def _sent(raw: Mapping[str, Any] | None) -> status_mod.CloudRequest | None:
    try:
        return status_mod.from_wire(raw).cloud_request
    except pydantic.ValidationError:  # a status this operator did not write: nothing to go by
        return None


async def _credentials(
    clients: ports.Clients, settings: settings_mod.Settings, namespace: str, spec: spec_mod.AvatarSessionSpec
) -> credentials.BithumanCredentials:
    named = spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None
    found = {n: await clients.kube.read_secret(namespace, n) for n in {named, settings.bithuman.secret_name} if n}
    return credentials.bithuman(spec, settings, found.get)
