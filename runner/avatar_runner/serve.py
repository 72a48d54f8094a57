"""`python -m avatar_runner serve`: a pool runner, with bitHuman's launch API.

It loads its renderer once and serves, on SERVE_PORT (8089), the HTTP API of
bitHuman's self-hosted avatar container, so a pool may run this runner or
bitHuman's image:

    POST /launch              a form (urlencoded or multipart; `launch_form`):
                              200 the task ({"status": "pending", "task_id": ...});
                              with async_mode=false once it joined the room
                              (502 when it failed first); 400 naming a bad field;
                              401; 413 over MAX_BODY_BYTES; 503 at_capacity,
                              not_ready or shutting_down. An Idempotency-Key
                              header makes a repeat answer the same task.
    GET  /tasks/{id}          200 the task's state; 404
    POST /tasks/{id}/stop     the session leaves its room; 200 its state (also
                              when it had ended); 404
    GET  /tasks               the tasks holding a slot
    GET  /health              {"active_sessions": N, "max_sessions": M}
    GET  /ready               200 {"status": "ready"}: loaded and a slot free;
                              else 503 {"status": "not_ready" | "at_capacity"}
    GET  /metrics             Prometheus: the sessions' counters, added up

/launch and /tasks take only `Authorization: Bearer <POOL_TOKEN>`; /health,
/ready and /metrics are open, for probes and scrapes. Answers are JSON and
never carry a stack trace; no log line carries a token. SIGTERM: launches
are refused, every task is stopped, and the runner exits 0.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client
from aiohttp import web

from . import health
from .config import ServeConfig
from .exits import ExitCode, Outcome, RunnerFailure, redact_tokens
from .launch_form import Field, LaunchError, idempotency_key, parse_launch
from .tasks import AtCapacity, NotAccepting, Task, TaskPool, TaskState

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 12 * 1024 * 1024
SYNC_LAUNCH_TIMEOUT_S = 60.0  # async_mode=false: the image, the renderer and the join
_ERRORS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, message: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"status": "error", "error": error, **extra}
    if message is not None:
        body["message"] = message
    return web.json_response(body, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _error(err.status, _ERRORS.get(err.status, "http_error"), err.reason)
    except Exception:
        log.error("error answering %s %s: %s", request.method, request.path, redact_tokens(traceback.format_exc()))
        return _error(500, "internal")


async def _form(request: web.Request) -> dict[str, Field]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    try:
        posted = await request.post()
    except ValueError:  # a broken multipart body, or one not in its charset
        raise LaunchError("body", "the body is not a readable form (urlencoded or multipart)") from None
    fields: dict[str, Field] = {}
    for name, value in posted.items():
        if isinstance(value, web.FileField):
            with value.file:  # a temporary file, in /tmp
                fields[name] = value.file.read()
        else:
            fields[name] = value if isinstance(value, str) else bytes(value)
    return fields


class PoolMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry, pool: TaskPool) -> None:
        active = prometheus_client.Gauge(
            "avatar_pool_sessions_active", "Sessions holding a slot.", registry=registry
        )
        active.set_function(lambda: pool.active)
        prometheus_client.Gauge(
            "avatar_pool_sessions_max", "Slots (MAX_SESSIONS).", registry=registry
        ).set(pool.max_sessions)
        self.launches = prometheus_client.Counter(
            "avatar_pool_launches", "POST /launch answers, by result.", ["result"], registry=registry
        )


class LaunchApi:
    """The HTTP side; the sessions are `pool`'s."""

    def __init__(
        self,
        pool: TaskPool,
        token: str,
        *,
        loaded: Callable[[], bool],
        registry: prometheus_client.CollectorRegistry | None = None,
        sync_timeout: float = SYNC_LAUNCH_TIMEOUT_S,
    ) -> None:
        self.pool = pool
        self._token = token.encode()
        self._loaded = loaded
        self._registry = registry or prometheus_client.CollectorRegistry()
        self._metrics = PoolMetrics(self._registry, pool)
        self._sync_timeout = sync_timeout

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
        app.router.add_post("/launch", self._launch)
        app.router.add_get("/tasks", self._list)
        app.router.add_get("/tasks/{task_id}", self._task)
        app.router.add_post("/tasks/{task_id}/stop", self._stop)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        return app

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def _unauthorised(self) -> web.Response:
        response = _error(401, "unauthorized", "a Bearer token (the pool's) is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _refusal(self) -> str:
        return "not_ready" if not self._loaded() else "shutting_down" if not self.pool.accepting else "at_capacity"

    async def _launch(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            self._metrics.launches.labels("unauthorized").inc()
            return self._unauthorised()
        try:
            launch = parse_launch(await _form(request))
            key = idempotency_key(request.headers.get("Idempotency-Key"))
        except LaunchError as err:
            self._metrics.launches.labels("invalid").inc()
            return _error(400, "invalid_request", str(err), field=err.field)
        try:
            task, new = self.pool.launch(launch.request, key)
        except (AtCapacity, NotAccepting):
            refusal = self._refusal()
            self._metrics.launches.labels(refusal).inc()
            return _error(503, refusal, max_sessions=self.pool.max_sessions)
        self._metrics.launches.labels("launched" if new else "repeated").inc()
        if launch.async_mode:
            return web.json_response(task.to_json())
        try:
            await asyncio.wait_for(task.settled.wait(), self._sync_timeout)
        except asyncio.TimeoutError:
            pass  # still pending: the caller reads /tasks/{id}
        if task.state is TaskState.FAILED:
            return web.json_response({**task.to_json(), "error": "launch_failed"}, status=502)
        return web.json_response(task.to_json())

    def _known(self, request: web.Request) -> Task | web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        task = self.pool.get(request.match_info["task_id"])
        return task if task is not None else _error(404, "not_found", "no such task")

    async def _task(self, request: web.Request) -> web.Response:
        task = self._known(request)
        return task if isinstance(task, web.Response) else web.json_response(task.to_json())

    async def _stop(self, request: web.Request) -> web.Response:
        task = self._known(request)
        if isinstance(task, web.Response):
            return task
        await self.pool.stop(task.id, f"stopped by POST /tasks/{task.id}/stop")
        return web.json_response(task.to_json())

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        return web.json_response({"tasks": [task.to_json() for task in self.pool.active_tasks()]})

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"active_sessions": self.pool.active, "max_sessions": self.pool.max_sessions})

    async def _ready(self, _: web.Request) -> web.Response:
        if self._loaded() and self.pool.accepting and not self.pool.full:
            return web.json_response({"status": "ready"})
        status = "at_capacity" if self._loaded() and self.pool.accepting else "not_ready"
        return web.json_response({"status": status}, status=503)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


