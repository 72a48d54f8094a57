"""The processes the control-plane bench starts: the fake bitHuman API and the operator.

Both are the test suites' own (tests.fakes.process, tests.harness.operator_process).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from typing import Any

import psutil

from tests.fakes.process import FakeProcess
from tests.harness.operator_process import OPERATOR, OperatorProcess, operator_env
from tests.harness.stack import ROOT, Stack

__all__ = ["BITHUMAN_SECRET", "ROOT", "FakeAPI", "Operator", "StackCPU", "run_main"]

BITHUMAN_SECRET = "bench-bh-secret-" + os.urandom(8).hex()
BITHUMAN_TOKEN = "bench-bh-token-" + os.urandom(8).hex()


class FakeAPI(FakeProcess):
    """tests.fakes.bithuman_api as a process: answers at once (nothing scripted)."""

    def __init__(self, log: pathlib.Path) -> None:
        super().__init__("tests.fakes.bithuman_api", log, api_secret=BITHUMAN_SECRET, api_token=BITHUMAN_TOKEN)


class Operator(OperatorProcess):
    """`avatar-operator run` as a process watching only `namespace_glob`, started at
    once; optionally under bench.opprofile, or with bench.opvariant's patches."""

    def __init__(
        self, stack: Stack, fake: FakeAPI, namespace_glob: str, log: pathlib.Path,
        profile_out: pathlib.Path | None = None, variant: str | None = None,
    ) -> None:
        env = operator_env(
            stack.process_env(),
            livekit_url=stack.livekit_url,
            fake_urls=fake.urls,
            runner_image="registry.invalid/avatar-runner:bench",
            # Profiled too when asked: opprofile applies the variant first.
            extra={"BENCH_VARIANT": variant} if variant else None,
        )
        if profile_out is not None:
            command: tuple[str, ...] = (sys.executable, "-m", "bench.opprofile", str(profile_out))
        elif variant:
            command = (sys.executable, "-m", "bench.opvariant")
        else:
            command = OPERATOR
        super().__init__(env, log, [namespace_glob], command=command, stop_grace=60.0)
        self.start()
        self.ps = psutil.Process(self.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def peak_rss_mb(self) -> float:
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def threads(self) -> int:
        return self.ps.num_threads()


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
