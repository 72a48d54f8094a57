"""The cluster side of the viewer: sessions read with the user's kubeconfig, and viewer tokens.

A token is signed with the LiveKit credentials the operator would use for
the session (controller/credentials.py, the same Secret or defaults), and
only the token leaves this module.
"""

from __future__ import annotations

import dataclasses
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.build import viewer_token
from avatar_operator.clients import kube as kube_mod
from avatar_operator.controller import credentials


class ViewerError(Exception):
    """A request the viewer can't answer; `status` is the HTTP status, the message says the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Grant:
    """What the page needs to join a session's room."""

    url: str
    token: str = dataclasses.field(repr=False)
    room: str
    avatar_identity: str

    def as_json(self) -> dict[str, str]:
        return {"url": self.url, "token": self.token, "room": self.room, "avatarIdentity": self.avatar_identity}


def _sessions_path(namespace: str, name: str | None = None) -> str:
    return kube_mod.path(names.PLURAL, namespace, name, group=names.GROUP, version=names.VERSION)


def _secret_names(spec: spec_mod.AvatarSessionSpec, settings: settings_mod.Settings) -> set[str]:
    named = spec.livekit.secret_ref.name if spec.livekit and spec.livekit.secret_ref else None
    return {n for n in (named, settings.livekit.secret_name) if n}


def _parse(obj: Mapping[str, Any]) -> spec_mod.AvatarSessionSpec:
    try:
        return spec_mod.parse_spec(obj)
    except ValueError as e:
        raise ViewerError(422, f"session {obj['metadata']['name']!r} has a spec this viewer can't read: {e}") from e


@dataclasses.dataclass
class Access:
    """Sessions of one namespace. `livekit_url` overrides the session's URL (what the browser dials)."""

    kube: kube_mod.Kube
    namespace: str
    settings: settings_mod.Settings
    livekit_url: str | None = None

    async def sessions(self) -> list[dict[str, Any]]:
        _, body = await self.kube.request("GET", _sessions_path(self.namespace))
        return sorted((dict(i) for i in (body or {}).get("items") or []), key=lambda o: str(o["metadata"]["name"]))

    async def session(self, name: str) -> dict[str, Any]:
        status, obj = await self.kube.request("GET", _sessions_path(self.namespace, urllib.parse.quote(name)), answers=(404,))
        if status == 404:
            raise ViewerError(
                404, f"AvatarSession {name!r} not found in namespace {self.namespace!r}: check the name, or pass -n NAMESPACE"
            )
        return dict(obj)

    async def grant(self, name: str) -> Grant:
        """A fresh viewer token for the session's room: subscribe-only, minutes."""
        obj = await self.session(name)
        spec = _parse(obj)
        found = {n: await self.kube.read_secret(self.namespace, n) for n in _secret_names(spec, self.settings)}
        try:
            lk = credentials.livekit(spec, self.settings, found.get)
        except credentials.MissingCredentials as e:
            raise ViewerError(409, f"no LiveKit credentials for session {name!r}: {e.message}") from e
        token = viewer_token.viewer_token(
            api_key=lk.api_key,
            api_secret=lk.api_secret,
            room=spec.room,
            identity=viewer_token.viewer_identity(secrets.token_hex(4)),
        )
        avatar = str((obj.get("status") or {}).get("avatarIdentity") or spec.avatar_participant.identity)
        return Grant(url=self.livekit_url or lk.url, token=token, room=spec.room, avatar_identity=avatar)

