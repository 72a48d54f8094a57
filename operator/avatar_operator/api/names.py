"""The names the API is known by, and the names of what a session owns.

Pure: no I/O. The group, version and kinds are the CRD's; the labels and
child names are what the operator puts on the objects it makes, so a
restarted operator finds them again by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

GROUP = "avatar-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AvatarSession"
PLURAL = "avatarsessions"
SHORT_NAME = "avs"
POOL_KIND = "AvatarPool"
POOL_PLURAL = "avatarpools"
POOL_SHORT_NAME = "avp"
FINALIZER = f"{GROUP}/cleanup"
MANAGER = "avatar-operator"

SESSION_LABEL = f"{GROUP}/session"
POOL_LABEL = f"{GROUP}/pool"  # on a pool's runners: the pool's scale selector
RUNNER_LABEL = f"{GROUP}/runner"  # on a pool runner: its own name, for its Service-less address
# The avatar's participant attribute naming the session (its uid) whose token it joined with:
# two sessions' avatars of one identity are told apart by it, and cleanup removes only its own.
SESSION_ATTRIBUTE = f"{GROUP}/session"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

NAME_MAX = 253  # an object name (a DNS subdomain)
LABEL_VALUE_MAX = 63

# The gateway's names (the shared gateway contract spells them under this prefix). On a
# Secret, the tenant label "true" makes it a tenant; on a session the gateway made, it
# names the tenant Secret, and the protocol label says which client asked.
GATEWAY_PREFIX = "avatar-operator.bithuman.ai"
GATEWAY_TENANT_LABEL = f"{GATEWAY_PREFIX}/gateway-tenant"
GATEWAY_PROTOCOL_LABEL = f"{GATEWAY_PREFIX}/gateway-protocol"
GATEWAY_AVATAR_ID_ANNOTATION = f"{GATEWAY_PREFIX}/gateway-avatar-id"
GATEWAY_SESSION_PREFIX = "gw-"
GATEWAY_IMAGE_KEY = "avatar-image"


def gateway_session_name(*parts: str) -> str:
    """The gateway's deterministic session name: a retry of one request finds the same session."""
    return GATEWAY_SESSION_PREFIX + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def gateway_image_secret_name(session: str) -> str:
    """The Secret holding an image uploaded with a gateway request (owned by the session)."""
    return child_name(session, "image")


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """What an owned object points back with: the garbage collector deletes it with its owner."""
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


@dataclasses.dataclass(frozen=True)
class SessionRef:
    """The session an owned object points back to."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return owner_reference(KIND, self.name, self.uid)


@dataclasses.dataclass(frozen=True)
class PoolRef:
    """The pool a runner (and its token Secret) points back to."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return owner_reference(POOL_KIND, self.name, self.uid)


def shorten(value: str, limit: int) -> str:
    """value, or a prefix of it plus a hash of the whole when longer than limit."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    # A cut just after a dot would leave ".-": not a DNS name. Names that were valid keep their spelling.
    return f"{value[: limit - 9].rstrip('.')}-{digest}"


def child_name(session: str, suffix: str) -> str:
    """A stable name for an owned object (object names are at most 253 characters)."""
    return shorten(f"{session}-{suffix}", NAME_MAX)


def runner_pod_name(session: str) -> str:
    return child_name(session, "runner")


def token_secret_name(session: str) -> str:
    return child_name(session, "token")


def pool_token_secret_name(pool: str) -> str:
    return child_name(pool, "pool-token")


def pool_runner_name(pool: str, suffix: str) -> str:
    """A pool runner's pod name: the pool's name and a random suffix, as a ReplicaSet names its pods."""
    return child_name(pool, f"runner-{suffix}")


def pool_selector(pool: str) -> str:
    """The label selector of a pool's runners (its scale subresource's status.selector)."""
    return f"{POOL_LABEL}={shorten(pool, LABEL_VALUE_MAX)}"


def pool_labels(ref: PoolRef, runner: str) -> dict[str, str]:
    return {
        POOL_LABEL: shorten(ref.name, LABEL_VALUE_MAX),
        RUNNER_LABEL: shorten(runner, LABEL_VALUE_MAX),
        COMPONENT_LABEL: "pool-runner",
        MANAGED_BY_LABEL: MANAGER,
    }


def labels(ref: SessionRef, component: str) -> dict[str, str]:
    return {
        SESSION_LABEL: shorten(ref.name, LABEL_VALUE_MAX),
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGER,
    }


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in obj.get("metadata", {}).get("ownerReferences", []) or [])
