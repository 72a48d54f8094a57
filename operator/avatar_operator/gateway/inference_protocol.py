"""LiveKit's inference avatar protocol: POST /avatar/sessions and POST /avatar/sessions/terminate."""

from __future__ import annotations

from typing import Any

from avatar_operator.api import names
from avatar_operator.gateway import context as context_mod
from avatar_operator.gateway import errors, inference_request
from avatar_operator.gateway import session_manifest as manifest_mod
from avatar_operator.gateway import tenants as tenants_mod
from avatar_operator.gateway import terminate as terminate_mod

# The agent's audio to the avatar at bitHuman's rate (livekit-agents' DataStreamAudioOutput resamples
# to it; a runner resamples whatever it gets).
SAMPLE_RATE = 16000


def session_request(req: inference_request.CreateRequest, tenant: tenants_mod.Tenant) -> manifest_mod.SessionRequest:
    context_mod.check_livekit_url(tenant, req.livekit_url)
    return manifest_mod.SessionRequest(
        protocol=manifest_mod.Protocol.INFERENCE,
        name=manifest_mod.inference_session_name(tenant, req.idempotency_key),
        room=req.room_name,
        agent_identity=req.agent_identity,
        avatar_identity=req.avatar_identity,
        avatar_name=req.avatar_name,
        livekit_url=req.livekit_url,
        avatar_id=req.avatar_id,
        image=req.image,
    )


async def create(gateway: context_mod.Gateway, tenant: tenants_mod.Tenant, req: inference_request.CreateRequest) -> dict[str, Any]:
    session = session_request(req, tenant)
    pool = await context_mod.pool_for(gateway, tenant, req.avatar_id, "avatar_id")
    # replay_finished: a repeated Idempotency-Key answers what the first request got.
    admitted = await gateway.admission.admit(context_mod.manifest(session, tenant, pool), tenant, replay_finished=True)
    return {
        "session_id": admitted.uid,
        "provider_session_id": admitted.task_id,
        "terminate_token": terminate_mod.token(gateway.signing_key, admitted.task_id, admitted.uid),
        "sample_rate": SAMPLE_RATE,
    }


async def terminate(gateway: context_mod.Gateway, tenant: tenants_mod.Tenant, req: inference_request.TerminateRequest) -> dict[str, Any]:
    namespace, name = context_mod.split_session_id(req.provider_session_id, "provider_session_id")
    forged = errors.forbidden("terminate_token is not the one issued for this session", code="forged_terminate_token", field="terminate_token")
    if namespace != tenant.namespace:
        raise forged
    obj = await gateway.kube.read_session(namespace, name)
    if obj is None:
        return {"status": "gone"}  # ended already; nothing to say about the token
    labels = obj.get("metadata", {}).get("labels") or {}
    uid = str(obj["metadata"]["uid"])
    if labels.get(names.GATEWAY_TENANT_LABEL) != names.shorten(tenant.name, names.LABEL_VALUE_MAX) or not terminate_mod.valid(
        gateway.signing_key, req.provider_session_id, uid, req.terminate_token
    ):
        raise forged
    await gateway.kube.delete_session(namespace, name, uid)
    return {"status": "terminated"}
