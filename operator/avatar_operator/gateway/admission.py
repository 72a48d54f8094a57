"""Admitting a request: create the session (or find the one a retry made), wait until it holds a runner.

Success is RunnerScheduled=True. A session that does not get a slot within the
admission wait is deleted (so it can't take a slot after the caller gave up)
and the caller is told to come back (503 with Retry-After); both clients retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

from avatar_operator.api import names
from avatar_operator.clients import kube as kube_mod
from avatar_operator.gateway import errors, kube_calls, session_state
from avatar_operator.gateway import session_manifest as manifest_mod
from avatar_operator.gateway import tenants as tenants_mod

State = session_state.State
RELIST_PAUSE_S = 0.2
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Admitted:
    namespace: str
    name: str
    uid: str

    @property
    def task_id(self) -> str:
        return f"{self.namespace}/{self.name}"


def _ref(obj: Mapping[str, Any]) -> Admitted:
    meta = obj["metadata"]
    return Admitted(str(meta["namespace"]), str(meta["name"]), str(meta["uid"]))


def _live(obj: Mapping[str, Any]) -> bool:
    return session_state.seen(obj).state in (State.WAITING, State.SCHEDULED)


class Admission:
    def __init__(self, kube: kube_calls.GatewayKube, wait_s: float, retry_after_s: int) -> None:
        self._kube = kube
        self._wait_s = wait_s
        self._retry_after_s = retry_after_s
        # Counting a tenant's sessions and creating one happen under its lock, so two
        # requests of one gateway can't both take the last place under MAX_SESSIONS.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _busy(self, message: str) -> errors.Refusal:
        return errors.unavailable(message, self._retry_after_s)

    async def admit(self, manifest: manifest_mod.Manifest, tenant: tenants_mod.Tenant, *, replay_finished: bool) -> Admitted:
        """The session holding a runner. A finished one of that name is the answer again when
        `replay_finished` (the same Idempotency-Key), else it is deleted to make room (a new
        launch for the room and identity a past session had)."""
        meta = manifest.session["metadata"]
        obj = await self._kube.read_session(meta["namespace"], meta["name"])
        if obj is None:
            obj = await self._create(manifest, tenant)
        seen = session_state.seen(obj)
        if seen.state is State.FINISHED:
            if replay_finished:
                return _ref(obj)
            await self._kube.delete_session(meta["namespace"], meta["name"], obj["metadata"]["uid"])
            raise self._busy("the previous session of this room and avatar identity is ending: retry")
        return await self._wait(obj)

    async def _create(self, manifest: manifest_mod.Manifest, tenant: tenants_mod.Tenant) -> dict[str, Any]:
        if tenant.max_sessions is None:  # nothing to count: creates of one tenant need not queue
            created = await self._post(manifest)
        else:
            async with self._locks.setdefault(tenant.key, asyncio.Lock()):
                await self._check_limit(tenant)
                created = await self._post(manifest)
        meta = manifest.session["metadata"]
        secret = manifest.image_secret
        obj = created if created is not None else await self._kube.read_session(meta["namespace"], meta["name"])
        if obj is None:  # made by a retry and deleted again in between
            raise self._busy("the session was deleted while this request made it: retry")
        if secret is not None:
            owner = names.owner_reference(names.KIND, obj["metadata"]["name"], obj["metadata"]["uid"])
            await self._kube.own_secret(secret["metadata"]["namespace"], secret["metadata"]["name"], owner)
        return obj

    async def _post(self, manifest: manifest_mod.Manifest) -> dict[str, Any] | None:
        """Creates the image Secret, then the session; None when a session of that name exists."""
        secret = manifest.image_secret
        if secret is not None:
            await self._kube.create(secret)
        try:
            return await self._kube.create_session(manifest.session)
        except kube_mod.ApiError as e:
            if secret is not None:
                await self._kube.delete("Secret", secret["metadata"]["namespace"], secret["metadata"]["name"])
            if e.status in (400, 422):
                raise errors.bad_request("body", f"the API server refused the session: {e}") from None
            raise

    async def _check_limit(self, tenant: tenants_mod.Tenant) -> None:
        if tenant.max_sessions is None:
            return
        sessions = await self._kube.list_sessions(tenant.namespace, manifest_mod.tenant_selector(tenant))
        live = sum(1 for s in sessions if _live(s))
        if live >= tenant.max_sessions:
            raise errors.forbidden(
                f"tenant {tenant.name!r} has {live} live session(s), its MAX_SESSIONS is {tenant.max_sessions}: "
                "end one, or raise MAX_SESSIONS in the tenant Secret",
                code="session_limit",
            )

    async def _wait(self, obj: dict[str, Any]) -> Admitted:
        """Until RunnerScheduled=True (watching the session), a failure, or the admission wait."""
        ref = _ref(obj)
        try:
            async with asyncio.timeout(self._wait_s):
                while (verdict := self._verdict(obj)) is None:
                    obj = await self._next(ref, obj)
                return verdict
        except TimeoutError:
            pass
        await self._kube.delete_session(ref.namespace, ref.name, ref.uid)
        log.info("session %s/%s got no runner within %.1f s: deleted, answering 503", ref.namespace, ref.name, self._wait_s)
        raise self._busy(f"no free runner within {self._wait_s:g} s: retry after {self._retry_after_s} s")

    async def _next(self, ref: Admitted, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The session's next version, watched from `obj`'s resourceVersion; 503 once it is gone."""
        rv = str(obj["metadata"].get("resourceVersion") or "")
        async for kind, changed in self._kube.watch_session(ref.namespace, ref.name, rv, math.ceil(self._wait_s)):
            if kind == "DELETED":
                raise self._busy("the session was deleted before it held a runner: retry")
            if kind == "ERROR":  # e.g. 410: the resourceVersion is too old; read it again
                break
            if kind in ("ADDED", "MODIFIED") and changed.get("metadata", {}).get("uid") == ref.uid:
                return changed
        await asyncio.sleep(RELIST_PAUSE_S)  # a watch that ends at once must not spin
        fresh = await self._kube.read_session(ref.namespace, ref.name)
        if fresh is None or fresh["metadata"].get("uid") != ref.uid:
            raise self._busy("the session was deleted before it held a runner: retry")
        return fresh

    def _verdict(self, obj: Mapping[str, Any]) -> Admitted | None:
        """Admitted when it holds a runner; raises on a failure or a deletion; None while it waits."""
        seen = session_state.seen(obj)
        if seen.state in (State.SCHEDULED, State.FINISHED):
            return _ref(obj)
        if seen.state is State.DELETING:
            raise self._busy("the session is being deleted: retry")
        if seen.state is State.FAILED:
            message = f"the session failed ({seen.reason}): {seen.message}" if seen.reason else seen.message
            if seen.caller_at_fault:
                raise errors.bad_request("body", message, code="session_failed")
            raise errors.Refusal(502, "session_failed", message)
        return None
