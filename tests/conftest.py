"""Fixtures shared by the integration and e2e suites: the local real stack.

The stack (kube-apiserver, etcd, controller-manager, scheduler, kwok, livekit-server)
is started by `make stack-up`, which writes `.stack/env`. Tests that need it
take the `stack` fixture. Without a stack they are skipped, unless
AVATAR_REQUIRE_STACK=1 (set by `make test` and CI), where a missing stack is a
failure: CI must never pass by skipping the real parts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.stack import ROOT, STACK_DIR, Stack

__all__ = ["ROOT", "RUN_PREFIX", "STACK_DIR", "Stack"]

# Namespaces of this pytest run start with this prefix: an operator started by
# this run watches only them, so two runs on one stack never act on each other.
RUN_PREFIX = f"t{uuid.uuid4().hex[:4]}-"


@pytest.fixture(scope="session")
def stack() -> Stack:
    env_file = STACK_DIR / "env"
    if not env_file.exists():
        message = f"the local stack is not up ({env_file} missing): run `make stack-up`"
        if os.environ.get("AVATAR_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Stack.read(STACK_DIR)


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

