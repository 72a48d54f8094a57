"""Development launcher: a local-mode runner as a local process instead of a Pod.

Selected by AVATAR_RUNNER_LAUNCHER=process (the demo: kwok's nodes run no
containers, so a Pod would never render). The process gets the environment
the Pod would get; while it runs and when it exits, a pod-shaped snapshot
goes to the session's worker, so one code path turns "runner ended" into
status for both launchers. Needs the runner package
(`pip install avatar-operator[runner]`).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from avatar_runner import contract, launcher

from avatar_operator.api import names
from avatar_operator.launchers import base

# What a process's life looks like to the pod-state reader.
NODE = "local-process"
POLL_S = 0.5
# The runner's own environment comes from the pod; these come from ours, for
# a development machine that has them (a picture, a bitHuman account).
_PASSED_THROUGH = (contract.Env.IMAGE_FILE, *contract.BITHUMAN_CREDENTIAL_KEYS)

def default_work_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AVATAR_PROCESS_WORKDIR", "/tmp/avatar-runners"))


def plain_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The pod's env values (not its Secret references), and what passes through from ours."""
    env = {item["name"]: str(item["value"]) for item in pod["spec"]["containers"][0]["env"] if "value" in item}
    for name in _PASSED_THROUGH:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def runner_env(pod: Mapping[str, Any], token: str) -> dict[str, str]:
    """The pod's plain env values, its token by value, no health port clash."""
    env = plain_env(pod)
    env.pop(contract.Env.LIVEKIT_TOKEN_FILE, None)  # no Secret volume for a local process
    env[contract.Env.LIVEKIT_TOKEN] = token
    env[contract.Env.HEALTH_PORT] = "0"  # many runners on one machine: no fixed port
    return env


def _snapshot(phase: str, terminated: Mapping[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if terminated is not None:
        status["containerStatuses"] = [{"name": contract.CONTAINER_NAME, "state": {"terminated": dict(terminated)}}]
    return {"spec": {"nodeName": NODE}, "status": status}


class ProcessLauncher:
    def __init__(self, post_pod: base.PostPod, work_dir: pathlib.Path | None = None) -> None:
        self._post = post_pod
        self._runners = launcher.RunnerLauncher(work_dir or default_work_dir())
        self._watchers: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def _key(ref: names.SessionRef) -> str:
        return f"{ref.namespace}/{ref.name}"

    async def start(self, ref: names.SessionRef, pod: Mapping[str, Any], token: str) -> None:
        key = self._key(ref)
        if self._runners.is_running(key):
            return
        self._runners.start(key, runner_env(pod, token))
        self._watchers[key] = asyncio.get_running_loop().create_task(self._watch(ref))

    async def _watch(self, ref: names.SessionRef) -> None:
        key = self._key(ref)
        self._post(ref.uid, _snapshot("Running"))
        while (st := self._runners.status(key)) is not None and st.running:
            await asyncio.sleep(POLL_S)
        if st is None:
            return
        code = st.exit_code or 0
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": st.reason or ""}
        self._post(ref.uid, _snapshot("Succeeded" if code == 0 else "Failed", terminated))

    async def stop(self, ref: names.SessionRef) -> None:
        key = self._key(ref)
        task = self._watchers.pop(key, None)
        if task is not None:
            task.cancel()
        # SIGTERM, then SIGKILL after a grace period: waited for off the event loop.
        await asyncio.to_thread(self._runners.stop, key)
        if self._runners.status(key) is not None:
            self._runners.forget(key)  # its log files, so the work directory doesn't grow

    async def release(self, ref: names.SessionRef) -> None:
        await self.stop(ref)  # a local process is this operator's own

    async def close(self) -> None:
        """Local runner processes live no longer than the operator that started them."""
        for key in list(self._watchers):
            self._watchers.pop(key).cancel()
            await asyncio.to_thread(self._runners.stop, key)
