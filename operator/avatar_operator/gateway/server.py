"""The gateway's HTTP server: routes, body decoding, JSON errors and metrics.

A refusal is JSON naming the field; an unexpected failure is a 500 with no
detail (the log has the error's type). Bodies over the limit are refused by
aiohttp (client_max_size) with 413. Headers, keys and tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from avatar_operator.clients import kube as kube_mod
from avatar_operator.gateway import context as context_mod
from avatar_operator.gateway import (
    errors,
    inference_protocol,
    inference_request,
    metrics,
    plugin_protocol,
    plugin_request,
)
from avatar_operator.gateway import keys as keys_mod

GATEWAY = web.AppKey("gateway", context_mod.Gateway)
MAX_BODY = web.AppKey("max_body", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


def _error(refusal: errors.Refusal) -> web.Response:
    headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s is not None else None
    return web.json_response(refusal.body(), status=refusal.status, headers=headers)


def _protocol(request: web.Request) -> str:
    name = request.match_info.route.name or ""
    return name.partition(":")[0] if name.startswith(metrics.PROTOCOLS[:2]) else "other"


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    try:
        response = await handler(request)
    except errors.Refusal as refusal:
        response = _error(refusal)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        response = _error(errors.Refusal(413, "body_too_large", f"the body is over {limit} bytes: send a smaller image or a URL", "body"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error(errors.Refusal(e.status, "http_error", e.reason))
    except kube_mod.ApiError as e:
        log.warning("%s %s: the Kubernetes API answered HTTP %d", request.method, request.path, e.status)
        response = _error(errors.Refusal(502, "kubernetes_error", f"the Kubernetes API answered HTTP {e.status}: try again"))
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("%s %s: the Kubernetes API is unreachable (%s)", request.method, request.path, type(e).__name__)
        response = _error(errors.Refusal(503, "kubernetes_unreachable", "the Kubernetes API is unreachable: retry", retry_after_s=2))
    except Exception as e:  # noqa: BLE001 (whatever it was, the caller gets no trace)
        log.error("%s %s failed: %s", request.method, request.path, type(e).__name__)
        response = _error(errors.Refusal(500, "internal", "the gateway failed on this request"))
    protocol = _protocol(request)
    if protocol != "other":
        metrics.observe(protocol, response.status, time.monotonic() - started)
        log.info("%s %s -> %d in %.3f s", request.method, request.path, response.status, time.monotonic() - started)
    return response


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("body", "the body is not valid JSON", code="malformed_body") from None


async def _form(request: web.Request) -> dict[str, plugin_request.Field]:
    try:
        form = await request.post()
    except ValueError:
        raise errors.bad_request("body", "the form does not decode", code="malformed_body") from None
    fields: dict[str, plugin_request.Field] = {}
    for name, value in form.items():
        if isinstance(value, web.FileField):
            fields[name] = plugin_request.Upload(data=value.file.read(), filename=value.filename)
        else:
            fields[name] = str(value)
    return fields


async def plugin_body(request: web.Request) -> plugin_request.PluginRequest:
    if request.content_type == "application/json":
        return plugin_request.from_json(await _json(request))
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return plugin_request.from_fields(await _form(request))
    raise errors.bad_request(
        "Content-Type", "send application/json, multipart/form-data or application/x-www-form-urlencoded", code="unsupported_media_type"
    )


def _plugin_key(request: web.Request) -> str | None:
    return request.headers.get("api-secret") or keys_mod.bearer(request.headers.get("Authorization"))


async def _launch(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    tenant = context_mod.tenant_for_key(gateway, _plugin_key(request))
    body = await plugin_body(request)
    return web.json_response(await plugin_protocol.launch(gateway, tenant, body))


async def _stop(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    tenant = context_mod.tenant_for_key(gateway, _plugin_key(request))
    info = request.match_info
    task_id = f"{info['namespace']}/{info['name']}" if "namespace" in info else info["task_id"]
    return web.json_response(await plugin_protocol.stop(gateway, tenant, task_id))


async def _create(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    tenant = context_mod.tenant_for_jwt(gateway, keys_mod.bearer(request.headers.get("Authorization")))
    body = inference_request.create_from_json(await _json(request), request.headers.get("Idempotency-Key"))
    return web.json_response(await inference_protocol.create(gateway, tenant, body))


async def _terminate(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    tenant = context_mod.tenant_for_jwt(gateway, keys_mod.bearer(request.headers.get("Authorization")))
    body = inference_request.terminate_from_json(await _json(request))
    return web.json_response(await inference_protocol.terminate(gateway, tenant, body))


async def _healthz(_: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.StreamResponse:
    if request.app[GATEWAY].ready():
        return web.Response(text="ok")
    return _error(errors.Refusal(503, "not_ready", "the tenants are not loaded yet", retry_after_s=1))


async def _metrics(_: web.Request) -> web.StreamResponse:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def app(gateway: context_mod.Gateway, max_body_bytes: int) -> web.Application:
    application = web.Application(middlewares=[_guard], client_max_size=max_body_bytes)
    application[GATEWAY] = gateway
    application[MAX_BODY] = max_body_bytes
    router = application.router
    router.add_post("/launch", _launch, name="plugin:launch")
    router.add_post("/tasks/{namespace}/{name}/stop", _stop, name="plugin:stop")
    router.add_post("/tasks/{task_id}/stop", _stop, name="plugin:stop-one")
    router.add_post("/avatar/sessions", _create, name="inference:create")
    router.add_post("/avatar/sessions/terminate", _terminate, name="inference:terminate")
    router.add_get("/healthz", _healthz)
    router.add_get("/readyz", _readyz)
    router.add_get("/metrics", _metrics)
    return application
