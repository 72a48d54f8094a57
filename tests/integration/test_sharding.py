"""Past one operator: sessions sharded across operator releases by namespace (README, "Past one operator").

Two operators on the real stack, each watching its own namespaces, as two
Helm releases with disjoint `watchNamespaces` run them: each session is served
by its namespace's operator alone (its name in status.operator), and bitHuman
gets one request per session. And the chart renders two such releases side by
side with no object of one named as the other's.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from avatar_operator.api import names

from tests.conftest import ROOT, Stack
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import (
    BITHUMAN_SECRET,
    FakeAPI,
    apply_crds,
    get_json,
    secret_manifest,
    wait_for,
)

pytestmark = pytest.mark.stack

PREFIX = f"shd{uuid.uuid4().hex[:4]}-"
SHARDS = ("a", "b")
PER_SHARD = 4
CHART = ROOT / "charts" / "avatar-operator"


@pytest.fixture(scope="module")
def shards(stack: Stack, fake_api: FakeAPI) -> Iterator[dict[str, OperatorProcess]]:
    """One operator per shard, watching only `<PREFIX><shard>-*`."""
    apply_crds(stack)
    env = operator_env(stack.process_env(), livekit_url=stack.livekit_url, fake_urls=fake_api.urls, runner_image="registry.invalid/avatar-runner:test")
    ops = {s: OperatorProcess(env, stack.dir / "test-artifacts" / f"operator-shard-{s}.log", [f"{PREFIX}{s}-*"], stop_grace=20.0) for s in SHARDS}
    for op in ops.values():
        op.start()
    try:
        yield ops
    finally:
        for op in ops.values():
            op.stop()


@pytest.fixture
def namespaces(stack: Stack) -> Iterator[dict[str, str]]:
    made = {s: f"{PREFIX}{s}-{uuid.uuid4().hex[:6]}" for s in SHARDS}
    for ns in made.values():
        stack.kubectl("create", "namespace", ns)
        lk = {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}
        stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("livekit-credentials", lk))
        stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
    yield made
    for ns in made.values():
        stack.kubectl("delete", "avatarsessions", "--all", "-n", ns, "--timeout=60s", check=False)
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _session(ns: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": f"s{i}", "namespace": ns},
        "spec": {"room": f"{ns}-room-{i}", "agentIdentity": f"agent-{i}", "avatarId": f"A{i:05d}"},
    }


def test_each_operator_serves_only_its_own_namespaces(stack: Stack, fake_api: FakeAPI, shards: dict[str, OperatorProcess], namespaces: dict[str, str]) -> None:
    for ns in namespaces.values():
        manifests = "\n---\n".join(yaml.safe_dump(_session(ns, i)) for i in range(PER_SHARD))
        stack.kubectl("apply", "-f", "-", input=manifests)

    def started() -> bool:
        items = [o for ns in namespaces.values() for o in get_json(stack, "avatarsessions", "-n", ns)["items"]]
        return len(items) == 2 * PER_SHARD and all((o.get("status") or {}).get("phase") in ("Starting", "Running") for o in items)

    wait_for("every session Starting", started, timeout=90)
    host = socket.gethostname()
    for shard, ns in namespaces.items():
        serving = f"{host}-{shards[shard].pid}"
        for o in get_json(stack, "avatarsessions", "-n", ns)["items"]:
            assert o["status"]["operator"] == serving, (shard, o["metadata"]["name"], o["status"]["operator"])
    rooms = {f"{ns}-room-{i}" for ns in namespaces.values() for i in range(PER_SHARD)}
    sent = [s["room_name"] for s in fake_api.sessions() if s["room_name"] in rooms]
    assert sorted(sent) == sorted(rooms)  # one request each: no session seen by both operators


def _objects(stack: Stack, release: str, watch: str) -> set[tuple[str, str, str]]:
    helm = stack.bin_dir / "helm"
    out = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", "avatar-system", "--set", f"watchNamespaces={{{watch}}}"],
        capture_output=True, text=True, check=True, env=stack.process_env(), timeout=60,
    ).stdout
    return {(d["kind"], (d.get("metadata") or {}).get("namespace") or "", d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}


def test_two_releases_render_with_no_object_in_common(stack: Stack) -> None:
    if not (stack.bin_dir / "helm").exists():
        pytest.skip("helm not built: run `bash hack/build-binaries.sh`")
    one, two = _objects(stack, "shard-a", "team-a"), _objects(stack, "shard-b", "team-b")
    assert one and two and not one & two, sorted(one & two)
