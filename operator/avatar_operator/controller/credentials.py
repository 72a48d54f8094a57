"""Which credentials a session uses, resolved from its Secrets or the operator's defaults.

Pure given a `SecretReader`: the handler passes one that reads the cluster.
Values are kept out of every repr, so a credential can't leak into a log or an
Event by being printed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from avatar_operator import settings as settings_mod
from avatar_operator.api import rules
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod

Reason = status_mod.Reason

# name -> the Secret's decoded data, or None when there is no such Secret.
SecretReader = Callable[[str], Mapping[str, str] | None]

LIVEKIT_KEY = "LIVEKIT_API_KEY"
LIVEKIT_SECRET = "LIVEKIT_API_SECRET"
BITHUMAN_SECRET = "BITHUMAN_API_SECRET"
BITHUMAN_TOKEN = "BITHUMAN_API_TOKEN"
BITHUMAN_CONCURRENCY = "BITHUMAN_CONCURRENCY"  # optional: the plan's concurrent sessions (controller/cloud_queue)


class MissingCredentials(Exception):
    """A credential the session needs is not there (yet)."""

    def __init__(self, reason: status_mod.Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class LiveKitCredentials:
    url: str
    api_key: str
    api_secret: str = dataclasses.field(repr=False)
    secret_name: str | None = None  # the Secret they came from (None: the operator's own settings)

    def source(self) -> str:
        return f"Secret {self.secret_name!r}" if self.secret_name else "the operator's LIVEKIT_API_KEY and LIVEKIT_API_SECRET"


@dataclasses.dataclass(frozen=True)
class BithumanCredentials:
    api_url: str
    secret_name: str | None  # the Secret a runner pod reads them from (None: operator env)
    api_secret: str | None = dataclasses.field(default=None, repr=False)
    api_token: str | None = dataclasses.field(default=None, repr=False)
    concurrency: str | None = None  # the Secret's BITHUMAN_CONCURRENCY as written (cloud_queue.budget reads it)


CREDENTIAL_KEYS = (LIVEKIT_KEY, LIVEKIT_SECRET, BITHUMAN_SECRET, BITHUMAN_TOKEN)


def clean_value(value: str) -> str | None:
    """A credential as it goes into a header or a signature, None when it can't.

    `echo secret | base64` leaves a trailing newline, which HTTP headers refuse
    and a signature would include: whitespace around the value is dropped. A
    line break or other control character inside it is a mistake no trim can
    fix (None)."""
    value = value.strip()
    if any(c.isspace() or not c.isprintable() for c in value):
        return None
    return value


def _cleaned(name: str, data: Mapping[str, str]) -> dict[str, str]:
    out = dict(data)
    for key in CREDENTIAL_KEYS:
        if key in out:
            value = clean_value(out[key])
            if value is None:
                raise MissingCredentials(
                    Reason.SECRET_VALUE_INVALID,
                    f"Secret {name!r} key {key} holds whitespace or a control character inside the value: "
                    "write the bare value (e.g. `kubectl create secret generic ... --from-literal`)",
                )
            out[key] = value
    return out


def _named(explicit: str | None, default: str, read: SecretReader, field: str) -> tuple[str, Mapping[str, str]] | None:
    """The Secret a session names, else the default-named one when it exists.

    A Secret the spec names explicitly must exist; a default one is optional.
    """
    if explicit:
        data = read(explicit)
        if data is None:
            raise MissingCredentials(
                Reason.SECRET_NOT_FOUND,
                f"Secret {explicit!r} named by {field} was not found in the session's namespace; create it",
            )
        return explicit, _cleaned(explicit, data)
    data = read(default)
    return (default, _cleaned(default, data)) if data is not None else None


def livekit(
    spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings, read: SecretReader
) -> LiveKitCredentials:
    url = (spec.livekit.url if spec.livekit and spec.livekit.url else None) or settings.livekit.url
    if not url:
        raise MissingCredentials(Reason.LIVEKIT_NOT_CONFIGURED, "spec.livekit.url is not set and the operator has no default LiveKit URL")
    ref = spec.livekit.secret_ref.name if spec.livekit and spec.livekit.secret_ref else None
    found = _named(ref, settings.livekit.secret_name, read, "spec.livekit.secretRef.name")
    if found is not None:
        name, data = found
        missing = [k for k in (LIVEKIT_KEY, LIVEKIT_SECRET) if not data.get(k)]
        if missing:
            raise MissingCredentials(
                Reason.SECRET_KEY_MISSING, f"Secret {name!r} lacks {' and '.join(missing)}; add the key(s) to it"
            )
        return LiveKitCredentials(url=url, api_key=data[LIVEKIT_KEY], api_secret=data[LIVEKIT_SECRET], secret_name=name)
    if settings.livekit.api_key and settings.livekit.api_secret:
        return LiveKitCredentials(url=url, api_key=settings.livekit.api_key, api_secret=settings.livekit.api_secret)
    raise MissingCredentials(
        Reason.SECRET_NOT_FOUND,
        f"livekit_api_key and livekit_api_secret must be set: create Secret {settings.livekit.secret_name!r} "
        f"with {LIVEKIT_KEY} and {LIVEKIT_SECRET}, or set spec.livekit.secretRef.name",
    )


def bithuman(
    spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings, read: SecretReader
) -> BithumanCredentials:
    api_url = (spec.bithuman.api_url if spec.bithuman and spec.bithuman.api_url else None) or settings.bithuman.api_url
    if spec.pool_ref is not None:
        # The pool's runners render with the pool's bitHuman credentials, not the session's.
        return BithumanCredentials(api_url=api_url, secret_name=None, api_secret=None, api_token=None)
    ref = spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None
    found = _named(ref, settings.bithuman.secret_name, read, "spec.bithuman.secretRef.name")
    name, data = found if found is not None else (None, {})
    secret = data.get(BITHUMAN_SECRET) or None
    token = data.get(BITHUMAN_TOKEN) or None
    problem = rules.credential_problem(spec.mode, has_secret=secret is not None, has_token=token is not None)
    if problem:
        where = f"Secret {name!r} has neither key" if name else f"create Secret {settings.bithuman.secret_name!r} or set spec.bithuman.secretRef.name"
        raise MissingCredentials(Reason.SECRET_KEY_MISSING if name else Reason.SECRET_NOT_FOUND, f"{problem} ({where})")
    return BithumanCredentials(
        api_url=api_url, secret_name=name, api_secret=secret, api_token=token, concurrency=data.get(BITHUMAN_CONCURRENCY)
    )
