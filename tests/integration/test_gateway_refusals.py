"""What the gateway refuses, on the real stack: the right status, a JSON error, nothing
created, and no key or token in any log.

Each refused request is a request the gateway accepts (the module's controls
show it does) with one thing wrong: an unknown key, a livekit_token or JWT
signed by a LiveKit key the tenant did not register, a token for another room,
an expired token, a malformed or incomplete body, a body over the limit; and a
terminate (inference) or a stop (plugin) with a forged token or a wrong key.
The bed (tests/harness/gateway_bed.py): an operator, a warm pool of one runner
with two slots, a tenant, the gateway with a 64 KiB body limit.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Stack
from tests.harness import gateway_calls as calls
from tests.harness.gateway_bed import BedConfig, GatewayBed

MAX_BODY = 64 * 1024
OTHER_KEY, OTHER_SECRET = "APIotherkey", "other-secret-" + secrets.token_urlsafe(24)
UNKNOWN_KEY = "gwk-unknown-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def bed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayBed]:
    bed = GatewayBed(
        stack, tmp_path_factory.mktemp("gateway-refusals"),
        BedConfig(runners=1, slots=2, gateway_env={"AVATAR_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY)}),
    )
    try:
        bed.up()
        yield bed
    finally:
        bed.down()


def session_names(bed: GatewayBed) -> set[str]:
    return {s["metadata"]["name"] for s in bed.sessions()}


def assert_clean(bed: GatewayBed, *needles: str) -> None:
    """No key, token or LiveKit secret in the operator's, the gateway's or the runners' logs; no trace."""
    assert not bed.leaked(bed.api_key, bed.stack.livekit_api_secret, OTHER_SECRET, *needles)
    assert "Traceback" not in bed.logs().get("gateway.log", "")


def room() -> str:
    return f"refused-{uuid.uuid4().hex[:8]}"


def big_image() -> bytes:
    return b"\xff\xd8\xff\xe0" + secrets.token_bytes(MAX_BODY + 4096)


# (case, the request, the status, the fields the error may name)
CASES: list[tuple[str, Callable[[GatewayBed], calls.Call], int, set[str | None]]] = [
    ("plugin json: unknown key", lambda b: calls.plugin_json(b, room(), key=UNKNOWN_KEY), 401, {None, "api-secret"}),
    ("plugin form: unknown key", lambda b: calls.plugin_form(b, room(), key=UNKNOWN_KEY), 401, {None, "Authorization", "authorization"}),
    ("plugin: token signed by another LiveKit key",
     lambda b: calls.plugin_json(b, (r := room()), token=calls.plugin_token(OTHER_KEY, OTHER_SECRET, r)), 401, {None, "livekit_token"}),
    ("plugin: token for another room",
     lambda b: calls.plugin_json(b, room(), token=calls.plugin_token(b.stack.livekit_api_key, b.stack.livekit_api_secret, "another-room")),
     400, {"livekit_token", "room_name"}),
    ("plugin: expired token",
     lambda b: calls.plugin_json(b, (r := room()), token=calls.plugin_token(
         b.stack.livekit_api_key, b.stack.livekit_api_secret, r, ttl=datetime.timedelta(seconds=-120))),
     401, {None, "livekit_token"}),
    ("inference: JWT signed by another LiveKit key",
     lambda b: calls.inference_create(b, room(), jwt=calls.inference_jwt(OTHER_KEY, OTHER_SECRET)), 401, {None, "Authorization", "authorization"}),
    ("inference: expired JWT",
     lambda b: calls.inference_create(b, room(), jwt=calls.inference_jwt(b.stack.livekit_api_key, b.stack.livekit_api_secret, ttl=-120)),
     401, {None, "Authorization", "authorization"}),
    ("plugin json: malformed body",
     lambda b: dataclasses.replace(calls.plugin_json(b, room()), json_body=None, raw=b'{"room_name": "x", ',
                                   headers={"api-secret": b.api_key, "Content-Type": "application/json"}),
     400, {None, "body"}),
    ("plugin json: no room_name",
     lambda b: dataclasses.replace(c := calls.plugin_json(b, room()), json_body={k: v for k, v in (c.json_body or {}).items() if k != "room_name"}),
     400, {"room_name"}),
    ("inference: malformed body",
     lambda b: dataclasses.replace(calls.inference_create(b, room()), json_body=None, raw=b"not json"), 400, {None, "body"}),
    ("plugin form: a file that is no image", lambda b: calls.plugin_form(b, room(), image=b"GIF89a but not really"), 400, {"avatar_image"}),
    ("plugin form: body over the limit", lambda b: calls.plugin_form(b, room(), image=big_image()), 413, {None, "body"}),
    ("inference: body over the limit",
     lambda b: dataclasses.replace(calls.inference_create(b, room()), json_body=None, raw=json.dumps({"pad": "x" * (MAX_BODY + 1)}).encode()),
     413, {None, "body"}),
]


