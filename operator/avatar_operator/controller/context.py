"""A session's working state: its status as decided and as written, and how it is written.

The worker and its steps (`local_mode`, `cloud_mode`, `room_watch`) share one
`SessionContext`; it is the session's only status writer. Everything a step
decides goes into `status` first and reaches the API server with the next
flush, which comes before anything the worker waits on, so a restarted
operator resumes from status where the last one stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from typing import Any, NoReturn

import kopf

from avatar_operator import metrics
from avatar_operator import settings as settings_mod
from avatar_operator.api import conditions, names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.build import token as token_mod
from avatar_operator.controller import claims, cloud_queue, decisions, mailbox, ports

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = conditions.Change

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)
# Longer than kopf's watch takes to bring a write back (its batching window is 0.1 s).
WATCH_LAG_S = 3.0
PHASE_ORDER = {Phase.PENDING: 0, Phase.STARTING: 1, Phase.RUNNING: 2, Phase.SUCCEEDED: 3, Phase.FAILED: 3}


class Ended(Exception):
    """The session reached a terminal phase, or is gone; the worker stops."""


class AnotherOperator(Ended):
    """Another operator acts on the session; this one lets go of it."""


@dataclasses.dataclass
class SessionContext:
    body: kopf.Body
    settings: settings_mod.Settings
    clients: ports.Clients
    logger: logging.Logger | kopf.Logger
    stopped: ports.Flag
    claims: claims.Index = dataclasses.field(default_factory=claims.NoClaims)
    # The line at each bitHuman credential's concurrency budget (cloud mode).
    cloud_queue: cloud_queue.Queue = dataclasses.field(default_factory=cloud_queue.Queue)
    ref: names.SessionRef = dataclasses.field(init=False)
    mailbox: mailbox.Mailbox = dataclasses.field(init=False)
    # What the worker has decided, and what the API server has of it.
    status: status_mod.AvatarSessionStatus = dataclasses.field(init=False)
    written: status_mod.AvatarSessionStatus = dataclasses.field(init=False)
    _live: tuple[Any, spec_mod.AvatarSessionSpec] | None = dataclasses.field(default=None, init=False)
    # When this operator last wrote: kopf's watch brings the write back to the body a moment later.
    _wrote_at: float | None = dataclasses.field(default=None, init=False)
    # One write at a time (a slow request's progress may be flushed beside the worker's own step),
    # so the last to land is the newest.
    _flushing: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        meta = self.body.metadata
        self.ref = names.SessionRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))
        self.mailbox = self.clients.mailboxes.get(self.ref.uid)
        self.status = self.written = status_mod.from_wire(self.body.get("status"))

    # --- status -----------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self.body.metadata.get("generation") or 1)

    def now(self) -> datetime.datetime:
        return status_mod.whole_seconds(self.clients.clock.now())

    async def record(
        self,
        *,
        phase: Phase | None = None,
        changes: tuple[Change, ...] = (),
        event: tuple[Reason, str] | None = None,
        warning: bool = False,
        flush: bool = True,
        **fields: Any,
    ) -> None:
        """Updates status (phase, conditions, fields of AvatarSessionStatus) and posts an Event for the step.

        The status is written at once, or with flush=False it rides on the next
        write: each write costs the API server a validation and a fan-out to
        every watcher, so progress nobody acts on waits for the step after it.
        The worker flushes before anything it waits on (the scheduler, LiveKit,
        bitHuman, a retry), so status never lags behind a wait."""
        now = self.now()
        conds = self.status.conditions or ()
        for change in changes:
            conds = conditions.set_condition(conds, change, self.generation, now)
        update: dict[str, Any] = {"observed_generation": self.generation, "operator": self.clients.instance, **fields}
        if phase is not None and PHASE_ORDER[phase] >= PHASE_ORDER[self.status.phase or Phase.PENDING]:
            update["phase"] = phase  # never backwards: Running does not turn Starting again
        # Ready, Reconciling and Stalled follow the phase on every write (what kstatus reads).
        update["conditions"] = conditions.settle_session(update.get("phase", self.status.phase), conds, self.generation, now)
        before = self.status.phase
        self.status = self.status.model_copy(update=update)
        if flush:
            await self.flush()
        # Here, as the one place a phase changes; observed even when the write rides on the next flush.
        metrics.phase_changed(before, self.status, self.body, self.clients.clock.now())
        if event is not None:
            self.clients.events(self.body, reason=event[0].value, message=event[1], warning=warning)

    async def flush(self) -> None:
        """Writes the decided status when it differs from what the API server has."""
        async with self._flushing:
            status = self.status
            if status != self.written:
                if not await self.clients.kube.patch_status(self.ref.namespace, self.ref.name, status_mod.to_wire(status)):
                    raise Ended  # the session is gone (deleted while we worked)
                self._wrote_at = self.clients.clock.monotonic()
            # Equal or just written: one copy held, not two (a poll that changes nothing still builds a new one).
            self.written = status

    def condition(self, ctype: Cond) -> status_mod.Condition | None:
        return conditions.find(self.status, ctype)

    def is_true(self, ctype: Cond) -> bool:
        return conditions.is_true(self.status, ctype)

    def reason_of(self, ctype: Cond) -> Reason | None:
        c = self.condition(ctype)
        return None if c is None else c.reason

    async def fail(self, reason: Reason, message: str, cond: Cond) -> NoReturn:
        await self.record(
            phase=Phase.FAILED,
            changes=(Change(cond, False, reason, message), Change(Cond.READY, False, reason, message)),
            event=(reason, message),
            warning=True,
            end_time=self.now(),
        )
        raise Ended

    async def succeed(self, reason: Reason, message: str) -> NoReturn:
        await self.record(
            phase=Phase.SUCCEEDED,
            changes=(Change(Cond.READY, False, reason, message),),
            event=(reason, message),
            end_time=self.now(),
        )
        raise Ended

    def end_if_stopped(self) -> None:
        """Ends the worker when kopf stops it (deletion, or the operator exiting), or when another operator acts."""
        if self.stopped.is_set():
            raise Ended
        self.end_if_another_operator()

    def end_if_another_operator(self) -> None:
        """Two operators on one session (two installs, both --standalone): the one with the higher name steps back.

        Only a body newer than this one's own last write counts: for a moment
        after it the watch still shows what was there before (the name a dead
        predecessor left, say)."""
        live = (self.body.get("status") or {}).get("operator")
        mine = self.clients.instance
        if not live or live == mine or self.written.operator != mine or self._wrote_at is None:
            return
        if self.clients.clock.monotonic() - self._wrote_at < WATCH_LAG_S:
            return
        if live > mine:
            # This one keeps the session: the next flush writes its name, which the other sees.
            self.written = self.written.model_copy(update={"operator": live})
            return
        self.logger.error(
            "operator %r acts on this session too; this operator (%r) stops acting on it. Run one operator per "
            "namespace, or replicas with --peering (the Helm chart's default)", live, mine,
        )
        raise AnotherOperator

    # --- what steps read ----------------------------------------------------

    def live_spec(self) -> spec_mod.AvatarSessionSpec:
        """The spec as it is now (maxDuration and connection may be edited while running), parsed once per generation."""
        generation = self.body.metadata.get("generation")
        if self._live is None or self._live[0] != generation:
            self._live = (generation, spec_mod.parse_spec(self.body))
        return self._live[1]

    def seconds_left(self) -> float | None:
        """Seconds until the live maxDuration ends the session (None: no limit, or not accepted yet)."""
        end = decisions.deadline(self.status.start_time, self.live_spec().max_duration)
        return decisions.seconds_until(end, self.clients.clock.now())

    async def end_if_past_deadline(self, when: str) -> None:
        """Ends the session, starting nothing more, once maxDuration has run out."""
        left = self.seconds_left()
        if left is not None and left <= 0:
            await self.succeed(Reason.MAX_DURATION_REACHED, f"maxDuration of {self.live_spec().max_duration}s reached {when}")

    def token_ttl(self, spec: spec_mod.AvatarSessionSpec) -> datetime.timedelta:
        timing = self.settings.timing
        return token_mod.token_ttl(spec.max_duration, timing.token_ttl_margin_s, timing.token_ttl_default_s)

    def avatar_token(
        self, spec: spec_mod.AvatarSessionSpec, api_key: str, api_secret: str, attributes: dict[str, str] | None = None
    ) -> str:
        """The avatar's room token, signed with the session's LiveKit key."""
        identity_, name = identity(spec)
        # Its session's uid rides along, so cleanup and Ready can tell this avatar from another of its identity.
        attributes = {names.SESSION_ATTRIBUTE: self.ref.uid, **(attributes or {})}
        return token_mod.avatar_token(
            api_key=api_key,
            api_secret=api_secret,
            room=spec.room,
            identity=identity_,
            name=name,
            agent_identity=spec.agent_identity,
            ttl=self.token_ttl(spec),
            extra_attributes=attributes,
            spec_attributes=spec.avatar_participant.attributes,
        )

    def waiting(self, identity: str, present: bool = False) -> Change:
        why = "joined, not yet publishing video" if present else "not in the room yet"
        return Change(Cond.READY, False, Reason.WAITING_FOR_AVATAR, f"avatar {identity!r} {why}")


def identity(spec: spec_mod.AvatarSessionSpec) -> tuple[str, str]:
    """The avatar participant's identity and name (the plugin's defaults when unset)."""
    p = spec.avatar_participant
    return (
        (p.identity if p and p.identity else None) or spec_mod.DEFAULT_AVATAR_IDENTITY,
        (p.name if p and p.name else None) or spec_mod.DEFAULT_AVATAR_NAME,
    )
