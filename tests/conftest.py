"""Fixtures shared by the integration and e2e suites: the local real stack.

The stack (kube-apiserver, etcd, controller-manager, scheduler, kwok, livekit-server)
is started by `make stack-up`, which writes `.stack/env`. Tests that need it
take the `stack` fixture. Without a stack they are skipped, unless
AVATAR_REQUIRE_STACK=1 (set by `make test` and CI), where a missing stack is a
failure: CI must never pass by skipping the real parts.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STACK_DIR = pathlib.Path(os.environ.get("AVATAR_STACK_DIR", ROOT / ".stack"))
# Namespaces of this pytest run start with this prefix: an operator started by
# this run watches only them, so two runs on one stack never act on each other.
RUN_PREFIX = f"t{uuid.uuid4().hex[:4]}-"


def _read_env(path: pathlib.Path) -> dict[str, str]:
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


@pytest.fixture(scope="session")
def stack() -> Stack:
    env_file = STACK_DIR / "env"
    if not env_file.exists():
        message = f"the local stack is not up ({env_file} missing): run `make stack-up`"
        if os.environ.get("AVATAR_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Stack(dir=STACK_DIR, env=_read_env(env_file))


@pytest.fixture
def namespace(stack: Stack) -> Iterator[str]:
    """A fresh namespace per test, enforcing the `restricted` Pod Security Standard."""
    name = f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
    stack.kubectl("create", "namespace", name)
    stack.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "avatar-operator.dev/test=true",
    )
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)

