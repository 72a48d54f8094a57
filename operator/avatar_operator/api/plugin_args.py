"""The plugin's argument names, and where each one lives in an AvatarSession spec.

People write manifests from the plugin's `AvatarSession(...)` call, so a
snake_case plugin name where a spec field belongs is a likely slip: the
validator answers it with the spec's name (`validation`). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses

from pydantic.alias_generators import to_camel


@dataclasses.dataclass(frozen=True)
class Hint:
    """What to write instead of an unknown field: a spec path relative to
    `spec` (None when the argument has no field), and why."""

    field: str | None
    why: str


_CREDENTIALS = "credentials never go in a spec (every reader of the object would see them)"

# Every keyword of `AvatarSession.__init__` and of its `start()` (a unit test
# reads the installed plugin's signatures and fails when one is missing).
PLUGIN_ARGS: dict[str, Hint] = {
    "api_url": Hint("bithuman.apiUrl", "the plugin's api_url"),
    "api_secret": Hint(
        "bithuman.secretRef", f"{_CREDENTIALS}: put BITHUMAN_API_SECRET in a Secret and name it in bithuman.secretRef.name"
    ),
    "api_token": Hint(
        "bithuman.secretRef", f"{_CREDENTIALS}: put BITHUMAN_API_TOKEN in a Secret and name it in bithuman.secretRef.name"
    ),
    "model": Hint("model", "the plugin's model"),
    "model_path": Hint("modelPath", "the plugin's model_path"),
    "runtime": Hint(None, "the plugin's runtime has no spec field: the runner pod loads the model at modelPath itself"),
    "avatar_image": Hint(
        "avatarImage", "the plugin's avatar_image (a URL or base64 data; for a file, avatarImageFrom)"
    ),
    "avatar_id": Hint("avatarId", "the plugin's avatar_id"),
    "conn_options": Hint("connection", "the plugin's conn_options (maxRetry, retryInterval, timeout)"),
    "avatar_participant_identity": Hint("avatarParticipant.identity", "the plugin's avatar_participant_identity"),
    "avatar_participant_name": Hint("avatarParticipant.name", "the plugin's avatar_participant_name"),
    # start(agent_session, room, *, livekit_url, livekit_api_key, livekit_api_secret)
    "room": Hint("room", "the name of the room the plugin's start() is given"),
    "livekit_url": Hint("livekit.url", "the plugin's livekit_url"),
    "livekit_api_key": Hint(
        "livekit.secretRef", f"{_CREDENTIALS}: put LIVEKIT_API_KEY in a Secret and name it in livekit.secretRef.name"
    ),
    "livekit_api_secret": Hint(
        "livekit.secretRef", f"{_CREDENTIALS}: put LIVEKIT_API_SECRET in a Secret and name it in livekit.secretRef.name"
    ),
    # APIConnectOptions' fields, written at the top level
    "max_retry": Hint("connection.maxRetry", "the plugin's conn_options.max_retry"),
    "retry_interval": Hint("connection.retryInterval", "the plugin's conn_options.retry_interval"),
}


def _folded(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def hint(key: str, fields: frozenset[str], top_level: bool) -> Hint | None:
    """The hint for an unknown `key` among a model's `fields` (wire names).

    At the spec's top level a plugin argument maps to its field wherever that
    lives; anywhere, a key that differs from a field only in spelling (snake
    case, case, dashes) names that field.
    """
    if top_level and key in PLUGIN_ARGS:
        return PLUGIN_ARGS[key]
    camel = to_camel(key)
    if camel in fields:
        return Hint(camel, f"the resource spells {key} in camelCase")
    folded = [f for f in fields if _folded(f) == _folded(key)]
    if folded:
        return Hint(folded[0], "field names are case-sensitive")
    return None
