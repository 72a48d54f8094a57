"""Development pool launcher: each runner is a local `python -m avatar_runner serve` process.

Selected with AVATAR_RUNNER_LAUNCHER=process, like the session launcher. A
runner gets the environment its Pod would get, with the pool's token by
value and a free port. Each runner leaves a record (pid and port) in the
work directory, so an operator killed with SIGKILL is followed by one that
adopts the runners still alive instead of starting others beside them. A
clean exit stops them, as the session launcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

from avatar_runner import contract, launcher

from avatar_operator.api import names
from avatar_operator.launchers import base
from avatar_operator.launchers import process as process_mod

GRACE_S = 10.0  # a serve runner stops its sessions on SIGTERM


@dataclasses.dataclass
class _Runner:
    name: str
    pid: int
    port: int
    record: pathlib.Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runner_env(pod: Mapping[str, Any], token: str, port: int) -> dict[str, str]:
    """The pod's plain env values, the pool's token by value, its own port."""
    env = process_mod.plain_env(pod)
    env.pop(contract.Env.POOL_TOKEN_FILE, None)  # no Secret volume for a local process
    env[contract.Env.POOL_TOKEN] = token
    env[contract.Env.SERVE_PORT] = str(port)
    return env


class ProcessPoolLauncher:
    def __init__(self, work_dir: pathlib.Path | None = None) -> None:
        self._dir = (work_dir or process_mod.default_work_dir()) / "pools"
        self._processes = launcher.RunnerLauncher(self._dir)
        self._pools: dict[tuple[str, str], dict[str, _Runner]] = {}

    def _record(self, pool: names.PoolRef, name: str) -> pathlib.Path:
        return self._dir / f"{pool.namespace}_{pool.name}_{name}.json"

    def _adopt(self, pool: names.PoolRef) -> dict[str, _Runner]:
        """The runners a previous operator left running (their records), once per pool."""
        found: dict[str, _Runner] = {}
        for record in self._dir.glob(f"{pool.namespace}_{pool.name}_*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(record.read_text())
                if data["pool_uid"] == pool.uid and _alive(int(data["pid"])):
                    found[data["name"]] = _Runner(data["name"], int(data["pid"]), int(data["port"]), record)
                    continue
            record.unlink(missing_ok=True)
        return found

    def _runners(self, pool: names.PoolRef) -> dict[str, _Runner]:
        key = (pool.namespace, pool.name)
        if key not in self._pools:
            self._pools[key] = self._adopt(pool)
        return self._pools[key]

    async def start_runner(self, pool: names.PoolRef, pod: Mapping[str, Any], token: str) -> None:
        name = str(pod["metadata"]["name"])
        runners = self._runners(pool)
        if name in runners:
            return
        port = _free_port()
        pid = self._processes.start(f"{pool.namespace}/{name}", runner_env(pod, token, port), [contract.SERVE_COMMAND])
        record = self._record(pool, name)
        record.write_text(json.dumps({"name": name, "pid": pid, "port": port, "pool_uid": pool.uid}))
        runners[name] = _Runner(name, pid, port, record)

    async def runners(self, pool: names.PoolRef) -> list[base.RunnerHandle]:
        handles = []
        for r in self._runners(pool).values():
            own = self._processes.status(f"{pool.namespace}/{r.name}")  # polls (reaps) our own child
            alive = own.running if own is not None else _alive(r.pid)
            why = None if alive else f"process exited ({own.exit_code}): {own.reason or 'no reason given'}" if own else "process exited"
            handles.append(base.RunnerHandle(r.name, f"http://127.0.0.1:{r.port}", alive, why))
        return handles

    async def stop_runner(self, pool: names.PoolRef, name: str) -> None:
        runner = self._runners(pool).pop(name, None)
        if runner is None:
            return
        await asyncio.to_thread(self._stop, f"{pool.namespace}/{name}", runner.pid)
        runner.record.unlink(missing_ok=True)
        with contextlib.suppress(RuntimeError):
            self._processes.forget(f"{pool.namespace}/{name}")

    def _stop(self, key: str, pid: int) -> None:
        if self._processes.status(key) is not None:
            self._processes.stop(key, GRACE_S)  # our child: SIGTERM, wait, SIGKILL
            return
        with contextlib.suppress(ProcessLookupError):  # adopted: not our child, so poll
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def forget(self, pool: names.PoolRef) -> None:
        self._pools.pop((pool.namespace, pool.name), None)

    async def close(self) -> None:
        """A clean exit stops the runners, as the session launcher's do; a SIGKILL leaves them to be adopted."""
        for (namespace, pool_name), runners in list(self._pools.items()):
            ref = names.PoolRef(name=pool_name, namespace=namespace, uid="")
            for name in list(runners):
                await self.stop_runner(ref, name)

