"""The local real stack (`make stack-up`), as its `.stack/env` describes it.

kube-apiserver, etcd, controller-manager, scheduler, kwok and livekit-server,
started by hack/stack.py, which writes the env file: KUBECONFIG, LIVEKIT_URL,
LIVEKIT_API_KEY, LIVEKIT_API_SECRET and AVATAR_STACK_BIN among others.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import time
from collections.abc import Mapping

ROOT = pathlib.Path(__file__).resolve().parents[2]
STACK_DIR = pathlib.Path(os.environ.get("AVATAR_STACK_DIR", ROOT / ".stack"))


def read_env(path: pathlib.Path) -> dict[str, str]:
    """The variables of a shell env file (`export K=V` lines; comments and blanks skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip().strip("'\"")
    return env


@dataclasses.dataclass(frozen=True)
class Stack:
    """Handles to the running local stack."""

    dir: pathlib.Path
    env: Mapping[str, str]

    @classmethod
    def read(cls, stack_dir: pathlib.Path = STACK_DIR) -> Stack:
        """The stack whose env file is in `stack_dir`; FileNotFoundError when it is not up."""
        return cls(dir=stack_dir, env=read_env(stack_dir / "env"))

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def bin_dir(self) -> pathlib.Path:
        return self.dir / "bin"

    @property
    def livekit_url(self) -> str:
        return self.env["LIVEKIT_URL"]

    @property
    def livekit_api_key(self) -> str:
        return self.env["LIVEKIT_API_KEY"]

    @property
    def livekit_api_secret(self) -> str:
        return self.env["LIVEKIT_API_SECRET"]

    def process_env(self) -> dict[str, str]:
        """os.environ plus the stack's variables, with the stack's bin first on PATH."""
        env = dict(os.environ)
        env.update(self.env)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the stack's kubectl against its kubeconfig; raises on failure when check."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def wait_established(self, *target: str, timeout: float = 60) -> None:
        """Waits for a CRD (`crd/NAME` or `-f FILE`) to be Established. `kubectl wait`
        fails at once, instead of waiting, while a new CRD has no conditions yet."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.kubectl("get", *target, "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False)
            if got.stdout == "True":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(target)} not Established after {timeout}s: {got.stdout} {got.stderr}")
            time.sleep(0.2)
