"""What the request handlers share: the tenants, the Kubernetes client, admission and the signing key."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from avatar_operator.gateway import admission as admission_mod
from avatar_operator.gateway import errors, kube_calls, livekit_tokens
from avatar_operator.gateway import session_manifest as manifest_mod
from avatar_operator.gateway import tenants as tenants_mod


@dataclasses.dataclass
class Gateway:
    tenants: tenants_mod.Tenants
    kube: kube_calls.GatewayKube
    admission: admission_mod.Admission
    signing_key: bytes = dataclasses.field(repr=False)
    ready: Callable[[], bool] = lambda: True  # /readyz: the tenants are loaded


def one_tenant(found: list[tenants_mod.Tenant], what: str) -> tenants_mod.Tenant:
    if not found:
        raise errors.unauthorized(f"{what} is not registered by any tenant")
    if len(found) > 1:
        # Two tenant Secrets registered the same key: which namespace is meant can't be told.
        where = ", ".join(sorted(f"{t.namespace}/{t.name}" for t in found))
        raise errors.unauthorized(f"{what} is registered by more than one tenant ({where}): keep it in one")
    return found[0]


def tenant_for_key(gateway: Gateway, key: str | None) -> tenants_mod.Tenant:
    """The plugin protocol's tenant: the one whose GATEWAY_API_KEYS holds the caller's key."""
    if not key:
        raise errors.unauthorized("send the tenant's gateway key: the api-secret header (JSON) or Authorization: Bearer (form)")
    return one_tenant(gateway.tenants.by_gateway_key(key), "the gateway key")


def tenant_for_jwt(gateway: Gateway, token: str | None) -> tenants_mod.Tenant:
    """The inference protocol's tenant: the one that registered the JWT's issuer, whose secret then verifies it."""
    if not token:
        raise errors.unauthorized("send Authorization: Bearer <a LiveKit access token with the inference grant>")
    tenant = one_tenant(gateway.tenants.by_livekit_key(livekit_tokens.issuer(token)), "the token's issuer (LiveKit API key)")
    livekit_tokens.verify_inference_token(token, tenant)
    return tenant


def check_livekit_url(tenant: tenants_mod.Tenant, url: str) -> None:
    if tenant.livekit_url is not None and url.rstrip("/") != tenant.livekit_url.rstrip("/"):
        raise errors.bad_request("livekit_url", f"livekit_url must be the tenant's LiveKit server, {tenant.livekit_url}")


async def pool_for(gateway: Gateway, tenant: tenants_mod.Tenant, avatar_id: str | None, field: str) -> str:
    pools = await gateway.kube.list_pools(tenant.namespace)
    pool = manifest_mod.choose_pool(pools, avatar_id, tenant, field)
    if pool not in {str(p["metadata"]["name"]) for p in pools}:
        raise errors.bad_request(field, f"tenant {tenant.name!r}'s DEFAULT_POOL {pool!r} is no AvatarPool in namespace {tenant.namespace!r}")
    return pool


def manifest(req: manifest_mod.SessionRequest, tenant: tenants_mod.Tenant, pool: str) -> manifest_mod.Manifest:
    """The session to create; 400 with the operator's own messages when its rules refuse it."""
    built = manifest_mod.build(req, tenant, pool)
    problems = manifest_mod.problems(built)
    if problems:
        first = problems[0]
        raise errors.bad_request(manifest_mod.request_field(req.protocol, first.field), "; ".join(str(p) for p in problems))
    return built


def split_session_id(value: str, field: str) -> tuple[str, str]:
    """`<namespace>/<name>`, or `<namespace>.<name>` (a namespace never holds a dot, so the first one splits)."""
    namespace, sep, name = value.partition("/")
    if not sep:
        namespace, sep, name = value.partition(".")
    if not sep or not namespace or not name:
        raise errors.bad_request(field, f"{field} must be <namespace>/<session name>, as the gateway answered it")
    return namespace, name
