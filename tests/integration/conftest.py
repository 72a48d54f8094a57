"""The operator and the fake bitHuman API as real processes beside the stack."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from tests.conftest import ROOT, RUN_PREFIX, Stack
from tests.fakes.process import FakeProcess
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.polling import wait_until

BITHUMAN_SECRET = "bh-account-secret-" + os.urandom(12).hex()
BITHUMAN_TOKEN = "bh-api-token-" + os.urandom(12).hex()

# The suite's name for the shared wait (same defaults: 60 s, every 0.3 s).
wait_for = wait_until


class FakeAPI(FakeProcess):
    """tests.fakes.bithuman_api running as a process; driven over its control endpoints."""

    def __init__(self, log: pathlib.Path) -> None:
        super().__init__("tests.fakes.bithuman_api", log, api_secret=BITHUMAN_SECRET, api_token=BITHUMAN_TOKEN)


class Operator(OperatorProcess):
    """`avatar-operator run` watching this run's namespaces, started at once; kill it
    and start it again as a test needs."""

    def __init__(self, stack: Stack, fake: FakeAPI, log: pathlib.Path) -> None:
        env = operator_env(
            stack.process_env(),
            livekit_url=stack.livekit_url,
            fake_urls=fake.urls,
            runner_image="registry.invalid/avatar-runner:test",
            extra={"AVATAR_ABSENCE_GRACE": "3"},
        )
        super().__init__(env, log, [f"{RUN_PREFIX}*"], stop_grace=20.0)
        self.stack = stack
        self.start()


@pytest.fixture(scope="session")
def artifacts(stack: Stack) -> pathlib.Path:
    d = stack.dir / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def fake_api(artifacts: pathlib.Path) -> Iterator[FakeAPI]:
    fake = FakeAPI(artifacts / "fake-bithuman.log")
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def operator(stack: Stack, fake_api: FakeAPI, artifacts: pathlib.Path) -> Iterator[Operator]:
    apply_crds(stack)
    op = Operator(stack, fake_api, artifacts / "operator.log")
    yield op
    op.stop()


def apply_crds(stack: Stack) -> list[pathlib.Path]:
    """Every generated CRD in crds/ (AvatarSession and AvatarPool), applied and Established."""
    crds = sorted((ROOT / "crds").glob("*.yaml"))
    assert len(crds) >= 2, f"expected the AvatarSession and AvatarPool CRDs in {ROOT / 'crds'}: {crds}"
    stack.kubectl("apply", "--server-side", "--force-conflicts", *(a for path in crds for a in ("-f", str(path))))
    for path in crds:  # one at a time: a jsonpath over several objects reads none of them
        stack.wait_established("-f", str(path))
    return crds


def secret_manifest(name: str, data: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
    )


@pytest.fixture
def credentials(stack: Stack, namespace: str) -> str:
    """The default-named LiveKit and bitHuman Secrets in the test's namespace."""
    stack.kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=secret_manifest("livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}),
    )
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
    return namespace


@pytest.fixture
def model_claim(stack: Stack, credentials: str) -> Iterator[str]:
    """A bound PersistentVolumeClaim `models` in the test's namespace, as a model store would be."""
    ns = credentials
    pv = f"models-{ns}"
    stack.kubectl(
        "apply", "-f", "-",
        input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                "hostPath": {"path": "/var/lib/avatar-models"},
                "claimRef": {"namespace": ns, "name": "models"},
            },
        }),
    )
    stack.kubectl(
        "apply", "-n", ns, "-f", "-",
        input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
            "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}},
        }),
    )
    wait_for("the model claim Bound", lambda: get_json(stack, "pvc", "models", "-n", ns)["status"].get("phase") == "Bound")
    yield ns
    stack.kubectl("delete", "pv", pv, "--wait=false", check=False)


def get_json(stack: Stack, *args: str) -> Any:
    return json.loads(stack.kubectl("get", *args, "-o", "json").stdout)


# --- the CRDs in the apiserver, for the modules that test them without an operator ---


@pytest.fixture(scope="module")
def crd_stack(stack: Stack) -> Stack:
    """Both CRDs applied (sessions name pools) and Established."""
    apply_crds(stack)
    return stack


@pytest.fixture(scope="module")
def ns(crd_stack: Stack) -> Iterator[str]:
    """One namespace per module (a hypothesis test can't take a per-test fixture); not this
    run's prefix, so no operator a test starts acts on its objects."""
    name = f"t-crd-{uuid.uuid4().hex[:8]}"
    crd_stack.kubectl("create", "namespace", name)
    crd_stack.kubectl("label", "namespace", name, "avatar-operator.dev/test=true")
    yield name
    crd_stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def objects(crd_stack: Stack) -> kubernetes.client.CustomObjectsApi:
    client = kubernetes.config.new_client_from_config(config_file=crd_stack.kubeconfig)  # type: ignore[no-untyped-call]
    return kubernetes.client.CustomObjectsApi(client)
