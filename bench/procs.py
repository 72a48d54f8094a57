"""The processes the control-plane bench starts: the fake bitHuman API and the operator."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
BITHUMAN_SECRET = "bench-bh-secret-" + os.urandom(8).hex()


def read_env(path: pathlib.Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip().strip("'\"")
    return env


class FakeAPI:
    """tests.fakes.bithuman_api as a process: answers at once (nothing scripted)."""

    def __init__(self, log: pathlib.Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.bithuman_api", "--port", "0", "--api-secret", BITHUMAN_SECRET],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake bitHuman API did not start; see {log}")
        self.urls: dict[str, str] = json.loads(line)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Operator:
    """`avatar-operator run` as a process watching only `namespace_glob`; optionally under cProfile."""

    def __init__(
        self, stack_env: Mapping[str, str], fake: FakeAPI, namespace_glob: str, log: pathlib.Path,
        profile_out: pathlib.Path | None = None, variant: str | None = None,
    ) -> None:
        env = dict(os.environ)
        env.update(stack_env)
        env["PATH"] = f"{stack_env.get('AVATAR_STACK_BIN', '')}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            {
                "AVATAR_LIVEKIT_URL": stack_env["LIVEKIT_URL"],
                "AVATAR_BITHUMAN_API_URL": fake.urls["url"],
                "AVATAR_BITHUMAN_MINT_URL": fake.urls["mint_url"],
                "AVATAR_RUNNER_IMAGE": "registry.invalid/avatar-runner:bench",
                "AVATAR_CLEANUP_TIMEOUT": "3",
            }
        )
        for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            env.pop(k, None)  # sessions read LiveKit credentials from their namespace's Secret
        args = ["run", "--standalone", "--namespace", namespace_glob, "--liveness", "http://127.0.0.1:0/healthz"]
        if variant:
            env["BENCH_VARIANT"] = variant
            # Profiled too when asked: opprofile applies the variant first.
        if profile_out is not None:
            argv = [sys.executable, "-m", "bench.opprofile", str(profile_out), *args]
        elif variant:
            argv = [sys.executable, "-m", "bench.opvariant", *args]
        else:
            argv = [sys.executable, "-m", "avatar_operator", *args]
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def peak_rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def threads(self) -> int:
        return self.ps.num_threads()

    def stop(self) -> None:
        stop_process(self.proc, grace=60.0)


class StackCPU:
    """CPU seconds of the stack's own processes (kube-apiserver, etcd, ...), read from .stack/run/*.pid."""

    NAMES = ("kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "kwok", "livekit-server")

    def __init__(self, stack_dir: pathlib.Path) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for name in self.NAMES:
            try:
                pid = int((stack_dir / "run" / f"{name}.pid").read_text().strip())
                self.procs[name] = psutil.Process(pid)
            except (OSError, ValueError, psutil.Error):
                pass

    def sample(self) -> dict[str, float]:
        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[name] = float(t.user + t.system)
            except psutil.Error:
                pass
        return out

    @staticmethod
    def per_session(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        return {k: round(1000 * (after[k] - before[k]) / n, 2) for k in after if k in before}


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_main(coro: Any) -> Any:
    """asyncio.run(coro), with SIGTERM/SIGINT cancelling it so that its cleanup (finally) runs."""
    import asyncio

    async def wrapper() -> Any:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        stopping = []

        def stop(signum: int) -> None:
            # The first signal cancels the run; its cleanup then runs to the end
            # whatever else arrives (a second Ctrl-C must not leave nodes behind).
            if not stopping:
                stopping.append(signum)
                print(f"[bench] signal {signum}: stopping, cleaning up", file=sys.stderr, flush=True)
                task.cancel()
            else:
                print("[bench] still cleaning up; please wait", file=sys.stderr, flush=True)

        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop, s)
        return await task

    return asyncio.run(wrapper())
