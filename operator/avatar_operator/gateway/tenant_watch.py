"""Keeping `Tenants` current: list the labelled Secrets, then watch them; list again when a watch ends badly."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from avatar_operator.clients import kube as kube_mod
from avatar_operator.gateway import kube_calls
from avatar_operator.gateway import tenants as tenants_mod

RETRY_S = 2.0
log = logging.getLogger(__name__)


class TenantWatch:
    """One list-then-watch loop per namespace served (never one for all: see settings.namespaces)."""

    def __init__(self, kube: kube_calls.GatewayKube, tenants: tenants_mod.Tenants, namespaces: tuple[str, ...]) -> None:
        self._kube = kube
        self._tenants = tenants
        self._scopes = namespaces
        self._listed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        """Every namespace listed at least once."""
        return len(self._listed) == len(self._scopes)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(scope), name=f"tenant-watch-{scope}") for scope in self._scopes]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _say(self, problems: list[str]) -> None:
        for problem in problems:
            log.warning("%s; its callers are refused until it is fixed", problem)

    async def _run(self, scope: str) -> None:
        while True:
            try:
                secrets, rv = await self._kube.list_tenant_secrets(scope)
                self._say(self._tenants.replace_all(scope, secrets))
                self._listed.add(scope)
                log.info("tenants in %s: %d", scope, len(secrets))
                async for kind, secret in self._kube.watch_tenant_secrets(scope, rv):
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if kind == "BOOKMARK":
                        continue
                    problem = self._tenants.apply(kind, secret)
                    self._say([problem] if problem else [])
            except asyncio.CancelledError:
                raise
            except (kube_mod.ApiError, aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning("tenant watch in %s: %s; listing again in %.0f s", scope, e, RETRY_S)
                await asyncio.sleep(RETRY_S)
