"""A pool runner's launch API, as the operator calls it (bitHuman's self-hosted container's API).

The same calls reach our `python -m avatar_runner serve` and bitHuman's own
image: `/health` for its slots, `/ready` for whether its renderer is loaded,
`/launch` (a form) for a session, `/tasks` and `/tasks/{id}` to follow them,
`/tasks/{id}/stop` to end one. Every call but the two probes carries the
pool's Bearer token; no error message here carries it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
from avatar_runner import contract

PROBE_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 10.0
ACTIVE = frozenset({"pending", "running"})
IMAGE_FIELD = "avatar_image"  # the launch form's file (runner/avatar_runner/launch_form.py)


@dataclasses.dataclass(frozen=True)
class Health:
    """What a runner says of itself."""

    loaded: bool  # /ready: 200, or 503 at_capacity (loaded and full)
    active: int
    max_sessions: int


class LaunchRefused(Exception):
    """The runner answered a launch with an error: its HTTP status and its words."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}" if message else f"{status} {error}")
        self.status = status
        self.error = error

    @property
    def at_capacity(self) -> bool:
        return self.status == 503


class Unreachable(Exception):
    """No answer: refused, reset or timed out."""


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _form(fields: dict[str, str], image: bytes | None) -> dict[str, str] | aiohttp.FormData:
    if image is None:
        return fields  # urlencoded
    # Built at each call: a FormData is consumed by the request that sends it.
    form = aiohttp.FormData(fields)
    form.add_field(IMAGE_FIELD, image, filename="avatar-image", content_type="application/octet-stream")
    return form


class RunnerClient:
    """Calls to runners over one HTTP session; `url` is a runner's base URL."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def health(self, url: str) -> Health | None:
        """None when the runner does not answer both probes."""
        try:
            async with self._http.get(url + contract.HEALTH_PATH, timeout=_timeout(PROBE_TIMEOUT_S)) as r:
                health = await _json(r) if r.status == 200 else {}
            async with self._http.get(url + contract.POOL_READY_PATH, timeout=_timeout(PROBE_TIMEOUT_S)) as r:
                ready = await _json(r)
                loaded = r.status == 200 or ready.get("status") == "at_capacity"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None
        active, most = health.get("active_sessions"), health.get("max_sessions")
        if not isinstance(active, int) or not isinstance(most, int):
            return None
        return Health(loaded=loaded, active=active, max_sessions=most)

    async def _call(self, method: str, url: str, token: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            async with self._http.request(method, url, headers=headers, timeout=_timeout(CALL_TIMEOUT_S), **kwargs) as r:
                return r.status, await _json(r)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise Unreachable(f"{method} {url.split('?')[0]}: {type(e).__name__}") from None

    async def active_tasks(self, url: str, token: str) -> set[str] | None:
        """The ids of the tasks holding a slot; None when the runner refuses or is away."""
        try:
            status, body = await self._call("GET", url + contract.TASKS_PATH, token)
        except Unreachable:
            return None
        tasks = body.get("tasks")
        if status != 200 or not isinstance(tasks, list):
            return None
        return {str(t.get("task_id")) for t in tasks if isinstance(t, dict) and t.get("status") in ACTIVE}

    async def launch(
        self, url: str, token: str, form: dict[str, str], idempotency_key: str, image: bytes | None = None
    ) -> str:
        """The task id of the launch (the same for a repeated key); LaunchRefused or Unreachable.

        With `image`, the form goes multipart with the file as `avatar_image`, as the plugin uploads one."""
        status, body = await self._call(
            "POST", url + contract.LAUNCH_PATH, token, data=_form(form, image), headers={"Idempotency-Key": idempotency_key}
        )
        task_id = body.get("task_id")
        if status == 200 and isinstance(task_id, str) and task_id:
            return task_id
        raise LaunchRefused(status, str(body.get("error") or "error"), str(body.get("message") or ""))

    async def task(self, url: str, token: str, task_id: str) -> dict[str, Any] | None:
        """The task's state; None when the runner does not know it."""
        status, body = await self._call("GET", f"{url}{contract.TASKS_PATH}/{task_id}", token)
        return body if status == 200 else None

    async def stop(self, url: str, token: str, task_id: str) -> None:
        """Ends the task; one already ended or unknown is fine."""
        await self._call("POST", f"{url}{contract.TASKS_PATH}/{task_id}/stop", token)
