"""The request that mints a short-lived bitHuman runtime token: pure, no I/O.

For a cloud avatar, the plugin copies its `api_secret` into the avatar
participant's attributes (key `api_secret`), where bitHuman's cloud worker
reads it and every other participant can too. bitHuman's advice is to mint a
token for that one agent, room and LiveKit server and hand it over in the
secret's place: the operator sends it in the session request's `api-secret`
header and as the `api_secret` attribute, and the account secret only ever
travels to the mint endpoint.

The format, as bitHuman documents it (docs "Authentication" and "LiveKit";
the installed `bithuman` SDK never mints, it only calls
`/v1/runtime-tokens/request` for itself):

    POST https://api.bithuman.ai/v1/runtime-tokens/mint
    api-secret: <account secret>
    {"agent_code": "A23WJF0199", "scope": "livekit-cloud",
     "room_name": "<room>", "livekit_url": "<wss://...>"}
    -> 200 {"scoped_token": "...", "expires_at": <unix seconds>}
       401 missing/invalid secret, 403 suspended account or a mismatch

The token lives one hour, fixed by bitHuman (the request has no lifetime
field); a session that outlives it keeps running. It is scoped to an agent
code, so only `avatarId` sessions can use it.

`avatar_operator.clients.bithuman.mint_runtime_token` sends it.
"""

from __future__ import annotations

import types

from avatar_operator.build.cloud_request import CloudRequest, MissingInputError, RequestFormat

SCOPE_LIVEKIT_CLOUD = "livekit-cloud"


def build_mint_request(
    *, mint_url: str, api_secret: str, agent_code: str, room_name: str, livekit_url: str
) -> CloudRequest:
    """The mint request; MissingInputError (a ValueError) names an empty input."""
    for what, value in (
        ("BITHUMAN_API_SECRET", api_secret),
        ("avatarId", agent_code),
        ("room", room_name),
        ("livekit.url", livekit_url),
    ):
        if not value:
            raise MissingInputError(what, "minting a bitHuman runtime token needs it")
    return CloudRequest(
        url=mint_url,
        format=RequestFormat.JSON,
        headers=types.MappingProxyType(
            {"Content-Type": "application/json", "api-secret": api_secret}
        ),
        json=types.MappingProxyType(
            {
                "agent_code": agent_code,
                "scope": SCOPE_LIVEKIT_CLOUD,
                "room_name": room_name,
                "livekit_url": livekit_url,
            }
        ),
    )
