"""A fake of bitHuman's cloud API, for tests only (design.md §5).

It speaks the request formats `livekit-plugins-bithuman` sends and answers as
bitHuman documents: the session request (JSON with an `api-secret` header, or a
form with `Authorization: Bearer`), and the runtime-token mint. It
checks what the real service checks that a test can observe: credentials,
required fields, model names, and that a minted token is used only for the
agent, room and LiveKit URL it was minted for.

Use it in-process::

    async with FakeBithumanAPI(api_secret="s") as fake:
        fake.script([{"status": 503}, {}])   # the next session requests
        ... fake.url, fake.custom_url, fake.mint_url ...
        fake.requests, fake.sessions

or as a process, for an operator running separately::

    python -m tests.fakes.bithuman_api --port 0 --api-secret s
    # prints one JSON line: {"base_url": ..., "url": ..., "custom_url": ..., "mint_url": ...}

and drive it over HTTP: `POST /_control/script?route=session|mint` with a JSON
list of entries, `GET /_control/requests`, `GET /_control/sessions`,
`POST /_control/reset`.

A script entry applies to one request on its route, in order:
`{"delay": s}` waits first; `{"drop": true}` closes the connection without an
answer; `{"status": n, "body": ..., "headers": {...}}` with a non-2xx `n`, or
with a `body`, answers that instead of handling the request; anything else
(`{}`, `{"status": 200}`) handles the request normally.

A session request whose `Idempotency-Key` was already accepted is answered
with the first answer and counted as a replay, not as a second session. The
recorded requests hold credentials; that is fine for a test double.

Billing, as bitHuman documents it: a session bills by the second from its
start until `POST /v1/runtime-sessions/{session_id}/end` (header `api-secret`;
a repeat is harmless; 404 for an unknown id), or, for a launch at the custom
endpoint (answered with a `task_id`, as the self-hosted container does),
until `POST /custom/tasks/{task_id}/stop`. `sessions` shows each one's
`billed_seconds`, `started_at` and `ended_at` (wall-clock seconds).

`plan_limit` (`--plan-limit`, or `POST /_control/config {"plan_limit": n}`)
refuses a start while n sessions bill: 403 CONCURRENCY_LIMIT_REACHED, with
`Retry-After: retry_after` when that is set. `{"down_for": s}` makes every
API route answer 503 SERVICE_UNAVAILABLE for s seconds (`{"down_for": 0}`
ends it). `GET /_control/stats` reads `peak_live` (the most sessions billing
at once) and `concurrency_refusals`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import hashlib
import json
import secrets
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

REQUEST_PATH = "/v1/runtime-tokens/request"
CUSTOM_PATH = "/custom/launch"
END_PATH = "/v1/runtime-sessions/{session_id}/end"
SESSION_PATH = "/v1/runtime-sessions/{session_id}"
TASK_STOP_PATH = "/custom/tasks/{task_id}/stop"
MINT_PATH = "/v1/runtime-tokens/mint"
MODELS = ("expression", "essence", "expression-2", "essence-2")
MINT_SCOPE = "livekit-cloud"
MINT_LIFETIME_S = 3600
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class Route(enum.StrEnum):
    SESSION = "session"
    MINT = "mint"
    END = "end"  # a runtime-sessions end or a task stop


@dataclass
class Session:
    idempotency_key: str | None
    path: str
    format: str
    room_name: str
    livekit_url: str
    agent_id: str | None
    model: str | None
    mode: str | None
    session_id: str
    replays: int = 0
    task_id: str | None = None  # a launch at the custom endpoint
    started_at: float = 0.0  # time.time()
    ended_at: float | None = None
    end_calls: int = 0

    def billed_seconds(self, now: float) -> float:
        return round((self.ended_at if self.ended_at is not None else now) - self.started_at, 3)


@dataclass(frozen=True)
class _Scope:
    agent_code: str
    room_name: str
    livekit_url: str


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class FakeBithumanAPI:
    def __init__(
        self,
        *,
        api_secret: str | None = None,
        api_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        plan_limit: int | None = None,
    ) -> None:
        # With api_secret None any non-empty credential is accepted.
        self.api_secret = api_secret
        self.plan_limit = plan_limit
        self.retry_after: float | None = None  # on a concurrency refusal
        self.down_until = 0.0  # time.monotonic()
        self.peak_live = 0
        self.concurrency_refusals = 0
        self.api_token = api_token
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.requests: list[dict[str, Any]] = []
        self._sessions: dict[str, tuple[Session, int, dict[str, Any]]] = {}
        self._unkeyed: list[Session] = []
        self._scripts: dict[Route, list[dict[str, Any]]] = {route: [] for route in Route}
        self._minted: dict[str, _Scope] = {}

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()  # wakes delayed handlers, which then drop
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBithumanAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(REQUEST_PATH, self._session)
        app.router.add_post(CUSTOM_PATH, self._session)
        app.router.add_post(MINT_PATH, self._mint)
        app.router.add_post(END_PATH, self._end)
        app.router.add_get(SESSION_PATH, self._read_session)
        app.router.add_post(TASK_STOP_PATH, self._stop_task)
        app.router.add_post("/_control/config", self._control_config)
        app.router.add_get("/_control/stats", self._control_stats)
        app.router.add_post("/_control/script", self._control_script)
        app.router.add_get("/_control/requests", self._control_requests)
        app.router.add_get("/_control/sessions", self._control_sessions)
        app.router.add_post("/_control/reset", self._control_reset)
        return app

    # -- what tests read and set ---------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def url(self) -> str:
        """Stands in for https://auth.api.bithuman.ai/v1/runtime-tokens/request."""
        return self.base_url + REQUEST_PATH

    @property
    def custom_url(self) -> str:
        """A self-hosted worker endpoint (add `?async=true` as a user would)."""
        return self.base_url + CUSTOM_PATH

    @property
    def mint_url(self) -> str:
        return self.base_url + MINT_PATH

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """Accepted sessions, one per idempotency key, in acceptance order, with what each billed."""
        now = time.time()
        return [{**asdict(s), "billed_seconds": s.billed_seconds(now)} for s in self._all()]

    def _all(self) -> list[Session]:
        keyed = sorted(self._sessions.values(), key=lambda entry: entry[1])
        return [s for s, _, _ in keyed] + list(self._unkeyed)

    def live(self) -> int:
        return sum(1 for s in self._all() if s.ended_at is None)

    @property
    def stats(self) -> dict[str, Any]:
        return {"peak_live": self.peak_live, "live": self.live(), "concurrency_refusals": self.concurrency_refusals}

    def configure(self, config: dict[str, Any]) -> None:
        if "plan_limit" in config:
            self.plan_limit = None if config["plan_limit"] is None else int(config["plan_limit"])
        if "retry_after" in config:
            self.retry_after = None if config["retry_after"] is None else float(config["retry_after"])
        if "down_for" in config:
            self.down_until = time.monotonic() + float(config["down_for"])

    def script(self, entries: list[dict[str, Any]], route: Route = Route.SESSION) -> None:
        self._scripts[route].extend(entries)

    def reset(self) -> None:
        self.requests.clear()
        self._sessions.clear()
        self._unkeyed.clear()
        self._minted.clear()
        for queue in self._scripts.values():
            queue.clear()
        self.plan_limit, self.retry_after, self.down_until = None, None, 0.0
        self.peak_live = self.concurrency_refusals = 0

    # -- the API -------------------------------------------------------------

    async def _session(self, request: web.Request) -> web.StreamResponse:
        record, fields = await self._record(request, Route.SESSION)
        if self._down():
            return self._answer(record, self._unavailable())
        key = record["idempotency_key"]
        replay = self._replay(key)
        if replay is not None:
            return self._answer(record, replay)
        entry = self._scripts[Route.SESSION].pop(0) if self._scripts[Route.SESSION] else {}
        scripted = await self._play(request, record, entry)
        if scripted is not None:
            return scripted
        # Another attempt with this key may have been accepted while this one waited.
        replay = self._replay(key)
        if replay is not None:
            return self._answer(record, replay)

        denied = self._check_credential(request, record, fields)
        if denied is not None:
            return self._answer(record, denied)
        invalid = self._check_session_fields(record, fields)
        if invalid is not None:
            return self._answer(record, invalid)
        if self.plan_limit is not None and self.live() >= self.plan_limit:
            self.concurrency_refusals += 1
            refused = _error(403, "CONCURRENCY_LIMIT_REACHED", f"the plan allows {self.plan_limit} concurrent sessions")
            if self.retry_after is not None:
                refused.headers["Retry-After"] = f"{self.retry_after:g}"
            return self._answer(record, refused)

        custom = request.path == CUSTOM_PATH
        session = Session(
            idempotency_key=key,
            path=request.path,
            format=record["format"],
            room_name=fields["room_name"],
            livekit_url=fields["livekit_url"],
            agent_id=fields.get("agent_id") or fields.get("avatar_id"),
            model=fields.get("model"),
            mode=fields.get("mode"),
            session_id=f"sess_{uuid.uuid4().hex[:12]}",
            task_id=f"task_{uuid.uuid4().hex[:12]}" if custom else None,
            started_at=time.time(),
        )
        body: dict[str, Any] = {"success": True, "session_id": session.session_id, "room_name": session.room_name}
        if session.model:
            body["model"] = session.model
        if custom:  # the self-hosted container's launch answer
            body = {"status": "pending", "task_id": session.task_id}
        if key is None:
            self._unkeyed.append(session)
        else:
            self._sessions[key] = (session, len(self._sessions), body)
        self.peak_live = max(self.peak_live, self.live())
        return self._answer(record, web.json_response(body))

    async def _end(self, request: web.Request) -> web.StreamResponse:
        record, _ = await self._record(request, Route.END)
        return await self._finish(request, record, lambda s: s.session_id == request.match_info["session_id"], bearer=False)

    async def _stop_task(self, request: web.Request) -> web.StreamResponse:
        record, _ = await self._record(request, Route.END)
        return await self._finish(request, record, lambda s: s.task_id == request.match_info["task_id"], bearer=True)

    async def _finish(self, request: web.Request, record: dict[str, Any], match: Any, *, bearer: bool) -> web.StreamResponse:
        """Ends the session `match` picks: billing stops; a repeat answers the same."""
        if self._down():
            return self._answer(record, self._unavailable())
        entry = self._scripts[Route.END].pop(0) if self._scripts[Route.END] else {}
        scripted = await self._play(request, record, entry)
        if scripted is not None:
            return scripted
        if bearer:
            auth = request.headers.get("Authorization", "")
            credential = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        else:
            credential = request.headers.get("api-secret", "")
        if not credential:
            return self._answer(record, _error(401, "MISSING_AUTH", "no credential"))
        if self.api_secret is not None and credential not in (self.api_secret, self.api_token):
            return self._answer(record, _error(401, "UNAUTHORIZED", "invalid credential"))
        session = next((s for s in self._all() if match(s)), None)
        if session is None:
            return self._answer(record, _error(404, "NOT_FOUND", "no such session"))
        session.end_calls += 1
        if session.ended_at is None:
            session.ended_at = time.time()
        return self._answer(record, web.json_response(self._describe(session)))

    async def _read_session(self, request: web.Request) -> web.Response:
        session = next((s for s in self._all() if s.session_id == request.match_info["session_id"]), None)
        if session is None:
            return _error(404, "NOT_FOUND", "no such session")
        return web.json_response(self._describe(session))

    @staticmethod
    def _describe(session: Session) -> dict[str, Any]:
        billed = session.billed_seconds(time.time())
        return {
            "session_id": session.session_id,
            "status": "ended" if session.ended_at is not None else "live",
            "billed_seconds": billed,
            "credits": round(billed / 60, 3),
        }

    def _down(self) -> bool:
        return time.monotonic() < self.down_until

    @staticmethod
    def _unavailable() -> web.Response:
        response = _error(503, "SERVICE_UNAVAILABLE", "down for a while (scripted)")
        response.headers["Retry-After"] = "1"
        return response

    async def _mint(self, request: web.Request) -> web.StreamResponse:
        record, fields = await self._record(request, Route.MINT)
        if self._down():
            return self._answer(record, self._unavailable())
        entry = self._scripts[Route.MINT].pop(0) if self._scripts[Route.MINT] else {}
        scripted = await self._play(request, record, entry)
        if scripted is not None:
            return scripted
        secret = request.headers.get("api-secret")
        if not secret:
            return self._answer(record, _error(401, "MISSING_AUTH", "no api-secret header"))
        if self.api_secret is not None and secret != self.api_secret:
            return self._answer(record, _error(401, "UNAUTHORIZED", "invalid API secret"))
        if fields.get("scope") != MINT_SCOPE:
            return self._answer(
                record, _error(400, "INVALID_SCOPE", f"scope must be {MINT_SCOPE!r}")
            )
        missing = [f for f in ("agent_code", "room_name", "livekit_url") if not fields.get(f)]
        if missing:
            return self._answer(
                record, _error(400, "INVALID_REQUEST", f"missing fields: {', '.join(missing)}")
            )
        token = "bhrt_" + secrets.token_urlsafe(24)
        self._minted[token] = _Scope(
            fields["agent_code"], fields["room_name"], fields["livekit_url"]
        )
        return self._answer(
            record,
            web.json_response(
                {"scoped_token": token, "expires_at": int(time.time()) + MINT_LIFETIME_S}
            ),
        )

    # -- helpers -------------------------------------------------------------

    async def _record(
        self, request: web.Request, route: Route
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Appends the request to `requests` and returns it with its fields."""
        record: dict[str, Any] = {
            "route": str(route),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "content_type": request.content_type,
            "idempotency_key": request.headers.get("Idempotency-Key"),
            "format": None,
            "json": None,
            "form": None,
            "files": None,
            "status": None,  # set once answered; stays None when dropped
        }
        self.requests.append(record)
        fields: dict[str, Any] = {}
        if request.content_type == "application/json":
            record["format"] = "json"
            try:
                record["json"] = await request.json()
            except ValueError:
                record["json"] = None
            if isinstance(record["json"], dict):
                fields = record["json"]
        elif request.content_type in _FORM_TYPES:
            # A form without a file goes out urlencoded (aiohttp's FormData, in
            # the plugin too); bitHuman's FastAPI workers read both alike.
            record["format"] = "form"
            form: dict[str, str] = {}
            files: dict[str, dict[str, Any]] = {}
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    data = value.file.read()
                    files[name] = {
                        "filename": value.filename,
                        "content_type": value.content_type,
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                else:
                    form[name] = str(value)
            record["form"], record["files"] = form, files
            fields = {**form, **files}
        return record, fields

    async def _play(
        self, request: web.Request, record: dict[str, Any], entry: dict[str, Any]
    ) -> web.StreamResponse | None:
        """Applies a script entry; a response when it replaces normal handling."""
        delay = float(entry.get("delay", 0))
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        if entry.get("drop") or self._closing.is_set():
            return self._drop(request)
        status = int(entry.get("status", 200))
        if 200 <= status < 300 and "body" not in entry:
            return None
        body = entry.get("body", {"error": {"code": "SCRIPTED", "message": f"scripted {status}"}})
        text = body if isinstance(body, str) else json.dumps(body)
        response = web.Response(
            status=status,
            text=text,
            content_type="text/plain" if isinstance(body, str) else "application/json",
            headers=entry.get("headers") or {},
        )
        return self._answer(record, response)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client; aiohttp needs a return value all the same.
        return web.Response(status=499)

    def _replay(self, key: str | None) -> web.Response | None:
        if key is None or key not in self._sessions:
            return None
        session, _, body = self._sessions[key]
        session.replays += 1
        return web.json_response(body)

    @staticmethod
    def _answer(record: dict[str, Any], response: web.Response) -> web.Response:
        record["status"] = response.status
        return response

    def _check_credential(
        self, request: web.Request, record: dict[str, Any], fields: dict[str, Any]
    ) -> web.Response | None:
        if record["format"] == "form":
            auth = request.headers.get("Authorization", "")
            credential = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        else:
            credential = request.headers.get("api-secret", "")
        if not credential:
            return _error(401, "MISSING_AUTH", "no credential")
        scope = self._minted.get(credential)
        if scope is not None:
            agent = fields.get("agent_id") or fields.get("avatar_id")
            if (scope.agent_code, scope.room_name, scope.livekit_url) != (
                agent,
                fields.get("room_name"),
                fields.get("livekit_url"),
            ):
                return _error(
                    403, "TOKEN_SCOPE_MISMATCH", "token minted for another agent, room or URL"
                )
            return None
        if self.api_secret is not None and credential not in (self.api_secret, self.api_token):
            return _error(401, "UNAUTHORIZED", "invalid credential")
        return None

    @staticmethod
    def _check_session_fields(
        record: dict[str, Any], fields: dict[str, Any]
    ) -> web.Response | None:
        if record["format"] is None:
            return _error(415, "UNSUPPORTED_MEDIA_TYPE", "send JSON or a form")
        missing = [f for f in ("livekit_url", "livekit_token", "room_name") if not fields.get(f)]
        if missing:
            return _error(400, "INVALID_REQUEST", f"missing fields: {', '.join(missing)}")
        model = fields.get("model")
        if model is not None and model not in MODELS:
            return _error(400, "INVALID_MODEL", f"model must be one of {', '.join(MODELS)}")
        mode = fields.get("mode")
        if mode is not None and mode not in ("gpu", "cpu"):
            return _error(400, "INVALID_REQUEST", "mode must be gpu or cpu")
        avatar = ("agent_id", "avatar_id", "image", "avatar_image", "avatar_image_url")
        if not any(fields.get(f) for f in avatar):
            return _error(400, "INVALID_REQUEST", "name an agent or send an image")
        return None

    # -- control -------------------------------------------------------------

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            route = Route(request.query.get("route", Route.SESSION))
        except ValueError:
            return _error(400, "INVALID_ROUTE", f"route must be one of {[str(r) for r in Route]}")
        entries = await request.json()
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            return _error(400, "INVALID_SCRIPT", "send a JSON list of objects")
        self.script(entries, route)
        return web.json_response({"queued": len(self._scripts[route])})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _control_sessions(self, request: web.Request) -> web.Response:
        return web.json_response(self.sessions)

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _control_config(self, request: web.Request) -> web.Response:
        config = await request.json()
        if not isinstance(config, dict):
            return _error(400, "INVALID_CONFIG", "send a JSON object")
        self.configure(config)
        return web.json_response(self.stats)

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeBithumanAPI(
        api_secret=args.api_secret, api_token=args.api_token, host=args.host, port=args.port, plan_limit=args.plan_limit
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with fake:
        urls = {
            "base_url": fake.base_url,
            "url": fake.url,
            "custom_url": fake.custom_url,
            "mint_url": fake.mint_url,
        }
        print(json.dumps(urls), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake of bitHuman's cloud API (tests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-secret", default=None, help="the account secret to accept")
    parser.add_argument("--api-token", default=None, help="a Bearer token to accept too")
    parser.add_argument("--plan-limit", type=int, default=None, help="concurrent sessions the plan allows")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
