"""Development launcher: a local-mode runner as a local process instead of a Pod.

Selected by AVATAR_RUNNER_LAUNCHER=process (the demo: kwok's nodes run no
containers, so a Pod would never render). The process gets the environment
the Pod would get; when it exits, a pod-shaped snapshot goes to the session's
worker, so one code path turns "runner ended" into status for both launchers.
Needs the runner package (`pip install avatar-operator[runner]`).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from avatar_runner import contract, launcher

from avatar_operator.api import names
from avatar_operator.controller import mailbox as signals

_launcher = launcher.RunnerLauncher(pathlib.Path(os.environ.get("AVATAR_PROCESS_WORKDIR", "/tmp/avatar-runners")))
_watchers: dict[str, asyncio.Task[None]] = {}


def _key(ref: names.SessionRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def runner_env(pod: Mapping[str, Any], token: str) -> dict[str, str]:
    """The pod's plain env values, its token by value, no health port clash."""
    env = {}
    for item in pod["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    env.pop("LIVEKIT_TOKEN_FILE", None)  # no Secret volume for a local process
    env[contract.TOKEN_KEY] = token
    env["HEALTH_PORT"] = "0"  # many runners on one machine: no fixed port
    for name in ("AVATAR_IMAGE_FILE", "BITHUMAN_API_SECRET", "BITHUMAN_API_TOKEN"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def start(ref: names.SessionRef, pod: Mapping[str, Any], token: str) -> None:
    key = _key(ref)
    if _launcher.is_running(key):
        return
    _launcher.start(key, runner_env(pod, token))
    _watchers[key] = asyncio.get_running_loop().create_task(_watch(ref))


async def _watch(ref: names.SessionRef) -> None:
    key = _key(ref)
    signals.post_pod(ref.uid, {"spec": {"nodeName": "local-process"}, "status": {"phase": "Running"}})
    while True:
        st = _launcher.status(key)
        if st is None or not st.running:
            break
        await asyncio.sleep(0.5)
    if st is None:
        return
    code = st.exit_code or 0
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": st.reason or ""}
    signals.post_pod(
        ref.uid,
        {
            "spec": {"nodeName": "local-process"},
            "status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{"name": contract.CONTAINER_NAME, "state": {"terminated": terminated}}],
            },
        },
    )


def stop(ref: names.SessionRef) -> None:
    key = _key(ref)
    _launcher.stop(key)
    task = _watchers.pop(key, None)
    if task is not None:
        task.cancel()


def stop_all() -> None:
    """Stops every runner this operator started (operator shutdown)."""
    for key in list(_watchers):
        _launcher.stop(key)
        _watchers.pop(key).cancel()