class LaunchServer:
    """`api` on `port` (0: a free one), all interfaces."""

    def __init__(self, api: LaunchApi, port: int) -> None:
        self._runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=5.0)
        self._port = port
        self.port = port

    async def start(self) -> None:
        self.port = await health.listen(self._runner, self._port, "SERVE_PORT")
        log.info("launch API on port %d", self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()


async def _first(aw: Awaitable[None], stopping: asyncio.Event) -> bool:
    """Awaits `aw` unless `stopping` is set first (then cancels it): whether it finished."""
    work = asyncio.ensure_future(aw)
    waiter = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not work.done():
        work.cancel()
        return False
    work.result()
    return True


async def serve(config: ServeConfig) -> Outcome:
    """The pool runner until SIGTERM: its outcome (a refused renderer, a taken port, or OK)."""
    from .health import RunnerMetrics
    from .room_task import RoomTasks
    from .serve_renderers import renderer_source

    stopping = asyncio.Event()
    reason = ["stopped"]

    def stop(signame: str) -> None:
        reason[0] = f"stopped by {signame}"
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum.name)
    metrics = RunnerMetrics()
    source = renderer_source(config)
    pool = TaskPool(RoomTasks(config, source, metrics), config.max_sessions)
    pool.accepting = False  # until the renderer is loaded
    api = LaunchApi(pool, config.pool_token, loaded=lambda: source.loaded, registry=metrics.registry)
    server = LaunchServer(api, config.serve_port)
    try:
        await server.start()
        if await _first(source.load(), stopping):
            pool.accepting = True
            log.info("ready: %d sessions, %s renderer, port %d", config.max_sessions, config.renderer, server.port)
            await stopping.wait()
        log.info("%s: stopping %d sessions", reason[0], pool.active)
        await pool.stop_all(reason[0])
        return Outcome(ExitCode.OK, reason[0])
    except RunnerFailure as failure:
        return failure.outcome
    except Exception as err:
        log.error("pool runner failed: %s", redact_tokens(traceback.format_exc()))
        return Outcome(ExitCode.INTERNAL, f"unexpected error: {type(err).__name__}: {err}")
    finally:
        pool.accepting = False
        await server.stop()
        await source.aclose()