@pytest.mark.stack
@pytest.mark.parametrize(("case", "make", "status", "fields"), CASES, ids=[c[0] for c in CASES])
async def test_refused_with_its_status_nothing_created_and_no_key_logged(
    bed: GatewayBed, case: str, make: Callable[[GatewayBed], calls.Call], status: int, fields: set[str | None]
) -> None:
    before = session_names(bed)
    call = make(bed)
    got, _, body = await calls.send(bed, call)
    assert got == status, (case, got, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert error.get("code") and error.get("message"), error
    assert error.get("field") in fields, error
    for needle in [bed.api_key, *call.secrets]:
        assert needle not in json.dumps(body)
    assert session_names(bed) == before, f"{case}: a session was created"
    assert_clean(bed, *call.secrets)


@pytest.mark.stack
async def test_a_forged_terminate_deletes_nothing_the_real_one_does(bed: GatewayBed) -> None:
    create = calls.inference_create(bed, room())
    status, _, answer = await calls.send(bed, create)
    assert status == 200, answer
    ns, _, name = answer["provider_session_id"].partition("/")
    assert ns == bed.namespace and name in session_names(bed)
    jwt = calls.inference_jwt(bed.stack.livekit_api_key, bed.stack.livekit_api_secret)
    auth = {"Authorization": f"Bearer {jwt}", "Content-Type": "application/json"}

    def terminate(token: str, psid: str = answer["provider_session_id"]) -> calls.Call:
        body = {"provider": "bithuman", "provider_session_id": psid, "terminate_token": token}
        return calls.Call("/avatar/sessions/terminate", auth, json_body=body, secrets=[jwt, token])

    real = answer["terminate_token"]
    forged = [
        (real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"), (401, 403)),  # one signature, altered
        (secrets.token_hex(32), (401, 403)),  # made up
        ("", (400,)),  # none: a missing field
    ]
    for token, statuses in forged:
        got, _, body = await calls.send(bed, terminate(token))
        assert got in statuses, (token, got, body)
        assert name in session_names(bed), "a forged terminate deleted the session"
    # A valid token, but signed with another LiveKit key's JWT: not the caller.
    other = dataclasses.replace(terminate(real), headers={**auth, "Authorization": f"Bearer {calls.inference_jwt(OTHER_KEY, OTHER_SECRET)}"})
    got, _, body = await calls.send(bed, other)
    assert got == 401, body
    assert name in session_names(bed)

    got, _, body = await calls.send(bed, terminate(real))
    assert got == 200, body
    bed.wait_gone(name, 30)
    assert_clean(bed, jwt, real, *create.secrets)


@pytest.mark.stack
async def test_a_stop_with_a_wrong_key_stops_nothing_the_right_one_does(bed: GatewayBed) -> None:
    launch = calls.plugin_json(bed, room())
    status, _, answer = await calls.send(bed, launch)
    assert status == 200 and answer["status"] == "pending", answer
    task = answer["task_id"]
    ns, _, name = task.replace(".", "/", 1).partition("/") if "/" not in task else task.partition("/")
    assert ns == bed.namespace and name in session_names(bed)
    path = f"/tasks/{urllib.parse.quote(task, safe='')}/stop"

    got, _, body = await calls.send(bed, calls.Call(path, {"api-secret": UNKNOWN_KEY}, secrets=[UNKNOWN_KEY]))
    assert got == 401, body
    assert name in session_names(bed)

    got, _, body = await calls.send(bed, calls.Call(path, {"api-secret": bed.api_key}))
    assert got == 200 and body["status"] == "stopped", body
    bed.wait_gone(name, 30)
    assert_clean(bed, UNKNOWN_KEY, *launch.secrets)
