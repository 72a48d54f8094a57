"""The plugin protocol: POST /launch and POST /tasks/{id}/stop."""

from __future__ import annotations

from typing import Any

from avatar_operator.api import names
from avatar_operator.gateway import context as context_mod
from avatar_operator.gateway import errors, livekit_tokens, plugin_request
from avatar_operator.gateway import session_manifest as manifest_mod
from avatar_operator.gateway import tenants as tenants_mod


def session_request(req: plugin_request.PluginRequest, tenant: tenants_mod.Tenant) -> manifest_mod.SessionRequest:
    """The session a launch asks for, once its livekit_token is checked against the tenant."""
    grant = livekit_tokens.verify_avatar_token(req.livekit_token, tenant, req.room_name)
    context_mod.check_livekit_url(tenant, req.livekit_url)
    return manifest_mod.SessionRequest(
        protocol=manifest_mod.Protocol.PLUGIN,
        name=manifest_mod.plugin_session_name(tenant, req.room_name, grant.identity),
        room=req.room_name,
        agent_identity=grant.agent_identity,
        avatar_identity=grant.identity,
        avatar_name=grant.name,
        livekit_url=req.livekit_url,
        avatar_id=req.avatar_id,
        image=req.image,
    )


async def launch(gateway: context_mod.Gateway, tenant: tenants_mod.Tenant, req: plugin_request.PluginRequest) -> dict[str, Any]:
    session = session_request(req, tenant)
    pool = await context_mod.pool_for(gateway, tenant, req.avatar_id, "avatar_id")
    admitted = await gateway.admission.admit(context_mod.manifest(session, tenant, pool), tenant, replay_finished=False)
    # bitHuman's container answers a launch with this shape; a session that holds a runner is on its way.
    return {"status": "pending", "task_id": admitted.task_id}


async def stop(gateway: context_mod.Gateway, tenant: tenants_mod.Tenant, task_id: str) -> dict[str, Any]:
    namespace, name = context_mod.split_session_id(task_id, "task_id")
    obj = await gateway.kube.read_session(namespace, name) if namespace == tenant.namespace else None
    labels = (obj or {}).get("metadata", {}).get("labels") or {}
    if obj is None or labels.get(names.GATEWAY_TENANT_LABEL) != names.shorten(tenant.name, names.LABEL_VALUE_MAX):
        raise errors.Refusal(404, "not_found", f"no task {task_id!r} of this tenant", "task_id")
    await gateway.kube.delete_session(namespace, name, str(obj["metadata"]["uid"]))
    return {"status": "stopped", "task_id": task_id}
