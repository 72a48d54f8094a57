"""The viewer's HTTP server: the page, the session list and status, and viewer tokens.

Bound to loopback by default. Requests whose Host is not the address it
listens on are refused, so a web page elsewhere can't reach it through a
DNS name rebound to 127.0.0.1 and read sessions with the user's kubeconfig.
"""

from __future__ import annotations

import ipaddress
import pathlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from avatar_operator.clients import kube as kube_mod
from avatar_operator.viewer import access as access_mod
from avatar_operator.viewer import assets, session_view

ACCESS = web.AppKey("access", access_mod.Access)
STATIC = web.AppKey("static", pathlib.Path)
ALLOWED_HOSTS = web.AppKey("allowed_hosts", frozenset)
# The page loads only what this server serves; media and LiveKit's signalling are the exceptions.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss: http: https:"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allowed_hosts(address: str, port: int) -> frozenset[str]:
    """The Host headers to accept; empty (any) when the address is not loopback."""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if not loopback:
        return frozenset()
    host = f"[{address}]" if ":" in address else address
    return frozenset({f"{host}:{port}", f"localhost:{port}"})


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    hosts = request.app[ALLOWED_HOSTS]
    if hosts and request.host not in hosts:
        return web.json_response({"error": f"Host {request.host!r} refused: open {min(hosts)}"}, status=421)
    try:
        response = await handler(request)
    except access_mod.ViewerError as e:
        return web.json_response({"error": e.message}, status=e.status)
    except kube_mod.ApiError as e:
        return web.json_response({"error": f"the API server refused: {e}"}, status=502)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


async def _file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file") or "index.html"
    if name not in assets.FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(request.app[STATIC] / name, headers={"Content-Type": assets.FILES[name]})


async def _sessions(request: web.Request) -> web.StreamResponse:
    access = request.app[ACCESS]
    sessions = [session_view.summary(o) for o in await access.sessions()]
    return web.json_response({"namespace": access.namespace, "sessions": sessions})


async def _session(request: web.Request) -> web.StreamResponse:
    obj = await request.app[ACCESS].session(request.match_info["name"])
    return web.json_response(session_view.detail(obj))


async def _token(request: web.Request) -> web.StreamResponse:
    grant = await request.app[ACCESS].grant(request.match_info["name"])
    return web.json_response(grant.as_json())


async def _healthz(_: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def app(access: access_mod.Access, static: pathlib.Path, hosts: frozenset[str]) -> web.Application:
    application = web.Application(middlewares=[_guard])
    application[ACCESS] = access
    application[STATIC] = static
    application[ALLOWED_HOSTS] = hosts
    application.router.add_get("/healthz", _healthz)
    application.router.add_get("/api/sessions", _sessions)
    application.router.add_get("/api/sessions/{name}", _session)
    application.router.add_post("/api/sessions/{name}/token", _token)
    application.router.add_get("/", _file)
    application.router.add_get("/{file}", _file)
    return application
