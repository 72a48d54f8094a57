"""`avatar-operator run` as a subprocess beside the stack: started, SIGKILLed, started again, stopped."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from tests.harness import processes
from tests.harness.net import free_port
from tests.harness.stack import ROOT

# The command line before `run`: the operator's own entry point.
OPERATOR = (sys.executable, "-m", "avatar_operator")


def operator_env(
    base: Mapping[str, str],
    *,
    livekit_url: str,
    fake_urls: Mapping[str, str],
    runner_image: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (say, Stack.process_env()) with the operator's settings for a run beside
    the stack and a fake bitHuman API, then `extra` over them.

    The stack's LiveKit credentials are dropped: sessions get theirs from their
    namespace's Secret (`extra` may put operator-wide ones back).

    LiveKit's webhooks: the stack's livekit-server posts them to two fixed
    ports (AVATAR_STACK_WEBHOOK_PORTS); the operator's receiver takes the first
    one free at each start (OperatorProcess.start), verifying with the stack's
    key, so two operators at once get them both. A third finds both taken and polls LiveKit as without webhooks
    (its log says so); `extra={"AVATAR_WEBHOOK_PORT": "0"}` turns the receiver off."""
    env = dict(base)
    env.update(webhook_env(base))
    for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        env.pop(k, None)
    env.update(
        {
            "AVATAR_LIVEKIT_URL": livekit_url,
            # The fake stands in for bitHuman's default API: the operator is
            # told its URL is the default one (JSON format, runtime-token mint).
            "AVATAR_BITHUMAN_API_URL": fake_urls["url"],
            "AVATAR_BITHUMAN_MINT_URL": fake_urls["mint_url"],
            "AVATAR_RUNNER_IMAGE": runner_image,
            "AVATAR_CLEANUP_TIMEOUT": "3",
        }
    )
    env.update(extra or {})
    return env


def webhook_env(base: Mapping[str, str]) -> dict[str, str]:
    """The receiver's settings for the stack in `base`; none for a stack without webhooks."""
    ports = stack_webhook_ports(base)
    if not ports or not base.get("LIVEKIT_API_KEY"):
        return {}
    return {
        "AVATAR_WEBHOOK_PORT": free_webhook_port(ports),
        "AVATAR_WEBHOOK_BIND": "127.0.0.1",
        "AVATAR_WEBHOOK_API_KEY": base["LIVEKIT_API_KEY"],
        "AVATAR_WEBHOOK_API_SECRET": base.get("LIVEKIT_API_SECRET", ""),
    }


def stack_webhook_ports(env: Mapping[str, str]) -> list[str]:
    return [p for p in env.get("AVATAR_STACK_WEBHOOK_PORTS", "").split(",") if p]


def free_webhook_port(ports: Sequence[str]) -> str:
    """The first of the stack's webhook ports free now; the first when none is (that operator then polls)."""
    return next((p for p in ports if port_free(int(p))), ports[0])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: a just-killed operator's port counts free
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# The stack's webhook ports, by the operator of this test process that took each.
_WEBHOOK_HOLDERS: dict[str, OperatorProcess] = {}


class OperatorProcess:
    """`avatar-operator run` watching `namespaces` (names or globs), as a process in
    its own process group: SIGKILL takes it, and any runner it launched, down at
    once. Its output is appended to `log`, with a marker line at each start and
    kill. Not started until start(); start() again after kill() or stop()."""

    def __init__(
        self,
        env: Mapping[str, str],
        log: pathlib.Path,
        namespaces: Sequence[str],
        *,
        peering: str | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] = OPERATOR,
        stop_grace: float = 30.0,
    ) -> None:
        self.env = dict(env)
        self.log = log
        self.namespaces = list(namespaces)
        self.peering = peering
        self.extra_args = tuple(extra_args)
        self.command = tuple(command)
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port: int | None = None
        self.starts = 0
        self.kills = 0

    def argv(self) -> list[str]:
        assert self.liveness_port is not None
        args = [*self.command, "run", "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += ["--peering", self.peering] if self.peering else ["--standalone"]
        return args + list(self.extra_args)

    def start(self) -> None:
        # kopf reads port 0 in a liveness URL as 80: give each process a free port.
        self.liveness_port = free_port()
        ports = stack_webhook_ports(self.env)
        if self.env.get("AVATAR_WEBHOOK_PORT") in ports:  # one of the stack's, not turned off: whichever is free now
            # Not one a live sibling holds: two started in the same instant would both find it still free.
            mine = [p for p in ports if (o := _WEBHOOK_HOLDERS.get(p)) is None or o is self or not o.alive()]
            port = free_webhook_port(mine or ports)
            self.env["AVATAR_WEBHOOK_PORT"] = port
            _WEBHOOK_HOLDERS[port] = self
        with open(self.log, "ab") as out:
            out.write(f"\n===== start #{self.starts + 1} at {time.time():.3f} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(), cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Sends `sig` to the operator process alone, if it runs."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the process group, as the OOM killer or a node loss would."""
        assert self.proc is not None, "not started"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1
        with open(self.log, "ab") as out:
            out.write(f"\n===== SIGKILL at {time.time():.3f} =====\n".encode())

    def stop(self) -> None:
        """SIGTERM to the process group; SIGKILL after `stop_grace` seconds. Nothing if not running."""
        processes.stop_group(self.proc, self.stop_grace)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
