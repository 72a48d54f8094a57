"""`python -m avatar_runner serve`: the launch API over a fake room session, its configuration, and its copies.

The HTTP layer runs on aiohttp's test server with the pool's "run a room
session" function replaced by a fake that joins when told to and ends when
stopped (or when told to). tests/e2e/test_runner_serve.py runs the real
sessions on a real livekit-server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from avatar_runner import room_task
from avatar_runner.config import ConfigError, parse_serve_config
from avatar_runner.contract import DEFAULT_MAX_SESSIONS, SERVE_PORT, Renderer
from avatar_runner.exits import ExitCode, Outcome
from avatar_runner.health import RunnerMetrics
from avatar_runner.launch_form import LaunchError, parse_launch
from avatar_runner.renderers.base import RendererRefused
from avatar_runner.renderers.portrait import PortraitRenderer
from avatar_runner.renderers.portrait_face import prepare_portrait
from avatar_runner.serve import MAX_BODY_BYTES, LaunchApi
from avatar_runner.serve_renderers import (
    PortraitSource,
    SharedPortraitRenderer,
    fetch_image,
    portrait_of_bytes,
)
from avatar_runner.tasks import TaskControl, TaskPool, TaskRequest
from livekit import api
from PIL import Image

from tests.harness.stack import ROOT

POOL_TOKEN = "pool-token-0123456789abcdef"
AGENT = "agent-1"
URL = "ws://livekit.example:7880"


def room_token(room: str = "room-1", *, agent: str | None = AGENT, grant_room: str | None = None) -> str:
    token = (
        api.AccessToken("devkey", "a-secret-long-enough-for-livekit-0123456789")
        .with_identity("bithuman-avatar-agent")
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room=grant_room or room))
    )
    if agent is not None:
        token = token.with_attributes({"lk.publish_on_behalf": agent})
    return token.to_jwt()


def form(room: str = "room-1", **extra: str) -> dict[str, str]:
    return {"livekit_url": URL, "livekit_token": room_token(room), "room_name": room, **extra}


def jpeg(size: tuple[int, int] = (64, 80)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(out, format="JPEG")
    return out.getvalue()


class FakeRooms:
    """The pool's room session, faked: joins after `join_delay`, then holds
    its slot until stopped or `end(room)`; `outcome` makes it fail at once."""

    def __init__(self) -> None:
        self.requests: list[TaskRequest] = []
        self.join_delay = 0.0
        self.outcome: Outcome | None = None
        self.raises: Exception | None = None
        self.ends: dict[str, asyncio.Event] = {}

    def end(self, room: str) -> None:
        self.ends.setdefault(room, asyncio.Event()).set()

    async def __call__(self, request: TaskRequest, control: TaskControl) -> Outcome:
        self.requests.append(request)
        if self.raises is not None:
            raise self.raises
        await asyncio.sleep(self.join_delay)
        if self.outcome is not None:
            return self.outcome
        control.joined()
        control.first_frame()
        ended = self.ends.setdefault(request.room_name, asyncio.Event())
        stop = asyncio.ensure_future(control.stop.wait())
        left = asyncio.ensure_future(ended.wait())
        await asyncio.wait({stop, left}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        left.cancel()
        if control.stop.reason:
            return Outcome(ExitCode.OK, control.stop.reason)
        return Outcome(ExitCode.OK, f"agent {request.agent_identity!r} left the room")


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    pool: TaskPool
    rooms: FakeRooms
    state: dict[str, bool]

    async def launch(
        self, data: Any = None, *, token: str | None = POOL_TOKEN, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await self.client.post("/launch", data=form() if data is None else data, headers=all_headers)
        return response.status, await response.json()

    async def call(self, method: str, path: str, *, token: str | None = POOL_TOKEN) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        response = await self.client.request(method, path, headers=headers)
        return response.status, await response.json()


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    made: list[Api] = []

    async def make(max_sessions: int = 2, *, loaded: bool = True, sync_timeout: float = 5.0) -> Api:
        rooms = FakeRooms()
        pool = TaskPool(rooms, max_sessions, stop_timeout=2.0)
        state = {"loaded": loaded}
        launch_api = LaunchApi(pool, POOL_TOKEN, loaded=lambda: state["loaded"], sync_timeout=sync_timeout)
        client: TestClient[Any, Any] = TestClient(TestServer(launch_api.app()))
        await client.start_server()
        made.append(Api(client, pool, rooms, state))
        return made[-1]

    yield make
    for each in made:
        await each.pool.stop_all("test over")
        await each.client.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- authentication ------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token", POOL_TOKEN + "x", ""])
async def test_launch_and_tasks_need_the_pool_token(make_api: Callable[..., Awaitable[Api]], token: str | None) -> None:
    served = await make_api()
    status, body = await served.launch(token=token)
    assert (status, body["error"]) == (401, "unauthorized")
    assert served.pool.active == 0 and served.rooms.requests == []
    for method, path in (("GET", "/tasks/x"), ("POST", "/tasks/x/stop"), ("GET", "/tasks")):
        assert (await served.call(method, path, token=token))[0] == 401


async def test_another_scheme_is_refused_and_probes_are_open(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    response = await served.client.post("/launch", data=form(), headers={"Authorization": f"Basic {POOL_TOKEN}"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await served.call("GET", "/health", token=None) == (200, {"active_sessions": 0, "max_sessions": 2})
    assert await served.call("GET", "/ready", token=None) == (200, {"status": "ready"})
    metrics = await served.client.get("/metrics")
    assert metrics.status == 200 and "avatar_pool_sessions_max 2.0" in await metrics.text()


# --- the form ------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["livekit_url", "livekit_token", "room_name"])
async def test_a_missing_field_is_named(make_api: Callable[..., Awaitable[Api]], missing: str) -> None:
    served = await make_api()
    data = form()
    del data[missing]
    status, body = await served.launch(data)
    assert status == 400
    assert body["field"] == missing and missing in body["message"]
    data[missing] = "  "  # blank counts as missing
    assert (await served.launch(data))[1]["field"] == missing
    assert served.pool.active == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"livekit_url": "livekit.example:7880"}, "livekit_url"),
        ({"livekit_url": "ftp://livekit.example"}, "livekit_url"),
        ({"livekit_url": "wss://"}, "livekit_url"),
        ({"livekit_token": "not-a-jwt"}, "livekit_token"),
        ({"livekit_token": "a.b!.c"}, "livekit_token"),
        ({"livekit_token": room_token(agent=None)}, "livekit_token"),
        ({"livekit_token": room_token(grant_room="another-room")}, "room_name"),
        ({"async_mode": "maybe"}, "async_mode"),
        ({"avatar_image_url": "file:///etc/passwd"}, "avatar_image_url"),
        ({"avatar_image": "not base64!"}, "avatar_image"),
    ],
)
async def test_a_bad_field_is_named(make_api: Callable[..., Awaitable[Api]], change: dict[str, str], field: str) -> None:
    served = await make_api()
    status, body = await served.launch({**form(), **change})
    assert (status, body["status"], body["field"]) == (400, "error", field)
    assert "Traceback" not in body["message"]


async def test_the_plugins_other_fields_are_tolerated_and_the_agent_comes_from_the_token(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    served = await make_api()
    extra = {"avatar_id": "A12", "model": "expression", "prompt": "smile", "api_secret": "sk-live-secret"}
    status, body = await served.launch(form(**extra))
    assert status == 200 and body["status"] in {"pending", "running"} and body["task_id"]
    await settle()
    (request,) = served.rooms.requests
    assert request.agent_identity == AGENT
    assert request.room_name == "room-1" and request.livekit_url == URL
    assert "sk-live-secret" not in repr(request) and request.livekit_token not in repr(request)


async def test_multipart_with_an_image_file_and_urlencoded_with_an_image_url(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    served = await make_api()
    picture = jpeg()
    multipart = aiohttp.FormData()
    for name, value in form("room-a").items():
        multipart.add_field(name, value)
    multipart.add_field("avatar_image", io.BytesIO(picture), filename="avatar.jpg", content_type="image/jpeg")
    assert (await served.launch(multipart))[0] == 200
    assert (await served.launch(form("room-b", avatar_image_url="https://images.example/a.jpg")))[0] == 200
    await settle()
    by_room = {r.room_name: r for r in served.rooms.requests}
    assert by_room["room-a"].image == picture and by_room["room-a"].image_url is None
    assert by_room["room-b"].image is None and by_room["room-b"].image_url == "https://images.example/a.jpg"


def test_a_base64_image_is_decoded() -> None:
    import base64

    picture = jpeg()
    for text in (base64.b64encode(picture).decode(), "data:image/jpeg;base64," + base64.b64encode(picture).decode()):
        assert parse_launch({**form(), "avatar_image": text}).request.image == picture


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xyz", b"garbage"),
        ("multipart/form-data", b"--x\r\n"),
        ("application/x-www-form-urlencoded", b"\xff\xfe=%%%"),
    ],
)
async def test_a_broken_body_is_400_not_500(
    make_api: Callable[..., Awaitable[Api]], content_type: str, body: bytes
) -> None:
    served = await make_api()
    headers = {"Content-Type": content_type}
    status, answer = await served.launch(body, headers=headers)
    assert (status, answer["error"], answer["field"]) == (400, "invalid_request", "body")


async def test_a_body_over_the_limit_is_413(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    multipart = aiohttp.FormData()
    for name, value in form().items():
        multipart.add_field(name, value)
    multipart.add_field("avatar_image", b"\xff" * (MAX_BODY_BYTES + 1), filename="big.jpg", content_type="image/jpeg")
    status, body = await served.launch(multipart)
    assert (status, body["error"]) == (413, "too_large")
    status, body = await served.launch({**form(), "prompt": "x" * (MAX_BODY_BYTES + 1)})
    assert status == 413
    assert served.pool.active == 0


# --- capacity, idempotency, states --------------------------------------------


async def test_capacity_two_the_third_is_refused_until_one_stops(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api(max_sessions=2)
    first = (await served.launch(form("room-1")))[1]
    assert (await served.launch(form("room-2")))[0] == 200
    status, body = await served.launch(form("room-3"))
    assert (status, body) == (503, {"status": "error", "error": "at_capacity", "max_sessions": 2})
    assert await served.call("GET", "/ready", token=None) == (503, {"status": "at_capacity"})
    assert await served.call("GET", "/health", token=None) == (200, {"active_sessions": 2, "max_sessions": 2})

    status, stopped = await served.call("POST", f"/tasks/{first['task_id']}/stop")
    assert status == 200 and stopped["status"] == "stopped"
    assert stopped["reason"] == f"stopped by POST /tasks/{first['task_id']}/stop"
    assert (await served.call("GET", "/health", token=None))[1]["active_sessions"] == 1
    assert (await served.call("GET", "/ready", token=None))[0] == 200
    assert (await served.launch(form("room-3")))[0] == 200
    listed = (await served.call("GET", "/tasks"))[1]["tasks"]
    assert sorted(t["room_name"] for t in listed) == ["room-2", "room-3"]


async def test_an_idempotency_key_gets_the_same_task_and_one_slot(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api(max_sessions=1)
    key = {"Idempotency-Key": "session-uid-1"}
    first = (await served.launch(headers=key))[1]
    # A full runner still answers a repeat: it takes no second slot.
    status, again = await served.launch(headers=key)
    assert status == 200 and again["task_id"] == first["task_id"]
    assert served.pool.active == 1
    await settle()
    assert len(served.rooms.requests) == 1
    assert (await served.launch(headers={"Idempotency-Key": "session-uid-2"}))[0] == 503


async def test_task_states_pending_running_completed(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    served.rooms.join_delay = 0.3
    launched = (await served.launch())[1]
    assert launched["status"] == "pending"
    path = f"/tasks/{launched['task_id']}"
    pending = (await served.call("GET", path))[1]
    assert pending["status"] == "pending" and pending["exit_code"] is None and pending["ended_at"] is None
    await asyncio.sleep(0.5)
    running = (await served.call("GET", path))[1]
    assert running["status"] == "running" and running["room_name"] == "room-1" and running["started_at"]
    served.rooms.end("room-1")
    await settle()
    done = (await served.call("GET", path))[1]
    assert done["status"] == "completed" and done["exit_code"] == 0
    assert done["reason"] == f"agent {AGENT!r} left the room" and done["ended_at"]
    assert served.pool.active == 0
    # Stopping an ended task is harmless: its state, unchanged.
    assert await served.call("POST", f"{path}/stop") == (200, done)


async def test_a_failed_session_reads_failed_with_its_exit_reason(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    served.rooms.outcome = Outcome(ExitCode.TOKEN_REJECTED, "LiveKit rejected the room token: 401 eyJa.eyJb.c")
    task_id = (await served.launch())[1]["task_id"]
    await settle()
    body = (await served.call("GET", f"/tasks/{task_id}"))[1]
    assert body["status"] == "failed" and body["exit_code"] == ExitCode.TOKEN_REJECTED
    assert body["reason"] == "LiveKit rejected the room token: 401 <token>"
    served.rooms.outcome, served.rooms.raises = None, RuntimeError("boom")
    task_id = (await served.launch())[1]["task_id"]
    await settle()
    body = (await served.call("GET", f"/tasks/{task_id}"))[1]
    assert (body["status"], body["exit_code"]) == ("failed", ExitCode.INTERNAL)
    assert served.pool.active == 0


async def test_an_unknown_task_is_404(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    assert (await served.call("GET", "/tasks/nope"))[0] == 404
    assert (await served.call("POST", "/tasks/nope/stop"))[1]["error"] == "not_found"


async def test_sync_launch_answers_once_the_task_joined_or_failed(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api()
    served.rooms.join_delay = 0.3
    loop = asyncio.get_running_loop()
    asked = loop.time()
    status, body = await served.launch(form(async_mode="false"))
    assert status == 200 and body["status"] == "running" and body["joined_at"]
    assert loop.time() - asked >= 0.3
    served.rooms.outcome = Outcome(ExitCode.ROOM_UNREACHABLE, "cannot reach the LiveKit room: refused")
    status, body = await served.launch(form("room-2", async_mode="False"))
    assert (status, body["status"], body["error"]) == (502, "failed", "launch_failed")
    assert body["reason"] == "cannot reach the LiveKit room: refused"


async def test_not_ready_until_loaded_and_shutting_down_after_stop_all(make_api: Callable[..., Awaitable[Api]]) -> None:
    served = await make_api(loaded=False)
    served.pool.accepting = False
    assert await served.call("GET", "/ready", token=None) == (503, {"status": "not_ready"})
    assert (await served.launch())[1]["error"] == "not_ready"
    served.state["loaded"], served.pool.accepting = True, True
    task_id = (await served.launch())[1]["task_id"]
    await settle()
    await served.pool.stop_all("stopped by SIGTERM")
    assert (await served.call("GET", f"/tasks/{task_id}"))[1]["status"] == "stopped"
    assert (await served.launch(form("room-2")))[1]["error"] == "shutting_down"
    assert await served.call("GET", "/ready", token=None) == (503, {"status": "not_ready"})


async def test_no_token_in_the_log_and_no_stack_trace_in_an_answer(
    make_api: Callable[..., Awaitable[Api]], caplog: pytest.LogCaptureFixture
) -> None:
    served = await make_api()
    caplog.set_level(logging.DEBUG)
    data = form()
    await served.launch(data)
    await settle()

    served.state.clear()  # the readiness check now raises KeyError
    response = await served.client.get("/ready")
    assert response.status == 500 and await response.json() == {"status": "error", "error": "internal"}
    assert data["livekit_token"] not in caplog.text and POOL_TOKEN not in caplog.text
    assert "launched for room 'room-1'" in caplog.text


async def test_a_stuck_task_is_cancelled_after_the_stop_timeout() -> None:
    async def stuck(request: TaskRequest, control: TaskControl) -> Outcome:
        control.joined()
        await asyncio.Event().wait()  # ignores its stop
        raise AssertionError("unreachable")

    pool = TaskPool(stuck, 1, stop_timeout=0.2)
    task, _ = pool.launch(parse_launch(form()).request)
    await settle()
    stopped = await pool.stop(task.id, "stopped")
    assert stopped is task and task.state == "stopped" and pool.active == 0


async def test_ended_tasks_are_forgotten_past_the_history() -> None:
    rooms = FakeRooms()
    pool = TaskPool(rooms, 1, history=2)
    ids = []
    for n in range(4):
        task, _ = pool.launch(parse_launch(form(f"room-{n}")).request, f"key-{n}")
        ids.append(task.id)
        await settle()
        await pool.stop(task.id, "done")
    assert [pool.get(i) is not None for i in ids] == [False, False, True, True]
    again, new = pool.launch(parse_launch(form("room-0")).request, "key-0")
    assert new and again.id not in ids  # the key was forgotten with its task
    await pool.stop_all("over")


# --- configuration ---------------------------------------------------------------


def test_serve_config_defaults_and_the_pool_token_file() -> None:
    config = parse_serve_config({"AVATAR_RENDERER": "portrait", "POOL_TOKEN_FILE": "/secret/token"}, lambda _: "s3cret-tok\n")
    assert (config.serve_port, config.max_sessions, config.pool_token) == (SERVE_PORT, DEFAULT_MAX_SESSIONS, "s3cret-tok")
    assert config.renderer is Renderer.PORTRAIT and config.bithuman is None and config.fps == 25.0
    assert "s3cret" not in repr(config)
    assert (SERVE_PORT, DEFAULT_MAX_SESSIONS) == (8089, 8)
    config = parse_serve_config({"AVATAR_RENDERER": "portrait", "POOL_TOKEN": "t", "SERVE_PORT": "0", "MAX_SESSIONS": "2"})
    assert (config.serve_port, config.max_sessions) == (0, 2)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "POOL_TOKEN or POOL_TOKEN_FILE is required"),
        ({"POOL_TOKEN": "  "}, "POOL_TOKEN or POOL_TOKEN_FILE is required"),
        ({"POOL_TOKEN": "a", "POOL_TOKEN_FILE": "/f"}, "set only one of POOL_TOKEN and POOL_TOKEN_FILE"),
        ({"POOL_TOKEN_FILE": "/empty"}, "POOL_TOKEN_FILE '/empty' is empty"),
        ({"POOL_TOKEN": "a", "SERVE_PORT": "http"}, "SERVE_PORT must be an integer"),
        ({"POOL_TOKEN": "a", "SERVE_PORT": "70000"}, "SERVE_PORT must be 0"),
        ({"POOL_TOKEN": "a", "MAX_SESSIONS": "0"}, "MAX_SESSIONS must be between 1 and 256"),
    ],
)
def test_serve_config_errors_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_serve_config({"AVATAR_RENDERER": "portrait", **env}, lambda _: "")


def test_serve_without_a_pool_token_exits_64_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOL_TOKEN", "AVATAR_", "TERMINATION_LOG"))}
    env["AVATAR_RENDERER"] = "portrait"
    proc = subprocess.run(
        [sys.executable, "-m", "avatar_runner", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == ExitCode.CONFIG_INVALID
    assert "POOL_TOKEN or POOL_TOKEN_FILE is required" in proc.stderr.strip().splitlines()[-1]
    proc = subprocess.run(
        [sys.executable, "-m", "avatar_runner", "sever"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == ExitCode.CONFIG_INVALID and "usage" in proc.stderr


# --- the renderer loaded once, and the copies kept in step -----------------------


def test_the_shared_portrait_renderer_is_the_portrait_renderer_without_the_preparation() -> None:
    shared = SharedPortraitRenderer(prepare_portrait(None), fps=25.0, seed=3)
    own = PortraitRenderer(fps=25.0, seed=3)
    assert set(vars(shared)) == set(vars(own))
    for opening in (0.0, 0.5, 1.0, 0.2):
        assert bytes(shared.render(opening).data) == bytes(own.render(opening).data)


def test_task_metrics_has_every_field_of_the_runners_metrics() -> None:
    shared = RunnerMetrics()
    seen: list[bool] = []
    task = room_task.TaskMetrics(shared, lambda: seen.append(True))
    assert set(vars(shared)) <= set(vars(task))
    task.first_frame_published(1.5)
    task.frames_published.inc()
    assert seen == [True] and shared.frames_published._value.get() == 1


async def test_a_launch_image_is_prepared_for_its_session_alone() -> None:
    source = PortraitSource(None, 25.0)
    await source.load()
    drawn = await source.open(None)
    photo = await source.open(jpeg((300, 400)))
    assert isinstance(drawn, SharedPortraitRenderer) and isinstance(photo, SharedPortraitRenderer)
    assert np.any(np.frombuffer(drawn.render(0).data, np.uint8) != np.frombuffer(photo.render(0).data, np.uint8))
    with pytest.raises(RendererRefused) as refused:
        portrait_of_bytes(b"not an image")
    assert refused.value.outcome.code == ExitCode.AVATAR_INVALID


async def test_an_image_url_is_fetched_within_bounds() -> None:
    picture = jpeg()

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "big.jpg":
            return web.Response(body=b"\0" * (13 * 1024 * 1024))
        return web.Response(body=picture) if name == "a.jpg" else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", image)
    server = TestServer(app)
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        assert await fetch_image(f"{base}/a.jpg") == picture
        for name, said in (("gone.jpg", "answered HTTP 404"), ("big.jpg", "is over")):
            with pytest.raises(RendererRefused, match=said) as refused:
                await fetch_image(f"{base}/{name}?X-Signature=secret")
            assert "secret" not in refused.value.outcome.reason
    finally:
        await server.close()


def test_launch_errors_carry_the_field() -> None:
    with pytest.raises(LaunchError) as err:
        parse_launch({"livekit_url": URL})
    assert err.value.field == "livekit_token"
