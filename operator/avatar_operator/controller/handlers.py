"""kopf registrations. Each handler hands off to the controller; none holds logic of its own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from avatar_operator import heap, launchers, metrics
from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.clients import kube as kube_mod
from avatar_operator.clients import livekit
from avatar_operator.controller import claims, cloud_end, cloud_queue, context, credentials, mailbox, pool_worker, pools, ports, storage, teardown, ttl, webhooks, worker
from avatar_operator.launchers import pool_pod

RESOURCE = (names.GROUP, names.VERSION, names.PLURAL)
POOL_RESOURCE = (names.GROUP, names.VERSION, names.POOL_PLURAL)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    # Handler progress goes into annotations, never status: status holds only
    # what the resource's schema says. No last-handled spec is kept (see storage).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = storage.NoDiffBaseStorage()
    settings.persistence.finalizer = names.FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # A burst of sessions: many objects at once, each one cheap.
    settings.batching.worker_limit = 1000
    memo.clients = make_clients(memo.settings)
    metrics.PHASES.follow(kwargs["session_phases"])  # kopf's live index, filled by its watch
    memo.cloud_admissions = cloud_queue.Admissions()
    memo.webhooks = await webhooks.serve(memo.settings.webhook, memo.clients.mailboxes)
    memo.clients.background.add(asyncio.create_task(heap.keep_trimming(), name="heap-trim"))


def make_clients(settings: settings_mod.Settings) -> ports.Clients:
    """The operator's clients, once: one HTTP pool, one API-server pool, one launcher."""
    http = aiohttp.ClientSession()
    kube = kube_mod.Kube.from_kubeconfig()
    boxes = mailbox.Mailboxes()
    return ports.Clients(
        kube=kube,
        http=http,
        rooms=livekit.Rooms(http),
        launcher=launchers.make(settings.runner.launcher, kube, boxes.post_pod),
        mailboxes=boxes,
        pool_launcher=launchers.make_pool(settings.runner.launcher, kube),
        pools=pools.Pools(boxes),
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    clients: ports.Clients = memo.clients
    receiver: webhooks.Receiver | None = getattr(memo, "webhooks", None)
    if receiver is not None:
        await receiver.close()
    for task in list(clients.background):
        task.cancel()
    await clients.launcher.close()
    if clients.pool_launcher is not None:
        await clients.pool_launcher.close()
    await clients.http.close()
    await clients.kube.close()


# Every handler here is async, the indexes too: kopf runs a sync handler in a thread of its
# executor (a hop and a shielded task per call, several per event), and a pod event posted to
# a mailbox from there would touch asyncio objects off their loop.
@kopf.index(*RESOURCE)
async def avatar_claims(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[claims.Key, claims.Claim]:
    """Every session's (LiveKit URL, room, avatar identity), kept by kopf in memory."""
    return claims.entry(body, memo.settings.livekit.url)


@kopf.index(*RESOURCE)
async def pool_bookings(body: kopf.Body, **_: Any) -> dict[tuple[str, str], pool_worker.IndexedBooking]:
    """Every live pool session's placement (its status.runner), by (namespace, pool): a restarted
    operator's bookings come from here, as its status is the record of each one."""
    return pool_worker.indexed_booking(body)


@kopf.index(*RESOURCE)
async def cloud_slots(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[cloud_queue.Key, cloud_queue.Slot]:
    """Every cloud session's place at its bitHuman credential's budget, from its status: a restarted
    operator counts the same slots as the last one."""
    return cloud_queue.entry(body, memo.settings)


@kopf.index(*RESOURCE)
async def session_phases(body: kopf.Body, **_: Any) -> dict[str, None]:
    """Every session under its phase, for the sessions-by-phase gauge (an index: kopf logs no line per event)."""
    return {str((body.get("status") or {}).get("phase") or ""): None}


class _KopfClaims:
    def __init__(self, index: kopf.Index[claims.Key, claims.Claim]) -> None:
        self._index = index

    def claims(self, key: claims.Key) -> list[claims.Claim]:
        return list(self._index.get(key, ()))


@kopf.daemon(*RESOURCE, cancellation_timeout=10.0, backoff=5.0)
async def run_session(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """The session's worker: from applied to ended. Restarted for each session when the operator starts."""
    index = _KopfClaims(kwargs["avatar_claims"])  # kopf passes each index by its function's name
    line = cloud_queue.Queue(cloud_queue.MappingIndex(kwargs["cloud_slots"]), memo.cloud_admissions)
    # The rest of kopf's two dozen arguments would be held in this frame for the session's life.
    del kwargs
    ctx = context.SessionContext(
        body=body, settings=memo.settings, clients=memo.clients, logger=logger, stopped=stopped, claims=index, cloud_queue=line
    )
    with metrics.track(ctx):
        await worker.run(ctx)


@kopf.daemon(*RESOURCE, when=ttl.applies, cancellation_timeout=5.0, backoff=5.0)
async def delete_after_ttl(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """An ended session with spec.ttlSecondsAfterFinished: deleted once that has passed since status.endTime."""
    await ttl.run(memo.clients, body, stopped, logger)


@kopf.daemon(*POOL_RESOURCE, cancellation_timeout=30.0, backoff=5.0)
async def run_pool(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    """The pool's worker: its runners, towards spec.replicas, and its status."""
    index: kopf.Index[tuple[str, str], pool_worker.IndexedBooking] = kwargs["pool_bookings"]
    clients: ports.Clients = memo.clients
    w = pool_worker.PoolWorker(body=body, settings=memo.settings, clients=clients, logger=logger, stopped=stopped)
    await pool_worker.run(w, lambda ref: list(index.get((ref.namespace, ref.name), ())))


@kopf.on.delete(*POOL_RESOURCE)
async def finalize_pool(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Stops the pool's runners before the pool goes; its sessions then see it gone."""
    meta = body.metadata
    await pool_worker.remove(memo.clients, names.PoolRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid)))


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY_LABEL: names.MANAGER, names.POOL_LABEL: kopf.PRESENT})
async def pool_runner_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Hands a pool runner pod's newest state to its pool's view (runners as Pods)."""
    pod: dict[str, Any] = dict(event["object"])
    launcher = memo.clients.pool_launcher
    if not isinstance(launcher, pool_pod.PodPoolLauncher):
        return
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == names.POOL_KIND:
            launcher.observe(pod["metadata"]["namespace"], owner["name"], pod, deleted=event["type"] == "DELETED")


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY_LABEL: names.MANAGER, names.SESSION_LABEL: kopf.PRESENT})
async def runner_pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Hands the runner pod's newest state to its session's worker."""
    pod: dict[str, Any] = dict(event["object"])
    boxes: mailbox.Mailboxes = memo.clients.mailboxes
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == names.KIND:
            boxes.post_pod(owner["uid"], None if event["type"] == "DELETED" else pod)


@kopf.on.delete(*RESOURCE)
async def finalize(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Stops the runner or removes the cloud avatar, deletes what the session owns, then lets go.

    LiveKit being unreachable delays deletion by at most the cleanup timeout,
    then a Warning event says what was left behind."""
    settings: settings_mod.Settings = memo.settings
    clients: ports.Clients = memo.clients
    meta = body.metadata
    ref = names.SessionRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))
    try:
        spec = spec_mod.parse_spec(body)
    except Exception:  # noqa: BLE001 - an invalid session never started anything but owned objects
        await teardown.stop_runner(clients, ref)
        return
    identity = str((body.get("status") or {}).get("avatarIdentity") or context.identity(spec)[0])
    if spec.mode == spec_mod.Mode.CLOUD:  # billing stops first; then the avatar is removed from the room
        await cloud_end.on_deletion(clients, settings, ref, spec, body)
    room = await _room_for_cleanup(clients, settings, spec, ref, logger)
    placed = _placement(body)
    warning = await teardown.stop_session(clients, ref, spec, room, identity, settings.timing.cleanup_timeout_s, placed=placed)
    if warning and (spec.mode == spec_mod.Mode.CLOUD or settings.runner.launcher == settings_mod.Launcher.PROCESS):
        kopf.warn(body, reason=metrics.CLEANUP_INCOMPLETE, message=warning)
        metrics.cleanup_warning(metrics.CLEANUP_INCOMPLETE)
    if room is not None and spec.mode == spec_mod.Mode.CLOUD:
        teardown.watch_if_an_avatar_may_come(
            clients, ref, room, spec, identity, body.get("status"), for_s=settings.timing.late_avatar_guard_s,
            warn=lambda message: _late_avatar_warning(body, message),
        )
    clients.mailboxes.forget(ref.uid)
    clients.flights.forget(ref.uid)


def _late_avatar_warning(body: kopf.Body, message: str) -> None:
    reason = status_mod.Reason.LATE_AVATAR_REMOVED.value
    kopf.warn(body, reason=reason, message=message)
    metrics.cleanup_warning(reason)


def _placement(body: kopf.Body) -> status_mod.RunnerPlacement | None:
    try:
        return status_mod.from_wire(body.get("status")).runner
    except Exception:  # noqa: BLE001 - a status this operator did not write places nothing
        return None


async def _room_for_cleanup(
    clients: ports.Clients,
    settings: settings_mod.Settings,
    spec: spec_mod.AvatarSessionSpec,
    ref: names.SessionRef,
    logger: kopf.Logger,
) -> ports.RoomApi | None:
    """The LiveKit client to remove the avatar with; None (logged) without credentials."""
    secret_names = [settings.livekit.secret_name]
    if spec.livekit and spec.livekit.secret_ref:
        secret_names.append(spec.livekit.secret_ref.name)
    found = {n: await clients.kube.read_secret(ref.namespace, n) for n in secret_names}
    try:
        lk = credentials.livekit(spec, settings, found.get)
    except credentials.MissingCredentials as e:
        logger.info("no LiveKit credentials for cleanup: %s", e.reason)
        return None
    return clients.rooms.get(lk.url, lk.api_key, lk.api_secret)
