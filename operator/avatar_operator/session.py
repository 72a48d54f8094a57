"""One session's lifecycle, from applied to ended: the orchestration, and only that.

A worker (one kopf daemon per AvatarSession) is the single writer of the
session's status. Everything it decides is recorded in status before it acts
on the world, so a restarted operator resumes where the last one stopped:
owned objects have fixed names and are created only when absent, and the cloud
request carries an idempotency key recorded before it is sent.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import aiohttp
import kopf

from avatar_operator import (
    bithuman_mint,
    cloud,
    credentials,
    kube,
    manifests,
    podstate,
    room,
    rules,
    signals,
    tokens,
)
from avatar_operator import settings as settings_mod
from avatar_operator import spec as spec_mod
from avatar_operator import status as status_mod

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason

# The participant attribute bitHuman's cloud worker reads its credential from.
# The plugin puts the account secret there, readable by every participant; we
# put a scoped runtime token minted for this agent, room and server instead.
RUNTIME_TOKEN_ATTRIBUTE = "api_secret"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Ended(Exception):
    """The session reached a terminal phase; the worker stops."""


@dataclasses.dataclass
class Presence:
    """What the worker knows of the avatar in the room between two polls."""

    was_present: bool = False
    absent_since: float | None = None  # loop time the avatar was first missed
    interval: float = 0.5  # seconds to the next poll


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
        self.ref = manifests.SessionRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))
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
        t = now()
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
            endTime=stamp(now()),
        )
        raise Ended

    async def succeed(self, reason: Reason, message: str) -> NoReturn:
        await self.record(
            phase=Phase.SUCCEEDED,
            conditions=((Cond.READY, False, reason, message),),
            event=(reason.value, message),
            endTime=stamp(now()),
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
                await self.start_local(spec, lk, bh)
            else:
                await self.start_cloud(spec, lk, bh)
            await self.watch(spec, lk)
        except Ended:
            pass
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
                endTime=stamp(now()),
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
            startTime=self.status.get("startTime") or stamp(now()),
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

    # --- local mode -------------------------------------------------------

    async def start_local(
        self,
        spec: spec_mod.AvatarSessionSpec,
        lk: credentials.LiveKitCredentials,
        bh: credentials.BithumanCredentials,
    ) -> None:
        identity, name = self.identity(spec)
        pod_name = manifests.child_name(self.ref.name, "runner")
        if self.status.get("runnerPod") != pod_name:
            token = tokens.avatar_token(
                api_key=lk.api_key,
                api_secret=lk.api_secret,
                room=spec.room,
                identity=identity,
                name=name,
                agent_identity=spec.agent_identity,
                ttl=self.token_ttl(spec),
            )
            await kube.create(manifests.token_secret(self.ref, token))
            pod = manifests.runner_pod(
                self.ref,
                spec,
                livekit_url=lk.url,
                bithuman_secret=bh.secret_name,
                defaults=manifests.RunnerDefaults(
                    image=self.settings.runner_image,
                    renderer=self.settings.runner_renderer,
                    cpu=self.settings.runner_cpu,
                    memory=self.settings.runner_memory,
                ),
            )
            if self.settings.launcher == settings_mod.Launcher.PROCESS:
                from avatar_operator import process_launcher  # dev only: needs the runner package

                process_launcher.start(self.ref, pod, token)
            else:
                await kube.create(pod)
            gpus = manifests.gpu_count(spec)
            # Written with the next step: a restart that finds no runnerPod
            # creates the same names again and finds them there (409).
            await self.record(
                conditions=((Cond.RUNNER_SCHEDULED, False, Reason.POD_CREATED, f"runner pod {pod_name} created ({gpus} GPU); waiting for the scheduler"),),
                event=(Reason.POD_CREATED.value, f"created runner pod {pod_name} and its token Secret"),
                runnerPod=pod_name,
                flush=False,
            )
        elif self.mailbox.pod is None:
            # After a restart the pod watch may not have spoken yet: look once.
            pod_obj = await kube.read_pod(self.ref.namespace, pod_name)
            if pod_obj is not None and self.mailbox.pod is None:
                self.mailbox.pod = pod_obj

    def waiting(self, identity: str, present: bool = False) -> tuple[Cond, bool, Reason, str]:
        why = "joined, not yet publishing video" if present else "not in the room yet"
        return (Cond.READY, False, Reason.WAITING_FOR_AVATAR, f"avatar {identity!r} {why}")

    async def follow_pod(self, identity: str) -> None:
        """Turns the runner pod's newest state into conditions and the phase."""
        if self.mailbox.pod_deleted and self.mailbox.pod is None:
            await self.fail(Reason.RUNNER_FAILED, "the runner pod was deleted", Cond.RUNNER_SCHEDULED)
        if self.mailbox.pod is None:
            return
        state = podstate.read(self.mailbox.pod)
        if state.phase == "Failed":
            await self.fail(Reason.RUNNER_FAILED, f"runner failed: {state.exit_reason}", Cond.READY)
        if state.phase == "Succeeded":
            await self.succeed(Reason.RUNNER_EXITED, f"runner exited: {state.exit_reason}")
        if state.unschedulable:
            await self.record(
                phase=Phase.PENDING,
                conditions=((Cond.RUNNER_SCHEDULED, False, Reason.UNSCHEDULABLE, state.unschedulable),),
                event=(Reason.UNSCHEDULABLE.value, state.unschedulable) if self.condition_reason(Cond.RUNNER_SCHEDULED) != Reason.UNSCHEDULABLE.value else None,
                warning=True,
            )
        elif state.node and not self.is_true(Cond.RUNNER_SCHEDULED):
            await self.record(
                phase=Phase.STARTING,
                conditions=(
                    (Cond.RUNNER_SCHEDULED, True, Reason.SCHEDULED, f"runner pod on node {state.node}"),
                    *(() if self.is_true(Cond.READY) else (self.waiting(identity),)),
                ),
                event=(Reason.SCHEDULED.value, f"runner pod scheduled on {state.node}"),
            )

    def condition_reason(self, ctype: Cond) -> str | None:
        c = self.condition(ctype)
        return None if c is None else str(c.get("reason"))

    # --- cloud mode -------------------------------------------------------

    async def start_cloud(
        self,
        spec: spec_mod.AvatarSessionSpec,
        lk: credentials.LiveKitCredentials,
        bh: credentials.BithumanCredentials,
    ) -> None:
        request_state = dict(self.status.get("cloudRequest") or {})
        if request_state.get("acceptedTime"):
            return
        identity, name = self.identity(spec)
        # The key is recorded before the first send (it rides on the write of
        # attempt 1, which precedes the POST): a restarted operator sends the
        # same key, and the API answers a repeat as it did the first time.
        key = request_state.get("idempotencyKey") or self.ref.uid
        if not request_state.get("idempotencyKey"):
            await self.record(cloudRequest={"idempotencyKey": key, "sentTime": stamp(now())}, flush=False)

        attributes: dict[str, str] = {}
        if spec.avatar_id:
            attributes["agent_id"] = spec.avatar_id
        # The plugin tells bitHuman's API from a custom endpoint by hostname;
        # the operator's configured API URL (a proxy, or the tests' fake) counts too.
        default_api = cloud.is_default_api_url(bh.api_url) or bh.api_url == self.settings.bithuman_api_url
        if default_api and bh.api_secret and spec.avatar_id:
            # bitHuman scopes runtime tokens to an agent code, so only sessions
            # by avatarId get one; image sessions carry no credential in the room.
            try:
                runtime_token = await bithuman_mint.mint_runtime_token(
                    self.http,
                    mint_url=self.settings.bithuman_mint_url,
                    api_secret=bh.api_secret,
                    agent_code=spec.avatar_id,
                    room_name=spec.room,
                    livekit_url=lk.url,
                )
            except bithuman_mint.MintError as e:
                await self.fail(Reason.REQUEST_REJECTED, f"minting a bitHuman runtime token failed: {e}", Cond.CLOUD_REQUEST_ACCEPTED)
            attributes[RUNTIME_TOKEN_ATTRIBUTE] = runtime_token
            # From here on the scoped token stands in for the account secret:
            # the account secret goes to the mint endpoint and nowhere else.
            request_secret: str | None = runtime_token
        else:
            request_secret = bh.api_secret
        token = tokens.avatar_token(
            api_key=lk.api_key,
            api_secret=lk.api_secret,
            room=spec.room,
            identity=identity,
            name=name,
            agent_identity=spec.agent_identity,
            ttl=self.token_ttl(spec),
            extra_attributes=attributes,
        )
        image_bytes = await self.image_bytes(spec)
        try:
            request = cloud.build_request(
                api_url=bh.api_url,
                api_secret=request_secret,
                api_token=bh.api_token,
                livekit_url=lk.url,
                livekit_token=token,
                room=spec.room,
                model=spec.model.value if spec.model else None,
                avatar_id=spec.avatar_id,
                avatar_image=spec.avatar_image,
                avatar_image_bytes=image_bytes,
                idempotency_key=key,
                default_api=default_api,
            )
        except cloud.CloudRequestError as e:
            await self.fail(Reason.REQUEST_REJECTED, str(e), Cond.CLOUD_REQUEST_ACCEPTED)
        conn = spec.connection
        policy = cloud.RetryPolicy(max_retry=conn.max_retry, retry_interval=conn.retry_interval, timeout=conn.timeout)

        async def on_attempt(n: int) -> None:
            await self.record(
                phase=Phase.PENDING,
                conditions=((Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.REQUEST_SENT, f"attempt {n} of {policy.max_retry} sent to the bitHuman API"),),
                attempts=n,
            )

        result = await cloud.send(self.http, request, policy, on_attempt=on_attempt)
        outcome = result.outcome
        if isinstance(outcome, cloud.Accepted):
            await self.record(
                phase=Phase.STARTING,
                conditions=(
                    (Cond.CLOUD_REQUEST_ACCEPTED, True, Reason.REQUEST_ACCEPTED, f"bitHuman accepted the request (HTTP {outcome.status}) after {result.attempts} attempt(s)"),
                    self.waiting(identity),
                ),
                event=(Reason.REQUEST_ACCEPTED.value, f"bitHuman accepted the request after {result.attempts} attempt(s)"),
                attempts=result.attempts,
                cloudRequest={"idempotencyKey": key, "sentTime": self.status.get("cloudRequest", {}).get("sentTime"), "acceptedTime": stamp(now())},
            )
        elif isinstance(outcome, cloud.Rejected):
            await self.fail(Reason.REQUEST_REJECTED, f"bitHuman API refused the request: HTTP {outcome.status}: {outcome.message}", Cond.CLOUD_REQUEST_ACCEPTED)
        else:
            await self.fail(Reason.RETRIES_EXHAUSTED, f"bitHuman API unreachable after {result.attempts} attempt(s): {outcome.message}", Cond.CLOUD_REQUEST_ACCEPTED)

    async def image_bytes(self, spec: spec_mod.AvatarSessionSpec) -> bytes | None:
        src = spec.avatar_image_from
        if src is None:
            return None
        if src.config_map_key_ref is not None:
            ref = src.config_map_key_ref
            data = await kube.read_config_map_key(self.ref.namespace, ref.name, ref.key)
            where = f"ConfigMap {ref.name!r} key {ref.key!r}"
        else:
            assert src.secret_key_ref is not None
            ref2 = src.secret_key_ref
            data = await kube.read_secret_key(self.ref.namespace, ref2.name, ref2.key)
            where = f"Secret {ref2.name!r} key {ref2.key!r}"
        if data is None:
            await self.fail(Reason.IMAGE_NOT_FOUND, f"spec.avatarImageFrom: {where} not found", Cond.CLOUD_REQUEST_ACCEPTED)
        return data

    # --- both modes: the room ----------------------------------------------

    async def watch(self, spec: spec_mod.AvatarSessionSpec, lk: credentials.LiveKitCredentials) -> None:
        identity, _ = self.identity(spec)
        client = room.Client(lk.url, lk.api_key, lk.api_secret, self.http)
        presence = Presence(was_present=self.is_true(Cond.READY))
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            if spec.mode == spec_mod.Mode.LOCAL:
                await self.follow_pod(identity)
            await self.check_deadline(spec, client, identity)
            # A pod event wakes the worker early; LiveKit is asked on its own schedule.
            if loop.time() >= next_poll:
                await self.poll_room(spec, client, identity, presence)
                next_poll = loop.time() + presence.interval
                if not presence.was_present:
                    presence.interval = min(presence.interval * 1.5, 5.0)
            if self.stopped.is_set():
                raise Ended
            await self.flush()
            await self.mailbox.wait(max(0.0, next_poll - loop.time()))
            if self.stopped.is_set():
                raise Ended

    async def poll_room(self, spec: spec_mod.AvatarSessionSpec, client: room.Client, identity: str, presence: Presence) -> None:
        """Asks LiveKit about the room once and records what it says."""
        loop = asyncio.get_running_loop()
        try:
            seen = await client.observe(spec.room, identity, spec.agent_identity)
        except Exception as e:  # noqa: BLE001 - LiveKit down must not fail the session
            await self.record(conditions=((Cond.READY, False, Reason.LIVEKIT_UNREACHABLE, f"cannot ask LiveKit about room {spec.room!r}: {e}"),), flush=False)
            return
        if seen.avatar_publishing_video:
            if not self.is_true(Cond.READY):
                await self.record(
                    phase=Phase.RUNNING,
                    conditions=((Cond.READY, True, Reason.AVATAR_PUBLISHING, f"avatar {identity!r} is in room {spec.room!r} publishing video"),),
                    event=(Reason.AVATAR_PUBLISHING.value, f"avatar {identity!r} is publishing video in room {spec.room!r}"),
                    readyTime=stamp(now()),
                )
            presence.was_present = True
            presence.absent_since = None
            presence.interval = 5.0
        elif presence.was_present and not seen.avatar_present:
            # A LiveKit restart or a reconnect looks like a departure for
            # a moment: the avatar must stay away for the grace period.
            if presence.absent_since is None:
                presence.absent_since = loop.time()
            if loop.time() - presence.absent_since >= self.settings.absence_grace_s:
                await self.succeed(Reason.AVATAR_LEFT, f"avatar {identity!r} left room {spec.room!r}")
            presence.interval = 1.0
        elif not self.is_true(Cond.READY):
            await self.record(conditions=(self.waiting(identity, seen.avatar_present),), flush=False)

    def live_spec(self) -> spec_mod.AvatarSessionSpec:
        """The spec as it is now (maxDuration may be edited while running), parsed once per generation."""
        generation = self.body.metadata.get("generation")
        if self._live is None or self._live[0] != generation:
            self._live = (generation, spec_mod.parse_spec(self.body))
        return self._live[1]

    async def check_deadline(self, spec: spec_mod.AvatarSessionSpec, client: room.Client, identity: str) -> None:
        live = self.live_spec()
        if not live.max_duration or not self.status.get("startTime"):
            return
        started = datetime.datetime.strptime(self.status["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        if now() < started + datetime.timedelta(seconds=live.max_duration):
            return
        await stop_session(self.ref, spec, client, identity, self.settings, self.logger)
        await self.succeed(Reason.MAX_DURATION_REACHED, f"maxDuration of {live.max_duration}s reached; avatar stopped")


async def stop_session(
    ref: manifests.SessionRef,
    spec: spec_mod.AvatarSessionSpec,
    client: room.Client | None,
    identity: str,
    settings: settings_mod.Settings,
    logger: logging.Logger | kopf.Logger,
) -> str | None:
    """Stops the runner or removes the cloud avatar; returns a warning when LiveKit could not be told."""
    if spec.mode == spec_mod.Mode.LOCAL:
        if settings.launcher == settings_mod.Launcher.PROCESS:
            from avatar_operator import process_launcher

            process_launcher.stop(ref)
        await kube.delete("Pod", ref.namespace, manifests.child_name(ref.name, "runner"))
        await kube.delete("Secret", ref.namespace, manifests.child_name(ref.name, "token"))
    if client is None:
        return "no LiveKit credentials to remove the avatar participant with"
    try:
        await asyncio.wait_for(client.remove(spec.room, identity), settings.cleanup_timeout_s)
    except Exception as e:  # noqa: BLE001 - deletion must let go even when LiveKit is down
        return f"could not remove avatar {identity!r} from room {spec.room!r}: {e or type(e).__name__}"
    return None
