"""The avatar image a session names in the cluster (spec.avatarImageFrom), read for the step that sends it.

A cloud session sends it to bitHuman, a pool session to its runner; both read
it here, and a missing ConfigMap, Secret or key fails the session under the
condition of the step that needed it.
"""

from __future__ import annotations

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.controller import context


async def from_cluster(
    ctx: context.SessionContext, spec: spec_mod.AvatarSessionSpec, step: status_mod.ConditionType
) -> bytes | None:
    """The image from spec.avatarImageFrom (None without one); fails the session under `step` when it is missing."""
    src = spec.avatar_image_from
    if src is None:
        return None
    kube = ctx.clients.kube
    if src.config_map_key_ref is not None:
        ref = src.config_map_key_ref
        data = await kube.read_config_map_key(ctx.ref.namespace, ref.name, ref.key)
        where = f"ConfigMap {ref.name!r} key {ref.key!r}"
    else:
        assert src.secret_key_ref is not None
        ref = src.secret_key_ref
        data = await kube.read_secret_key(ctx.ref.namespace, ref.name, ref.key)
        where = f"Secret {ref.name!r} key {ref.key!r}"
    if data is None:
        await ctx.fail(status_mod.Reason.IMAGE_NOT_FOUND, f"spec.avatarImageFrom: {where} not found", step)
    return data
