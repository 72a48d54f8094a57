"""kopf registrations. Each handler hands off to `session`; none holds logic of its own."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import kopf

from avatar_operator import metrics
from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.clients import kube
from avatar_operator.clients import livekit as room
from avatar_operator.controller import credentials, storage, teardown
from avatar_operator.controller import mailbox as signals
from avatar_operator.controller import worker as session

RESOURCE = (names.GROUP, names.VERSION, "avatarsessions")
FINALIZER = f"{names.GROUP}/cleanup"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handler progress goes into annotations, never status: status holds only
    # what the resource's schema says. No last-handled spec is kept (see storage).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = storage.NoDiffBaseStorage()
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # A burst of sessions: many objects at once, each one cheap.
    settings.batching.worker_limit = 1000
    memo.http = aiohttp.ClientSession()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    if memo.settings.launcher == settings_mod.Launcher.PROCESS:
        from avatar_operator.launchers import process as process_launcher  # dev only: needs the runner package

        # Local runner processes live no longer than the operator that started them.
        process_launcher.stop_all()
    await memo.http.close()
    await kube.close()


@kopf.daemon(*RESOURCE, cancellation_timeout=10.0, backoff=5.0)
async def run_session(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """The session's worker: from applied to ended. Restarted for each session when the operator starts."""
    worker = session.Worker(body=body, settings=memo.settings, http=memo.http, logger=logger, stopped=stopped)
    with metrics.track(worker):
        await worker.run()


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY_LABEL: "avatar-operator", names.SESSION_LABEL: kopf.PRESENT})
def runner_pod_event(event: kopf.RawEvent, **_: Any) -> None:
    """Hands the runner pod's newest state to its session's worker."""
    pod: dict[str, Any] = dict(event["object"])
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == names.KIND:
            signals.post_pod(owner["uid"], None if event["type"] == "DELETED" else pod)


@kopf.on.delete(*RESOURCE)
async def finalize(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Stops the runner or removes the cloud avatar, deletes what the session owns, then lets go.

    LiveKit being unreachable delays deletion by at most cleanup_timeout_s,
    then a Warning event says what was left behind."""
    settings: settings_mod.Settings = memo.settings
    meta = body.metadata
    ref = names.SessionRef(name=str(meta.name), namespace=str(meta.namespace), uid=str(meta.uid))
    try:
        spec = spec_mod.parse_spec(body)
    except Exception:  # noqa: BLE001 - an invalid session never started anything but owned objects
        await kube.delete("Pod", ref.namespace, names.child_name(ref.name, "runner"))
        await kube.delete("Secret", ref.namespace, names.child_name(ref.name, "token"))
        return
    identity = str((body.get("status") or {}).get("avatarIdentity") or spec_mod.DEFAULT_AVATAR_IDENTITY)

    async def read(name: str) -> dict[str, str] | None:
        return await kube.read_secret(ref.namespace, name)

    client = None
    try:
        secret_names = [settings.livekit_secret_name]
        if spec.livekit and spec.livekit.secret_ref:
            secret_names.append(spec.livekit.secret_ref.name)
        found = {n: await read(n) for n in secret_names}
        lk = credentials.livekit(spec, settings, found.get)
        client = room.Client(lk.url, lk.api_key, lk.api_secret, memo.http)
    except credentials.MissingCredentials as e:
        logger.info("no LiveKit credentials for cleanup: %s", e.reason)
    warning = await teardown.stop_session(ref, spec, client, identity, settings, logger)
    if warning and (spec.mode == spec_mod.Mode.CLOUD or settings.launcher == settings_mod.Launcher.PROCESS):
        kopf.warn(body, reason="CleanupIncomplete", message=warning)
    signals.forget(ref.uid)
