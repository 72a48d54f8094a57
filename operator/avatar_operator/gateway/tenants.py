"""Tenants: a Secret labelled for the gateway (pure parsing), and the cache the watch keeps.

A tenant's Secret holds the LiveKit key it registered (the livekit_token and the
inference JWT must be signed by it, and the operator mints the avatar's token
with it), the keys plugin callers send, and its limits. The data keys are listed
in README.md (Gateway).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from avatar_operator.api import names
from avatar_operator.gateway import keys as keys_mod

LIVEKIT_API_KEY = "LIVEKIT_API_KEY"
LIVEKIT_API_SECRET = "LIVEKIT_API_SECRET"
GATEWAY_API_KEYS = "GATEWAY_API_KEYS"
LIVEKIT_URL = "LIVEKIT_URL"
DEFAULT_POOL = "DEFAULT_POOL"
MAX_DURATION = "MAX_DURATION"
TTL_SECONDS_AFTER_FINISHED = "TTL_SECONDS_AFTER_FINISHED"
MAX_SESSIONS = "MAX_SESSIONS"
# Finished gateway sessions are deleted this long after they end unless the tenant says otherwise:
# a gateway makes thousands a day, and etcd should not keep them.
DEFAULT_TTL_SECONDS_AFTER_FINISHED = 300


class TenantError(ValueError):
    """A tenant Secret the gateway can't use; the message names the Secret and the key."""


@dataclasses.dataclass(frozen=True)
class Tenant:
    namespace: str
    name: str  # the Secret's name: the sessions' spec.livekit.secretRef and their tenant label
    livekit_api_key: str
    livekit_api_secret: str = dataclasses.field(repr=False)
    gateway_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    livekit_url: str | None = None
    default_pool: str | None = None
    max_duration: float | None = None
    ttl_seconds_after_finished: int = DEFAULT_TTL_SECONDS_AFTER_FINISHED
    max_sessions: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def decode_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data, base64-decoded as the API server returns it; stringData as written."""
    data: dict[str, str] = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            data[str(k)] = base64.b64decode(str(v), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            data[str(k)] = ""  # unreadable counts as missing; the error below names the key
    data.update({str(k): str(v) for k, v in (secret.get("stringData") or {}).items()})
    return data


def _optional(data: Mapping[str, str], key: str) -> str | None:
    value = data.get(key, "").strip()
    return value or None


def _number(where: str, data: Mapping[str, str], key: str, *, integer: bool, positive: bool) -> float | None:
    text = _optional(data, key)
    if text is None:
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number of seconds"
        raise TenantError(f"{where}: {key}={text!r} is not {kind}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise TenantError(f"{where}: {key}={text!r} must be {'more than 0' if positive else '0 or more'}")
    return value


def from_secret(secret: Mapping[str, Any]) -> Tenant:
    """The tenant a labelled Secret describes. TenantError names the Secret and the key at fault."""
    meta = secret.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    where = f"tenant Secret {namespace}/{name}"
    data = decode_data(secret)
    api_key, api_secret = (data.get(k, "").strip() for k in (LIVEKIT_API_KEY, LIVEKIT_API_SECRET))
    missing = [k for k, v in ((LIVEKIT_API_KEY, api_key), (LIVEKIT_API_SECRET, api_secret)) if not v]
    if missing:
        raise TenantError(f"{where}: add the key(s) {', '.join(missing)} (the tenant's LiveKit API key and secret)")
    ttl = _number(where, data, TTL_SECONDS_AFTER_FINISHED, integer=True, positive=False)
    max_sessions = _number(where, data, MAX_SESSIONS, integer=True, positive=False)
    return Tenant(
        namespace=namespace,
        name=name,
        livekit_api_key=api_key,
        livekit_api_secret=api_secret,
        gateway_keys=keys_mod.parse_keys(data.get(GATEWAY_API_KEYS, "")),
        livekit_url=_optional(data, LIVEKIT_URL),
        default_pool=_optional(data, DEFAULT_POOL),
        max_duration=_number(where, data, MAX_DURATION, integer=False, positive=True),
        ttl_seconds_after_finished=DEFAULT_TTL_SECONDS_AFTER_FINISHED if ttl is None else int(ttl),
        max_sessions=None if max_sessions is None else int(max_sessions),
    )


def is_tenant_secret(secret: Mapping[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(names.GATEWAY_TENANT_LABEL) == "true"


class Tenants:
    """The tenants the watch has seen, by (namespace, Secret name). A Secret that does not
    parse is kept as its problem (logged once by the watch), not as a tenant."""

    def __init__(self) -> None:
        self._tenants: dict[tuple[str, str], Tenant] = {}
        self.problems: dict[tuple[str, str], str] = {}

    def replace_all(self, namespace: str, secrets: Iterable[Mapping[str, Any]]) -> list[str]:
        """A list of one namespace's tenant Secrets: what is not in it is gone.
        Returns the problems of the Secrets that can't be used."""
        for key in [k for k in (*self._tenants, *self.problems) if k[0] == namespace]:
            self._tenants.pop(key, None)
            self.problems.pop(key, None)
        return [p for secret in secrets if (p := self.apply("ADDED", secret)) is not None]

    def apply(self, event: str, secret: Mapping[str, Any]) -> str | None:
        """One watch event; the Secret's problem when it can't be used (for the log), else None."""
        meta = secret.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        self._tenants.pop(key, None)
        self.problems.pop(key, None)
        if event == "DELETED" or not is_tenant_secret(secret):
            return None
        try:
            self._tenants[key] = from_secret(secret)
        except TenantError as e:
            self.problems[key] = str(e)
            return str(e)
        return None

    def all(self) -> list[Tenant]:
        return list(self._tenants.values())

    def by_gateway_key(self, candidate: str) -> list[Tenant]:
        """The tenants that registered this plugin key (every tenant's keys are compared)."""
        return [t for t in self._tenants.values() if keys_mod.matches(candidate, t.gateway_keys)]

    def by_livekit_key(self, api_key: str) -> list[Tenant]:
        """The tenants that registered this LiveKit API key (the JWT's issuer)."""
        return [t for t in self._tenants.values() if keys_mod.matches(api_key, (t.livekit_api_key,))]
