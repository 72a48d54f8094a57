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

# name -> the Secret's decoded data, or None when there is no such Secret.
SecretReader = Callable[[str], Mapping[str, str] | None]

LIVEKIT_KEY = "LIVEKIT_API_KEY"
LIVEKIT_SECRET = "LIVEKIT_API_SECRET"
BITHUMAN_SECRET = "BITHUMAN_API_SECRET"
BITHUMAN_TOKEN = "BITHUMAN_API_TOKEN"


class MissingCredentials(Exception):
    """A credential the session needs is not there (yet). `reason` is a status Reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class LiveKitCredentials:
    url: str
    api_key: str
    api_secret: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class BithumanCredentials:
    api_url: str
    secret_name: str | None  # the Secret a runner pod reads them from (None: operator env)
    api_secret: str | None = dataclasses.field(default=None, repr=False)
    api_token: str | None = dataclasses.field(default=None, repr=False)


def _named(explicit: str | None, default: str, read: SecretReader, field: str) -> tuple[str, Mapping[str, str]] | None:
    """The Secret a session names, else the default-named one when it exists.

    A Secret the spec names explicitly must exist; a default one is optional.
    """
    if explicit:
        data = read(explicit)
        if data is None:
            raise MissingCredentials(
                "SecretNotFound",
                f"Secret {explicit!r} named by {field} was not found in the session's namespace; create it",
            )
        return explicit, data
    data = read(default)
    return (default, data) if data is not None else None


def livekit(
    spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings, read: SecretReader
) -> LiveKitCredentials:
    url = (spec.livekit.url if spec.livekit and spec.livekit.url else None) or settings.livekit_url
    if not url:
        raise MissingCredentials("LiveKitNotConfigured", "spec.livekit.url is not set and the operator has no default LiveKit URL")
    ref = spec.livekit.secret_ref.name if spec.livekit and spec.livekit.secret_ref else None
    found = _named(ref, settings.livekit_secret_name, read, "spec.livekit.secretRef.name")
    if found is not None:
        name, data = found
        missing = [k for k in (LIVEKIT_KEY, LIVEKIT_SECRET) if not data.get(k)]
        if missing:
            raise MissingCredentials(
                "SecretKeyMissing", f"Secret {name!r} lacks {' and '.join(missing)}; add the key(s) to it"
            )
        return LiveKitCredentials(url=url, api_key=data[LIVEKIT_KEY], api_secret=data[LIVEKIT_SECRET])
    if settings.livekit_api_key and settings.livekit_api_secret:
        return LiveKitCredentials(url=url, api_key=settings.livekit_api_key, api_secret=settings.livekit_api_secret)
    raise MissingCredentials(
        "SecretNotFound",
        f"livekit_api_key and livekit_api_secret must be set: create Secret {settings.livekit_secret_name!r} "
        f"with {LIVEKIT_KEY} and {LIVEKIT_SECRET}, or set spec.livekit.secretRef.name",
    )


def bithuman(
    spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings, read: SecretReader
) -> BithumanCredentials:
    api_url = (spec.bithuman.api_url if spec.bithuman and spec.bithuman.api_url else None) or settings.bithuman_api_url
    ref = spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None
    found = _named(ref, settings.bithuman_secret_name, read, "spec.bithuman.secretRef.name")
    name, data = found if found is not None else (None, {})
    secret = data.get(BITHUMAN_SECRET) or None
    token = data.get(BITHUMAN_TOKEN) or None
    problem = rules.credential_problem(spec.mode, has_secret=secret is not None, has_token=token is not None)
    if problem:
        where = f"Secret {name!r} has neither key" if name else f"create Secret {settings.bithuman_secret_name!r} or set spec.bithuman.secretRef.name"
        raise MissingCredentials("SecretKeyMissing" if name else "SecretNotFound", f"{problem} ({where})")
    return BithumanCredentials(api_url=api_url, secret_name=name, api_secret=secret, api_token=token)
