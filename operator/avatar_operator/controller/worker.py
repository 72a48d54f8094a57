"""One session's lifecycle, from applied to ended: its worker and the order of steps.

A worker (one kopf daemon per AvatarSession) is the single writer of the
session's status. Everything it decides is recorded in status before it acts
on the world, so a restarted operator resumes where the last one stopped:
owned objects have fixed names and are created only when absent, and the cloud
request carries an idempotency key recorded before it is sent. The steps of
each mode live beside it: `local_mode`, `cloud_mode`, then `room_watch`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import aiohttp
import kopf

from avatar_operator import settings as settings_mod
from avatar_operator.api import names, rules
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import token as tokens
from avatar_operator.clients import kube
from avatar_operator.controller import cloud_mode, credentials, local_mode, room_watch
from avatar_operator.controller import mailbox as signals

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason


class Ended(Exception):
    """The session reached a terminal phase; the worker stops."""


@dataclasses.dataclass
class Worker:
    body: kopf.Body
    settings: settings_mod.Settings
    http: aiohttp.ClientSession
    logger: logging.Logger | kopf.Logger
    stopped: kopf.DaemonStopped
    # What the worker has decided, and what the API server has of it.
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    written: dict[str, Any] = dataclasses.field(default_factory=dict)
    _live: tuple[Any, spec_mod.AvatarSessionSpec] | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        self.status = copy.deepcopy(dict(self.body.get("status") or {}))
        self.written = self.status
        meta = self.body.metadata
        self.ref = names.SessionRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))
        self.mailbox = signals.mailbox(self.ref.uid)

    # --- status -----------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self.body.metadata.get("generation") or 1)

    async def record(
        self,
        *,
        phase: Phase | None = None,
        conditions: tuple[tuple[Cond, bool, Reason, str], ...] = (),
        event: tuple[str, str] | None = None,
        warning: bool = False,
        flush: bool = True,
        **fields: Any,
    ) -> None:
        """Updates status (phase, conditions, fields) and posts an Event for the step.

        The status is written at once, or with flush=False it rides on the next
        write: each write costs the API server a validation and a fan-out to
        every watcher, so progress nobody acts on waits for the step after it.
        The worker flushes before anything it waits on (the scheduler, LiveKit,
        bitHuman, a retry), so status never lags behind a wait."""
        # Shallow: status values are replaced, never changed in place.
        new = dict(self.status)
        t = status_mod.now()
        if phase is not None:
            new["phase"] = phase.value
        conds = list(new.get("conditions") or [])
        for ctype, ok, reason, message in conditions:
            conds = status_mod.set_condition(
                conds, ctype, ok, reason, message, self.generation, t
            )
        new["conditions"] = conds
        new["observedGeneration"] = self.generation
        new.update({k: v for k, v in fields.items()})
        self.status = new
        if flush:
            await self.flush()
        if event is not None:
            (kopf.warn if warning else kopf.info)(self.body, reason=event[0], message=event[1])

    async def flush(self) -> None:
        """Writes the decided status when it differs from what the API server has."""
        if self.status != self.written:
            if not await kube.patch_status(self.ref.namespace, self.ref.name, self.status):
                raise Ended  # the session is gone (deleted while we worked)
            self.written = self.status

    def condition(self, ctype: Cond) -> Mapping[str, Any] | None:
        for c in self.status.get("conditions") or []:
            if c.get("type") == ctype.value:
                return dict(c)
        return None

    def is_true(self, ctype: Cond) -> bool:
        c = self.condition(ctype)
        return c is not None and c.get("status") == "True"

    async def fail(self, reason: Reason, message: str, cond: Cond) -> NoReturn:
        await self.record(
            phase=Phase.FAILED,
            conditions=((cond, False, reason, message), (Cond.READY, False, reason, message)),
            event=(reason.value, message),
            warning=True,
            endTime=status_mod.timestamp(status_mod.now()),
        )
        raise Ended

    def end_if_stopped(self) -> None:
        """Ends the worker when kopf stops it (deletion, or the operator exiting)."""
        if self.stopped.is_set():
            raise Ended

    async def succeed(self, reason: Reason, message: str) -> NoReturn:
        await self.record(
            phase=Phase.SUCCEEDED,
            conditions=((Cond.READY, False, reason, message),),
            event=(reason.value, message),
            endTime=status_mod.timestamp(status_mod.now()),
        )
        raise Ended

    # --- the lifecycle ----------------------------------------------------

    async def run(self) -> None:
        if self.status.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value):
            return
        try:
            spec = await self.accept()
            lk, bh = await self.await_credentials(spec)
            if spec.mode == spec_mod.Mode.LOCAL:
                await local_mode.start(self, spec, lk, bh)
            else:
                await cloud_mode.start(self, spec, lk, bh)
            await room_watch.watch(self, spec, lk)
        except Ended:
            pass
        except Exception:
            # kopf retries the daemon after an error; what was decided before
            # it is still true, so it is written rather than lost.
            with contextlib.suppress(Exception):
                await self.flush()
            raise
        finally:
            signals.forget(self.ref.uid)

    async def accept(self) -> spec_mod.AvatarSessionSpec:
        problems = rules.validate(self.body)
        if problems:
            message = "; ".join(f"{p.field}: {p.message}" for p in problems)
            await self.record(
                phase=Phase.FAILED,
                conditions=((Cond.ACCEPTED, False, Reason.INVALID_SPEC, message), (Cond.READY, False, Reason.INVALID_SPEC, message)),
                event=(Reason.INVALID_SPEC.value, message),
                warning=True,
                endTime=status_mod.timestamp(status_mod.now()),
            )
            raise Ended
        spec = spec_mod.parse_spec(self.body)
        identity = spec.avatar_participant.identity if spec.avatar_participant else None
        first = not self.is_true(Cond.ACCEPTED)
        await self.record(
            phase=Phase(self.status.get("phase") or Phase.PENDING.value),
            conditions=((Cond.ACCEPTED, True, Reason.VALID, f"{spec.mode.value} mode session accepted"),),
            event=(Reason.VALID.value, f"accepted: {spec.mode.value} mode, room {spec.room!r}") if first else None,
            mode=spec.mode.value,
            avatarIdentity=identity or spec_mod.DEFAULT_AVATAR_IDENTITY,
            startTime=self.status.get("startTime") or status_mod.timestamp(status_mod.now()),
            flush=False,
        )
        return spec

    async def await_credentials(
        self, spec: spec_mod.AvatarSessionSpec
    ) -> tuple[credentials.LiveKitCredentials, credentials.BithumanCredentials]:
        """Resolves credentials; while any is missing, says which in status and polls.

        Polling (get, never list/watch) keeps the RBAC to `get secrets`; the
        wait grows to 30 s so a forgotten session costs little."""
        delay = 1.0
        last = None

        async def read(name: str) -> Mapping[str, str] | None:
            return await kube.read_secret(self.ref.namespace, name)

        while True:
            names = {
                n
                for n in (
                    spec.livekit.secret_ref.name if spec.livekit and spec.livekit.secret_ref else None,
                    spec.bithuman.secret_ref.name if spec.bithuman and spec.bithuman.secret_ref else None,
                    self.settings.livekit_secret_name,
                    self.settings.bithuman_secret_name,
                )
                if n
            }
            found = {n: await read(n) for n in names}
            try:
                lk = credentials.livekit(spec, self.settings, found.get)
                bh = credentials.bithuman(spec, self.settings, found.get)
            except credentials.MissingCredentials as e:
                if (e.reason, e.message) != last:
                    last = (e.reason, e.message)
                    await self.record(
                        phase=Phase.PENDING,
                        conditions=((Cond.CREDENTIALS_READY, False, Reason(e.reason), e.message),),
                        event=(e.reason, e.message),
                        warning=True,
                    )
                if await self.stopped.wait(delay):
                    raise Ended from None
                delay = min(delay * 2, 30.0)
                continue
            if not self.is_true(Cond.CREDENTIALS_READY):
                # An Event only when it ends a wait that earlier Events reported.
                was_missing = self.condition(Cond.CREDENTIALS_READY) is not None
                await self.record(
                    conditions=((Cond.CREDENTIALS_READY, True, Reason.CREDENTIALS_FOUND, "LiveKit and bitHuman credentials found"),),
                    event=(Reason.CREDENTIALS_FOUND.value, "credentials found") if was_missing else None,
                    flush=False,
                )
            return lk, bh

    def token_ttl(self, spec: spec_mod.AvatarSessionSpec) -> datetime.timedelta:
        return tokens.token_ttl(
            spec.max_duration, self.settings.token_ttl_margin_s, self.settings.token_ttl_default_s
        )

    def identity(self, spec: spec_mod.AvatarSessionSpec) -> tuple[str, str]:
        p = spec.avatar_participant
        return (
            (p.identity if p and p.identity else None) or spec_mod.DEFAULT_AVATAR_IDENTITY,
            (p.name if p and p.name else None) or spec_mod.DEFAULT_AVATAR_NAME,
        )

    def waiting(self, identity: str, present: bool = False) -> tuple[Cond, bool, Reason, str]:
        why = "joined, not yet publishing video" if present else "not in the room yet"
        return (Cond.READY, False, Reason.WAITING_FOR_AVATAR, f"avatar {identity!r} {why}")

    def condition_reason(self, ctype: Cond) -> str | None:
        c = self.condition(ctype)
        return None if c is None else str(c.get("reason"))

    def live_spec(self) -> spec_mod.AvatarSessionSpec:
        """The spec as it is now (maxDuration may be edited while running), parsed once per generation."""
        generation = self.body.metadata.get("generation")
        if self._live is None or self._live[0] != generation:
            self._live = (generation, spec_mod.parse_spec(self.body))
        return self._live[1]
